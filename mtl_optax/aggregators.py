"""The former home of the machinery and of the papers' methods; this module
keeps their import paths.

The machinery (``AggregatorState``, ``gramian_direction``, the NaN/Inf
skips) is in ``mtl_optax/methods/_core.py``, each method in its own file of
``mtl_optax/methods/``; ``mtl_optax.<factory>`` is the public name.
"""

from mtl_optax.methods._core import aggregator_state
from mtl_optax.methods._core import AggregatorState
from mtl_optax.methods._core import check_stacked
from mtl_optax.methods._core import DirectionFn
from mtl_optax.methods._core import gramian_direction
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import state_dtype
from mtl_optax.methods.aligned_mtl import aligned_mtl
from mtl_optax.methods.linear_scalarization import linear_scalarization
from mtl_optax.methods.mamg import mamg
from mtl_optax.methods.mamg import MAMG_MODES
from mtl_optax.methods.mgda import mgda
from mtl_optax.methods.pcgrad import pcgrad

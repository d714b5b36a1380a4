"""Moved to ``mtl_optax.methods``: this module keeps the old import path.

The aggregator machinery (``AggregatorState``, ``gramian_direction``, the
NaN/Inf skips) is in ``mtl_optax/methods/_core.py``.
"""

# pylint: disable=unused-import
from mtl_optax.methods._core import aggregator_state
from mtl_optax.methods._core import AggregatorState
from mtl_optax.methods._core import aligned_mtl
from mtl_optax.methods._core import check_stacked
from mtl_optax.methods._core import DirectionFn
from mtl_optax.methods._core import gramian_direction
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import linear_scalarization
from mtl_optax.methods._core import mamg
from mtl_optax.methods._core import MAMG_MODES
from mtl_optax.methods._core import mgda
from mtl_optax.methods._core import pcgrad
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import state_dtype

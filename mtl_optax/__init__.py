"""mtl_optax: multi-task gradient balancing as Optax aggregators.

Every method takes the stacked per-task gradients (a pytree whose leaves carry
a leading task axis T) and returns one update with the parameters' structure,
so it chains in front of any Optax optimizer::

    import optax, mtl_optax as mtl
    losses, grads = mtl.value_and_jacobian(loss_fn)(params, batch)
    tx = optax.chain(mtl.aligned_mtl(), optax.adam(1e-3))
    updates, opt_state = tx.update(grads, opt_state, params)

The core needs only jax, jaxlib, optax, chex and numpy. The model zoo
(``mtl.models``, the ``zoo`` extra), the data pipelines (``mtl.data``,
``data``) and the training loop (``mtl.training``, ``train``) are imported
on first use and say which extra to install if theirs is missing, e.g.
``pip install 'mtl-optax[zoo]'``.
"""

from mtl_optax import compiler
from mtl_optax import diagnostics
from mtl_optax import metrics
from mtl_optax import sharding
from mtl_optax import weightings
from mtl_optax.diagnostics import Diagnostics
from mtl_optax.gramians import combine
from mtl_optax.gramians import gramian
from mtl_optax.gramians import normalized_gramian
from mtl_optax.gramians import num_tasks
from mtl_optax.gramians import resolve_shared_mask
from mtl_optax.gramians import weighted_sum
from mtl_optax.jacobian import jacobian_free_grads
from mtl_optax.jacobian import jacobian_free_gramian
from mtl_optax.jacobian import JacobianFreeGrads
from mtl_optax.jacobian import RepresentationGrads
from mtl_optax.jacobian import representation_grads
from mtl_optax.jacobian import RepresentationGramians
from mtl_optax.jacobian import representation_gramians
from mtl_optax.jacobian import stack_tasks
from mtl_optax.jacobian import value_and_jacobian
from mtl_optax.linesearch import backtracking_linesearch
from mtl_optax.linesearch import fast_backtracking_linesearch
from mtl_optax.linesearch import linesearch_state
from mtl_optax.methods._core import aggregator_state
from mtl_optax.methods._core import AggregatorState
from mtl_optax.methods._core import gramian_direction
from mtl_optax.methods.aligned_mtl import aligned_mtl
from mtl_optax.methods.bargaining import fairgrad
from mtl_optax.methods.bargaining import nash_mtl
from mtl_optax.methods.cagrad import cagrad
from mtl_optax.methods.db_mtl import db_mtl
from mtl_optax.methods.conflict_free import config
from mtl_optax.methods.conflict_free import conflict_free
from mtl_optax.methods.dual_cone import dualproj
from mtl_optax.methods.dual_cone import upgrad
from mtl_optax.methods.dwa import dwa
from mtl_optax.methods.excess_mtl import excess_mtl
from mtl_optax.methods.ema_weighting import ema_weighting
from mtl_optax.methods.famo import famo
from mtl_optax.methods.geometric_mean import geometric_mean
from mtl_optax.methods.graddrop import graddrop
from mtl_optax.methods.gradnorm import gradnorm
from mtl_optax.methods.gradvac import gradvac
from mtl_optax.methods.imtl import imtl_g
from mtl_optax.methods.imtl_hybrid import imtl
from mtl_optax.methods.linear_scalarization import linear_scalarization
from mtl_optax.methods.mamg import mamg
from mtl_optax.methods.mgda import mgda
from mtl_optax.methods.moco import moco
from mtl_optax.methods.modo import modo
from mtl_optax.methods.pcgrad import pcgrad
from mtl_optax.methods.random_weighting import random_weighting
from mtl_optax.methods.sdmgrad import sdmgrad
from mtl_optax.methods.stch import stch
from mtl_optax.methods.uncertainty_weighting import uncertainty_weighting
from mtl_optax.registry import available
from mtl_optax.registry import get_aggregator

__version__ = '0.2.0'

__all__ = [
    'aggregator_state',
    'AggregatorState',
    'aligned_mtl',
    'available',
    'backtracking_linesearch',
    'cagrad',
    'combine',
    'db_mtl',
    'conflict_free',
    'diagnostics',
    'Diagnostics',
    'dualproj',
    'dwa',
    'ema_weighting',
    'excess_mtl',
    'fairgrad',
    'fast_backtracking_linesearch',
    'famo',
    'geometric_mean',
    'get_aggregator',
    'graddrop',
    'gradnorm',
    'gradvac',
    'gramian',
    'gramian_direction',
    'imtl',
    'imtl_g',
    'jacobian_free_grads',
    'jacobian_free_gramian',
    'JacobianFreeGrads',
    'linear_scalarization',
    'linesearch_state',
    'mamg',
    'metrics',
    'mgda',
    'moco',
    'modo',
    'nash_mtl',
    'normalized_gramian',
    'num_tasks',
    'pcgrad',
    'random_weighting',
    'representation_grads',
    'representation_gramians',
    'RepresentationGramians',
    'RepresentationGrads',
    'resolve_shared_mask',
    'sdmgrad',
    'sharding',
    'stack_tasks',
    'stch',
    'uncertainty_weighting',
    'upgrad',
    'value_and_jacobian',
    'weighted_sum',
    'weightings',
]

# Parts with optional dependencies (pip extras), imported on first attribute
# access (PEP 562) so that ``import mtl_optax`` needs only the core. They are
# not in ``__all__``: ``from mtl_optax import *`` must not import them.
_LAZY_SUBMODULES = ('data', 'models', 'training')
# The methods' former modules, now re-exports of ``mtl_optax.methods``: still
# reachable as attributes (``mtl_optax.aggregators.state_dtype``), imported on
# first access. ``config`` above is ConFIG's deprecated former name.
_FORMER_MODULES = ('aggregators', 'baselines', 'loss_weighting')


def __getattr__(name):
  if name in _LAZY_SUBMODULES or name in _FORMER_MODULES:
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY_SUBMODULES))

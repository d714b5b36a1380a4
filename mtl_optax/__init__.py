"""mtl_optax: multi-task gradient balancing as Optax aggregators.

Every method takes the stacked per-task gradients (a pytree whose leaves carry
a leading task axis T) and returns one update with the parameters' structure,
so it chains in front of any Optax optimizer::

    import optax, mtl_optax as mtl
    losses, grads = mtl.value_and_jacobian(loss_fn)(params, batch)
    tx = optax.chain(mtl.aligned_mtl(), optax.adam(1e-3))
    updates, opt_state = tx.update(grads, opt_state, params)
"""

from mtl_optax import diagnostics
from mtl_optax import weightings
from mtl_optax.aggregators import AggregatorState
from mtl_optax.aggregators import aggregator_state
from mtl_optax.aggregators import aligned_mtl
from mtl_optax.aggregators import gramian_direction
from mtl_optax.aggregators import linear_scalarization
from mtl_optax.aggregators import mamg
from mtl_optax.aggregators import mgda
from mtl_optax.aggregators import pcgrad
from mtl_optax.diagnostics import Diagnostics
from mtl_optax.gramian import combine
from mtl_optax.gramian import gramian
from mtl_optax.gramian import normalized_gramian
from mtl_optax.gramian import num_tasks
from mtl_optax.gramian import resolve_shared_mask
from mtl_optax.gramian import weighted_sum
from mtl_optax.jacobian import RepresentationGrads
from mtl_optax.jacobian import representation_grads
from mtl_optax.jacobian import stack_tasks
from mtl_optax.jacobian import value_and_jacobian

__version__ = '0.1.0'

__all__ = [
    'AggregatorState',
    'Diagnostics',
    'RepresentationGrads',
    'aggregator_state',
    'aligned_mtl',
    'combine',
    'diagnostics',
    'gramian',
    'gramian_direction',
    'linear_scalarization',
    'mamg',
    'mgda',
    'normalized_gramian',
    'num_tasks',
    'pcgrad',
    'representation_grads',
    'resolve_shared_mask',
    'stack_tasks',
    'value_and_jacobian',
    'weighted_sum',
    'weightings',
]

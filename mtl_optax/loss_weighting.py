"""The former home of the loss-based methods' factories; this module keeps
their import paths. Each method is in its own file of ``mtl_optax/methods/``
(their shared machinery in ``mtl_optax/methods/_core.py``);
``mtl_optax.<factory>`` is the public name.
"""

from mtl_optax.methods.dwa import dwa
from mtl_optax.methods.famo import famo
from mtl_optax.methods.geometric_mean import geometric_mean
from mtl_optax.methods.gradnorm import gradnorm
from mtl_optax.methods.uncertainty_weighting import uncertainty_weighting

__all__ = ['dwa', 'famo', 'geometric_mean', 'gradnorm',
           'uncertainty_weighting']

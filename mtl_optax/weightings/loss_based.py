"""The loss-based methods' weightings, under their former names.

Each lives next to its factory in ``mtl_optax/methods/``:
``uncertainty_weighting.py`` (``uncertainty``, ``uncertainty_log_var_grad``),
``dwa.py`` (``dwa_weights``), ``geometric_mean.py``
(``geometric_mean_weights``), ``famo.py`` (``famo_weights``,
``famo_logits_grad``) and ``random_weighting.py`` (``random_weights``, RLW).
"""

from mtl_optax.methods.dwa import dwa_weights as dwa
from mtl_optax.methods.famo import famo_logits_grad
from mtl_optax.methods.famo import famo_weights as famo
from mtl_optax.methods.geometric_mean import (
    geometric_mean_weights as geometric_mean)
from mtl_optax.methods.random_weighting import random_weights
from mtl_optax.methods.uncertainty_weighting import uncertainty
from mtl_optax.methods.uncertainty_weighting import uncertainty_log_var_grad

__all__ = ['dwa', 'famo', 'famo_logits_grad', 'geometric_mean',
           'random_weights', 'uncertainty', 'uncertainty_log_var_grad']

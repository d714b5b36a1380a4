"""The former home of the baselines' factories; this module keeps their
import paths. Each method is in its own file of ``mtl_optax/methods/``;
``mtl_optax.<factory>`` is the public name.
"""

from mtl_optax.methods.bargaining import fairgrad
from mtl_optax.methods.bargaining import nash_mtl
from mtl_optax.methods.cagrad import cagrad
from mtl_optax.methods.conflict_free import config
from mtl_optax.methods.conflict_free import conflict_free
from mtl_optax.methods.dual_cone import dualproj
from mtl_optax.methods.dual_cone import upgrad
from mtl_optax.methods.ema_weighting import ema_weighting
from mtl_optax.methods.graddrop import graddrop
from mtl_optax.methods.gradvac import gradvac
from mtl_optax.methods.imtl import imtl_g
from mtl_optax.methods.random_weighting import random_weighting

__all__ = [
    'cagrad',
    'conflict_free',
    'dualproj',
    'ema_weighting',
    'fairgrad',
    'graddrop',
    'gradvac',
    'imtl_g',
    'nash_mtl',
    'random_weighting',
    'upgrad',
]

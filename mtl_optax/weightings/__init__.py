"""Weighting functions: the task Gramian ``K`` (T×T) in, coefficients ``c`` out.

Every method here returns a direction ``d = Σ_t c_t g_t``; these functions
compute ``c`` from ``K[i, j] = <g_i, g_j>`` (and, for some, the losses or a
PRNG key). They are pure, jit-compatible with static shapes, and public so
that representation-level steps and users' own loops can call them.

Contract: ``c`` is the coefficient vector for the gradients whose Gramian is
``K``. The aggregators pass the Gramian normalised to a largest diagonal entry
of 1 (``mtl_optax.normalized_gramian``); every method that is
scale-equivariant (``d(σG) = σ d(G)``) gives the same ``c`` for it, and the
aggregators correct the others (see ``mtl_optax.mgda``).

Each function lives next to its method's factory, in
``mtl_optax/methods/<method>.py`` (there it is named ``<method>_weights``
where the factory has the method's name); this namespace gives them their
method's name. ``loss_based`` collects the weightings of the loss-based
methods, ``active_set`` is ``mtl_optax.active_set`` (the exact solvers).
``config`` is the deprecated former name of ``conflict_free``.
"""

from mtl_optax import active_set
from mtl_optax.methods.aligned_mtl import aligned
from mtl_optax.methods.aligned_mtl import aligned_direction_svd
from mtl_optax.methods.bargaining import fairgrad_weights as fairgrad
from mtl_optax.methods.bargaining import nash_mtl_weights as nash_mtl
from mtl_optax.methods.bargaining import solve_power_balance
from mtl_optax.methods.cagrad import cagrad_weights as cagrad
from mtl_optax.methods.conflict_free import config_weights as config
from mtl_optax.methods.db_mtl import db_mtl_weights as db_mtl
from mtl_optax.methods.conflict_free import (
    conflict_free_weights as conflict_free)
from mtl_optax.methods.dual_cone import dualproj_weights as dualproj
from mtl_optax.methods.dual_cone import project_to_dual_cone
from mtl_optax.methods.dual_cone import upgrad_weights as upgrad
from mtl_optax.methods.excess_mtl import excess_mtl_weights as excess_mtl
from mtl_optax.methods.gradvac import gradvac_weights as gradvac
from mtl_optax.methods.imtl import imtl_g_weights as imtl_g
from mtl_optax.methods.imtl_hybrid import imtl_log_scales_grad
from mtl_optax.methods.imtl_hybrid import imtl_weights as imtl
from mtl_optax.methods.linear_scalarization import linear
from mtl_optax.methods.mamg import CLIPS as mamg_clips
from mtl_optax.methods.mamg import mamg_draws
from mtl_optax.methods.mamg import mamg_one_sided
from mtl_optax.methods.mamg import mamg_weights as mamg
from mtl_optax.methods.mamg import REDUCTIONS as mamg_reductions
from mtl_optax.methods.mgda import mgda_weights as mgda
from mtl_optax.methods.mgda import min_norm_frank_wolfe
from mtl_optax.methods.mgda import min_norm_two
from mtl_optax.methods.mgda import normalization_scales
from mtl_optax.methods.mgda import SOLVERS as mgda_solvers
from mtl_optax.methods.moco import moco_weights as moco
from mtl_optax.methods.moco import project_to_simplex
from mtl_optax.methods.modo import cross_gramian
from mtl_optax.methods.modo import modo_weights as modo
from mtl_optax.methods.sdmgrad import sdmgrad_weights as sdmgrad
from mtl_optax.methods.pcgrad import pcgrad_weights as pcgrad
from mtl_optax.methods.pcgrad import random_orders
from mtl_optax.methods.stch import stch_weights as stch
from mtl_optax.weightings import loss_based

__all__ = [
    'cagrad',
    'conflict_free',
    'dualproj',
    'excess_mtl',
    'fairgrad',
    'gradvac',
    'imtl_g',
    'imtl',
    'imtl_log_scales_grad',
    'db_mtl',
    'stch',
    'active_set',
    'loss_based',
    'nash_mtl',
    'project_to_dual_cone',
    'solve_power_balance',
    'upgrad',
    'aligned',
    'aligned_direction_svd',
    'linear',
    'mamg',
    'mamg_draws',
    'mamg_one_sided',
    'mamg_clips',
    'mamg_reductions',
    'mgda',
    'min_norm_frank_wolfe',
    'min_norm_two',
    'mgda_solvers',
    'normalization_scales',
    'moco',
    'modo',
    'cross_gramian',
    'sdmgrad',
    'pcgrad',
    'project_to_simplex',
    'random_orders',
]

"""Multi-task architectures: hard sharing, cross-stitch, MMoE, CGC, PLE,
DSelect-k and Learning-to-Branch (LibMTL's set), over any staged backbone.

Every architecture is a ``MultiTaskModel``: ``encoder(x)`` is the whole
multi-task body and ``heads[task]`` a small tower (``Tower``: optional hidden
layers, then a linear output). Hard parameter sharing returns one ``z`` that
every tower reads; the others return ``z = {task: z_task}``, one
representation per task, and tower ``task`` reads ``z[task]``. So they work
with every method at the parameter level (``functional``, ``loss_fn``,
``training.train(Config(level='parameter'))``); only hard sharing has a
single shared representation for the representation level ("-UB"). The
others raise a ``ValueError`` there that says why and what to use instead:
each task's loss depends on its own ``z_task`` only, so the per-task
``z``-gradients are orthogonal by construction and aggregating them would
not be the method.

**Backbones.** A ``Backbone`` is a sequence of stages (``make_stage(i,
rngs=...)`` builds a fresh stage ``i``) that the architectures copy (experts,
columns, tree nodes) and cut (PLE levels, cross-stitch and LTB layers):
``mlp_backbone`` (flatten → [Linear → ReLU] per hidden width),
``lenet_backbone`` (the zoo's MultiMNIST LeNet: conv-pool-ReLU ×2, FC-ReLU;
3 stages), ``resnet_backbone`` (the zoo's ResNet blocks: stem, the 4 stages,
global average pool at the end; 5 stages) and ``encoder_backbone`` (any
encoder constructor as one stage).

**Shared mask.** ``functional(model).shared_mask`` marks a parameter shared
when more than one task's loss depends on it, the rule the zoo already uses
for heads (MTAN) and the one behind LibMTL's ``get_share_params``. Per
architecture:

- ``hard_parameter_sharing``: the encoder (all of it) shared; towers not.
- ``cross_stitch``: everything in the encoder shared. Column ``t`` is task
  ``t``'s network, but a cross-stitch unit follows *every* stage (as Misra
  et al. after every pooling layer), so each column's parameters reach every
  task through the units' off-diagonal ``α``; the units (one ``T × T``
  matrix per stage) are shared too. Towers not.
- ``mmoe``, ``dselect_k``: the experts shared; each task's gate (MMoE's
  ``W_g^k``, DSelect-k's ``z``/``w`` logits) is read by its own task only,
  so not shared (LibMTL's ``get_share_params`` is also the experts only).
- ``cgc``: the shared experts shared; task ``k``'s experts and gate not.
- ``ple``: at the last level as CGC; at the levels below every expert and
  gate feeds a later shared gate and so every task, with one exception: a
  task's gate at the second-to-last level feeds only its own task's last
  level. The mask is computed from the forward's dependencies
  (``task_modules``) and checked against the per-task Jacobian in the tests.
- ``learning_to_branch``: every tree node and every layer's branching
  logits shared (the relaxed tree mixes all parents during training); each
  task's choice of its last-layer parent is its own.

**Paper readings** (formulas from the papers; defaults from them or, where
they leave it open, from LibMTL):

- Cross-stitch (Misra et al., CVPR 2016): ``x̃_t = Σ_s α_ts x_s`` after each
  stage, one scalar per task pair and stage (not per channel), initialised
  convexly: ``α_tt = alpha_same`` (0.9, the paper's best ``α_S``) and
  ``α_ts = (1 - alpha_same) / (T - 1)``. The paper's 10³ learning-rate
  multiplier on ``α`` is the optimizer's business and not applied here.
- MMoE (Ma et al., KDD 2018, Eqs. 5-6): ``f^k(x) = Σ_i g^k(x)_i f_i(x)``,
  ``g^k(x) = softmax(W_gk x)`` with no bias, ``x`` the flattened input.
- CGC and PLE (Tang et al., RecSys 2020, Eqs. 2-5): task ``k``'s gate
  ``softmax(W_g^k x)`` (no bias) mixes its ``m_k`` own experts and the
  ``m_s`` shared experts; in PLE level ``j``'s task-``k`` experts and gate
  read task ``k``'s output of level ``j - 1`` and the shared experts and
  the shared gate (which mixes *all* experts of the level) read the shared
  output; the last level has no shared gate. CGC is one level. The
  backbone's stages are split into ``num_levels`` contiguous groups as
  evenly as possible; level ``j``'s experts are copies of group ``j``.
  Gates on feature maps flatten them (``gate_input='flatten'``, as LibMTL)
  or average them over space (``'pool'``).
- DSelect-k (Hazimeh et al., NeurIPS 2021; the authors' TensorFlow gate):
  smooth-step ``S(t) = 0`` for ``t ≤ -γ/2``, ``1`` for ``t ≥ γ/2``, else
  ``-2t³/γ³ + 3t/(2γ) + 1/2``; ``m = log2(n)`` binary variables per
  single-expert selector, ``r(z)_i = Π_b (S(z_b) if bit b of i else 1 -
  S(z_b))`` with the most significant bit first; the gate is ``Σ_{i≤k}
  softmax(w)_i r(z^(i))``. ``gating='per_example'`` computes ``z`` and ``w``
  by dense layers (with bias) of the flattened input, ``'static'`` holds
  them as parameters; ``z`` initialised uniform in ``±γ/100``, ``w`` in
  ``±0.05`` (Keras' default). The number of experts must be a power of 2:
  otherwise the paper adds a loss term (the authors' ``1 / Σ r``), which a
  model cannot add to the task losses here; the optional entropy
  regulariser is left out for the same reason.
- Learning to Branch (Guo et al., ICML 2020): layer ``l`` holds ``nodes[l]``
  copies of backbone stage ``l`` (default: ``T`` each, as LibMTL); each
  node of layer ``l > 0`` takes a mixture of layer ``l - 1``'s outputs with
  weights ``d = gumbel_softmax(θ_l[node], τ)``, and each task's tower reads
  a mixture of the last layer's nodes by its own ``θ_task``. Logits start
  at 0 (uniform). Train mode samples (``hard=True``: the straight-through
  one-hot, as LibMTL); eval mode is deterministic, the one-hot of
  ``argmax θ`` (the tree the search settled on). The Gumbel key and the
  sample counter are ``nnx.BatchStat`` state, so the functional view's
  pure ``loss_fn`` carries them from step to step (checkpointed, and
  resumed bit-identically); ``temperature`` is a number or a schedule
  ``τ(count)`` of the number of train-mode forward passes. LibMTL's warm-up
  (plain sums of parents) and the paper's final retraining of the argmax
  tree are left to the user (``LTBEncoder.tree()`` gives the parents).

Example (MMoE over a small MLP; its shared mask and the level-z error):

  >>> import jax.numpy as jnp
  >>> from mtl_optax import models
  >>> from mtl_optax.models import architectures as arch
  >>> model = arch.mmoe(tasks=('a', 'b'), num_outputs=3, num_experts=2,
  ...                   backbone=arch.mlp_backbone((5,), hidden=(4,)), rngs=0)
  >>> {t: y.shape for t, y in model(jnp.ones((7, 5))).items()}
  {'a': (7, 3), 'b': (7, 3)}
  >>> fm = models.functional(model)
  >>> fm.shared_mask['encoder']['gates']['a']
  {'linear': {'kernel': False}}
  >>> fm.representation_step({}, None)  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  ValueError: mmoe has no single representation shared by all tasks: ...
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_optax.models import base
from mtl_optax.models import layers
from mtl_optax.models import lenet as lenet_lib
from mtl_optax.models import resnet as resnet_lib

Tasks = Mapping[str, int] | Sequence[str] | int

# -- validation -----------------------------------------------------------------


def _int(name: str, value: Any, *, minimum: int, fix: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an int >= {minimum}; got {value!r}. '
                     f'{fix}')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}; got {value}. {fix}')
  return int(value)


def _rngs(rngs: nnx.Rngs | int) -> nnx.Rngs:
  return nnx.Rngs(rngs) if isinstance(rngs, int) else rngs


def task_outputs(tasks: Tasks, num_outputs: int = 10) -> dict[str, int]:
  """``{task: output size}`` from names, a mapping or a number of tasks.

  Args:
    tasks: task names (each gets ``num_outputs``), ``{name: outputs}``, or
      an int ``T`` (tasks ``'task_0'`` ... ``'task_{T-1}'``).
    num_outputs: outputs of every task given by name or number.

  Returns:
    The task order and each task's output size.

  Example:
    >>> task_outputs(2, 3)
    {'task_0': 3, 'task_1': 3}
  """
  if isinstance(tasks, str):
    raise ValueError(f'tasks must be a sequence of names, a mapping or a '
                     f'number; got the string {tasks!r}: write ({tasks!r},).')
  if isinstance(tasks, (int, np.integer)) and not isinstance(tasks, bool):
    count = _int('tasks', tasks, minimum=1, fix='Give at least one task.')
    tasks = [f'task_{i}' for i in range(count)]
  if isinstance(tasks, Mapping):
    outputs = dict(tasks)
  else:
    tasks = list(tasks)
    if len(set(tasks)) != len(tasks):
      raise ValueError(f'task names must be unique; got {tasks}.')
    outputs = {t: num_outputs for t in tasks}
  if not outputs:
    raise ValueError('tasks is empty: give at least one task name.')
  for t, out in outputs.items():
    if not isinstance(t, str):
      raise ValueError(f'task names must be strings; got {t!r}.')
    _int(f'outputs of task {t!r}', out, minimum=1,
         fix='Each task needs at least one output.')
  return outputs


# -- backbones ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A staged encoder that the architectures copy and cut.

  Attributes:
    name: for messages.
    input_shape: one example's shape, e.g. ``(28, 28, 1)``.
    num_stages: the number of stages.
    make_stage: ``make_stage(i, *, rngs) -> nnx.Module``, a new stage ``i``:
      stage 0 reads the input, stage ``i`` the output of stage ``i - 1``.
  """
  name: str
  input_shape: tuple[int, ...]
  num_stages: int
  make_stage: Callable[..., nnx.Module]

  def stages(self, start: int = 0, stop: int | None = None, *,
             rngs: nnx.Rngs) -> list[nnx.Module]:
    """New stages ``start, ..., stop - 1`` (default: all)."""
    stop = self.num_stages if stop is None else stop
    return [self.make_stage(i, rngs=rngs) for i in range(start, stop)]

  def output_shapes(self) -> tuple[tuple[int, ...], ...]:
    """Each stage's output shape for one example (traced, nothing runs)."""

    def run():
      x = jnp.zeros((2,) + tuple(self.input_shape), jnp.float32)
      outputs = []
      for stage in self.stages(rngs=nnx.Rngs(0)):
        x = stage(x)
        outputs.append(x)
      return outputs

    return tuple(tuple(o.shape[1:]) for o in nnx.eval_shape(run))

  def input_shapes(self) -> tuple[tuple[int, ...], ...]:
    """Each stage's input shape for one example."""
    return (tuple(self.input_shape),) + self.output_shapes()[:-1]


class DenseStage(nnx.Module):
  """Flatten → Linear → ReLU."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, out_features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.linear(x.reshape(x.shape[0], -1)))


class LeNetConvStage(nnx.Module):
  """LeNet's 5×5 valid convolution → 2×2 max-pool → ReLU."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, (5, 5), padding='VALID',
                         rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = lenet_lib.LeNet._conv(self.conv, x)   # pylint: disable=protected-access
    return nnx.relu(layers.max_pool(y, 2, 2))


class ResNetStem(nnx.Module):
  """A ResNet stem: 7×7/2 conv + BN + ReLU + 3×3/2 max-pool ('imagenet') or
  3×3/1 conv + BN + ReLU ('cifar')."""

  def __init__(self, in_features: int, width: int, *, stem: str,
               rngs: nnx.Rngs):
    self.imagenet = stem == 'imagenet'
    self.conv = layers.ConvBN(in_features, width, 7 if self.imagenet else 3,
                              stride=2 if self.imagenet else 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.conv(x))
    return layers.max_pool(x, 3, 2, padding=1) if self.imagenet else x


class ResNetStage(nnx.Module):
  """One ResNet stage (its residual blocks), global-average-pooled if last."""

  def __init__(self, blocks: Sequence[nnx.Module], *, pool: bool):
    self.blocks = nnx.List(list(blocks))
    self.pool = pool

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      x = block(x)
    return layers.global_average_pool(x) if self.pool else x


def mlp_backbone(input_shape: Sequence[int], *,
                 hidden: Sequence[int] = (256, 128)) -> Backbone:
  """Flatten, then one ``Linear → ReLU`` stage per width in ``hidden``.

  Example:
    >>> mlp_backbone((28, 28, 1), hidden=(16, 8)).output_shapes()
    ((16,), (8,))
  """
  hidden = tuple(hidden)
  if not hidden:
    raise ValueError('hidden is empty: an MLP backbone needs at least one '
                     'hidden width, e.g. hidden=(256, 128).')
  for h in hidden:
    _int('each hidden width', h, minimum=1, fix='e.g. hidden=(256, 128).')
  sizes = (int(np.prod(input_shape)),) + hidden

  def make_stage(i, *, rngs):
    return DenseStage(sizes[i], sizes[i + 1], rngs=rngs)

  return Backbone(f'mlp{hidden}', tuple(input_shape), len(hidden), make_stage)


def lenet_backbone(input_shape: Sequence[int] = (28, 28, 1), *,
                   features: int = 50) -> Backbone:
  """The zoo's MultiMNIST LeNet (``models.lenet``) in 3 stages: conv 5×5
  (10) → pool → ReLU, conv 5×5 (20) → pool → ReLU, flatten → FC → ReLU.

  Example:
    >>> lenet_backbone().output_shapes()
    ((12, 12, 10), (4, 4, 20), (50,))
  """
  h, w, c = input_shape
  flat = (lenet_lib._conv_pool_size(h) * lenet_lib._conv_pool_size(w)  # pylint: disable=protected-access
          * 20)

  def make_stage(i, *, rngs):
    if i == 0:
      return LeNetConvStage(c, 10, rngs=rngs)
    if i == 1:
      return LeNetConvStage(10, 20, rngs=rngs)
    return DenseStage(flat, features, rngs=rngs)

  return Backbone('lenet', tuple(input_shape), 3, make_stage)


def resnet_backbone(input_shape: Sequence[int], *, depth: int = 18,
                    stem: str = 'cifar', width: int = 64) -> Backbone:
  """The zoo's ResNet encoder (``models.resnet``) in 5 stages: the stem,
  then the 4 stages of residual blocks, the last one global-average-pooled
  (``[B, 8 · width]`` features for ResNet-18/34).

  Example:
    >>> resnet_backbone((16, 16, 3), width=4).output_shapes()
    ((16, 16, 4), (16, 16, 4), (8, 8, 8), (4, 4, 16), (32,))
  """
  if depth not in resnet_lib.STAGE_SIZES:
    raise ValueError(f'depth must be one of {sorted(resnet_lib.STAGE_SIZES)};'
                     f' got {depth}.')
  if stem not in ('imagenet', 'cifar'):
    raise ValueError(f"stem must be 'imagenet' or 'cifar'; got {stem!r}.")
  block = resnet_lib.BasicBlock if depth < 50 else resnet_lib.Bottleneck
  in_features = input_shape[-1]

  def make_stage(i, *, rngs):
    if i == 0:
      return ResNetStem(in_features, width, stem=stem, rngs=rngs)
    s = i - 1
    features = width * 2 ** s
    in_f = width if s == 0 else width * 2 ** (s - 1) * block.expansion
    blocks = []
    for b in range(resnet_lib.STAGE_SIZES[depth][s]):
      blocks.append(block(in_f, features, stride=2 if (b == 0 and s > 0) else 1,
                          rngs=rngs))
      in_f = features * block.expansion
    return ResNetStage(blocks, pool=s == 3)

  return Backbone(f'resnet{depth}', tuple(input_shape), 5, make_stage)


def encoder_backbone(make_encoder: Callable[..., nnx.Module],
                     input_shape: Sequence[int], *,
                     name: str = 'encoder') -> Backbone:
  """Any encoder constructor ``make_encoder(rngs=...)`` as a one-stage
  backbone (enough for hard sharing, MMoE, CGC, DSelect-k, one-level PLE and
  one-layer cross-stitch / LTB).

  Example:
    >>> from flax import nnx
    >>> b = encoder_backbone(lambda rngs: nnx.Linear(3, 2, rngs=rngs), (3,))
    >>> b.output_shapes()
    ((2,),)
  """
  return Backbone(name, tuple(input_shape), 1,
                  lambda i, *, rngs: make_encoder(rngs=rngs))


def _stage_groups(num_stages: int, num_groups: int) -> list[tuple[int, int]]:
  """``num_groups`` contiguous ``(start, stop)`` ranges, sizes within 1."""
  bounds = np.linspace(0, num_stages, num_groups + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# -- building blocks ------------------------------------------------------------


class Tower(nnx.Module):
  """A task's head: flatten → [Linear → ReLU] per ``hidden`` → Linear.

  Reads ``z[task]`` when ``task`` is set (per-task representations), else
  ``z`` itself (hard sharing).
  """

  def __init__(self, in_features: int, out_features: int, *,
               hidden: Sequence[int] = (), task: str | None = None,
               rngs: nnx.Rngs):
    sizes = (in_features,) + tuple(hidden)
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nnx.Linear(sizes[-1], out_features, rngs=rngs)
    self.task = task

  def __call__(self, z) -> jax.Array:
    h = z if self.task is None else z[self.task]
    h = h.reshape(h.shape[0], -1)
    for layer in self.hidden:
      h = nnx.relu(layer(h))
    return self.out(h)


GATE_INPUTS = ('flatten', 'pool')


def _gate_features(x: jax.Array, mode: str) -> jax.Array:
  if mode == 'pool' and x.ndim == 4:
    return layers.global_average_pool(x)
  return x.reshape(x.shape[0], -1)


def _gate_in_features(shape: Sequence[int], mode: str) -> int:
  if mode == 'pool' and len(shape) == 3:
    return int(shape[-1])
  return int(np.prod(shape))


def _check_gate_input(gate_input: str) -> str:
  if gate_input not in GATE_INPUTS:
    raise ValueError(f'gate_input must be one of {GATE_INPUTS}; got '
                     f'{gate_input!r}.')
  return gate_input


def mix(weights: jax.Array, experts: Sequence[jax.Array]) -> jax.Array:
  """``Σ_i weights[:, i] · experts[i]`` (``weights``: ``[B, E]``)."""
  stacked = jnp.stack(list(experts), axis=1)                # [B, E, ...]
  weights = weights.reshape(weights.shape + (1,) * (stacked.ndim - 2))
  return jnp.sum(weights.astype(stacked.dtype) * stacked, axis=1)


class SoftmaxGate(nnx.Module):
  """``softmax(W x)`` over ``num_experts`` (MMoE, CGC, PLE: no bias)."""

  def __init__(self, in_features: int, num_experts: int, *,
               gate_input: str = 'flatten', rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, num_experts, use_bias=False,
                             rngs=rngs)
    self.gate_input = gate_input

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(self.linear(_gate_features(x, self.gate_input)),
                          axis=-1)


class _PerTaskEncoder(nnx.Module):
  """Base of the encoders returning ``{task: z_task}``."""
  tasks: tuple[str, ...]

  def task_modules(self, task: str) -> list[nnx.Module]:
    """The submodules whose parameters task ``task``'s loss depends on."""
    raise NotImplementedError


class ExpertsEncoder(_PerTaskEncoder):
  """MMoE / DSelect-k: shared experts, one gate per task."""

  def __init__(self, experts: Sequence[nnx.Module],
               gates: Mapping[str, nnx.Module]):
    self.experts = nnx.List(list(experts))
    self.gates = nnx.Dict(dict(gates))
    self.tasks = tuple(gates)

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    outputs = [expert(x) for expert in self.experts]
    return {t: mix(self.gates[t](x), outputs) for t in self.tasks}

  def task_modules(self, task: str) -> list[nnx.Module]:
    return [self.experts, self.gates[task]]


def smooth_step(t: jax.Array, gamma: float = 1.0) -> jax.Array:
  """DSelect-k's smooth-step: 0 below ``-γ/2``, 1 above ``γ/2``, the cubic
  ``-2t³/γ³ + 3t/(2γ) + 1/2`` between (C¹, as in Hazimeh et al. 2020/21).

  Example:
    >>> import jax.numpy as jnp
    >>> smooth_step(jnp.array([-1.0, 0.0, 0.25, 1.0])).tolist()
    [0.0, 0.5, 0.84375, 1.0]
  """
  cubic = -2.0 / gamma ** 3 * t ** 3 + 3.0 / (2.0 * gamma) * t + 0.5
  return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


def binary_codes(num_experts: int) -> np.ndarray:
  """``[n, log2 n]`` bools: row ``i`` is ``i`` in binary, most significant
  bit first (DSelect-k's encoding).

  Example:
    >>> binary_codes(4).astype(int).tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1]]
  """
  m = int(math.log2(num_experts))
  return np.array([[bool((i >> (m - 1 - b)) & 1) for b in range(m)]
                   for i in range(num_experts)], dtype=bool).reshape(
                       num_experts, m)


def _uniform(limit: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


class DSelectKGate(nnx.Module):
  """The DSelect-k gate: ``k`` single-expert selectors of ``log2 n`` smooth
  binary variables each, mixed by ``softmax(w)``; returns ``[B, n]`` expert
  weights (non-negative, summing to 1).

  Args:
    in_features: gate input size (per-example gating).
    num_experts: ``n``, a power of 2.
    k: the number of selectors (at most ``k`` experts selected).
    gamma: the smooth-step's width ``γ``.
    gating: ``'per_example'`` (``z``, ``w`` dense in the flattened input)
      or ``'static'`` (``z``, ``w`` parameters).
    rngs: random streams.
  """

  def __init__(self, in_features: int, num_experts: int, *, k: int,
               gamma: float = 1.0, gating: str = 'per_example',
               rngs: nnx.Rngs):
    self.num_experts, self.k, self.gamma = num_experts, k, float(gamma)
    self.num_binary = int(math.log2(num_experts))
    self.gating = gating
    z_init, w_init = _uniform(gamma / 100), _uniform(0.05)
    if gating == 'per_example':
      self.z_logits = nnx.Linear(in_features, k * self.num_binary,
                                 kernel_init=z_init, bias_init=z_init,
                                 rngs=rngs)
      self.w_logits = nnx.Linear(in_features, k, kernel_init=w_init,
                                 bias_init=w_init, rngs=rngs)
    else:
      self.z_logits = nnx.Param(z_init(rngs.params(), (k, self.num_binary)))
      self.w_logits = nnx.Param(w_init(rngs.params(), (k,)))

  def selector_outputs(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(r [B, k, n], softmax(w) [B, k])``: the single-expert selectors."""
    b = x.shape[0]
    if self.gating == 'per_example':
      flat = x.reshape(b, -1)
      z = self.z_logits(flat).reshape(b, self.k, self.num_binary)
      w = self.w_logits(flat)
    else:
      z = jnp.broadcast_to(self.z_logits[...],
                           (b, self.k, self.num_binary))
      w = jnp.broadcast_to(self.w_logits[...], (b, self.k))
    s = smooth_step(z, self.gamma)[:, :, None, :]               # [B, k, 1, m]
    codes = jnp.asarray(binary_codes(self.num_experts))         # [n, m]
    r = jnp.prod(jnp.where(codes, s, 1.0 - s), axis=-1)         # [B, k, n]
    return r, jax.nn.softmax(w, axis=-1)

  def __call__(self, x: jax.Array) -> jax.Array:
    r, w = self.selector_outputs(x)
    return jnp.einsum('bk,bkn->bn', w, r)


class PLELevel(nnx.Module):
  """One extraction level: shared and per-task experts, per-task gates and
  (below the last level) the shared gate."""

  def __init__(self, shared: Sequence[nnx.Module],
               specific: Mapping[str, Sequence[nnx.Module]],
               gates: Mapping[str, nnx.Module],
               shared_gate: nnx.Module | None):
    self.shared = nnx.List(list(shared))
    self.specific = nnx.Dict({t: nnx.List(list(e))
                              for t, e in specific.items()})
    self.gates = nnx.Dict(dict(gates))
    self.shared_gate = shared_gate


class PLEEncoder(_PerTaskEncoder):
  """CGC (one level) and PLE (several): see the module docstring."""

  def __init__(self, levels: Sequence[PLELevel], tasks: Sequence[str]):
    self.levels = nnx.List(list(levels))
    self.tasks = tuple(tasks)

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    streams = {t: x for t in self.tasks}
    shared = x
    for level in self.levels:
      shared_out = [e(shared) for e in level.shared]
      own = {t: [e(streams[t]) for e in level.specific[t]] for t in self.tasks}
      new = {t: mix(level.gates[t](streams[t]), own[t] + shared_out)
             for t in self.tasks}
      if level.shared_gate is not None:
        every = [y for t in self.tasks for y in own[t]] + shared_out
        shared = mix(level.shared_gate(shared), every)
      streams = new
    return streams

  def task_modules(self, task: str) -> list[nnx.Module]:
    modules, seen = [], set()

    def task_stream(j, t):            # level j's output for task t
      if ('task', j, t) in seen:
        return
      seen.add(('task', j, t))
      level = self.levels[j]
      modules.extend([level.gates[t], level.specific[t], level.shared])
      if j > 0:
        task_stream(j - 1, t)         # read by t's gate and experts
        shared_stream(j - 1)          # read by the shared experts

    def shared_stream(j):             # level j's shared output
      if ('shared', j) in seen:
        return
      seen.add(('shared', j))
      level = self.levels[j]
      modules.extend([level.shared_gate, level.shared,
                      *[level.specific[t] for t in self.tasks]])
      if j > 0:
        shared_stream(j - 1)
        for t in self.tasks:
          task_stream(j - 1, t)

    task_stream(len(self.levels) - 1, task)
    return modules


class CrossStitchUnit(nnx.Module):
  """``x̃_t = Σ_s α_ts x_s`` with one ``T × T`` matrix ``α``."""

  def __init__(self, num_tasks: int, *, alpha_same: float = 0.9):
    if num_tasks == 1:
      alpha = np.ones((1, 1))
    else:
      alpha = np.full((num_tasks, num_tasks),
                      (1.0 - alpha_same) / (num_tasks - 1))
      np.fill_diagonal(alpha, alpha_same)
    self.alpha = nnx.Param(jnp.asarray(alpha, jnp.float32))

  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    stacked = jnp.stack(list(xs))                              # [T, B, ...]
    mixed = jnp.einsum('ts,s...->t...', self.alpha[...].astype(stacked.dtype),
                       stacked)
    return list(mixed)


class CrossStitchEncoder(_PerTaskEncoder):
  """One backbone column per task, a cross-stitch unit after every stage."""

  def __init__(self, columns: Mapping[str, Sequence[nnx.Module]],
               units: Sequence[CrossStitchUnit]):
    self.columns = nnx.Dict({t: nnx.List(list(c)) for t, c in columns.items()})
    self.units = nnx.List(list(units))
    self.tasks = tuple(columns)

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    hs = [x] * len(self.tasks)
    for l, unit in enumerate(self.units):
      hs = unit([self.columns[t][l](h) for t, h in zip(self.tasks, hs)])
    return dict(zip(self.tasks, hs))

  def task_modules(self, task: str) -> list[nnx.Module]:
    return [self.columns, self.units]


class BranchLogits(nnx.Module):
  """Branching logits ``θ`` (``[children, parents]``, or ``[parents]``)."""

  def __init__(self, shape: Sequence[int]):
    self.logits = nnx.Param(jnp.zeros(tuple(shape), jnp.float32))


def gumbel_softmax(logits: jax.Array, key: jax.Array, temperature,
                   *, hard: bool = False) -> jax.Array:
  """``softmax((logits + g) / τ)`` over the last axis, ``g ~ Gumbel(0, 1)``;
  ``hard``: the one-hot of its argmax forward, its gradient backward."""
  g = jax.random.gumbel(key, logits.shape, logits.dtype)
  soft = jax.nn.softmax((logits + g) / temperature, axis=-1)
  if not hard:
    return soft
  one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1],
                           dtype=soft.dtype)
  return one_hot + soft - jax.lax.stop_gradient(soft)


class LTBEncoder(_PerTaskEncoder):
  """Learning to Branch: a tree of backbone stages with Gumbel-softmax
  branching (see the module docstring).

  Modes: train (``use_running_average=False``, ``model.train()``, the
  functional view's ``train=True``) samples the branching; eval takes the
  argmax. ``tree()`` returns the argmax parents.
  """

  def __init__(self, layer_nodes: Sequence[Sequence[nnx.Module]],
               tasks: Sequence[str], *, temperature=1.0, hard: bool = False,
               rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.List(list(nodes)) for nodes in layer_nodes])
    counts = [len(nodes) for nodes in layer_nodes]
    self.branching = nnx.List([BranchLogits((c, p))
                               for p, c in zip(counts[:-1], counts[1:])])
    self.task_branching = nnx.Dict({t: BranchLogits((counts[-1],))
                                    for t in tasks})
    self.tasks = tuple(tasks)
    self.temperature = temperature
    self.hard = hard
    self.key = nnx.BatchStat(jax.random.key_data(rngs.params()))
    self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.use_running_average = False

  def set_view(self, use_running_average: bool | None = None):
    """``nnx.view``'s hook: eval (True) or train (False) branching."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def _temperature(self, count):
    if callable(self.temperature):
      return self.temperature(count)
    return self.temperature

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    train = not self.use_running_average
    if train:
      key = jax.random.wrap_key_data(self.key[...])
      key, sample_key = jax.random.split(key)
      tau = self._temperature(self.count[...])
      self.key[...] = jax.random.key_data(key)
      self.count[...] = self.count[...] + 1

    def choose(logits, i):
      if not train:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1],
                              dtype=logits.dtype)
      return gumbel_softmax(logits, jax.random.fold_in(sample_key, i), tau,
                            hard=self.hard)

    hs = [node(x) for node in self.layers[0]]
    for l, nodes in enumerate(self.layers[1:]):
      d = choose(self.branching[l].logits[...], l)             # [c, p]
      stacked = jnp.stack(hs)                                  # [p, B, ...]
      inputs = jnp.einsum('cp,p...->c...', d.astype(stacked.dtype), stacked)
      hs = [node(h) for node, h in zip(nodes, inputs)]
    stacked = jnp.stack(hs)
    out = {}
    for i, t in enumerate(self.tasks):
      d = choose(self.task_branching[t].logits[...], len(self.layers) + i)
      out[t] = jnp.einsum('p,p...->...', d.astype(stacked.dtype), stacked)
    return out

  def tree(self) -> dict[str, Any]:
    """The argmax tree: each layer's parent per node and each task's node.

    Example:
      >>> from mtl_optax.models import architectures as arch
      >>> m = arch.learning_to_branch(
      ...     tasks=2, backbone=arch.mlp_backbone((3,), hidden=(4, 4)), rngs=0)
      >>> m.encoder.tree()
      {'parents': [[0, 0]], 'tasks': {'task_0': 0, 'task_1': 0}}
    """
    return {
        'parents': [np.argmax(np.asarray(b.logits[...]), -1).tolist()
                    for b in self.branching],
        'tasks': {t: int(np.argmax(np.asarray(self.task_branching[t]
                                              .logits[...])))
                  for t in self.tasks},
    }

  def task_modules(self, task: str) -> list[nnx.Module]:
    return [self.layers, self.branching, self.task_branching[task]]


# -- the model --------------------------------------------------------------------


def _representation_error(architecture: str, what: str) -> str:
  return (
      f'{architecture} has no single representation shared by all tasks: '
      f'{what}, and each task\'s loss depends on its own representation '
      'only. The representation-level step (Config.level=\'representation\','
      ' the "-UB" methods, representation_step / representation_gramians) '
      'aggregates the tasks\' gradients with respect to one z that every '
      'head reads; here those gradients would be orthogonal by construction. '
      'Use the parameter level (level=\'parameter\': per-task gradients of '
      'every parameter, with this model\'s shared mask), or hard parameter '
      'sharing (architectures.hard_parameter_sharing, registry names '
      'hps_mlp / hps_resnet18_celeba) for the representation level.')


class ArchitectureModel(base.MultiTaskModel):
  """A ``MultiTaskModel`` whose encoder returns ``{task: z_task}``.

  ``encoder_shared_mask`` marks the encoder parameters that more than one
  task's loss depends on (from ``encoder.task_modules``), and
  ``representation_error`` makes the representation level raise (see
  ``base.functional``).
  """

  def __init__(self, encoder: _PerTaskEncoder,
               heads: Mapping[str, nnx.Module], *, architecture: str,
               representation_error: str):
    super().__init__(encoder, heads, tasks=encoder.tasks)
    self.architecture = architecture
    self.representation_error = representation_error

  def encoder_shared_mask(self, encoder_params):
    """True on the encoder parameters of more than one task."""
    owners: dict[int, set[str]] = {}
    for task in self.tasks:
      for module in self.encoder.task_modules(task):
        if module is None:
          continue
        for _, node in nnx.iter_graph(module):
          if isinstance(node, nnx.Param):
            owners.setdefault(id(node), set()).add(task)
    shared = {tuple(path) for path, node in nnx.iter_graph(self.encoder)
              if isinstance(node, nnx.Param)
              and len(owners.get(id(node), ())) > 1}

    def is_shared(path, _):
      return tuple(getattr(k, 'key', getattr(k, 'idx', k))
                   for k in path) in shared

    return jax.tree_util.tree_map_with_path(is_shared, encoder_params)


def _towers(outputs: Mapping[str, int], in_shape: Sequence[int],
            tower_hidden: Sequence[int], *, per_task: bool,
            rngs: nnx.Rngs) -> dict[str, Tower]:
  in_features = int(np.prod(in_shape))
  for h in tower_hidden:
    _int('each tower_hidden width', h, minimum=1, fix='e.g. tower_hidden=(32,).')
  return {t: Tower(in_features, out, hidden=tower_hidden,
                   task=t if per_task else None, rngs=rngs)
          for t, out in outputs.items()}


def _check_backbone(backbone: Backbone) -> Backbone:
  if not isinstance(backbone, Backbone):
    raise ValueError(
        f'backbone must be an architectures.Backbone; got '
        f'{type(backbone).__name__}. Build one with mlp_backbone, '
        'lenet_backbone, resnet_backbone or encoder_backbone(make_encoder, '
        'input_shape).')
  return backbone


def hard_parameter_sharing(*, tasks: Tasks, backbone: Backbone,
                           num_outputs: int = 10,
                           tower_hidden: Sequence[int] = (),
                           rngs: nnx.Rngs | int = 0) -> base.MultiTaskModel:
  """Hard parameter sharing: the backbone as one shared encoder, a tower per
  task (the zoo's own ``MultiTaskModel``; both levels work).

  Args:
    tasks: task names, ``{name: outputs}`` or a number of tasks.
    backbone: the shared encoder's stages.
    num_outputs: outputs per task when ``tasks`` gives no sizes.
    tower_hidden: hidden widths of each task's tower (default: linear).
    rngs: an ``nnx.Rngs`` or an int seed.
  """
  outputs = task_outputs(tasks, num_outputs)
  backbone, rngs = _check_backbone(backbone), _rngs(rngs)
  encoder = nnx.Sequential(*backbone.stages(rngs=rngs))
  heads = _towers(outputs, backbone.output_shapes()[-1], tower_hidden,
                  per_task=False, rngs=rngs)
  return base.MultiTaskModel(encoder, heads)


def cross_stitch(*, tasks: Tasks, backbone: Backbone, num_outputs: int = 10,
                 tower_hidden: Sequence[int] = (), alpha_same: float = 0.9,
                 rngs: nnx.Rngs | int = 0) -> ArchitectureModel:
  """Cross-stitch networks (Misra et al., CVPR 2016): one backbone column per
  task, a cross-stitch unit after every stage, a tower per task.

  Args:
    tasks, backbone, num_outputs, tower_hidden, rngs: as
      ``hard_parameter_sharing``.
    alpha_same: initial ``α_tt``, in [0, 1]; the others start at ``(1 -
      alpha_same) / (T - 1)`` (rows sum to 1).
  """
  outputs = task_outputs(tasks, num_outputs)
  backbone, rngs = _check_backbone(backbone), _rngs(rngs)
  if not 0.0 <= float(alpha_same) <= 1.0:
    raise ValueError(f'alpha_same must be in [0, 1] (a convex initial '
                     f'combination); got {alpha_same}. The paper uses 0.9.')
  columns = {t: backbone.stages(rngs=rngs) for t in outputs}
  units = [CrossStitchUnit(len(outputs), alpha_same=float(alpha_same))
           for _ in range(backbone.num_stages)]
  encoder = CrossStitchEncoder(columns, units)
  heads = _towers(outputs, backbone.output_shapes()[-1], tower_hidden,
                  per_task=True, rngs=rngs)
  return ArchitectureModel(encoder, heads, architecture='cross_stitch',
                           representation_error=_representation_error(
                               'cross_stitch', 'column t, stitched, is task '
                               't\'s representation'))


def _experts(backbone: Backbone, count: int, start: int = 0,
             stop: int | None = None, *, rngs: nnx.Rngs) -> list[nnx.Module]:
  return [nnx.Sequential(*backbone.stages(start, stop, rngs=rngs))
          for _ in range(count)]


def mmoe(*, tasks: Tasks, backbone: Backbone, num_outputs: int = 10,
         tower_hidden: Sequence[int] = (), num_experts: int = 4,
         gate_input: str = 'flatten',
         rngs: nnx.Rngs | int = 0) -> ArchitectureModel:
  """Multi-gate mixture of experts (Ma et al., KDD 2018).

  Args:
    tasks, backbone, num_outputs, tower_hidden, rngs: as
      ``hard_parameter_sharing``.
    num_experts: experts, each a copy of the whole backbone.
    gate_input: ``'flatten'`` the input for the gates, or ``'pool'`` an
      image to its channel means.
  """
  outputs = task_outputs(tasks, num_outputs)
  backbone, rngs = _check_backbone(backbone), _rngs(rngs)
  num_experts = _int('num_experts', num_experts, minimum=1,
                     fix='MMoE needs at least one expert (typically 2-8).')
  gate_input = _check_gate_input(gate_input)
  experts = _experts(backbone, num_experts, rngs=rngs)
  d = _gate_in_features(backbone.input_shape, gate_input)
  gates = {t: SoftmaxGate(d, num_experts, gate_input=gate_input, rngs=rngs)
           for t in outputs}
  heads = _towers(outputs, backbone.output_shapes()[-1], tower_hidden,
                  per_task=True, rngs=rngs)
  return ArchitectureModel(ExpertsEncoder(experts, gates), heads,
                           architecture='mmoe',
                           representation_error=_representation_error(
                               'mmoe', 'each task reads its own gated '
                               'mixture of the experts'))


def _task_experts(task_experts, names) -> dict[str, int]:
  if isinstance(task_experts, Mapping):
    if set(task_experts) != set(names):
      raise ValueError(f'task_experts has tasks {sorted(task_experts)}; the '
                       f'model has {sorted(names)}. Give every task a count, '
                       'or one int for all.')
    counts = dict(task_experts)
  else:
    counts = {t: task_experts for t in names}
  return {t: _int(f'task_experts[{t!r}]', counts[t], minimum=0,
                  fix='Give each task 0 or more experts of its own.')
          for t in names}


def ple(*, tasks: Tasks, backbone: Backbone, num_outputs: int = 10,
        tower_hidden: Sequence[int] = (), num_levels: int = 2,
        shared_experts: int = 1, task_experts: int | Mapping[str, int] = 1,
        gate_input: str = 'flatten',
        rngs: nnx.Rngs | int = 0) -> ArchitectureModel:
  """Progressive layered extraction (Tang et al., RecSys 2020).

  Args:
    tasks, backbone, num_outputs, tower_hidden, rngs: as
      ``hard_parameter_sharing``.
    num_levels: extraction levels, at most ``backbone.num_stages`` (the
      stages are split into this many contiguous groups).
    shared_experts: shared experts per level (``m_s``, at least 1).
    task_experts: each task's own experts per level (``m_k``; an int for
      all tasks or ``{task: count}``).
    gate_input: ``'flatten'`` or ``'pool'`` (for feature maps).
  """
  outputs = task_outputs(tasks, num_outputs)
  backbone, rngs = _check_backbone(backbone), _rngs(rngs)
  num_levels = _int('num_levels', num_levels, minimum=1,
                    fix='CGC is one level; PLE stacks 2 or more.')
  if num_levels > backbone.num_stages:
    raise ValueError(
        f'num_levels={num_levels} exceeds the backbone\'s '
        f'{backbone.num_stages} stages ({backbone.name}): each level needs '
        f'at least one stage. Use num_levels <= {backbone.num_stages} or a '
        'backbone with more stages (e.g. more hidden widths).')
  shared_experts = _int('shared_experts', shared_experts, minimum=1,
                        fix='CGC/PLE need at least one shared expert.')
  own = _task_experts(task_experts, list(outputs))
  gate_input = _check_gate_input(gate_input)
  in_shapes = backbone.input_shapes()
  levels = []
  groups = _stage_groups(backbone.num_stages, num_levels)
  for j, (start, stop) in enumerate(groups):
    d = _gate_in_features(in_shapes[start], gate_input)
    shared = _experts(backbone, shared_experts, start, stop, rngs=rngs)
    specific = {t: _experts(backbone, own[t], start, stop, rngs=rngs)
                for t in outputs}
    gates = {t: SoftmaxGate(d, own[t] + shared_experts,
                            gate_input=gate_input, rngs=rngs)
             for t in outputs}
    shared_gate = (SoftmaxGate(d, shared_experts + sum(own.values()),
                               gate_input=gate_input, rngs=rngs)
                   if j < num_levels - 1 else None)
    levels.append(PLELevel(shared, specific, gates, shared_gate))
  name = 'cgc' if num_levels == 1 else 'ple'
  heads = _towers(outputs, backbone.output_shapes()[-1], tower_hidden,
                  per_task=True, rngs=rngs)
  return ArchitectureModel(PLEEncoder(levels, list(outputs)), heads,
                           architecture=name,
                           representation_error=_representation_error(
                               name, 'each task reads its own gate\'s '
                               'mixture of its and the shared experts'))


def cgc(*, tasks: Tasks, backbone: Backbone, num_outputs: int = 10,
        tower_hidden: Sequence[int] = (), shared_experts: int = 1,
        task_experts: int | Mapping[str, int] = 1,
        gate_input: str = 'flatten',
        rngs: nnx.Rngs | int = 0) -> ArchitectureModel:
  """Customized gate control (Tang et al., RecSys 2020): one PLE level whose
  experts are copies of the whole backbone. Arguments as ``ple``."""
  return ple(tasks=tasks, backbone=backbone, num_outputs=num_outputs,
             tower_hidden=tower_hidden, num_levels=1,
             shared_experts=shared_experts, task_experts=task_experts,
             gate_input=gate_input, rngs=rngs)


DSELECT_GATINGS = ('per_example', 'static')


def dselect_k(*, tasks: Tasks, backbone: Backbone, num_outputs: int = 10,
              tower_hidden: Sequence[int] = (), num_experts: int = 4,
              k: int = 2, gamma: float = 1.0, gating: str = 'per_example',
              rngs: nnx.Rngs | int = 0) -> ArchitectureModel:
  """DSelect-k mixture of experts (Hazimeh et al., NeurIPS 2021).

  Args:
    tasks, backbone, num_outputs, tower_hidden, rngs: as
      ``hard_parameter_sharing``.
    num_experts: ``n``, a power of 2 (>= 2), each a copy of the backbone.
    k: selectors per task gate, ``1 <= k <= n`` (at most ``k`` experts).
    gamma: the smooth-step's width ``γ`` (> 0).
    gating: ``'per_example'`` or ``'static'``.
  """
  outputs = task_outputs(tasks, num_outputs)
  backbone, rngs = _check_backbone(backbone), _rngs(rngs)
  num_experts = _int('num_experts', num_experts, minimum=2,
                     fix='DSelect-k selects among 2, 4, 8, ... experts.')
  if num_experts & (num_experts - 1):
    lower = 2 ** int(math.log2(num_experts))
    raise ValueError(
        f'num_experts must be a power of 2 for DSelect-k; got {num_experts}. '
        f'Use {lower} or {2 * lower}: with other counts the paper adds a '
        'loss term that keeps the unreachable binary codes unused, which a '
        'model cannot add to the task losses here.')
  k = _int('k', k, minimum=1, fix='k is the number of experts to select.')
  if k > num_experts:
    raise ValueError(f'k={k} exceeds num_experts={num_experts}: select at '
                     f'most {num_experts} experts.')
  if not float(gamma) > 0:
    raise ValueError(f'gamma must be > 0 (the smooth-step\'s width); got '
                     f'{gamma}. The paper uses 1.0.')
  if gating not in DSELECT_GATINGS:
    raise ValueError(f'gating must be one of {DSELECT_GATINGS}; got '
                     f'{gating!r}.')
  experts = _experts(backbone, num_experts, rngs=rngs)
  d = int(np.prod(backbone.input_shape))
  gates = {t: DSelectKGate(d, num_experts, k=k, gamma=float(gamma),
                           gating=gating, rngs=rngs) for t in outputs}
  heads = _towers(outputs, backbone.output_shapes()[-1], tower_hidden,
                  per_task=True, rngs=rngs)
  return ArchitectureModel(ExpertsEncoder(experts, gates), heads,
                           architecture='dselect_k',
                           representation_error=_representation_error(
                               'dselect_k', 'each task reads its own sparse '
                               'mixture of the experts'))


def learning_to_branch(*, tasks: Tasks, backbone: Backbone,
                       num_outputs: int = 10,
                       tower_hidden: Sequence[int] = (),
                       nodes: Sequence[int] | None = None,
                       temperature: float | Callable[[jax.Array], Any] = 1.0,
                       hard: bool = False,
                       rngs: nnx.Rngs | int = 0) -> ArchitectureModel:
  """Learning to Branch (Guo et al., ICML 2020).

  Args:
    tasks, backbone, num_outputs, tower_hidden, rngs: as
      ``hard_parameter_sharing``.
    nodes: nodes per layer, one entry per backbone stage (default ``T``
      each); node counts bound how far the tree can branch at each depth
      (1 = that layer is shared by all tasks).
    temperature: the Gumbel-softmax temperature ``τ > 0``, or a schedule
      ``τ(count)`` of the number of train-mode forward passes (a jnp int32).
    hard: straight-through one-hot samples instead of soft ones.
  """
  outputs = task_outputs(tasks, num_outputs)
  backbone, rngs = _check_backbone(backbone), _rngs(rngs)
  num_tasks = len(outputs)
  nodes = ((num_tasks,) * backbone.num_stages if nodes is None
           else tuple(nodes))
  if len(nodes) != backbone.num_stages:
    raise ValueError(
        f'nodes has {len(nodes)} entries; the backbone {backbone.name} has '
        f'{backbone.num_stages} stages: give one node count per stage (e.g. '
        f'nodes={(num_tasks,) * backbone.num_stages}).')
  for n in nodes:
    _int('each node count', n, minimum=1,
         fix='Every layer needs at least one node.')
  if not callable(temperature) and not float(temperature) > 0:
    raise ValueError(f'temperature must be > 0 or a schedule count -> τ; '
                     f'got {temperature}.')
  layer_nodes = [[backbone.make_stage(l, rngs=rngs) for _ in range(n)]
                 for l, n in enumerate(nodes)]
  encoder = LTBEncoder(layer_nodes, list(outputs),
                       temperature=(temperature if callable(temperature)
                                    else float(temperature)),
                       hard=bool(hard), rngs=rngs)
  heads = _towers(outputs, backbone.output_shapes()[-1], tower_hidden,
                  per_task=True, rngs=rngs)
  return ArchitectureModel(encoder, heads, architecture='learning_to_branch',
                           representation_error=_representation_error(
                               'learning_to_branch', 'each task reads its own '
                               'mixture of the last layer\'s nodes'))


ARCHITECTURES: dict[str, Callable[..., base.MultiTaskModel]] = {
    'hps': hard_parameter_sharing,
    'cross_stitch': cross_stitch,
    'mmoe': mmoe,
    'cgc': cgc,
    'ple': ple,
    'dselectk': dselect_k,
    'ltb': learning_to_branch,
}

# -- registry factories ------------------------------------------------------------

MULTI_MNIST_TASKS = ('left', 'right')


def multimnist_factory(architecture: str) -> Callable[..., base.MultiTaskModel]:
  """The registry's ``{architecture}_mlp``: MultiMNIST (28×28×1, left and
  right digits, 10 classes each) over an MLP backbone."""
  build = ARCHITECTURES[architecture]

  def create(*, rngs: nnx.Rngs | int = 0,
             tasks: Sequence[str] = MULTI_MNIST_TASKS, num_classes: int = 10,
             hidden: Sequence[int] = (256, 128),
             input_shape: tuple[int, int, int] = (28, 28, 1),
             **kwargs: Any) -> base.MultiTaskModel:
    return build(tasks=tuple(tasks), num_outputs=num_classes,
                 backbone=mlp_backbone(input_shape, hidden=hidden),
                 rngs=rngs, **kwargs)

  create.__name__ = create.__qualname__ = f'{architecture}_mlp'
  create.__doc__ = (
      f'``{build.__name__}`` on MultiMNIST over ``mlp_backbone(input_shape, '
      'hidden=hidden)`` (default hidden (256, 128)); tasks left, right with '
      '``num_classes`` logits; other keywords go to '
      f'``architectures.{build.__name__}``.')
  return create


def celeba_factory(architecture: str) -> Callable[..., base.MultiTaskModel]:
  """The registry's ``{architecture}_resnet18_celeba``: CelebA's 40
  attributes (2 logits each) over the zoo's ResNet-18 (3×3 stem, 64×64)."""
  from mtl_optax.data.task_names import CELEBA_ATTRIBUTES  # pylint: disable=g-import-not-at-top
  build = ARCHITECTURES[architecture]

  def create(*, rngs: nnx.Rngs | int = 0,
             tasks: Sequence[str] = CELEBA_ATTRIBUTES, num_classes: int = 2,
             width: int = 64, depth: int = 18,
             image_size: tuple[int, int] = (64, 64), in_features: int = 3,
             **kwargs: Any) -> base.MultiTaskModel:
    backbone = resnet_backbone(tuple(image_size) + (in_features,),
                               depth=depth, stem='cifar', width=width)
    return build(tasks=tuple(tasks), num_outputs=num_classes,
                 backbone=backbone, rngs=rngs, **kwargs)

  create.__name__ = create.__qualname__ = f'{architecture}_resnet18_celeba'
  create.__doc__ = (
      f'``{build.__name__}`` on CelebA over ``resnet_backbone`` (ResNet-'
      '``depth``, 3×3 stem, ``width``) at ``image_size``; ``num_classes`` '
      'logits per attribute; other keywords go to '
      f'``architectures.{build.__name__}``.')
  return create


REGISTERED = tuple(f'{a}_{suffix}' for suffix in ('mlp', 'resnet18_celeba')
                   for a in ARCHITECTURES)

__all__ = [
    'ARCHITECTURES', 'ArchitectureModel', 'Backbone', 'binary_codes',
    'BranchLogits', 'cgc', 'cross_stitch', 'CrossStitchEncoder',
    'CrossStitchUnit', 'dselect_k', 'DSelectKGate', 'encoder_backbone',
    'ExpertsEncoder', 'gumbel_softmax', 'hard_parameter_sharing',
    'learning_to_branch', 'lenet_backbone', 'LTBEncoder', 'mix', 'mlp_backbone',
    'mmoe', 'ple', 'PLEEncoder', 'PLELevel', 'REGISTERED', 'resnet_backbone',
    'smooth_step', 'SoftmaxGate', 'task_outputs', 'Tower',
]

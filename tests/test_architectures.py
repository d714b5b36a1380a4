"""Multi-task architectures (``mtl_optax.models.architectures``): output
shapes, parameter counts by formula, per-task gradients against separate
``jax.grad``s, the shared mask against the per-task Jacobian's support, the
representation-level error, the gates' and the branching's definitions, bad
hyperparameters, and 4 training steps of every architecture with two methods.

Everything that runs is tiny (MLP widths ≤ 16, ResNet width 4 at 16×16);
full-size counts use ``nnx.eval_shape`` (no compute).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mtl_optax as mtl
from mtl_optax import models
from mtl_optax import training
from mtl_optax.data import loader as loader_lib
from mtl_optax.models import architectures as arch

ARCHS = tuple(arch.ARCHITECTURES)          # hps, cross_stitch, mmoe, ...
PER_TASK = tuple(a for a in ARCHS if a != 'hps')
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


def _jit(fn, **kwargs):
  return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def linear(cin, cout, bias=True):
  return cin * cout + (cout if bias else 0)


def mlp_params(sizes):                     # Linear → ReLU per hidden width
  return sum(linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))


# -- output shapes ------------------------------------------------------------------

TASKS = {'b': 3, 'a': 1, 'c': 2}          # not alphabetical, unequal outputs

BACKBONES = {
    'mlp': lambda: arch.mlp_backbone((6, 6, 1), hidden=(8, 6, 5)),
    'lenet': lambda: arch.lenet_backbone((28, 28, 1), features=7),
    'resnet': lambda: arch.resnet_backbone((16, 16, 3), width=4),
}
INPUTS = {'mlp': (6, 6, 1), 'lenet': (28, 28, 1), 'resnet': (16, 16, 3)}

# Small hyperparameters that fit every backbone above (≥ 3 stages).
SMALL_KWARGS = {
    'hps': {}, 'cross_stitch': {}, 'mmoe': {'num_experts': 3},
    'cgc': {'shared_experts': 2, 'task_experts': {'b': 1, 'a': 0, 'c': 2}},
    'ple': {'num_levels': 3, 'shared_experts': 1, 'task_experts': 1},
    'dselectk': {'num_experts': 4, 'k': 2},
    'ltb': {'nodes': (2, 3, 3)},
}


def _small(name, backbone='mlp', tasks=TASKS, rngs=0, **overrides):
  kwargs = dict(SMALL_KWARGS[name], **overrides)
  if backbone == 'resnet' and name == 'ltb' and 'nodes' not in overrides:
    kwargs['nodes'] = (2, 1, 2, 1, 3)
  if backbone == 'resnet' and name == 'mmoe' and 'num_experts' not in overrides:
    kwargs['num_experts'] = 2
  return arch.ARCHITECTURES[name](tasks=tasks, backbone=BACKBONES[backbone](),
                                  rngs=rngs, **kwargs)


@pytest.mark.parametrize('backbone', list(BACKBONES))
@pytest.mark.parametrize('name', ARCHS)
def test_output_shapes(name, backbone):
  def forward():
    model = _small(name, backbone)
    z = model.encode(jnp.zeros((2,) + INPUTS[backbone]))
    return model, z, model.decode(z)
  model, z, out = nnx.eval_shape(forward)
  assert model.tasks == ('b', 'a', 'c')
  assert {t: y.shape for t, y in out.items()} == {
      t: (2, n) for t, n in TASKS.items()}
  features = BACKBONES[backbone]().output_shapes()[-1]
  if name == 'hps':
    assert z.shape == (2,) + features        # one shared representation
  else:
    assert {t: y.shape for t, y in z.items()} == {
        t: (2,) + features for t in TASKS}


def test_backbone_shapes():
  assert BACKBONES['mlp']().output_shapes() == ((8,), (6,), (5,))
  assert BACKBONES['lenet']().output_shapes() == ((12, 12, 10), (4, 4, 20),
                                                  (7,))
  assert BACKBONES['resnet']().input_shapes() == (
      (16, 16, 3), (16, 16, 4), (16, 16, 4), (8, 8, 8), (4, 4, 16))
  imagenet = arch.resnet_backbone((32, 32, 3), width=4, stem='imagenet')
  assert imagenet.output_shapes()[0] == (8, 8, 4)
  assert imagenet.output_shapes()[-1] == (32,)
  bottleneck = arch.resnet_backbone((16, 16, 3), width=4, depth=50)
  assert bottleneck.output_shapes()[-1] == (128,)


def _run(module, x):
  graphdef, state = nnx.split(module)
  return _jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)


def test_backbones_compute_the_zoo_encoders():
  # Built in the same order from the same seed, the staged ResNet and LeNet
  # hold the zoo's parameters and compute its function.
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  staged = arch.hard_parameter_sharing(
      tasks=1, backbone=arch.resnet_backbone((16, 16, 3), width=4),
      rngs=nnx.Rngs(0)).encoder
  zoo = models.resnet.resnet(depth=18, stem='cifar', width=4,
                             rngs=nnx.Rngs(0))
  np.testing.assert_allclose(_run(staged, x), _run(zoo, x), rtol=1e-5,
                             atol=1e-6)
  assert models.num_params(staged) == models.num_params(zoo)
  x = jax.random.normal(jax.random.key(2), (2, 28, 28, 1))
  staged = arch.hard_parameter_sharing(
      tasks=1, backbone=arch.lenet_backbone(), rngs=nnx.Rngs(0)).encoder
  zoo = models.lenet.LeNet(rngs=nnx.Rngs(0))
  np.testing.assert_allclose(_run(staged, x), _run(zoo, x), rtol=1e-5,
                             atol=1e-6)


# -- parameter counts by formula ----------------------------------------------------

# MultiMNIST MLP backbone: 784 → 256 → 128; towers FC 128 → 10 for 2 tasks.
D, H1, H2 = 28 * 28, 256, 128
EXPERT = linear(D, H1) + linear(H1, H2)
TOWERS = 2 * linear(H2, 10)


def _counts(name, **kwargs):
  model = nnx.eval_shape(lambda: models.create(name, **kwargs))
  return models.num_params(model.encoder), models.num_params(model.heads)


def test_mlp_registry_counts():
  assert EXPERT == 233_856
  assert _counts('hps_mlp') == (EXPERT, TOWERS)
  # Cross-stitch: 2 columns, a 2x2 α after each of the 2 stages.
  assert _counts('cross_stitch_mlp') == (2 * EXPERT + 2 * 2 * 2, TOWERS)
  # MMoE: 4 experts; per task a gate W_g ∈ R^{4 × 784}, no bias.
  assert _counts('mmoe_mlp') == (4 * EXPERT + 2 * linear(D, 4, False), TOWERS)
  # CGC: 1 shared + 1 per task; per task a gate over its 1 + 1 experts.
  assert _counts('cgc_mlp') == (3 * EXPERT + 2 * linear(D, 2, False), TOWERS)
  # PLE, 2 levels = the 2 stages. Level 1 (784 → 256): 3 experts, 2 task
  # gates over 2 experts and the shared gate over all 3, on the input.
  # Level 2 (256 → 128): 3 experts, 2 task gates on the 256 features.
  level1 = 3 * linear(D, H1) + 2 * linear(D, 2, False) + linear(D, 3, False)
  level2 = 3 * linear(H1, H2) + 2 * linear(H1, 2, False)
  assert _counts('ple_mlp') == (level1 + level2, TOWERS)
  # DSelect-k, n = 4 experts (m = 2 binary variables), k = 2 selectors,
  # per example: z-logits dense 784 → k·m, w-logits dense 784 → k (biases).
  k, m = 2, 2
  assert _counts('dselectk_mlp') == (
      4 * EXPERT + 2 * (linear(D, k * m) + linear(D, k)), TOWERS)
  static = (4 * EXPERT + 2 * (k * m + k), TOWERS)
  assert _counts('dselectk_mlp', gating='static') == static
  # LTB: T = 2 nodes per stage; θ of layer 2 is 2 × 2; each task's choice
  # among the 2 last nodes.
  assert _counts('ltb_mlp') == (2 * EXPERT + 2 * 2 + 2 * 2, TOWERS)


# The zoo's CelebA ResNet-18 (3×3 stem): tests/test_models.py derives it.
RESNET18_CIFAR = 11_168_832
CELEBA_TOWER = linear(512, 2)


def test_resnet_registry_counts():
  assert _counts('hps_resnet18_celeba') == (RESNET18_CIFAR, 40 * CELEBA_TOWER)
  # MMoE: gates read the flattened 64×64×3 image.
  d = 64 * 64 * 3
  assert _counts('mmoe_resnet18_celeba', num_experts=2) == (
      2 * RESNET18_CIFAR + 40 * linear(d, 2, False), 40 * CELEBA_TOWER)
  # Cross-stitch over 2 attributes: 2 ResNets and a 2×2 α per stage (5).
  two = models.CELEBA_ATTRIBUTES[:2]
  assert _counts('cross_stitch_resnet18_celeba', tasks=two) == (
      2 * RESNET18_CIFAR + 5 * 4, 2 * CELEBA_TOWER)
  # LTB over 2 attributes, 1 node per stage except 2 at the last: the last
  # stage (ResNet-18's 4th: 3×3 256→512, three 3×3 512→512, the 1×1
  # 256→512 shortcut, 5 BatchNorms) twice; θ is 1×1 between the first
  # stages and 2×1 before the last; each task's 2 logits.
  last_stage = (9 * 256 * 512 + 3 * 9 * 512 * 512 + 256 * 512 + 5 * 2 * 512)
  assert _counts('ltb_resnet18_celeba', tasks=two, nodes=(1, 1, 1, 1, 2)) == (
      RESNET18_CIFAR + last_stage + (1 + 1 + 1 + 2) + 2 * 2, 2 * CELEBA_TOWER)


def test_small_counts_with_unequal_experts():
  # CGC with {'b': 1, 'a': 0, 'c': 2} own experts and 2 shared, over the
  # 36 → 8 → 6 → 5 MLP; towers 5 → (3, 1, 2).
  expert = mlp_params((36, 8, 6, 5))
  towers = linear(5, 3) + linear(5, 1) + linear(5, 2)
  model = nnx.eval_shape(lambda: _small('cgc'))
  assert models.num_params(model.encoder) == (
      (2 + 3) * expert + sum(linear(36, 2 + e, False) for e in (1, 0, 2)))
  assert models.num_params(model.heads) == towers
  # PLE, 3 levels of one stage each, 1 shared + 1 own expert per task.
  model = nnx.eval_shape(lambda: _small('ple'))
  sizes = (36, 8, 6, 5)
  total = 0
  for j in range(3):
    total += 4 * linear(sizes[j], sizes[j + 1])        # 1 shared + 3 own
    total += 3 * linear(sizes[j], 2, False)            # task gates
    total += linear(sizes[j], 4, False) if j < 2 else 0  # shared gate
  assert models.num_params(model.encoder) == total


# -- the functional view: per-task gradients and the shared mask ---------------------


def _losses(tasks):
  def loss(t):
    def fn(out, batch):
      return jnp.mean((out - batch[t]) ** 2)
    return fn
  return {t: loss(t) for t in tasks}


def _batch(shape, tasks=TASKS, size=5, seed=0):
  rng = np.random.default_rng(seed)
  batch = {'image': jnp.asarray(rng.standard_normal((size,) + shape),
                                jnp.float32)}
  for t, n in tasks.items():
    batch[t] = jnp.asarray(rng.standard_normal((size, n)), jnp.float32)
  return batch


@functools.cache
def _jacobian(name, backbone):
  """(fm, losses, jacobian, separate grads) of a small model on a batch."""
  fm = models.functional(_small(name, backbone))
  batch = _batch(INPUTS[backbone])
  loss_fn = fm.loss_fn(_losses(TASKS))

  @_jit
  def jacobian(params, stats):
    (losses, _), jac = mtl.value_and_jacobian(loss_fn, has_aux=True)(
        params, stats, batch)
    return losses, jac

  # Task t's loss alone is <losses, e_t>: one compiled gradient serves every
  # task (a program per task tripled this module's compile time).
  @_jit
  def grad_of(params, stats, onehot):
    return jax.grad(lambda p: jnp.vdot(loss_fn(p, stats, batch)[0],
                                       onehot))(params)

  losses, jac = jacobian(fm.params, fm.batch_stats)
  eye = jnp.eye(len(fm.tasks), dtype=losses.dtype)
  grads = [grad_of(fm.params, fm.batch_stats, eye[t])
           for t in range(len(fm.tasks))]
  return fm, losses, jac, grads


@pytest.mark.parametrize('name,backbone', [(a, 'mlp') for a in ARCHS] + [
    ('mmoe', 'resnet'), ('cross_stitch', 'lenet'), ('ltb', 'lenet')])
def test_per_task_gradients_equal_separate_grads(name, backbone):
  fm, losses, jac, grads = _jacobian(name, backbone)
  assert losses.shape == (3,)
  for t in range(3):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a[t], b, rtol=2e-4, atol=1e-6), jac, grads[t])


def _paths(tree, keep=lambda x: x):
  return {jax.tree_util.keystr(p) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0] if keep(x)}


def _shared_by_jacobian(jac):
  """Leaves whose gradient is non-zero for more than one task."""
  return jax.tree.map(
      lambda g: int((np.abs(np.asarray(g)).reshape(g.shape[0], -1).max(1)
                     > 0).sum()) > 1, jac)


@pytest.mark.parametrize('name', ARCHS)
def test_shared_mask_is_the_jacobians_support(name):
  fm, _, jac, _ = _jacobian(name, 'mlp')
  assert _paths(fm.shared_mask, bool) == _paths(_shared_by_jacobian(jac), bool)
  assert not any(jax.tree.leaves(fm.shared_mask['heads']))   # towers


def _encoder_paths(fm, shared):
  return _paths(fm.shared_mask['encoder'], lambda m: m == shared)


def test_shared_mask_as_documented():
  def fm(name, **kwargs):
    return models.functional(nnx.eval_shape(lambda: _small(name, **kwargs)))

  # Hard sharing, cross-stitch (columns and units), LTB (nodes and layer
  # branching): every encoder parameter, except LTB's per-task choices.
  assert not _encoder_paths(fm('hps'), False)
  assert not _encoder_paths(fm('cross_stitch'), False)
  ltb = fm('ltb')
  assert _encoder_paths(ltb, False) == {
      f"['task_branching']['{t}']['logits']" for t in TASKS}
  # MMoE and DSelect-k: experts shared, each task's gate its own.
  for name in ('mmoe', 'dselectk'):
    m = fm(name)
    assert all(jax.tree.leaves(m.shared_mask['encoder']['experts']))
    assert not any(jax.tree.leaves(m.shared_mask['encoder']['gates']))
  # CGC: the shared experts only.
  cgc = fm('cgc')
  assert _encoder_paths(cgc, True) == {
      "['levels'][0]['shared']" + p
      for p in _paths(cgc.params['encoder']['levels'][0]['shared'])}
  # PLE (3 levels): the last level as CGC; below, everything but a task's
  # gate at the second-to-last level.
  ple = fm('ple')
  levels = ple.shared_mask['encoder']['levels']
  assert all(jax.tree.leaves(levels[0]))
  assert all(jax.tree.leaves({k: v for k, v in levels[1].items()
                              if k != 'gates'}))
  assert not any(jax.tree.leaves(levels[1]['gates']))
  assert all(jax.tree.leaves(levels[2]['shared']))
  assert not any(jax.tree.leaves(levels[2]['specific']))
  assert not any(jax.tree.leaves(levels[2]['gates']))
  # Two-level PLE: the second-to-last level is the first.
  ple2 = fm('ple', num_levels=2)
  assert not any(jax.tree.leaves(
      ple2.shared_mask['encoder']['levels'][0]['gates']))
  assert all(jax.tree.leaves(
      ple2.shared_mask['encoder']['levels'][0]['specific']))


def test_representation_level_only_with_one_shared_representation():
  task_losses = _losses(TASKS)
  for name in PER_TASK:
    fm = models.functional(nnx.eval_shape(lambda: _small(name)))
    for call in (lambda: fm.representation_step(task_losses, mtl.mgda()),
                 lambda: fm.representation_fns(task_losses),
                 lambda: fm.representation_gramians(task_losses)):
      with pytest.raises(ValueError, match='no single representation') as e:
        call()
      assert "level='parameter'" in str(e.value)
      assert 'hard_parameter_sharing' in str(e.value)
  # Hard sharing: the "-UB" step runs.
  fm = models.functional(_small('hps'))
  agg = mtl.mgda()
  out = _jit(fm.representation_step(task_losses, agg))(
      fm.params, fm.batch_stats, agg.init(None), _batch((6, 6, 1)))
  assert out.losses.shape == (3,)
  assert jax.tree.structure(out.grads) == jax.tree.structure(fm.params)


# -- DSelect-k's gate ------------------------------------------------------------------


def test_smooth_step():
  gamma = 2.0
  t = jnp.linspace(-2, 2, 401)
  s = arch.smooth_step(t, gamma)
  assert float(s.min()) == 0.0 and float(s.max()) == 1.0
  assert (np.diff(np.asarray(s)) >= 0).all()
  np.testing.assert_allclose(arch.smooth_step(jnp.array([-1.0, 0.0, 1.0]),
                                              gamma), [0.0, 0.5, 1.0])
  # C¹: the cubic's slope vanishes at ±γ/2 and is 3/(2γ) at 0.
  slope = jax.vmap(jax.grad(lambda x: arch.smooth_step(x, gamma)))
  np.testing.assert_allclose(slope(jnp.array([-1.0, 0.0, 1.0])),
                             [0.0, 0.75, 0.0], atol=1e-6)


def test_binary_codes_and_selection():
  np.testing.assert_array_equal(arch.binary_codes(8).astype(int),
                                [[int(b) for b in f'{i:03b}'] for i in range(8)])
  gate = arch.DSelectKGate(3, 8, k=2, gating='static', rngs=nnx.Rngs(0))
  x = jnp.ones((4, 3))
  weights = gate(x)
  assert weights.shape == (4, 8)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  assert (weights >= 0).all()
  # Saturated z (|z| ≥ γ/2) makes each selector a one-hot on the expert its
  # signs spell in binary: selectors 5 (101) and 2 (010), weights softmax(w).
  gate.z_logits[...] = jnp.array([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
  gate.w_logits[...] = jnp.array([0.0, jnp.log(3.0)])
  np.testing.assert_allclose(gate(x)[0], [0, 0, 0.75, 0, 0, 0.25, 0, 0],
                             rtol=1e-6, atol=1e-7)
  # Per-example gating: the same, from dense layers of the input.
  gate = arch.DSelectKGate(3, 4, k=3, rngs=nnx.Rngs(0))
  r, w = gate.selector_outputs(x)
  assert r.shape == (4, 3, 4) and w.shape == (4, 3)
  np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-6)


# -- Learning to Branch: sampling, evaluation, state -------------------------------------


def test_ltb_train_samples_eval_is_the_argmax_tree():
  model = _small('ltb', temperature=0.5)
  fm = models.functional(model)
  x = _batch((6, 6, 1))['image']
  apply = _jit(fm.apply, static_argnames='train')
  # Eval: deterministic, statistics unchanged, and equal to the argmax tree
  # (at zero logits, every node's parent is node 0).
  out, stats = apply(fm.params, fm.batch_stats, x, train=False)
  again, _ = apply(fm.params, fm.batch_stats, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, out, again)
  jax.tree.map(np.testing.assert_array_equal, stats, fm.batch_stats)
  enc = model.encoder
  h = [n(x) for n in enc.layers[0]]
  for nodes in enc.layers[1:]:
    h = [node(h[0]) for node in nodes]
  model.eval()
  z = model.encode(x)
  for t in TASKS:
    np.testing.assert_allclose(z[t], h[0], rtol=1e-6)
  assert enc.tree() == {'parents': [[0, 0, 0], [0, 0, 0]],
                        'tasks': {t: 0 for t in TASKS}}
  # Train: a fresh Gumbel sample each call, the key and count carried in
  # the statistics; the same statistics give the same sample.
  out1, stats1 = apply(fm.params, fm.batch_stats, x, train=True)
  out2, stats2 = apply(fm.params, stats1, x, train=True)
  repeat, _ = apply(fm.params, fm.batch_stats, x, train=True)
  assert int(stats1['encoder']['count']) == 1
  assert int(stats2['encoder']['count']) == 2
  assert not np.allclose(out1['b'], out2['b'])
  jax.tree.map(np.testing.assert_array_equal, out1, repeat)


def test_ltb_temperature_schedule_and_hard_samples():
  seen = []

  def schedule(count):
    seen.append(count)
    return 10.0 / jnp.sqrt(count + 1.0)

  model = _small('ltb', temperature=schedule, hard=True)
  enc = model.encoder
  x = _batch((6, 6, 1))['image']
  model.train()
  enc(x)
  assert len(seen) == 1 and int(enc.count[...]) == 1
  # Hard samples are one-hot forward: every node reads exactly one parent.
  probe = arch.gumbel_softmax(jnp.zeros((4, 3)), jax.random.key(0), 1.0,
                              hard=True)
  np.testing.assert_allclose(np.asarray(probe).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.sort(np.asarray(probe), -1),
                             [[0, 0, 1]] * 4, atol=1e-6)
  soft = arch.gumbel_softmax(jnp.zeros((4, 3)), jax.random.key(0), 1.0)
  np.testing.assert_array_equal(np.argmax(probe, -1), np.argmax(soft, -1))
  # Its gradient is the soft sample's.
  grad = lambda hard: jax.grad(lambda l: arch.gumbel_softmax(
      l, jax.random.key(0), 1.0, hard=hard)[:, 0].sum())(jnp.zeros((4, 3)))
  np.testing.assert_allclose(grad(True), grad(False), rtol=1e-6)


# -- hyperparameters ------------------------------------------------------------------


MLP = arch.mlp_backbone((4,), hidden=(3, 3))


@pytest.mark.parametrize('factory,kwargs,match', [
    (arch.mmoe, {'num_experts': 0}, 'num_experts must be >= 1'),
    (arch.mmoe, {'num_experts': 2.0}, 'num_experts must be an int'),
    (arch.mmoe, {'gate_input': 'mean'}, 'gate_input must be one of'),
    (arch.dselect_k, {'num_experts': 6}, 'power of 2.*Use 4 or 8'),
    (arch.dselect_k, {'num_experts': 1}, 'num_experts must be >= 2'),
    (arch.dselect_k, {'k': 5}, 'k=5 exceeds num_experts=4'),
    (arch.dselect_k, {'k': 0}, 'k must be >= 1'),
    (arch.dselect_k, {'gamma': 0.0}, 'gamma must be > 0'),
    (arch.dselect_k, {'gating': 'dense'}, 'gating must be one of'),
    (arch.ple, {'num_levels': 3}, 'num_levels=3 exceeds .* 2 stages'),
    (arch.ple, {'num_levels': 0}, 'num_levels must be >= 1'),
    (arch.ple, {'shared_experts': 0}, 'shared_experts must be >= 1'),
    (arch.cgc, {'task_experts': -1}, r"task_experts\['a'\] must be >= 0"),
    (arch.cgc, {'task_experts': {'a': 1}}, 'task_experts has tasks'),
    (arch.cross_stitch, {'alpha_same': 1.5}, r'alpha_same must be in \[0, 1\]'),
    (arch.learning_to_branch, {'nodes': (2,)}, 'one node count per stage'),
    (arch.learning_to_branch, {'nodes': (2, 0)}, 'each node count must be'),
    (arch.learning_to_branch, {'temperature': 0.0}, 'temperature must be > 0'),
    (arch.hard_parameter_sharing, {'tower_hidden': (0,)},
     'each tower_hidden width must be >= 1'),
    (arch.hard_parameter_sharing, {'tasks': 'ab'}, r"write \('ab',\)"),
    (arch.hard_parameter_sharing, {'tasks': ['a', 'a']}, 'must be unique'),
    (arch.hard_parameter_sharing, {'tasks': []}, 'tasks is empty'),
    (arch.hard_parameter_sharing, {'tasks': {'a': 0}}, 'at least one output'),
    (arch.hard_parameter_sharing, {'backbone': nnx.Linear},
     'backbone must be an architectures.Backbone'),
])
def test_bad_hyperparameters_name_the_fix(factory, kwargs, match):
  kwargs = {'tasks': ('a', 'b'), 'backbone': MLP, **kwargs}
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


def test_bad_backbones():
  with pytest.raises(ValueError, match='at least one hidden width'):
    arch.mlp_backbone((4,), hidden=())
  with pytest.raises(ValueError, match='depth must be one of'):
    arch.resnet_backbone((8, 8, 3), depth=20)
  with pytest.raises(ValueError, match="stem must be 'imagenet' or 'cifar'"):
    arch.resnet_backbone((8, 8, 3), stem='tiny')


def test_task_outputs():
  assert arch.task_outputs(3, 2) == {'task_0': 2, 'task_1': 2, 'task_2': 2}
  assert arch.task_outputs(['x', 'y'], 4) == {'x': 4, 'y': 4}
  assert arch.task_outputs({'x': 1, 'y': 5}) == {'x': 1, 'y': 5}


def test_any_encoder_as_a_backbone():
  backbone = arch.encoder_backbone(
      lambda rngs: nnx.Sequential(nnx.Linear(4, 6, rngs=rngs), nnx.relu), (4,))
  model = arch.mmoe(tasks=('a', 'b'), num_outputs=2, backbone=backbone,
                    num_experts=2, rngs=0)
  out = model(jnp.ones((3, 4)))
  assert {t: y.shape for t, y in out.items()} == {'a': (3, 2), 'b': (3, 2)}
  assert models.num_params(model.encoder) == 2 * linear(4, 6) + 2 * 4 * 2


# -- training: 4 steps of every architecture, two methods ---------------------------

NUM_EXAMPLES = 64


def _arrays():
  rng = np.random.default_rng(0)
  left = rng.integers(0, 10, NUM_EXAMPLES).astype(np.int32)
  right = rng.integers(0, 10, NUM_EXAMPLES).astype(np.int32)
  image = rng.normal(size=(NUM_EXAMPLES, 28, 28, 1)).astype(np.float32) * 0.1
  image[:, 3, 3, 0] += left / 10                # a learnable signal
  image[:, 20, 20, 0] += right / 10
  return {'image': image, 'left': left, 'right': right}


def _data_fn(split, *, batch_size, seed, shuffle, num_epochs, drop_remainder,
             state=None):
  return loader_lib.Loader(
      loader_lib.ArraySource(_arrays()), batch_size=batch_size, seed=seed,
      shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
      prefetch=2, process_index=0, process_count=1, state=state)


TRAIN_KWARGS = {
    'hps': {}, 'cross_stitch': {}, 'mmoe': {'num_experts': 2}, 'cgc': {},
    'ple': {}, 'dselectk': {'num_experts': 2, 'k': 1}, 'ltb': {},
}


def _config(name, method, level='parameter'):
  return training.Config(
      model=f'{name}_mlp', dataset='multi_mnist', method=method, level=level,
      model_kwargs={'hidden': (16, 8), **TRAIN_KWARGS[name]},
      batch_size=NUM_EXAMPLES, learning_rate=1e-2, num_steps=4,
      eval_split=None, log_every_steps=4, checkpoint_every_steps=None,
      checkpoint_every_seconds=None)


def _mean_loss(fm, params, stats, arrays):
  losses = models.default_task_losses('hps_mlp')
  loss_fn = fm.loss_fn(losses, train=False)
  return float(jnp.sum(loss_fn(params, stats, arrays)[0]))


@pytest.mark.parametrize('method', ['aligned_mtl', 'mgda'])
@pytest.mark.parametrize('name', ARCHS)
def test_trains_four_steps(name, method):
  config = _config(name, method)
  result = training.train(config, progress=False, data_fn=_data_fn)
  history = result.history
  assert history['losses'].shape == (4, 2)
  assert np.isfinite(history['weights']).all()
  assert not history['skipped'].any()
  assert int(result.state.step) == 4
  assert history['losses'][-1].sum() < history['losses'][0].sum()
  fm = models.functional(training.create_model(config)[0])
  arrays = {k: jnp.asarray(v) for k, v in _arrays().items()}
  before = _mean_loss(fm, fm.params, fm.batch_stats, arrays)
  after = _mean_loss(fm, result.state.params, result.state.batch_stats, arrays)
  assert after < before
  if name == 'ltb':   # the Gumbel key moved once per step
    assert int(result.state.batch_stats['encoder']['count']) == 4


ERROR_NAMES = {'cross_stitch': 'cross_stitch', 'mmoe': 'mmoe', 'cgc': 'cgc',
               'ple': 'ple', 'dselectk': 'dselect_k',
               'ltb': 'learning_to_branch'}


def test_representation_level_trains_hps_and_refuses_the_others():
  result = training.train(_config('hps', 'mgda', 'representation'),
                          progress=False, data_fn=_data_fn)
  assert result.history['losses'].shape == (4, 2)
  assert np.isfinite(result.history['weights']).all()
  for name in PER_TASK:
    with pytest.raises(ValueError,
                       match=f'{ERROR_NAMES[name]} has no single representation'):
      training.build(_config(name, 'aligned_mtl', 'representation'),
                     num_train_examples=NUM_EXAMPLES)

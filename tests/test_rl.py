"""benchmarks/rl: MT10 multi-task SAC (the `rl` extra).

- the replay buffer: ring semantics, per-task sampling, shapes, save/load;
- the per-task losses (TD loss with the twin-min target and entropy term,
  actor loss, temperature loss) against a direct numpy computation on a
  small fixed batch, and the jitted update's losses against the same;
- the two ways to stack per-task gradients (value_and_jacobian, per-task
  vmap) agree;
- the whole loop (Meta-World MT10, a few hundred steps) with two methods
  ends with finite losses, and a run stopped abruptly and resumed gives the
  same log and the same final state, bit for bit, as an uninterrupted one;
- the results writer.

The tests that step MT10 need Meta-World (skipped without it); CI installs
the extra. Small networks and batches keep the whole file under a minute.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.rl import mtsac
from benchmarks.rl import replay as replay_lib

# -- replay buffer --------------------------------------------------------


def _transition(replay, t_value):
  T = replay.num_tasks
  obs = np.full((T, 3), t_value, np.float32) + np.arange(T)[:, None] * 100
  return (obs, np.full((T, 2), t_value, np.float32),
          np.full(T, t_value, np.float32), obs + 0.5,
          np.zeros(T, np.float32))


def test_replay_ring_semantics_and_per_task_sampling():
  replay = replay_lib.MultiTaskReplay(num_tasks=4, capacity=5, obs_dim=3,
                                      action_dim=2)
  with pytest.raises(ValueError, match='empty'):
    replay.sample(np.random.default_rng(0), 2)
  for t in range(7):                     # 7 > capacity: 0 and 1 overwritten
    replay.add(*_transition(replay, t))
  assert len(replay) == 5 and replay.ptr == 2
  # Slots 0, 1 hold steps 5, 6; slots 2..4 hold steps 2..4.
  np.testing.assert_array_equal(replay.arrays['reward'][0], [5, 6, 2, 3, 4])
  batch = replay.sample(np.random.default_rng(0), 64)
  assert batch.obs.shape == (4, 64, 3) and batch.next_obs.shape == (4, 64, 3)
  assert batch.action.shape == (4, 64, 2)
  assert batch.reward.shape == batch.done.shape == (4, 64)
  assert all(a.dtype == np.float32 for a in (batch.obs, batch.reward))
  # Each row comes from its own task's buffer (obs offset 100 * task), only
  # from the kept steps 2..6, and stays a consistent transition.
  task_of = np.floor(batch.obs[..., 0] / 100)
  np.testing.assert_array_equal(task_of, np.arange(4)[:, None] + 0 * task_of)
  steps = batch.obs[..., 0] - 100 * np.arange(4)[:, None]
  assert set(np.unique(steps)) == {2, 3, 4, 5, 6}
  np.testing.assert_array_equal(steps, batch.reward)
  np.testing.assert_array_equal(batch.next_obs, batch.obs + 0.5)
  with pytest.raises(ValueError, match='shape'):
    replay.add(np.zeros((3, 3)), *_transition(replay, 0)[1:])


def test_replay_state_dict_round_trip():
  replay = replay_lib.MultiTaskReplay(3, 4, 2, 1)
  for t in range(6):
    replay.add(np.full((3, 2), t), np.full((3, 1), t), np.full(3, t),
               np.full((3, 2), t + 1), np.zeros(3))
  other = replay_lib.MultiTaskReplay(3, 4, 2, 1)
  other.load_state_dict(replay.state_dict())
  assert (other.ptr, other.size) == (replay.ptr, replay.size)
  for k in replay_lib.FIELDS:
    np.testing.assert_array_equal(other.arrays[k], replay.arrays[k])
  a = replay.sample(np.random.default_rng(3), 5)
  b = other.sample(np.random.default_rng(3), 5)
  np.testing.assert_array_equal(a.obs, b.obs)


# -- losses ---------------------------------------------------------------

CFG = mtsac.SACConfig(num_tasks=3, obs_dim=4, action_dim=2, hidden_dim=8,
                      num_layers=2, jacobian='per_task')


def _np_mlp(layers, x):
  x = np.asarray(x, np.float64)
  for layer in layers[:-1]:
    x = np.maximum(x @ np.asarray(layer['w'], np.float64)
                   + np.asarray(layer['b'], np.float64), 0.0)
  return x @ np.asarray(layers[-1]['w'], np.float64) + np.asarray(
      layers[-1]['b'], np.float64)


def _np_inputs(obs):
  T, B = obs.shape[:2]
  onehot = np.broadcast_to(np.eye(T)[:, None, :], (T, B, T))
  return np.concatenate([obs, onehot], -1)


def _np_sample(actor, x, noise):
  out = _np_mlp(actor, x)
  a = CFG.action_dim
  mean, log_std = out[..., :a], out[..., a:]
  log_std = -20.0 + 0.5 * 22.0 * (np.tanh(log_std) + 1.0)
  u = mean + noise * np.exp(log_std)
  log_prob = (np.sum(-0.5 * noise ** 2 - log_std, -1)
              - 0.5 * np.log(2 * np.pi) * a)
  action = np.tanh(u)
  log_prob -= np.sum(np.log(np.maximum(1 - action ** 2, 0) + 1e-6), -1)
  return action, log_prob


def _np_q(critic, x, action):
  xa = np.concatenate([x, action], -1)
  return _np_mlp(critic['q1'], xa)[..., 0], _np_mlp(critic['q2'], xa)[..., 0]


def _np_losses(actor, critic, target_critic, new_critic, log_alpha, batch,
               noise_next, noise_pi):
  """The three per-task losses of one update, written out in numpy."""
  alpha = np.exp(np.asarray(log_alpha, np.float64))
  x, next_x = _np_inputs(batch['obs']), _np_inputs(batch['next_obs'])
  a_next, logp_next = _np_sample(actor, next_x, noise_next)
  tq1, tq2 = _np_q(target_critic, next_x, a_next)
  y = batch['reward'] + 0.99 * (1 - batch['done']) * (
      np.minimum(tq1, tq2) - alpha[:, None] * logp_next)
  q1, q2 = _np_q(critic, x, batch['action'])
  critic_l = ((q1 - y) ** 2).mean(1) + ((q2 - y) ** 2).mean(1)
  a_pi, logp = _np_sample(actor, x, noise_pi)
  p1, p2 = _np_q(new_critic, x, a_pi)
  actor_l = (alpha[:, None] * logp - np.minimum(p1, p2)).mean(1)
  alpha_l = alpha * (-logp - (-CFG.action_dim)).mean(1)
  return critic_l, actor_l, alpha_l


def _batch(seed=0, T=3, B=5):
  rng = np.random.default_rng(seed)
  return {'obs': rng.normal(size=(T, B, 4)).astype(np.float32),
          'action': rng.uniform(-1, 1, (T, B, 2)).astype(np.float32),
          'reward': rng.normal(size=(T, B)).astype(np.float32),
          'next_obs': rng.normal(size=(T, B, 4)).astype(np.float32),
          'done': (rng.uniform(size=(T, B)) < 0.3).astype(np.float32)}


def _state(agent):
  state = agent.init(jax.random.key(1))
  # Distinct temperatures, critic and target critic, so that each term shows.
  return state._replace(
      log_alpha=jnp.array([-1.0, 0.0, 0.5]),
      target_critic=jax.tree.map(lambda p: p * 0.9 + 0.01,
                                 state.target_critic))


def test_loss_functions_match_numpy():
  agent = mtsac.Agent(CFG, 'linear_scalarization')
  state = _state(agent)
  batch = _batch()
  rng = np.random.default_rng(1)
  noise_next = rng.normal(size=(3, 5, 2)).astype(np.float32)
  noise_pi = rng.normal(size=(3, 5, 2)).astype(np.float32)

  @jax.jit
  def losses(state, batch, noise_next, noise_pi):
    alpha = jnp.exp(state.log_alpha)
    x = mtsac.with_task_id(CFG, batch['obs'])
    target = mtsac.critic_target(
        CFG, state.actor, state.target_critic,
        mtsac.with_task_id(CFG, batch['next_obs']),
        batch['reward'], batch['done'], alpha, noise_next)
    critic_l, _ = mtsac.critic_loss(state.critic, x, batch['action'], target)
    actor_l, log_pi = mtsac.actor_loss(state.actor, state.critic, x,
                                       noise_pi, alpha, cfg=CFG)
    alpha_l = mtsac.alpha_losses(state.log_alpha, log_pi, CFG.entropy_target)
    return (critic_l, actor_l, alpha_l), mtsac.deterministic_action(
        CFG, state.actor, x)

  (critic_l, actor_l, alpha_l), action = losses(state, batch, noise_next,
                                                noise_pi)
  want = _np_losses(state.actor, state.critic, state.target_critic,
                    state.critic, state.log_alpha, batch, noise_next,
                    noise_pi)
  for got, expected in zip((critic_l, actor_l, alpha_l), want):
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-5)
  # Deterministic action: tanh of the mean.
  np.testing.assert_allclose(
      action, np.tanh(_np_mlp(state.actor, _np_inputs(batch['obs']))[..., :2]),
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('method,per_task_alpha', [
    ('linear_scalarization', True), ('aligned_mtl', True),
    ('linear_scalarization', False)])
def test_update_losses_match_numpy(method, per_task_alpha):
  """The jitted update reports the three losses of the direct computation
  (the actor's through the freshly updated critic), and every part moves."""
  cfg = dataclasses.replace(CFG, per_task_alpha=per_task_alpha)
  agent = mtsac.build_agent(cfg, method)
  state = _state(agent)
  if not per_task_alpha:                 # one α for every task
    state = state._replace(log_alpha=jnp.array([-0.5]))
  before = jax.tree.map(lambda x: x if mtsac._is_key(x) else np.asarray(x),
                        state)
  batch = _batch(seed=2)
  noise_next, noise_pi = agent.noise(state, (3, 5))
  new, metrics = agent.update(state, batch)
  want = _np_losses(before.actor, before.critic, before.target_critic,
                    new.critic, np.broadcast_to(before.log_alpha, (3,)), batch,
                    np.asarray(noise_next), np.asarray(noise_pi))
  for name, expected in zip(('critic_loss', 'actor_loss', 'alpha_loss'),
                            want):
    np.testing.assert_allclose(metrics[name], expected, rtol=2e-5, atol=1e-5,
                               err_msg=name)
  assert int(new.updates) == 1
  assert new.log_alpha.shape == ((3,) if per_task_alpha else (1,))
  # Adam's first step moves each log α by -lr·sign(its gradient): per task,
  # the sign of α_t·mean(-log π - H̄) = task t's loss; shared, of their mean.
  grad = want[2] if per_task_alpha else want[2].mean(keepdims=True)
  np.testing.assert_allclose(new.log_alpha - before.log_alpha,
                             -3e-4 * np.sign(grad), rtol=1e-3)
  for part in ('actor', 'critic', 'log_alpha'):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                           getattr(before, part), getattr(new, part))
    assert any(jax.tree.leaves(changed)), part
  # Target critics: θ' ← 0.995 θ' + 0.005 θ (θ the updated critic).
  jax.tree.map(lambda t, t0, c: np.testing.assert_allclose(
      t, 0.995 * t0 + 0.005 * np.asarray(c), rtol=1e-5, atol=1e-7),
               new.target_critic, before.target_critic, new.critic)


def test_value_and_jacobian_and_per_task_vmap_agree():
  state = _state(mtsac.Agent(CFG, 'linear_scalarization'))
  batch = _batch(seed=3)
  x = mtsac.with_task_id(CFG, jnp.asarray(batch['obs']))
  target = jnp.asarray(batch['reward'])
  noise = jnp.asarray(np.random.default_rng(4).normal(size=(3, 5, 2)),
                      jnp.float32)
  alpha = jnp.exp(state.log_alpha)
  actor_loss = functools.partial(mtsac.actor_loss, cfg=CFG)
  for fn, args, shared in (
      (mtsac.critic_loss, (state.critic, x, batch['action'], target), 0),
      (actor_loss, (state.actor, state.critic, x, noise, alpha), 1)):
    (l1, _), g1 = jax.jit(mtsac.stacked_grads(fn, 'vjp', shared))(*args)
    (l2, _), g2 = jax.jit(mtsac.stacked_grads(fn, 'per_task', shared))(*args)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-6), g1, g2)
    assert jax.tree.leaves(g1)[0].shape[0] == 3
    # Each task's gradient is that of its own loss alone.
    one = jax.jit(jax.grad(lambda p: fn(p, *args[1:])[0][1]))(args[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a[1], b, rtol=1e-4, atol=1e-6), g1, one)


def test_state_arrays_round_trip_with_prng_keys():
  agent = mtsac.Agent(CFG, 'pcgrad', (('seed', 3),))
  state = agent.init(jax.random.key(0))
  arrays = mtsac.state_arrays(state)
  back = mtsac.state_from_arrays(agent.init(jax.random.key(5)), arrays)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
    if mtsac._is_key(a):
      np.testing.assert_array_equal(jax.random.key_data(a),
                                    jax.random.key_data(b))
    else:
      np.testing.assert_array_equal(a, b)


# -- the loop on MT10 -----------------------------------------------------


def _run_config(method):
  from benchmarks.rl import mt10
  return mt10.make_config(
      method, seed=0, steps=300, sac={'hidden_dim': 32, 'num_layers': 2},
      batch_per_task=16, capacity_per_task=250, warmup=60,
      episode_length=50, eval_every=100)


def _records(path):
  out = []
  for line in path.read_text().splitlines():
    record = json.loads(line)
    for k in ('seconds', 'steps_per_s'):
      record.pop(k, None)
    out.append(record)
  return out


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  pytest.importorskip('metaworld')
  from benchmarks.rl import mt10
  workdir = tmp_path_factory.mktemp('rl') / 'linear_scalarization' / 'seed0'
  result = mt10.train(_run_config('linear_scalarization'), workdir,
                      verbose=False)
  return workdir, result


def _check_finished(workdir, result):
  assert result['status'] == 'done' and result['step'] == 300
  records = _records(workdir / 'log.jsonl')
  assert records[0]['tasks'][0] == 'reach-v3' and len(records[0]['tasks']) == 10
  train = [r for r in records if 'train' in r]
  evals = [r['step'] for r in records if 'eval' in r]
  assert [r['step'] for r in train] == list(range(50, 301, 50))
  assert evals == [0, 100, 200, 300]
  # Updates from step 60 (a burst of 60 there), then one per step.
  assert [r['updates'] for r in train] == [0, 60 + 39, 50, 50, 50, 50]
  for r in train[1:]:
    for name in ('critic_loss', 'actor_loss', 'alpha_loss', 'alpha',
                 'entropy'):
      values = r['train'][name]
      assert len(values) == 10 and all(math.isfinite(v) for v in values), (
          name, values)
  assert (workdir / 'checkpoint.npz').exists()
  assert (workdir / 'result.json').exists()


def test_loop_linear_scalarization(uninterrupted):
  _check_finished(*uninterrupted)


def test_loop_aligned_mtl(tmp_path, uninterrupted):
  from benchmarks.rl import mt10
  workdir = tmp_path / 'aligned_mtl' / 'seed0'
  result = mt10.train(_run_config('aligned_mtl'), workdir, verbose=False)
  _check_finished(workdir, result)
  # Another method, same seed: same tasks and warm-up data, other updates.
  a = _records(workdir / 'log.jsonl')
  b = _records(uninterrupted[0] / 'log.jsonl')
  assert a[0]['task_indices'] == b[0]['task_indices']
  assert a[2]['train'] == b[2]['train']            # step 50: random actions
  assert a[-1] != b[-1]


def test_killed_run_resumes_identically(tmp_path, uninterrupted):
  """Stopped abruptly at step 260 (last checkpoint: the evaluation at 200;
  the log already has step 250), then the same command: the log and the
  final checkpoint equal the uninterrupted run's, bit for bit."""
  from benchmarks.rl import mt10
  full_dir, _ = uninterrupted
  workdir = tmp_path / 'resumed'
  cfg = _run_config('linear_scalarization')
  halted = mt10.train(cfg, workdir, halt_at=260, verbose=False)
  assert halted == {'status': 'halted', 'step': 260}
  assert _records(workdir / 'log.jsonl')[-1]['step'] == 250
  assert not (workdir / 'result.json').exists()
  meta, _ = mt10.load_checkpoint(workdir / 'checkpoint.npz')
  assert meta['step'] == 200
  result = mt10.train(cfg, workdir, verbose=False)
  assert result['status'] == 'done'
  assert _records(workdir / 'log.jsonl') == _records(full_dir / 'log.jsonl')
  a = np.load(full_dir / 'checkpoint.npz')
  b = np.load(workdir / 'checkpoint.npz')
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # A finished run is not run again; more steps would extend it.
  assert mt10.train(cfg, workdir, verbose=False) == result


def test_truncate_log_drops_later_and_cut_lines(tmp_path):
  pytest.importorskip('metaworld')
  from benchmarks.rl import mt10
  path = tmp_path / 'log.jsonl'
  path.write_text('{"config": 1}\n{"step": 50}\n{"step": 100}\n{"step": 1')
  mt10.truncate_log(path, 50)
  assert path.read_text() == '{"config": 1}\n{"step": 50}\n'


def test_render(tmp_path, uninterrupted):
  pytest.importorskip('matplotlib')
  from benchmarks.rl import results
  summary = results.render(uninterrupted[0].parents[1], tmp_path / 'rl_mt10')
  assert summary['linear_scalarization']['steps'] == [0, 100, 200, 300]
  text = (tmp_path / 'rl_mt10.md').read_text()
  assert '| linear_scalarization | 1 | 300 of 300 |' in text
  assert '0.49 ± 0.073 (Multi-task SAC)' in text
  payload = json.loads((tmp_path / 'rl_mt10.json').read_text())
  assert payload['papers']['aligned_mtl']['rows']['Aligned-MTL'] == [0.97,
                                                                     0.045]
  assert (tmp_path / 'rl_mt10.png').stat().st_size > 10_000

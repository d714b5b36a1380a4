"""Meta-World MT10 with multi-task SAC, any mtl_optax method: train, render.

The protocol of Liu et al. (2021, CAGrad, App. B.3: "the exact setup from
CARE", on the mtrl code base), which Senushkin et al. (2023, Aligned-MTL,
App. D) follow: MT10, SAC with one actor and twin critics shared by the ten
tasks, 2 million steps, batch 1280 (128 per task), one evaluation every
10 000 steps, the reported number being the highest success rate of the
10-seed mean curve over the whole run. A *step* is one step of all ten
environments (ten transitions) and one update, as in mtrl.

One run (``train``):

- steps ``0 .. warmup-1`` act uniformly at random (mtrl's ``init_steps``,
  1500); at step ``warmup`` the agent makes ``warmup`` updates at once, then
  one per step, before the environments step (mtrl's order);
- episodes are 150 steps, all environments reset together at each boundary;
- evaluation at step 0 and at the first episode boundary in each
  ``eval_every`` window (and at the end): one deterministic episode per task
  (``tanh(mean)``; with a task's goal fixed, more episodes would repeat
  it), success = ``info['success']`` at any step of the episode;
- ``WORKDIR/log.jsonl``: a config line, one line per episode (training
  success and raw return per task, the mean per-task losses, α, entropy,
  steps/s) and one per evaluation (success and return per task, mean);
- ``WORKDIR/checkpoint.npz`` at evaluation boundaries and every
  ``checkpoint_seconds`` (at an episode boundary): the networks, the
  optimizer and method states, the replay buffers, the numpy RNG, the
  reward-normalisation statistics. A run killed any way resumes from it
  with the same command, truncating the log to the checkpoint's step, and
  continues exactly as if uninterrupted (MuJoCo with a fixed task is
  deterministic; ``tests/test_rl.py`` compares). A finished run writes
  ``result.json``; running it again with more ``--steps`` extends it.

Examples::

    # one run (about 5.5 steps/s on a loaded 2-core CPU: docs/rl.md)
    python -m benchmarks.rl.mt10 --method aligned_mtl --steps 300000 \\
        --seed 0 --workdir runs/rl/mt10/aligned_mtl/seed0
    # several methods and seeds, one after another, each resumable
    python -m benchmarks.rl.mt10 \\
        --method linear_scalarization,pcgrad,cagrad,aligned_mtl \\
        --seed 0 --steps 300000 --runs runs/rl/mt10
    # table and figure from the logs
    python -m benchmarks.rl.mt10 --render --runs runs/rl/mt10
    # throughput of the whole loop on this machine
    python -m benchmarks.rl.mt10 --measure 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

from benchmarks.rl import envs as envs_lib
from benchmarks.rl import mtsac
from benchmarks.rl import replay as replay_lib

# CAGrad App. B.3: c = 0.9 for MT10 (chosen from {0.1, 0.5, 0.9}).
METHOD_DEFAULTS = {'cagrad': {'c': 0.9}}
DEFAULT_METHODS = ('linear_scalarization', 'pcgrad', 'cagrad', 'aligned_mtl',
                   'nash_mtl')
TIMING_KEYS = ('steps_per_s', 'seconds')


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One MT10 run; the defaults are CAGrad's (see ``mtsac.SACConfig``).

  Sources: CAGrad's ``mtrl_files/metaworld.yaml`` (``init_steps: 1500``,
  ``eval_freq: 10000``) and ``run.sh`` (``num_train_steps=2000000``,
  ``batch_size=1280``, ``num_eval_episodes=1``); mtrl's
  ``replay_buffer/mtrl.yaml`` (capacity 1 000 000: 100 000 per task here)
  and its Meta-World experiment (150-step episodes, rewards normalised).
  """
  method: str = 'linear_scalarization'
  method_kwargs: tuple[tuple[str, Any], ...] = ()
  seed: int = 0
  steps: int = 2_000_000
  batch_per_task: int = 128
  capacity_per_task: int = 100_000
  warmup: int = 1500
  episode_length: int = envs_lib.EPISODE_LENGTH
  eval_every: int = 10_000
  normalize_reward: bool = True
  sac: mtsac.SACConfig = mtsac.SACConfig()

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out['method_kwargs'] = dict(self.method_kwargs)
    return out


def make_config(method: str, seed: int = 0, steps: int = 2_000_000,
                method_kwargs: dict | None = None, sac: dict | None = None,
                **kwargs) -> RunConfig:
  """A ``RunConfig`` with ``METHOD_DEFAULTS`` and the method's seed applied."""
  merged = dict(METHOD_DEFAULTS.get(method, {}))
  merged.update(method_kwargs or {})
  if mtsac.takes_seed(method):
    merged.setdefault('seed', seed)
  return RunConfig(method=method, method_kwargs=tuple(sorted(merged.items())),
                   seed=seed, steps=steps,
                   sac=mtsac.SACConfig(**{'jacobian': 'per_task',
                                          **(sac or {})}),
                   **kwargs)


# -- log and checkpoint files ---------------------------------------------


def _write_json_line(f, record: dict) -> None:
  f.write(json.dumps(record, sort_keys=True) + '\n')


def truncate_log(path: pathlib.Path, step: int | None) -> None:
  """Keeps the config line and the records with ``step <= step`` (None:
  only the config line); drops a line cut short by a kill."""
  kept = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue
      at = record.get('step')
      if at is None or (step is not None and at <= step):
        kept.append(line + '\n')
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w') as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_log(path: pathlib.Path) -> list[dict]:
  records = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def save_checkpoint(path: pathlib.Path, meta: dict, arrays: dict) -> None:
  """``np.savez`` to a temporary file, then an atomic rename."""
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:
    np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load_checkpoint(path: pathlib.Path):
  """``(meta, arrays)`` or None when there is no checkpoint."""
  if not path.exists():
    return None
  data = np.load(path, allow_pickle=False)
  return json.loads(str(data['meta'])), data


# -- the run --------------------------------------------------------------


def _eval_due(step: int, cfg: RunConfig) -> bool:
  if step == 0 or step >= cfg.steps:
    return True
  return step // cfg.eval_every > (step - cfg.episode_length) // cfg.eval_every


def evaluate(agent: mtsac.Agent, state: mtsac.TrainState,
             envs: envs_lib.MT10Envs) -> dict:
  """One deterministic episode per task: success (any step) and raw return."""
  obs = envs.reset()
  success = np.zeros(envs.num_tasks)
  returns = np.zeros(envs.num_tasks)
  for _ in range(envs.episode_length):
    action = np.asarray(agent.act_deterministic(state.actor, obs))
    obs, _, raw, succ = envs.step(action, train=False)
    success = np.maximum(success, succ)
    returns += raw
  return {'success': success.tolist(), 'mean': float(success.mean()),
          'return': returns.tolist()}


def train(cfg: RunConfig, workdir: str | os.PathLike, *,
          checkpoint_seconds: float = 600.0, halt_at: int | None = None,
          verbose: bool = True) -> dict:
  """Trains (or resumes, or extends) one run in ``workdir``.

  Args:
    cfg: the run.
    workdir: its directory (log.jsonl, checkpoint.npz, result.json).
    checkpoint_seconds: also checkpoint at the first episode boundary after
      this much wall time since the last checkpoint.
    halt_at: testing hook: stop abruptly when this step is reached, without
      checkpointing, as a kill would.
    verbose: print a line per evaluation.

  Returns:
    ``{'status': 'done' | 'halted', 'step': ..., 'final_eval': ...}``.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / 'log.jsonl'
  ckpt_path = workdir / 'checkpoint.npz'
  result_path = workdir / 'result.json'
  if cfg.eval_every < 1:
    raise ValueError(f'eval_every must be >= 1, got {cfg.eval_every}')
  steps = -(-cfg.steps // cfg.episode_length) * cfg.episode_length
  if steps != cfg.steps:
    cfg = dataclasses.replace(cfg, steps=steps)   # whole episodes
  config_json = json.loads(json.dumps(cfg.to_json()))

  if result_path.exists():
    result = json.loads(result_path.read_text())
    if result.get('config') == config_json:
      return result

  envs = envs_lib.MT10Envs(cfg.seed, cfg.episode_length, cfg.normalize_reward)
  sac = cfg.sac
  if (envs.num_tasks, envs.obs_dim, envs.action_dim) != (
      sac.num_tasks, sac.obs_dim, sac.action_dim):
    raise ValueError('SACConfig does not match MT10: '
                     f'{(envs.num_tasks, envs.obs_dim, envs.action_dim)}')
  agent = mtsac.build_agent(sac, cfg.method, cfg.method_kwargs)
  replay = replay_lib.MultiTaskReplay(envs.num_tasks, cfg.capacity_per_task,
                                      envs.obs_dim, envs.action_dim)
  root_key = jax.random.key(cfg.seed)
  init_key, act_key = jax.random.split(root_key)
  state = agent.init(init_key)
  rng = np.random.default_rng([cfg.seed, 1])

  start = 0
  restored = load_checkpoint(ckpt_path)
  if restored is not None:
    meta, arrays = restored
    saved = dict(meta['config'], steps=None)
    if saved != dict(config_json, steps=None):
      raise ValueError(f'{ckpt_path} belongs to another run configuration: '
                       f'{meta["config"]} (this one: {config_json})')
    start = int(meta['step'])
    state = mtsac.state_from_arrays(state, arrays)
    replay.load_state_dict(arrays)
    envs.load_state_dict(arrays)
    rng.bit_generator.state = meta['rng']
    truncate_log(log_path, start)
    result_path.unlink(missing_ok=True)
  else:
    log_path.unlink(missing_ok=True)     # a start killed before step 0's save
  log = open(log_path, 'a')
  if restored is None:
    _write_json_line(log, {'config': config_json, 'tasks': envs.names,
                           'task_indices': envs.task_indices,
                           'devices': str(jax.devices())})
    log.flush()

  def checkpoint(step: int) -> None:
    meta = {'step': step, 'config': config_json,
            'rng': rng.bit_generator.state}
    arrays = {**mtsac.state_arrays(state), **replay.state_dict(),
              **envs.state_dict()}
    save_checkpoint(ckpt_path, meta, arrays)

  def log_eval(step: int) -> dict:
    result = evaluate(agent, state, envs)
    _write_json_line(log, {'step': step, 'eval': result})
    log.flush()
    if verbose:
      print(f'[{cfg.method} seed {cfg.seed}] step {step}: success '
            f'{result["mean"]:.2f} '
            f'({" ".join(str(int(s)) for s in result["success"])})',
            flush=True)
    return result

  last_eval = None
  if start == 0:
    last_eval = log_eval(0)
    checkpoint(0)
  last_save = time.monotonic()
  T = envs.num_tasks
  step = start
  while step < cfg.steps:
    t0 = time.monotonic()
    obs = envs.reset()
    success = np.zeros(T)
    returns = np.zeros(T)
    sums, n_updates = None, 0
    for _ in range(cfg.episode_length):
      if halt_at is not None and step >= halt_at:
        log.close()
        envs.close()
        return {'status': 'halted', 'step': step}
      if step < cfg.warmup:
        action = rng.uniform(-1.0, 1.0, (T, envs.action_dim)).astype(
            np.float32)
      else:
        action = np.asarray(agent.act(state.actor, obs,
                                      jax.random.fold_in(act_key, step)))
      if step >= cfg.warmup and len(replay):
        for _ in range(max(cfg.warmup, 1) if step == cfg.warmup else 1):
          batch = replay.sample(rng, cfg.batch_per_task)
          state, metrics = agent.update(state, dataclasses.asdict(batch))
          sums = metrics if sums is None else jax.tree.map(
              lambda a, b: a + b, sums, metrics)
          n_updates += 1
      next_obs, reward, raw, succ = envs.step(action)
      replay.add(obs, action, reward, next_obs, np.zeros(T, np.float32))
      obs = next_obs
      success = np.maximum(success, succ)
      returns += raw
      step += 1
    seconds = time.monotonic() - t0
    record = {'step': step,
              'train': {'success': success.tolist(),
                        'return': returns.tolist()},
              'updates': n_updates, 'seconds': seconds,
              'steps_per_s': cfg.episode_length / seconds}
    if sums is not None:
      record['train'].update({k: (np.asarray(v) / n_updates).tolist()
                              for k, v in sums.items()})
    _write_json_line(log, record)
    log.flush()
    due = _eval_due(step, cfg)
    if due:
      last_eval = log_eval(step)
    if due or time.monotonic() - last_save > checkpoint_seconds:
      checkpoint(step)
      last_save = time.monotonic()
  log.close()
  envs.close()
  if last_eval is None:
    last_eval = [r['eval'] for r in read_log(log_path) if 'eval' in r][-1]
  result = {'status': 'done', 'step': step, 'config': config_json,
            'final_eval': last_eval}
  result_path.write_text(json.dumps(result, indent=1, sort_keys=True) + '\n')
  return result


# -- throughput -----------------------------------------------------------


def measure(cfg: RunConfig, steps: int = 200) -> dict:
  """Steps/s of the environments alone, of one update, and of the whole loop
  (act + update + environment step + buffer), after a random warm-up."""
  envs = envs_lib.MT10Envs(cfg.seed, cfg.episode_length)
  agent = mtsac.build_agent(cfg.sac, cfg.method, cfg.method_kwargs)
  replay = replay_lib.MultiTaskReplay(envs.num_tasks, cfg.capacity_per_task,
                                      envs.obs_dim, envs.action_dim)
  state = agent.init(jax.random.key(cfg.seed))
  rng = np.random.default_rng(cfg.seed)
  T = envs.num_tasks
  obs = envs.reset()
  t0 = time.perf_counter()
  n_env = max(cfg.episode_length, cfg.batch_per_task)
  for i in range(n_env):
    if i and i % cfg.episode_length == 0:
      obs = envs.reset()
    action = rng.uniform(-1, 1, (T, envs.action_dim)).astype(np.float32)
    next_obs, reward, _, _ = envs.step(action)
    replay.add(obs, action, reward, next_obs, np.zeros(T, np.float32))
    obs = next_obs
  env_rate = n_env / (time.perf_counter() - t0)
  # Compile.
  t0 = time.perf_counter()
  state, m = agent.update(state, dataclasses.asdict(replay.sample(rng, cfg.batch_per_task)))
  jax.block_until_ready(m)
  np.asarray(agent.act(state.actor, obs, jax.random.key(0)))
  compile_s = time.perf_counter() - t0
  n = 10
  batches = [dataclasses.asdict(replay.sample(rng, cfg.batch_per_task))
             for _ in range(n)]
  t0 = time.perf_counter()
  for b in batches:
    state, m = agent.update(state, b)
  jax.block_until_ready(m)
  update_s = (time.perf_counter() - t0) / n
  obs = envs.reset()
  t0 = time.perf_counter()
  for i in range(steps):
    if i and i % cfg.episode_length == 0:
      obs = envs.reset()
    action = np.asarray(agent.act(state.actor, obs, jax.random.key(i)))
    state, m = agent.update(
        state, dataclasses.asdict(replay.sample(rng, cfg.batch_per_task)))
    next_obs, reward, _, _ = envs.step(action)
    replay.add(obs, action, reward, next_obs, np.zeros(T, np.float32))
    obs = next_obs
  jax.block_until_ready(m)
  loop_rate = steps / (time.perf_counter() - t0)
  envs.close()
  load = os.getloadavg()
  return {'method': cfg.method, 'jacobian': cfg.sac.jacobian,
          'env_steps_per_s': env_rate,
          'env_transitions_per_s': env_rate * T,
          'update_ms': 1000 * update_s, 'compile_s': compile_s,
          'loop_steps_per_s': loop_rate, 'loop_steps': steps,
          'loadavg': load, 'cpus': os.cpu_count(),
          'hours_per_2M_step_run': 2_000_000 / loop_rate / 3600}


# -- command line ---------------------------------------------------------


def _csv(text: str) -> list[str]:
  return [t for t in text.split(',') if t]


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(
      prog='python -m benchmarks.rl.mt10',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--method', default='aligned_mtl',
                 help='method name(s) from mtl_optax.available(), '
                      'comma-separated (default aligned_mtl)')
  p.add_argument('--method-kwargs', default='{}',
                 help="JSON dict of factory keywords, e.g. '{\"c\": 0.5}' "
                      f'(defaults: {METHOD_DEFAULTS})')
  p.add_argument('--seed', default='0', help='seed(s), comma-separated')
  p.add_argument('--steps', type=int, default=2_000_000)
  p.add_argument('--workdir', help='one run\'s directory (one method, seed)')
  p.add_argument('--runs', default='runs/rl/mt10',
                 help='root of the runs: RUNS/METHOD/seedS (default %(default)s)')
  p.add_argument('--batch-per-task', type=int, default=128)
  p.add_argument('--capacity-per-task', type=int, default=100_000)
  p.add_argument('--warmup', type=int, default=1500)
  p.add_argument('--eval-every', type=int, default=10_000)
  p.add_argument('--hidden', type=int, default=400)
  p.add_argument('--layers', type=int, default=3)
  p.add_argument('--jacobian', choices=mtsac.JACOBIANS, default='per_task',
                 help='per_task: vmap of per-task gradients (default); vjp: '
                      'mtl_optax.value_and_jacobian (same numbers, ~7x the '
                      'update cost)')
  p.add_argument('--no-one-hot', action='store_true',
                 help='networks see the observation alone (CAGrad\'s flags)')
  p.add_argument('--shared-alpha', action='store_true',
                 help='one temperature for all tasks (CAGrad\'s flags)')
  p.add_argument('--checkpoint-seconds', type=float, default=600.0)
  p.add_argument('--render', action='store_true',
                 help='write the table, JSON and figure from RUNS\' logs')
  p.add_argument('--out', default='benchmarks/results/rl_mt10',
                 help='--render output prefix (default %(default)s)')
  p.add_argument('--measure', type=int, metavar='STEPS',
                 help='measure the loop\'s throughput over STEPS steps')
  args = p.parse_args(argv)

  if args.render:
    from benchmarks.rl import results
    results.render(args.runs, args.out)
    return 0
  methods = _csv(args.method)
  seeds = [int(s) for s in _csv(args.seed)]
  sac = {'hidden_dim': args.hidden, 'num_layers': args.layers,
         'jacobian': args.jacobian, 'one_hot': not args.no_one_hot,
         'per_task_alpha': not args.shared_alpha}
  common = dict(batch_per_task=args.batch_per_task,
                capacity_per_task=args.capacity_per_task,
                warmup=args.warmup, eval_every=args.eval_every)
  kwargs = json.loads(args.method_kwargs)
  if args.measure:
    for method in methods:
      cfg = make_config(method, seeds[0], args.steps, kwargs, sac, **common)
      print(json.dumps(measure(cfg, args.measure)), flush=True)
    return 0
  if args.workdir and len(methods) * len(seeds) > 1:
    p.error('--workdir is for one run; use --runs for several')
  for method in methods:
    for seed in seeds:
      cfg = make_config(method, seed, args.steps, kwargs, sac, **common)
      workdir = args.workdir or os.path.join(args.runs, method, f'seed{seed}')
      result = train(cfg, workdir, checkpoint_seconds=args.checkpoint_seconds)
      print(f'{method} seed {seed}: {result["status"]} at step '
            f'{result["step"]}, final success '
            f'{result["final_eval"]["mean"]:.2f}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""The ten MT10 environments, one per task, stepped together on the host.

As in mtrl/mtenv (the CARE code base that CAGrad's and Aligned-MTL's MT10
runs use): each of MT10's ten environments is fixed to one of its 50 tasks
(goal and object positions) for the whole run, chosen at random once (here
by the run's seed); training and evaluation use the same tasks. An episode
is 150 steps (mtrl hard-codes ``max_episode_steps = 150``; Meta-World's own
horizon, ``max_path_length``, is 500); the environments are reset together
at every episode boundary. Rewards are normalised per environment as mtenv's
``NormalizedEnvWrapper(normalize_reward=True)`` does: divided by the square
root of an exponential moving variance (rate 0.001, initial mean 0 and
variance 1), updated on every training step; evaluation returns are raw.

With a task set, a Meta-World reset is deterministic (the random vector is
frozen, and MuJoCo's data is reset), so an episode depends only on the task
and the actions: a run checkpointed at an episode boundary and resumed
replays exactly. Observations are Meta-World v3's 39 numbers (hand, gripper,
two objects, the previous frame's 18, and the goal, which MT benchmarks
include); success is ``info['success']``.
"""

from __future__ import annotations

import functools

import numpy as np

try:
  import metaworld
except ModuleNotFoundError as e:   # the `rl` extra is not installed
  raise ModuleNotFoundError(
      "benchmarks.rl needs Meta-World and MuJoCo: pip install -e '.[rl]' "
      f'({e})', name=e.name) from e

EPISODE_LENGTH = 150     # mtrl's max_episode_steps for Meta-World
REWARD_ALPHA = 0.001     # mtenv NormalizedEnvWrapper's reward_alpha


@functools.lru_cache(maxsize=4)
def mt10_benchmark(seed: int):
  """``metaworld.MT10(seed=seed)`` (its 500 tasks; ~7 s to build), cached."""
  return metaworld.MT10(seed=seed)


class MT10Envs:
  """One environment per MT10 task, each fixed to one goal.

  Args:
    seed: chooses each environment's task among its 50 (and seeds
      Meta-World's task generation).
    episode_length: steps per episode (150 as in mtrl).
    normalize_reward: divide training rewards by their running std.
  """

  def __init__(self, seed: int, episode_length: int = EPISODE_LENGTH,
               normalize_reward: bool = True):
    benchmark = mt10_benchmark(seed)
    rng = np.random.default_rng([seed, 10])
    self.names = list(benchmark.train_classes)
    self.envs = []
    self.task_indices = []
    for name, cls in benchmark.train_classes.items():
      tasks = [t for t in benchmark.train_tasks if t.env_name == name]
      index = int(rng.integers(len(tasks)))
      env = cls()
      env.set_task(tasks[index])
      self.envs.append(env)
      self.task_indices.append(index)
    self.num_tasks = len(self.envs)
    self.obs_dim = int(self.envs[0].observation_space.shape[0])
    self.action_dim = int(self.envs[0].action_space.shape[0])
    if episode_length > self.envs[0].max_path_length:
      raise ValueError(f'episode_length {episode_length} exceeds Meta-World\'s '
                       f'max_path_length {self.envs[0].max_path_length}')
    self.episode_length = episode_length
    self.normalize_reward = normalize_reward
    self.reward_mean = np.zeros(self.num_tasks)
    self.reward_var = np.ones(self.num_tasks)

  def reset(self) -> np.ndarray:
    """Resets every environment; ``[T, obs_dim]`` float32 observations."""
    return np.stack([env.reset()[0] for env in self.envs]).astype(np.float32)

  def step(self, actions: np.ndarray, train: bool = True):
    """Steps every environment with its row of ``actions`` (``[T, A]``).

    Returns:
      ``(obs [T, obs_dim], reward [T], raw_reward [T], success [T])``;
      ``reward`` is normalised when training with ``normalize_reward``
      (and updates the running statistics), raw otherwise.
    """
    actions = np.clip(np.asarray(actions, np.float32), -1.0, 1.0)
    obs, raw, success = [], [], []
    for env, action in zip(self.envs, actions):
      o, r, _, _, info = env.step(action)
      obs.append(o)
      raw.append(r)
      success.append(float(info['success']))
    raw = np.asarray(raw, np.float64)
    reward = raw
    if train and self.normalize_reward:
      a = REWARD_ALPHA
      self.reward_mean = (1 - a) * self.reward_mean + a * raw
      self.reward_var = ((1 - a) * self.reward_var
                         + a * np.square(raw - self.reward_mean))
      reward = raw / (np.sqrt(self.reward_var) + 1e-8)
    return (np.stack(obs).astype(np.float32), reward.astype(np.float32),
            raw, np.asarray(success))

  def state_dict(self) -> dict[str, np.ndarray]:
    return {'envs/reward_mean': self.reward_mean.copy(),
            'envs/reward_var': self.reward_var.copy(),
            'envs/task_indices': np.asarray(self.task_indices)}

  def load_state_dict(self, state) -> None:
    if list(state['envs/task_indices']) != self.task_indices:
      raise ValueError('the checkpoint was made with other MT10 tasks '
                       f'({list(state["envs/task_indices"])} vs '
                       f'{self.task_indices})')
    self.reward_mean = np.array(state['envs/reward_mean'], np.float64)
    self.reward_var = np.array(state['envs/reward_var'], np.float64)

  def close(self) -> None:
    for env in self.envs:
      env.close()

"""Per-task replay buffers: one numpy ring buffer per task, filled in step.

The ten MT10 environments step together, so every task gets one transition
per environment step: the buffers share one write position and one size.
Arrays are ``[T, capacity, ...]`` float32. Once full, a buffer overwrites its
oldest transitions (ring semantics). ``sample`` draws ``per_task`` indices
uniformly (with replacement) from each task's filled part, so a batch is
``[T, per_task, ...]``: every task contributes the same number of
transitions to every update, and each task's loss is a mean over its own.

mtrl (the CARE code base) keeps one buffer of capacity 1 000 000 for all
tasks and samples 1280 transitions uniformly from it, about 128 per task;
here the capacity is split evenly (100 000 per task) and the sampling is
stratified (exactly 128 per task), which is what per-task losses need.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FIELDS = ('obs', 'action', 'reward', 'next_obs', 'done')


@dataclasses.dataclass
class Batch:
  """A sample: every field ``[T, B, ...]`` (``reward``, ``done`` ``[T, B]``)."""
  obs: np.ndarray
  action: np.ndarray
  reward: np.ndarray
  next_obs: np.ndarray
  done: np.ndarray


class MultiTaskReplay:
  """``num_tasks`` ring buffers of ``capacity`` transitions each.

  Args:
    num_tasks: T.
    capacity: transitions kept per task.
    obs_dim: observation size.
    action_dim: action size.
  """

  def __init__(self, num_tasks: int, capacity: int, obs_dim: int,
               action_dim: int):
    if capacity < 1:
      raise ValueError(f'capacity must be >= 1, got {capacity}')
    self.num_tasks = num_tasks
    self.capacity = capacity
    shapes = {'obs': (obs_dim,), 'action': (action_dim,), 'reward': (),
              'next_obs': (obs_dim,), 'done': ()}
    self.arrays = {k: np.zeros((num_tasks, capacity) + s, np.float32)
                   for k, s in shapes.items()}
    self.ptr = 0          # next write position (all tasks)
    self.size = 0         # filled transitions per task

  def __len__(self) -> int:
    return self.size

  def add(self, obs, action, reward, next_obs, done) -> None:
    """Adds one transition per task (each argument ``[T, ...]``)."""
    values = {'obs': obs, 'action': action, 'reward': reward,
              'next_obs': next_obs, 'done': done}
    for k, v in values.items():
      v = np.asarray(v, np.float32)
      if v.shape != self.arrays[k].shape[:1] + self.arrays[k].shape[2:]:
        raise ValueError(f'{k}: expected shape '
                         f'{self.arrays[k].shape[:1] + self.arrays[k].shape[2:]}'
                         f', got {v.shape}')
      self.arrays[k][:, self.ptr] = v
    self.ptr = (self.ptr + 1) % self.capacity
    self.size = min(self.size + 1, self.capacity)

  def sample_indices(self, rng: np.random.Generator,
                     per_task: int) -> np.ndarray:
    """``[T, per_task]`` indices, uniform over each task's filled part."""
    if self.size == 0:
      raise ValueError('sampling from an empty replay buffer')
    return rng.integers(0, self.size, size=(self.num_tasks, per_task))

  def gather(self, indices: np.ndarray) -> Batch:
    """The transitions at ``indices`` (``[T, B]``, one row per task)."""
    rows = np.arange(self.num_tasks)[:, None]
    return Batch(**{k: a[rows, indices] for k, a in self.arrays.items()})

  def sample(self, rng: np.random.Generator, per_task: int) -> Batch:
    """``per_task`` transitions of every task, ``[T, per_task, ...]``."""
    return self.gather(self.sample_indices(rng, per_task))

  # -- checkpoints --------------------------------------------------------

  def state_dict(self) -> dict[str, np.ndarray]:
    """The filled part of the buffers and the write position, for np.savez."""
    out = {f'replay/{k}': a[:, :self.size] for k, a in self.arrays.items()}
    out['replay/ptr'] = np.asarray(self.ptr, np.int64)
    out['replay/size'] = np.asarray(self.size, np.int64)
    return out

  def load_state_dict(self, state) -> None:
    """Restores what ``state_dict`` returned (a dict or an NpzFile)."""
    size = int(state['replay/size'])
    if size > self.capacity:
      raise ValueError(f'checkpoint holds {size} transitions per task, more '
                       f'than the capacity {self.capacity}')
    for k, a in self.arrays.items():
      a[:, :size] = state[f'replay/{k}']
      a[:, size:] = 0
    self.size = size
    self.ptr = int(state['replay/ptr'])

"""Multi-task SAC with every update going through an mtl_optax method.

One actor and twin critics (with target critics) are shared by the T tasks;
each network sees the observation with the task's one-hot id appended
(``one_hot=False``: the observation alone, as in CAGrad's runs). Each task
has its own temperature α_t = exp(log α_t) (``per_task_alpha=False``: one
shared α, as in CAGrad's runs). An update (one jitted
function) takes a batch of ``B`` transitions of every task (``[T, B, ...]``)
and, as mtrl's SAC agent does, in this order:

1. critic: the per-task TD losses
   ``L_t = mean_b (Q1 - y)² + mean_b (Q2 - y)²`` with
   ``y = r + γ (1 - d) (min(Q1', Q2')(s', a') - α_t log π(a'|s'))``,
   ``a' ~ π(·|s')`` and Q' the target critics; the ``[T]`` losses' stacked
   gradients (``mtl_optax.value_and_jacobian``) go through the method and
   Adam;
2. actor: ``L_t = mean_b (α_t log π(a|s) - min(Q1, Q2)(s, a))``, ``a ~ π(·|s)``
   reparameterised, through the freshly updated critics (held fixed); again
   the stacked gradients through the method (its own instance and state) and
   Adam;
3. temperatures: ``L_t = α_t mean_b(-log π(a|s) - H̄)`` (log π from step 2,
   held fixed; H̄ = -|A|), differentiated with respect to log α_t with
   Adam. Each log α_t only receives its own task's gradient, so no method
   is needed (nor meaningful) here; a shared α takes the tasks' mean;
4. target critics: ``θ' ← (1 - τ) θ' + τ θ``.

The policy is a tanh-squashed Gaussian: the actor outputs the mean and a
log-std squashed by tanh into [-20, 2]; log-probabilities get the tanh
correction ``- Σ log(relu(1 - a²) + 1e-6)`` (mtrl's). The deterministic
action (evaluation) is ``tanh(mean)``.

Networks are plain pytrees (lists of ``{'w', 'b'}`` layers): MLPs with
``num_layers`` hidden ReLU layers of ``hidden_dim`` units (mtrl's
``build_mlp``: 3 hidden layers of 400 for MT10), Xavier-uniform weights and
zero biases (mtrl's ``weight_init``).

Two ways to get the stacked per-task gradients, equal up to float rounding
(``tests/test_rl.py`` checks it): ``jacobian='vjp'`` is
``mtl_optax.value_and_jacobian`` (one forward pass, T VJPs through the whole
batch, each with a one-hot cotangent); ``jacobian='per_task'`` maps
``jax.value_and_grad`` of one task's loss over the task axis, which is the
Jacobian here because task t's loss reads only task t's transitions, and
costs one backward pass instead of T.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_optax as mtl

PyTree = Any

JACOBIANS = ('vjp', 'per_task')


@dataclasses.dataclass(frozen=True)
class SACConfig:
  """MTSAC hyperparameters; the defaults are CAGrad's MT10 run of mtrl.

  Sources: mtrl's ``config/agent/components/metaworld_{actor,critic}.yaml``
  (``num_layers: 3``, ``hidden_dim: 400``, ``log_std_bounds: [-20, 2]``),
  ``config/agent/optimizers/metaworld_*.yaml`` (Adam, lr 3e-4, betas 0.9,
  0.999, for actor, critic and α), CAGrad's ``cagrad_state_sac.yaml``
  (discount 0.99, init_temperature 1.0, critic_tau 0.005, actor and target
  updates every step) and ``run.sh`` (``replay_buffer.batch_size=1280``:
  128 per task here). ``target_entropy`` None is mtrl's ``-|A|``.
  ``jacobian``: how the stacked per-task gradients are computed (module
  docstring); ``one_hot``, ``per_task_alpha``: the task id in the input and
  one temperature per task (False, False: CAGrad's runs).
  """
  num_tasks: int = 10
  obs_dim: int = 39
  action_dim: int = 4
  hidden_dim: int = 400
  num_layers: int = 3
  one_hot: bool = True
  discount: float = 0.99
  tau: float = 0.005
  actor_lr: float = 3e-4
  critic_lr: float = 3e-4
  alpha_lr: float = 3e-4
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  init_temperature: float = 1.0
  log_std_min: float = -20.0
  log_std_max: float = 2.0
  target_entropy: float | None = None
  per_task_alpha: bool = True
  jacobian: str = 'per_task'

  def __post_init__(self):
    if self.jacobian not in JACOBIANS:
      raise ValueError(f'jacobian must be one of {JACOBIANS}, got '
                       f'{self.jacobian!r}')

  @property
  def input_dim(self) -> int:
    return self.obs_dim + (self.num_tasks if self.one_hot else 0)

  @property
  def entropy_target(self) -> float:
    if self.target_entropy is not None:
      return float(self.target_entropy)
    return -float(self.action_dim)


class TrainState(NamedTuple):
  actor: PyTree
  critic: PyTree
  target_critic: PyTree
  log_alpha: jax.Array          # [T] (per-task α) or [1] (one shared α)
  actor_opt: PyTree
  critic_opt: PyTree
  alpha_opt: PyTree
  key: jax.Array                # the updates' base key (folded with `updates`)
  updates: jax.Array            # updates done so far (int32)


# -- networks -------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: list[int]) -> list[dict[str, jax.Array]]:
  """Xavier-uniform weights, zero biases; ``sizes`` = [in, hidden..., out]."""
  layers = []
  for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1),
                              zip(sizes[:-1], sizes[1:])):
    limit = math.sqrt(6.0 / (n_in + n_out))
    layers.append({'w': jax.random.uniform(k, (n_in, n_out), jnp.float32,
                                           -limit, limit),
                   'b': jnp.zeros((n_out,), jnp.float32)})
  return layers


def mlp(layers, x: jax.Array) -> jax.Array:
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer['w'] + layer['b'])
  return x @ layers[-1]['w'] + layers[-1]['b']


def init_networks(cfg: SACConfig, key: jax.Array):
  """``(actor, critic)``; the critic is ``{'q1': mlp, 'q2': mlp}``."""
  hidden = [cfg.hidden_dim] * cfg.num_layers
  k_actor, k_q1, k_q2 = jax.random.split(key, 3)
  actor = init_mlp(k_actor, [cfg.input_dim, *hidden, 2 * cfg.action_dim])
  q_sizes = [cfg.input_dim + cfg.action_dim, *hidden, 1]
  critic = {'q1': init_mlp(k_q1, q_sizes), 'q2': init_mlp(k_q2, q_sizes)}
  return actor, critic


def with_task_id(cfg: SACConfig, obs: jax.Array) -> jax.Array:
  """``obs`` (``[T, ..., obs_dim]``, task axis first) with the one-hot id."""
  if not cfg.one_hot:
    return obs
  t = obs.shape[0]
  eye = jnp.eye(cfg.num_tasks, dtype=obs.dtype)[:t]
  eye = eye.reshape((t,) + (1,) * (obs.ndim - 2) + (cfg.num_tasks,))
  return jnp.concatenate(
      [obs, jnp.broadcast_to(eye, obs.shape[:-1] + (cfg.num_tasks,))], -1)


def policy(cfg: SACConfig, actor, x: jax.Array):
  """The Gaussian's mean and log-std (squashed into the bounds)."""
  out = mlp(actor, x)
  mean, log_std = out[..., :cfg.action_dim], out[..., cfg.action_dim:]
  lo, hi = cfg.log_std_min, cfg.log_std_max
  log_std = lo + 0.5 * (hi - lo) * (jnp.tanh(log_std) + 1.0)
  return mean, log_std


def sample_action(cfg: SACConfig, actor, x: jax.Array, noise: jax.Array):
  """A reparameterised squashed sample and its log-probability."""
  mean, log_std = policy(cfg, actor, x)
  u = mean + noise * jnp.exp(log_std)
  log_prob = (jnp.sum(-0.5 * jnp.square(noise) - log_std, -1)
              - 0.5 * math.log(2 * math.pi) * cfg.action_dim)
  action = jnp.tanh(u)
  log_prob = log_prob - jnp.sum(
      jnp.log(jax.nn.relu(1.0 - jnp.square(action)) + 1e-6), -1)
  return action, log_prob


def deterministic_action(cfg: SACConfig, actor, x: jax.Array) -> jax.Array:
  return jnp.tanh(policy(cfg, actor, x)[0])


def q_values(critic, x: jax.Array, action: jax.Array):
  xa = jnp.concatenate([x, action], -1)
  return mlp(critic['q1'], xa)[..., 0], mlp(critic['q2'], xa)[..., 0]


# -- per-task losses ------------------------------------------------------
# Written for a task axis or none: means run over the last (batch) axis, so
# the same function gives [T] losses on [T, B, ...] arrays and a scalar on
# one task's [B, ...].


def critic_target(cfg: SACConfig, actor, target_critic, next_x, reward,
                  done, alpha, noise):
  """The TD target ``y`` ([T, B]); alpha is [T]."""
  next_action, next_log_pi = sample_action(cfg, actor, next_x, noise)
  tq1, tq2 = q_values(target_critic, next_x, next_action)
  value = jnp.minimum(tq1, tq2) - alpha[..., None] * next_log_pi
  return reward + cfg.discount * (1.0 - done) * value


def critic_loss(critic, x, action, target):
  """Per task: ``mean (Q1 - y)² + mean (Q2 - y)²``; aux: mean Q1, Q2."""
  q1, q2 = q_values(critic, x, action)
  loss = (jnp.mean(jnp.square(q1 - target), -1)
          + jnp.mean(jnp.square(q2 - target), -1))
  return loss, jnp.stack([jnp.mean(q1, -1), jnp.mean(q2, -1)], -1)


def actor_loss(actor, critic, x, noise, alpha, *, cfg: SACConfig):
  """Per task: ``mean (α log π - min Q)``; aux: log π ([..., B])."""
  action, log_pi = sample_action(cfg, actor, x, noise)
  q1, q2 = q_values(critic, x, action)
  loss = jnp.mean(alpha[..., None] * log_pi - jnp.minimum(q1, q2), -1)
  return loss, log_pi


def alpha_losses(log_alpha, log_pi, target_entropy: float):
  """``[T]``: ``α_t mean_b(-log π - H̄)``, log π held fixed (mtrl's form)."""
  return jnp.exp(log_alpha) * jnp.mean(
      jax.lax.stop_gradient(-log_pi - target_entropy), -1)


def stacked_grads(loss_fn, jacobian: str, num_shared: int):
  """``f(params, *args) -> ((losses [T], aux), grads with a task axis)``.

  ``args``: ``num_shared`` arguments shared by the tasks (e.g. the critic
  in the actor's loss), then per-task arrays with the task axis first.
  """
  if jacobian == 'vjp':
    return mtl.value_and_jacobian(loss_fn, has_aux=True)

  def per_task(params, *args):
    in_axes = (None,) * (1 + num_shared) + (0,) * (len(args) - num_shared)
    return jax.vmap(jax.value_and_grad(loss_fn, has_aux=True),
                    in_axes=in_axes)(params, *args)
  return per_task


# -- the agent ------------------------------------------------------------


def aggregator(method: str, num_tasks: int, **kwargs):
  """``method`` for ``num_tasks`` tasks (``mtl_optax.registry.for_tasks``
  where it exists: it sets each method's multi-task defaults)."""
  registry = getattr(mtl, 'registry', None)
  if registry is not None and hasattr(registry, 'for_tasks'):
    return registry.for_tasks(method, num_tasks=num_tasks, **kwargs)
  return mtl.get_aggregator(method, num_tasks=num_tasks, **kwargs)


def takes_seed(method: str) -> bool:
  factory = getattr(mtl, method, None)
  if factory is None:
    return False
  try:
    return 'seed' in inspect.signature(factory).parameters
  except (TypeError, ValueError):
    return False


class Agent:
  """The jitted parts of MTSAC for one method and configuration.

  Built once per ``(cfg, method, method_kwargs)`` by ``build_agent`` (cached,
  so that runs in one process share compilations).

  Attributes:
    init: ``key -> TrainState``.
    update: jitted ``(state, batch) -> (state, metrics)``; ``batch`` a dict
      of ``[T, B, ...]`` arrays (obs, action, reward, next_obs, done);
      ``metrics``: per-task ``critic_loss``, ``actor_loss``, ``alpha_loss``,
      ``alpha``, ``entropy`` (-mean log π), ``q`` (mean Q1).
    act: jitted ``(actor, obs [T, obs_dim], key) -> actions [T, A]``
      sampled from the policy.
    act_deterministic: jitted ``(actor, obs) -> tanh(mean)``.
  """

  def __init__(self, cfg: SACConfig, method: str,
               method_kwargs: tuple[tuple[str, Any], ...] = ()):
    self.cfg = cfg
    self.method = method
    self.method_kwargs = dict(method_kwargs)
    adam = functools.partial(optax.adam, b1=cfg.adam_b1, b2=cfg.adam_b2)
    self.critic_tx = optax.chain(
        aggregator(method, cfg.num_tasks, **self.method_kwargs),
        adam(cfg.critic_lr))
    self.actor_tx = optax.chain(
        aggregator(method, cfg.num_tasks, **self.method_kwargs),
        adam(cfg.actor_lr))
    self.alpha_tx = adam(cfg.alpha_lr)
    self._critic_grads = stacked_grads(critic_loss, cfg.jacobian, 0)
    self._actor_grads = stacked_grads(
        functools.partial(actor_loss, cfg=cfg), cfg.jacobian, 1)
    self.update = jax.jit(self._update, donate_argnums=0)
    self.act = jax.jit(self._act)
    self.act_deterministic = jax.jit(
        lambda actor, obs: deterministic_action(cfg, actor,
                                                with_task_id(cfg, obs)))

  def init(self, key: jax.Array) -> TrainState:
    cfg = self.cfg
    k_net, k_updates = jax.random.split(key)
    actor, critic = init_networks(cfg, k_net)
    log_alpha = jnp.full((cfg.num_tasks if cfg.per_task_alpha else 1,),
                         math.log(cfg.init_temperature), jnp.float32)
    state = TrainState(
        actor=actor, critic=critic,
        target_critic=jax.tree.map(jnp.copy, critic),
        log_alpha=log_alpha,
        actor_opt=self.actor_tx.init(actor),
        critic_opt=self.critic_tx.init(critic),
        alpha_opt=self.alpha_tx.init(log_alpha),
        key=k_updates, updates=jnp.zeros((), jnp.int32))
    # Distinct buffers: optimizer states may share arrays (zeros), which a
    # donating update would be handed twice.
    return jax.tree.map(
        lambda x: x.copy() if isinstance(x, jax.Array) else x, state)

  def _act(self, actor, obs, key):
    cfg = self.cfg
    noise = jax.random.normal(key, (obs.shape[0], cfg.action_dim))
    return sample_action(cfg, actor, with_task_id(cfg, obs), noise)[0]

  def log_alphas(self, log_alpha: jax.Array) -> jax.Array:
    """``[T]`` log-temperatures (the shared one repeated if not per task)."""
    return jnp.broadcast_to(log_alpha, (self.cfg.num_tasks,))

  def alphas(self, log_alpha: jax.Array) -> jax.Array:
    return jnp.exp(self.log_alphas(log_alpha))

  def noise(self, state: TrainState, batch_shape: tuple[int, int]):
    """The update's Gaussian noise: for a' ~ π(s') and for a ~ π(s)."""
    key = jax.random.fold_in(state.key, state.updates)
    k_next, k_pi = jax.random.split(key)
    shape = tuple(batch_shape) + (self.cfg.action_dim,)
    return jax.random.normal(k_next, shape), jax.random.normal(k_pi, shape)

  def _update(self, state: TrainState, batch):
    cfg = self.cfg
    reward = batch['reward']
    noise_next, noise_pi = self.noise(state, reward.shape)
    x = with_task_id(cfg, batch['obs'])
    next_x = with_task_id(cfg, batch['next_obs'])
    alpha = self.alphas(state.log_alpha)

    target = jax.lax.stop_gradient(critic_target(
        cfg, state.actor, state.target_critic, next_x, reward, batch['done'],
        alpha, noise_next))
    (c_loss, q), c_grads = self._critic_grads(
        state.critic, x, batch['action'], target)
    c_updates, critic_opt = self.critic_tx.update(
        c_grads, state.critic_opt, state.critic)
    critic = optax.apply_updates(state.critic, c_updates)

    (a_loss, log_pi), a_grads = self._actor_grads(
        state.actor, critic, x, noise_pi, alpha)
    a_updates, actor_opt = self.actor_tx.update(
        a_grads, state.actor_opt, state.actor)
    actor = optax.apply_updates(state.actor, a_updates)

    def alpha_loss(log_alpha):
      losses = alpha_losses(self.log_alphas(log_alpha), log_pi,
                            cfg.entropy_target)
      # Per-task α: each log α_t gets its task's gradient; one shared α:
      # the mean over the tasks (mtrl's loss, a mean over the batch).
      return (jnp.sum(losses) if cfg.per_task_alpha else jnp.mean(losses),
              losses)
    al_grad, al_task = jax.grad(alpha_loss, has_aux=True)(state.log_alpha)
    al_updates, alpha_opt = self.alpha_tx.update(
        al_grad, state.alpha_opt, state.log_alpha)
    log_alpha = optax.apply_updates(state.log_alpha, al_updates)

    target_critic = jax.tree.map(
        lambda t, c: (1.0 - cfg.tau) * t + cfg.tau * c,
        state.target_critic, critic)
    new_state = TrainState(
        actor=actor, critic=critic, target_critic=target_critic,
        log_alpha=log_alpha, actor_opt=actor_opt, critic_opt=critic_opt,
        alpha_opt=alpha_opt, key=state.key, updates=state.updates + 1)
    metrics = {'critic_loss': c_loss, 'actor_loss': a_loss,
               'alpha_loss': al_task, 'alpha': self.alphas(log_alpha),
               'entropy': -jnp.mean(log_pi, -1), 'q': q[..., 0]}
    return new_state, metrics


@functools.lru_cache(maxsize=8)
def build_agent(cfg: SACConfig, method: str,
                method_kwargs: tuple[tuple[str, Any], ...] = ()) -> Agent:
  """The ``Agent`` for ``(cfg, method, method_kwargs)``, cached."""
  return Agent(cfg, method, method_kwargs)


# -- checkpoints ----------------------------------------------------------


def _is_key(x) -> bool:
  return (isinstance(x, jax.Array)
          and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def state_arrays(state: TrainState) -> dict[str, np.ndarray]:
  """The state's leaves as numpy arrays (typed PRNG keys as their data)."""
  out = {}
  for i, leaf in enumerate(jax.tree.leaves(state)):
    out[f'state/{i}'] = np.asarray(
        jax.random.key_data(leaf) if _is_key(leaf) else leaf)
  out['state/count'] = np.asarray(len(jax.tree.leaves(state)))
  return out


def state_from_arrays(like: TrainState, arrays) -> TrainState:
  """``like`` with the leaves ``state_arrays`` saved (shapes checked)."""
  leaves, treedef = jax.tree.flatten(like)
  if int(arrays['state/count']) != len(leaves):
    raise ValueError(f'checkpoint has {int(arrays["state/count"])} state '
                     f'arrays, this run {len(leaves)}: another method or '
                     'configuration')
  restored = []
  for i, leaf in enumerate(leaves):
    data = np.asarray(arrays[f'state/{i}'])
    if _is_key(leaf):
      restored.append(jax.random.wrap_key_data(
          data, impl=jax.random.key_impl(leaf)))
      continue
    like_leaf = np.asarray(leaf)
    if data.shape != like_leaf.shape:
      raise ValueError(f'checkpoint state array {i}: shape {data.shape}, '
                       f'expected {like_leaf.shape}')
    restored.append(jnp.asarray(data, like_leaf.dtype))
  return treedef.unflatten(restored)

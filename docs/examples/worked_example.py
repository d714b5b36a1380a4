# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Worked example: three methods on your own Flax NNX model
#
# A small two-task network written with Flax NNX (a shared trunk, one head
# per task), trained with three ways of combining the task gradients:
#
# - `linear_scalarization`: the plain sum of the task gradients;
# - `mgda`: the min-norm point of their convex hull (Sener & Koltun, 2018);
# - `aligned_mtl`: the gradients aligned to an orthogonal system of equal
#   magnitudes (Senushkin et al., 2023).
#
# The second task's loss is scaled ×20, so its gradient dominates the sum.
# We record, at every step, the two task losses, the coefficients `c_t` the
# method gave the task gradients (the shared parameters move along
# `Σ_t c_t g_t`) and the dominance rate `σ_max/σ_min` of the task gradients
# (1 when they are orthogonal and of equal norm), and plot them.
#
# Run it as a script (`python docs/examples/worked_example.py`; the figures
# go to a temporary directory, or to `$WORKED_EXAMPLE_OUT`), or open it as a
# notebook with jupytext. It takes about half a minute on two CPU cores.

# %%
import json
import os
import pathlib
import tempfile

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import mtl_optax as mtl  # noqa: E402

OUT = pathlib.Path(os.environ.get('WORKED_EXAMPLE_OUT')
                   or tempfile.mkdtemp(prefix='worked_example_'))
OUT.mkdir(parents=True, exist_ok=True)
STEPS = int(os.environ.get('WORKED_EXAMPLE_STEPS', '300'))
METHODS = ('linear_scalarization', 'mgda', 'aligned_mtl')

# %% [markdown]
# ## The data: two regression tasks of different scales
#
# Both targets depend on the same 8 inputs; the second is 20 times larger.

# %%
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8)).astype(np.float32)
u, v = rng.normal(size=8), rng.normal(size=8)
y = np.stack([np.sin(x @ u), 20.0 * np.tanh(x @ v)], axis=1).astype(np.float32)
x, y = jnp.asarray(x), jnp.asarray(y)

# %% [markdown]
# ## The model: a shared trunk and two heads, in Flax NNX
#
# `nnx.split` gives the functional view the per-task gradients need: a
# graph definition and the parameters as an `nnx.State` pytree. The loss
# function merges them back and returns the vector of the `T = 2` losses.


# %%
class TwoTaskNet(nnx.Module):
  """A shared MLP trunk and one linear head per task."""

  def __init__(self, din: int, hidden: int, *, rngs: nnx.Rngs):
    self.trunk = nnx.Sequential(
        nnx.Linear(din, hidden, rngs=rngs), nnx.gelu,
        nnx.Linear(hidden, hidden, rngs=rngs), nnx.gelu)
    self.head_a = nnx.Linear(hidden, 1, rngs=rngs)
    self.head_b = nnx.Linear(hidden, 1, rngs=rngs)

  def __call__(self, x):
    z = self.trunk(x)
    return jnp.concatenate([self.head_a(z), self.head_b(z)], axis=1)


def losses_fn(params, graphdef, x, y):
  """The two task losses (mean squared errors), a ``[2]`` vector."""
  model = nnx.merge(graphdef, params)
  return jnp.mean((model(x) - y) ** 2, axis=0)


def is_shared(path, leaf):
  """The ``shared=`` predicate: the trunk's parameters are shared."""
  del leaf
  return path[0].key == 'trunk'


# %% [markdown]
# ## Training: one jitted step per method
#
# `mtl.value_and_jacobian` returns the losses and the per-task gradients
# (every leaf with a leading task axis); the aggregator, chained in front of
# Adam, turns them into one update. `num_tasks=2` makes its state record
# the coefficients, which `mtl.aggregator_state` reads back with the
# diagnostics of the step.


# %%
def train(method: str, steps: int = STEPS) -> dict[str, np.ndarray]:
  model = TwoTaskNet(8, 32, rngs=nnx.Rngs(0))     # same initialisation for all
  graphdef, params = nnx.split(model, nnx.Param)
  aggregator = mtl.get_aggregator(method, shared=is_shared, num_tasks=2)
  tx = optax.chain(aggregator, optax.adam(3e-3))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    losses, grads = mtl.value_and_jacobian(losses_fn)(params, graphdef, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
    state = mtl.aggregator_state(opt_state)
    return (optax.apply_updates(params, updates), opt_state, losses,
            state.weights, state.diagnostics.dominance_rate)

  history = {'losses': [], 'weights': [], 'dominance_rate': []}
  for _ in range(steps):
    params, opt_state, losses, weights, dominance = step(params, opt_state)
    history['losses'].append(losses)
    history['weights'].append(weights)
    history['dominance_rate'].append(dominance)
  nnx.update(model, params)                       # the trained NNX model
  return {k: np.asarray(jnp.stack(v)) for k, v in history.items()}


histories = {method: train(method) for method in METHODS}

# %% [markdown]
# ## Plots: losses, coefficients and dominance rate over training

# %%
colors = dict(zip(METHODS, ('tab:gray', 'tab:blue', 'tab:red')))
figures = {}

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
for method, h in histories.items():
  for t, ax in enumerate(axes):
    ax.plot(h['losses'][:, t], color=colors[method], label=method)
for t, ax in enumerate(axes):
  ax.set(title=f'task {t + 1} loss', xlabel='step', yscale='log')
axes[0].legend()
fig.tight_layout()
figures['losses'] = fig

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
for method, h in histories.items():
  for t, ax in enumerate(axes):
    ax.plot(h['weights'][:, t], color=colors[method], label=method)
axes[0].set(title='coefficient c_1 of task 1', xlabel='step')
axes[1].set(title='coefficient c_2 of task 2 (the large one)', xlabel='step',
            yscale='log')
axes[0].legend()
fig.tight_layout()
figures['weights'] = fig

fig, ax = plt.subplots(figsize=(5, 3.5))
for method, h in histories.items():
  ax.plot(h['dominance_rate'], color=colors[method], label=method)
ax.set(title='dominance rate σ_max/σ_min of the task gradients',
       xlabel='step', yscale='log')
ax.legend()
fig.tight_layout()
figures['dominance_rate'] = fig

for name, fig in figures.items():
  fig.savefig(OUT / f'{name}.png', dpi=100)
  plt.close(fig)

# %% [markdown]
# ## Summary
#
# - **Linear scalarization** keeps `c = (1, 1)`: the update is dominated by
#   the large task's gradient and the first task's loss stalls.
# - **MGDA** returns the min-norm point of the two gradients, which here is
#   (almost) the small gradient itself: `c_2` is nearly 0, the first task is
#   solved and the second barely moves.
# - **Aligned-MTL** rescales the two gradients to the same magnitude (its
#   `c_2` is much smaller than `c_1` because the second gradient is much
#   larger); both losses go down.

# %%
summary = {
    method: {
        'final_losses': h['losses'][-1].tolist(),
        'initial_losses': h['losses'][0].tolist(),
        'final_weights': h['weights'][-1].tolist(),
        'mean_dominance_rate': float(np.mean(h['dominance_rate'])),
    } for method, h in histories.items()
}
(OUT / 'summary.json').write_text(json.dumps(summary, indent=2))
print(f'{"method":22s} {"loss 1":>9s} {"loss 2":>9s} {"c_1":>8s} {"c_2":>8s} '
      f'{"mean D":>8s}')
for method, s in summary.items():
  print(f'{method:22s} {s["final_losses"][0]:9.4f} {s["final_losses"][1]:9.4f} '
        f'{s["final_weights"][0]:8.3f} {s["final_weights"][1]:8.3f} '
        f'{s["mean_dominance_rate"]:8.2f}')
print(f'figures in {OUT}')

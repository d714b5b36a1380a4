"""The synthetic two-task benchmark: its objective and the papers' claim."""

import pathlib
import sys

import jax.numpy as jnp
import numpy as np

import mtl_optax as mtl

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'benchmarks'))
import toy  # noqa: E402


def test_objective_matches_the_formula_at_a_point():
  x1, x2 = 1.5, -2.0
  t = np.tanh
  f1 = np.log(max(abs(0.5 * (-x1 - 7) - t(-x2)), 5e-6)) + 6
  f2 = np.log(max(abs(0.5 * (-x1 + 3) + t(-x2) + 2), 5e-6)) + 6
  c1, c2 = max(t(x2 / 2), 0), max(t(-x2 / 2), 0)
  q1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  q2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  expected = [f1 * c1 + q1 * c2, f2 * c1 + q2 * c2]
  np.testing.assert_allclose(toy.task_losses(jnp.array([x1, x2])), expected,
                             rtol=1e-6)


def test_weighted_optima_move_along_the_pareto_set():
  # DESIGN §6: x2 ≈ -8.355 and x1 from ≈ -5.6 (s = 0.1) through 0 to 5.6.
  optima = np.asarray(toy.weighted_optima(jnp.array([0.1, 0.5, 0.9])))
  np.testing.assert_allclose(optima[:, 0], [-5.6, 0.0, 5.6], atol=0.01)
  np.testing.assert_allclose(optima[1, 1], -8.355, atol=0.005)


def test_distance_to_polyline():
  line = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
  points = np.array([[0.5, 2.0], [2.0, 0.5], [-1.0, 0.0]])
  np.testing.assert_allclose(toy._distance_to_polyline(points, line),
                             [np.hypot(0.5, 1.0), 1.0, 1.0])


def test_aligned_mtl_reaches_the_optimum_from_every_start():
  # The papers' Fig. 1/2 claim, at their settings (Adam 1e-3, 35 000 steps);
  # linear scalarization, for contrast, stalls from the two upper starts.
  optimum = np.asarray(toy.weighted_optima(jnp.array([0.5])))[0]
  final = {}
  for name in ('aligned_mtl', 'linear_scalarization'):
    path, _ = toy.run(mtl.registry.for_tasks(name, num_tasks=2), toy.STARTS,
                      steps=35_000, lr=1e-3, record_every=1000)
    final[name] = np.linalg.norm(path[:, -1] - optimum, axis=-1)
  assert np.all(final['aligned_mtl'] < 0.1), final['aligned_mtl']
  assert np.sum(final['linear_scalarization'] > 1.0) >= 2


def test_main_writes_figures_and_table(tmp_path):
  toy.main(['--steps', '50', '--methods', 'mgda,pcgrad', '--out-dir',
            str(tmp_path)])
  table = (tmp_path / 'toy.md').read_text()
  assert '| mgda | 0.5 |' in table and '| pcgrad | 0.8 |' in table
  for name in ('toy.png', 'toy_preferences.png'):
    assert (tmp_path / name).stat().st_size > 10_000

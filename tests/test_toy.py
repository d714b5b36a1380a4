"""The synthetic two-task benchmark: its objective and the papers' claim."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_closed_form_optima_are_the_minimisers():
  # Stationary (the float32 gradient is rounding noise: an x2 off by 5e-4
  # would give 1e-5), and no point of a grid over [-10, 10]² is lower: the
  # global minimum, not another stationary point.
  shares = np.array([0.0, 0.05, 0.2, 0.5, 0.8, 0.95, 1.0])
  optima = toy.weighted_optima(shares)
  axis = jnp.linspace(-10, 10, 401)
  grid = jnp.stack(jnp.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)
  grid_losses = np.asarray(jax.vmap(toy.task_losses)(grid))
  for share, optimum in zip(shares, optima):
    weights = jnp.array([share, 1 - share], jnp.float32)
    objective = lambda x, w=weights: w @ toy.task_losses(x)
    x = jnp.asarray(optimum, jnp.float32)
    assert np.abs(np.asarray(jax.grad(objective)(x))).max() < 1e-5, share
    lowest = (grid_losses @ np.asarray(weights)).min()
    assert float(objective(x)) <= lowest + 1e-5, share    # float32 rounding
  # Symmetric under x1 -> -x1, s -> 1 - s; x1 at 7 (2s - 1).
  np.testing.assert_allclose(optima, optima[::-1] * [-1, 1], atol=1e-12)
  np.testing.assert_allclose(optima[:, 0], 7 * (2 * shares - 1))


def test_reached_front_has_a_margin_on_both_sides():
  tolerance = toy.ON_FRONT
  assert tolerance == pytest.approx(0.14)
  front = toy.pareto_set()
  # Points of the set between the polyline's vertices, and its ends.
  on_set = toy.weighted_optima([0.0, 0.1234, 0.5, 0.8765, 1.0])
  assert np.all(toy.distance_to_front(on_set, front) < 1e-5)
  # Straight above and below (the set is almost flat): just inside and
  # just outside the tolerance.
  for offset, expected in ((0.9, True), (1.1, False)):
    for sign in (1, -1):
      points = on_set[1:-1] + [0.0, sign * offset * tolerance]
      assert np.all(toy.reached_front(points, front) == expected)
  # Past the ends of the set (x1 = ±7).
  for offset, expected in ((0.9, True), (1.1, False)):
    ends = on_set[[0, -1]] + [[-offset * tolerance, 0], [offset * tolerance, 0]]
    assert np.all(toy.reached_front(ends, front) == expected)


# Final points of the 35 000-step runs: FAMO's near the ends of the set (its
# count used to flip between 1/5 and 5/5), Aligned-MTL's with preferences
# (x2 ends up to 0.035 off: a flat direction), and stalled ones.
REACHED = [(-6.9493, -8.4334), (6.9734, -8.4339), (-6.9451, -8.4334),
           (0.0, -8.3551), (-4.20, -8.42), (4.20, -8.35), (6.81, -8.43)]
STALLED = [(-5.03, 2.74), (-4.16, -7.94), (0.0, -6.53), (6.61, -2.51),
           (-6.98, -0.00)]


def test_reached_front_is_stable_under_tiny_perturbations():
  front = toy.pareto_set()
  points = np.array(REACHED + STALLED)
  expected = np.array([True] * len(REACHED) + [False] * len(STALLED))
  np.testing.assert_array_equal(toy.reached_front(points, front), expected)
  # Far from the tolerance on both sides (x3 and more).
  distances = toy.distance_to_front(points, front)
  assert distances[expected].max() < toy.ON_FRONT / 3
  assert distances[~expected].min() > toy.ON_FRONT * 3
  # Moving any final point by up to 1e-2 (or rounding it to float32 or to
  # the table's two decimals) does not change whether it reached the set;
  # nor does a finer polyline.
  rng = np.random.default_rng(0)
  for _ in range(50):
    moved = points + rng.uniform(-1e-2, 1e-2, points.shape)
    np.testing.assert_array_equal(toy.reached_front(moved, front), expected)
  np.testing.assert_array_equal(
      toy.reached_front(points.astype(np.float32), front), expected)
  np.testing.assert_array_equal(
      toy.reached_front(np.round(points, 2), front), expected)
  np.testing.assert_array_equal(
      toy.reached_front(points, toy.pareto_set(4001)), expected)


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


def test_variants_build_their_settings():
  # 'mamg' is the one-sided rule, 'mamg:algorithm1' the mean gradient for
  # two tasks; both take preferences.
  grads = jnp.array([[2., 0.], [-1., 1.]])
  for name, expect in (('mamg', [-0.275, 1.425]),
                       ('mamg:algorithm1', [0.5, 0.5])):
    tx = toy.build(name)
    d, _ = tx.update(grads, tx.init(None))
    np.testing.assert_allclose(d, expect, atol=1e-3)
    assert toy.takes_preferences(name)
  assert set(toy.VARIANTS).isdisjoint(mtl.available())


def test_main_writes_figures_and_table(tmp_path, monkeypatch):
  # By default into runs/toy under the current directory, not over the
  # committed benchmarks/results.
  monkeypatch.chdir(tmp_path)
  toy.main(['--steps', '50', '--methods', 'mgda,pcgrad,mamg:algorithm1'])
  out = tmp_path / 'runs' / 'toy'
  table = (out / 'toy.md').read_text()
  assert '| mgda | 0.5 |' in table and '| pcgrad | 0.8 |' in table
  assert '| mamg:algorithm1 | 0.2 |' in table
  assert f'within {toy.ON_FRONT:.2f}' in table
  for name in ('toy.png', 'toy_preferences.png'):
    assert (out / name).stat().st_size > 10_000

"""Convex Polytope attack: simplex projection, objective, budget, checks."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from ntga_tfds.transforms import convex_polytope as cp
from ntga_tfds.transforms.common import pgd
from ntga_tfds.transforms.convex_polytope import _common
from ntga_tfds.transforms.convex_polytope import _models
from ntga_tfds.transforms.convex_polytope import _polytope

KEY = jax.random.PRNGKey(0)
ADV = 3
# The dense substitute compiles in about a second; the convolutional ones
# (5 s each on a busy 2-core CPU) have a test of their own.
SMALL = cp.ConvexPolytopeConfig(
    eps=16 / 255, num_poisons=4, steps=25, substitutes=("mlp",),
    dropout=(0.2, 0.3), substitute_epochs=3, substitute_batch_size=64,
    substitute_lr=0.05, coeff_steps=300)


@pytest.fixture(scope="module")
def data(digits):
  x, y = digits
  return x[:256], y[:256]


@pytest.fixture(scope="module")
def shared(data):
  x, y = data
  return cp.train_substitutes(x, y, key=KEY, config=SMALL, num_classes=10)


@pytest.fixture(scope="module")
def setup(data, digits):
  x, y = data
  idx = np.flatnonzero(y == ADV)[:SMALL.num_poisons]
  xd, yd = digits
  target = np.flatnonzero(yd[1000:] == 8)[:2] + 1000
  return idx, xd[target], yd[target]


@pytest.fixture(scope="module")
def crafted(data, shared, setup):
  x, y = data
  idx, xt, yt = setup
  losses = []
  out = cp.craft(x, y, poison_indices=idx, x_target=xt[:1], y_target=yt[:1],
                 adversarial_label=ADV, key=KEY, shared=shared, config=SMALL,
                 on_step=lambda i, l: losses.append((i, l)))
  return out, losses


# ---------------------------------------------------------------------------
# Simplex projection.


def _on_simplex(w, atol=1e-5):
  w = np.asarray(w, np.float64)
  return np.all(w >= -atol) and np.allclose(w.sum(-1), 1.0, atol=atol)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_simplex_projection_is_the_nearest_point(n):
  rng = np.random.default_rng(n)
  for scale in (0.1, 1.0, 10.0):
    v = rng.normal(size=(20, n)) * scale + rng.normal(size=(20, 1))
    w = np.asarray(cp.simplex_projection(jnp.asarray(v, jnp.float32)),
                   np.float64)
    assert w.shape == v.shape
    assert _on_simplex(w)
    # Optimality certificate: <v - w, p - w> <= 0 for every vertex p (hence
    # for every point of the simplex).
    r = v - w
    vertex_gap = r - np.sum(r * w, axis=-1, keepdims=True)
    assert np.all(vertex_gap <= 1e-4 * max(1.0, scale))
    # No sampled simplex point is closer.
    p = rng.dirichlet(np.ones(n), size=2000)
    best = np.linalg.norm(v - w, axis=-1)
    others = np.linalg.norm(v[:, None, :] - p[None], axis=-1).min(axis=1)
    assert np.all(best <= others + 1e-5 * max(1.0, scale))


def test_simplex_projection_matches_a_grid_and_scipy():
  rng = np.random.default_rng(0)
  grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 201)] * 2), -1)
  grid = grid.reshape(-1, 2)
  grid = np.concatenate([grid, 1 - grid.sum(-1, keepdims=True)], -1)
  grid = grid[grid[:, 2] >= -1e-12]
  for _ in range(10):
    v = rng.normal(size=3) * 2
    w = np.asarray(cp.simplex_projection(v), np.float64)
    g = grid[np.argmin(np.linalg.norm(grid - v, axis=-1))]
    assert np.abs(w - g).max() <= 0.005 + 1e-6
    res = optimize.minimize(
        lambda p: np.sum((p - v) ** 2), np.full(3, 1 / 3), method="SLSQP",
        bounds=[(0, 1)] * 3,
        constraints={"type": "eq", "fun": lambda p: p.sum() - 1},
        options={"ftol": 1e-12})
    np.testing.assert_allclose(w, res.x, atol=1e-4)


def test_simplex_projection_fixes_simplex_points_and_ignores_shifts():
  rng = np.random.default_rng(1)
  p = rng.dirichlet(np.ones(6), size=10).astype(np.float32)
  np.testing.assert_allclose(cp.simplex_projection(p), p, atol=1e-6)
  v = rng.normal(size=(10, 6)).astype(np.float32)
  np.testing.assert_allclose(cp.simplex_projection(v),
                             cp.simplex_projection(v + 7.0), atol=1e-5)
  with pytest.raises(ValueError, match="v must have shape"):
    cp.simplex_projection(jnp.zeros(()))


def test_simplex_least_squares_matches_scipy():
  rng = np.random.default_rng(2)
  for _ in range(5):
    a = rng.normal(size=(4, 12))      # (P, d): 4 poisons' features
    b = rng.normal(size=(1, 12))      # one target
    c = np.asarray(_polytope.solve_coefficients(
        jnp.asarray(a), jnp.asarray(b), jnp.full((1, 4), 0.25), tol=1e-9,
        max_steps=20000))[0]
    res = optimize.minimize(
        lambda p: np.sum((p @ a - b[0]) ** 2), np.full(4, 0.25),
        method="SLSQP", bounds=[(0, 1)] * 4,
        constraints={"type": "eq", "fun": lambda p: p.sum() - 1},
        options={"ftol": 1e-14, "maxiter": 500})
    assert _on_simplex(c)
    ours = np.sum((c @ a - b[0]) ** 2)
    assert ours <= res.fun * (1 + 1e-4) + 1e-6


# ---------------------------------------------------------------------------
# Substitutes.


def test_shared_is_flat_and_round_trips_through_npz(shared, tmp_path):
  assert all(isinstance(k, str) and isinstance(v, np.ndarray)
             for k, v in shared.items())
  assert shared["meta/substitutes"].tolist() == ["mlp"]
  np.testing.assert_array_equal(shared["meta/dropout"], [0.2, 0.3])
  assert shared["params/mlp/Dense_0/kernel"].shape == (2, 64, 256)
  assert _models.NUM_FEATURE_LAYERS == 2
  np.savez(tmp_path / "s.npz", **shared)
  with np.load(tmp_path / "s.npz") as f:
    loaded = dict(f)
  assert sorted(loaded) == sorted(shared)
  for k in shared:
    assert loaded[k].dtype == shared[k].dtype
    np.testing.assert_array_equal(loaded[k], shared[k])
  p1 = cp.predict(np.zeros((2, 8, 8, 1), np.uint8), shared=shared,
                  config=SMALL)
  p2 = cp.predict(np.zeros((2, 8, 8, 1), np.uint8), shared=loaded,
                  config=SMALL)
  np.testing.assert_array_equal(p1, p2)


def test_substitutes_learn(shared, digits):
  x, y = digits
  p = cp.predict(x[1000:1400], shared=shared, config=SMALL)
  np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
  assert (p.argmax(1) == y[1000:1400]).mean() > 0.5


def test_convolutional_substitutes(data, setup):
  """Both conv nets train; vmapped and unrolled networks agree.

  (Crafting runs the same code for every architecture; its conv-net
  compilations cost ~10 s here, so it is left to the benchmark's smoke run.)
  """
  x, y = data
  idx, xt, _ = setup
  config = SMALL.replace(substitutes=("cnn", "convnet"), dropout=(0.2, 0.3),
                         substitute_epochs=3)
  losses = []
  shared = cp.train_substitutes(x[:128], y[:128], key=KEY, config=config,
                                num_classes=10,
                                on_epoch=lambda e, l: losses.append(l))
  # Four networks (2 architectures x 2 rates), three epochs each.
  losses = np.reshape(losses, (4, 3))
  assert np.all(losses[:, -1] < losses[:, 0])
  assert shared["params/convnet/Conv_4/kernel"].shape == (2, 3, 3, 64, 64)
  assert shared["params/cnn/Dense_0/kernel"].shape == (2, 256, 128)
  # The networks of one architecture, vmapped or one by one: same masks,
  # same features.
  s = _common.from_flat(shared, config)
  xn = jnp.asarray(xt, jnp.float32) / 255
  rates = jnp.asarray(config.dropout, jnp.float32)
  run = jax.jit(lambda p, v: _common.features(
      s.module("cnn"), p, xn, rates, KEY, dropout=True, use_vmap=v),
      static_argnums=1)
  for a, b in zip(run(s.params["cnn"], True), run(s.params["cnn"], False)):
    assert a.shape[:2] == (2, 2)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Crafting.


def test_poisons_within_budget_and_loss_decreases(crafted, data, setup,
                                                  shared):
  out, losses = crafted
  x, _ = data
  idx, xt, _ = setup
  assert out.dtype == np.uint8 and out.shape == (len(idx), 8, 8, 1)
  moved = np.abs(out.astype(int) - x[idx].astype(int))
  assert moved.max() <= pgd.levels(SMALL.eps)
  assert moved.max() > 0
  assert [i for i, _ in losses] == list(range(SMALL.steps))
  values = np.array([l for _, l in losses])
  assert values[-5:].mean() < values[:5].mean()
  # The deterministic objective (no dropout, optimal coefficients) too.
  before, coeffs = cp.objective(x[idx], xt[:1], shared=shared, config=SMALL,
                                return_coefficients=True)
  assert coeffs["mlp"].shape == (1, 2, 1, len(idx))  # (L, R, K, P)
  after = cp.objective(out, xt[:1], shared=shared, config=SMALL)
  assert float(after) < float(before)


def test_craft_is_deterministic(crafted, data, shared, setup):
  x, y = data
  idx, xt, _ = setup
  again = cp.craft(x, y, poison_indices=idx, x_target=xt[:1],
                   adversarial_label=ADV, key=KEY, shared=shared,
                   config=SMALL)
  np.testing.assert_array_equal(again, crafted[0])
  other = cp.craft(x, y, poison_indices=idx, x_target=xt[:1],
                   adversarial_label=ADV, key=jax.random.PRNGKey(1),
                   shared=shared, config=SMALL)
  assert not np.array_equal(other, crafted[0])


def test_without_dropout_the_loss_falls_steadily(data, shared, setup):
  x, y = data
  idx, xt, _ = setup
  # Two targets, the objective on two layers, deterministic networks.
  config = SMALL.replace(dropout_while_crafting=False, end_to_end=True,
                         steps=15)
  losses = []
  out = cp.craft(x, y, poison_indices=idx, x_target=xt,
                 adversarial_label=ADV, key=KEY, shared=shared, config=config,
                 on_step=lambda i, l: losses.append(l))
  assert out.shape == (len(idx), 8, 8, 1)
  assert losses[0] == pytest.approx(float(cp.objective(
      x[idx], xt, shared=shared, config=config)), rel=1e-4)
  assert np.all(np.diff(losses[:5]) < 0)
  assert losses[-1] < 0.9 * losses[0]


def test_an_open_budget_puts_the_target_inside_the_polytope(data, shared,
                                                            setup):
  """White box: with the budget no constraint (eps 254/255) and
  deterministic networks, crafting drives the polytope loss to about 0 (the
  target's features inside the poisons' hull), as the reference's Adam at
  lr 0.04 does. On digits at eps 25/255 the loss stays high because of the
  budget, not the optimiser (`bench/bench_convex_polytope_whitebox.py`)."""
  x, y = data
  idx, xt, _ = setup
  config = SMALL.replace(eps=254 / 255, steps=100,
                         dropout_while_crafting=False)
  out = cp.craft(x, y, poison_indices=idx, x_target=xt[:1],
                 adversarial_label=ADV, key=KEY, shared=shared, config=config)
  before = float(cp.objective(x[idx], xt[:1], shared=shared, config=config))
  after = float(cp.objective(out, xt[:1], shared=shared, config=config))
  assert before > 0.1
  assert after < 0.02 * before


def test_objective_sums_targets_with_a_coefficient_vector_each(
    data, shared, setup):
  x, _ = data
  idx, xt, _ = setup
  # Two layers (the deterministic networks of the test above: compiled).
  config = SMALL.replace(end_to_end=True)
  loss, coeffs = cp.objective(x[idx], xt, shared=shared, config=config,
                              return_coefficients=True)
  assert sorted(coeffs) == ["mlp"]
  assert coeffs["mlp"].shape == (2, 2, 2, len(idx))  # (L, R, K, P)
  assert _on_simplex(coeffs["mlp"])
  # Given coefficients are used as they are.
  again = cp.objective(x[idx], xt, shared=shared, config=config,
                       coefficients=coeffs)
  assert float(again) == pytest.approx(float(loss), rel=1e-6)
  # The sum over targets: each target alone adds up to both together.
  alone = sum(float(cp.objective(x[idx], xt[k:k + 1], shared=shared,
                                 config=config)) for k in range(2))
  assert float(loss) == pytest.approx(alone, rel=1e-4)
  # Differentiable in the poisons.
  grad = jax.grad(lambda p: cp.objective(p, xt, shared=shared,
                                         config=config))(
      jnp.asarray(x[idx], jnp.float32) / 255)
  assert grad.shape == (len(idx), 8, 8, 1) and np.all(np.isfinite(grad))
  assert float(jnp.abs(grad).max()) > 0


def test_tol_stops_early(data, shared, setup):
  x, y = data
  idx, xt, _ = setup
  steps = []
  cp.craft(x, y, poison_indices=idx, x_target=xt[:1], adversarial_label=ADV,
           key=KEY, shared=shared,
           config=SMALL.replace(steps=500, tol=0.5, tol_window=3),
           on_step=lambda i, l: steps.append(i))
  assert len(steps) < 500 and len(steps) % 3 == 0


def test_poison_changes_only_the_poisons(data, setup):
  x, y = data
  _, xt, yt = setup
  y_before = y.copy()
  config = SMALL.replace(substitutes=("mlp",), dropout=(0.2,),
                         substitute_epochs=1, steps=5)
  images, idx = cp.poison(x, y, x_target=xt[0], y_target=yt[:1],
                          adversarial_label=ADV, key=KEY, config=config)
  np.testing.assert_array_equal(y, y_before)
  assert images.dtype == np.uint8 and images.shape == x.shape
  assert len(idx) == config.num_poisons and np.all(np.diff(idx) > 0)
  assert np.all(y[idx] == ADV)
  rest = np.setdiff1d(np.arange(len(x)), idx)
  np.testing.assert_array_equal(images[rest], x[rest])
  moved = np.abs(images[idx].astype(int) - x[idx].astype(int))
  assert moved.max() <= pgd.levels(config.eps)
  again, idx2 = cp.poison(x, y, x_target=xt[0], adversarial_label=ADV,
                          key=KEY, config=config)
  np.testing.assert_array_equal(idx, idx2)
  np.testing.assert_array_equal(images, again)


# ---------------------------------------------------------------------------
# Checks.


@pytest.mark.parametrize("changes, match", [
    (dict(eps=0.0), "eps"),
    (dict(eps=1.5), "eps"),
    (dict(num_poisons=0), "num_poisons"),
    (dict(lr=-1.0), "lr"),
    (dict(lr="0.1"), "lr"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(tol=0.0), "tol"),
    (dict(tol_window=0), "tol_window"),
    (dict(coeff_tol=-1e-6), "coeff_tol"),
    (dict(coeff_steps=0), "coeff_steps"),
    (dict(substitutes="cnn"), "substitutes"),
    (dict(substitutes=()), "substitutes"),
    (dict(substitutes=("resnet50",)), "substitute"),
    (dict(substitutes=("cnn", "cnn")), "repeated"),
    (dict(dropout=0.2), "dropout"),
    (dict(dropout=()), "dropout"),
    (dict(dropout=(1.0,)), "dropout"),
    (dict(dropout=(0.2, 0.2)), "repeated"),
    (dict(substitute_epochs=0), "substitute_epochs"),
    (dict(substitute_batch_size=0), "substitute_batch_size"),
    (dict(substitute_lr=0), "substitute_lr"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(end_to_end=1), "end_to_end"),
    (dict(dropout_while_crafting="yes"), "dropout_while_crafting"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_configs_are_rejected(changes, match):
  with pytest.raises(ValueError, match=match):
    cp.ConvexPolytopeConfig(**changes)


def test_config_defaults_and_no_jax_import():
  c = cp.ConvexPolytopeConfig()
  assert c.eps == 25 / 255 and c.num_poisons == 5 and c.lr == 0.04
  assert c.steps == 4000 and c.dropout == (0.2, 0.25, 0.3)
  assert c.ensemble_size == 9
  assert cp.ConvexPolytopeConfig(dropout=[0, 0.5]).dropout == (0.0, 0.5)
  code = ("import sys; from ntga_tfds.transforms import convex_polytope as c;"
          " c.ConvexPolytopeConfig(); print('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "False"


def test_bad_inputs_are_rejected(data, shared, setup):
  x, y = data
  idx, xt, yt = setup
  ok = dict(poison_indices=idx, x_target=xt[:1], adversarial_label=ADV,
            key=KEY, shared=shared, config=SMALL)

  def craft(x=x, y=y, **changes):
    return cp.craft(x, y, **{**ok, **changes})

  cases = [
      (dict(x=x[..., 0]), "x_train"),
      (dict(x=x.astype(np.float32) * 2), "x_train"),
      (dict(y=y[:-1]), "y_train"),
      (dict(poison_indices=[]), "poison_indices"),
      (dict(poison_indices=[0, 10**6]), "poison_indices"),
      (dict(poison_indices=[idx[0], idx[0]]), "repeated"),
      (dict(poison_indices=np.flatnonzero(y != ADV)[:2]), "adversarial_label"),
      (dict(adversarial_label=10), "adversarial_label"),
      (dict(adversarial_label=[3, 3]), "adversarial_label"),
      (dict(x_target=np.zeros((1, 9, 9, 1), np.uint8)), "x_target"),
      (dict(y_target=[ADV]), "y_target"),
      (dict(y_target=[1, 2]), "y_target"),
      (dict(key=0), "key"),
      (dict(config=None), "config"),
      (dict(shared={"a": np.zeros(1)}), "shared"),
      (dict(config=SMALL.replace(substitutes=("cnn",))), "substitutes"),
      (dict(config=SMALL.replace(dropout=(0.2,))), "dropout"),
      (dict(num_classes=5), "num_classes"),
      (dict(on_step=3), "on_step"),
  ]
  for changes, match in cases:
    with pytest.raises(ValueError, match=match):
      craft(**changes)
  with pytest.raises(ValueError, match="num_poisons"):
    cp.poison(x, y, x_target=xt[:1], adversarial_label=ADV, key=KEY,
              config=SMALL.replace(num_poisons=1000))
  with pytest.raises(ValueError, match="needs at least"):
    cp.train_substitutes(np.zeros((4, 3, 3, 1), np.uint8), [0, 1, 0, 1],
                         key=KEY, config=SMALL.replace(substitutes=("cnn",)))
  with pytest.raises(ValueError, match="key"):
    cp.train_substitutes(x, y, key=None, config=SMALL)

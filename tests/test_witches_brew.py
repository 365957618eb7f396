"""Tests of the Witches' Brew transform (`ntga_tfds.transforms.witches_brew`).

Small and fast: scikit-learn's 8x8 digits and the small CNN surrogate. One
crafting config (`CFG`) and one poison count are shared, so that the jitted
crafting step compiles once for the whole file.
"""

import dataclasses

import jax
from jax.experimental import enable_x64
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from ntga_tfds import sources
from ntga_tfds.transforms import witches_brew as wb
from ntga_tfds.transforms.witches_brew import _common

CFG = wb.WitchesBrewConfig(
    surrogate="cnn", flip=False, eps=64 / 255, budget=0.05,
    surrogate_epochs=10, steps=30, restarts=2, validation_steps=3)
ADV = 3  # the adversarial class
NUM_POISONS = 72  # round(0.05 * 1442)


@pytest.fixture(scope="module")
def data():
  tr = sources.load_source("digits", "train")
  te = sources.load_source("digits", "test")
  return tr.images, tr.labels, te.images, te.labels


@pytest.fixture(scope="module")
def targets(data):
  """Two test images of a 4 (to be classified as a 3)."""
  _, _, x_test, y_test = data
  return x_test[np.flatnonzero(y_test == 4)[:2]]


@pytest.fixture(scope="module")
def shared(data):
  x, y, _, _ = data
  return wb.train_surrogate(x, y, key=jax.random.PRNGKey(0), config=CFG,
                            num_classes=10)


@pytest.fixture(scope="module")
def crafted(data, targets, shared):
  x, y, _, _ = data
  idx = np.flatnonzero(y == ADV)[:NUM_POISONS]
  losses = []
  poisons = wb.craft(x, y, poison_indices=idx, x_target=targets,
                     y_target=[4, 4], adversarial_label=ADV,
                     key=jax.random.PRNGKey(1), shared=shared, config=CFG,
                     num_classes=10,
                     on_step=lambda i, loss: losses.append((i, loss)))
  return idx, poisons, losses


@pytest.fixture(scope="module")
def poisoned(data, targets):
  x, y, _, _ = data
  return wb.poison(x, y, x_target=targets, adversarial_label=ADV,
                   key=jax.random.PRNGKey(2), config=CFG)


# ---------------------------------------------------------------------------
# Config.


def test_config_defaults_are_forests():
  c = wb.WitchesBrewConfig()
  assert c.eps == 16 / 255 and c.budget == 0.01
  assert (c.steps, c.restarts, c.lr) == (250, 8, 0.1)
  assert c.augment and c.flip and c.poison_batch_size == 512
  assert (c.surrogate, c.surrogate_epochs, c.surrogate_batch_size) == (
      "resnet18", 40, 128)
  assert c.learning_rate == 0.1 and c.weight_decay == 5e-4
  assert c.ensemble == 1 and c.dtype == "float32"
  assert wb.WitchesBrewConfig(surrogate="convnet").learning_rate == 0.01
  assert wb.WitchesBrewConfig(surrogate_lr=0.3).learning_rate == 0.3


@pytest.mark.parametrize("field,value", [
    ("eps", 0.0), ("eps", 16), ("budget", 0.0), ("budget", 1.5),
    ("budget", "1%"), ("steps", 0), ("steps", 2.5), ("restarts", 0),
    ("lr", 0.0), ("lr", None), ("augment", "yes"), ("flip", 1),
    ("poison_batch_size", 0), ("surrogate", "vgg11"),
    ("surrogate_width", 0),
    ("surrogate_epochs", 0), ("surrogate_batch_size", -1),
    ("surrogate_lr", -0.1), ("weight_decay", -1e-4), ("ensemble", 0),
    ("ensemble", True), ("validation_steps", -1), ("dtype", "float16"),
])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    wb.WitchesBrewConfig(**{field: value})


def test_config_is_frozen_and_free_of_jax():
  with pytest.raises(dataclasses.FrozenInstanceError):
    CFG.eps = 0.1
  assert CFG.replace(steps=3).steps == 3
  import ast
  import pathlib
  src = (pathlib.Path(wb.__file__).parent / "config.py").read_text()
  imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(src))
              if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in getattr(n, "names", [])}
  modules = {n.module.split(".")[0] for n in ast.walk(ast.parse(src))
             if isinstance(n, ast.ImportFrom) and n.module}
  assert not ({"jax", "flax", "optax"} & (imported | modules))


# ---------------------------------------------------------------------------
# The objective.


def test_matching_loss_is_one_minus_cosine():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  g = {"a": jax.random.normal(k1, (3, 4)), "b": [jax.random.normal(k2, (5,))]}
  scaled = jax.tree_util.tree_map(lambda v: 2.5 * v, g)
  neg = jax.tree_util.tree_map(lambda v: -v, g)
  assert abs(float(wb.matching_loss(g, scaled))) < 1e-6
  assert abs(float(wb.matching_loss(g, neg)) - 2) < 1e-6
  h = {"a": jnp.zeros((3, 4)).at[0, 0].set(1.0), "b": [jnp.zeros(5)]}
  orth = {"a": jnp.zeros((3, 4)).at[1, 0].set(3.0), "b": [jnp.ones(5)]}
  assert abs(float(wb.matching_loss(h, orth)) - 1) < 1e-6
  a, b = ravel_pytree(g)[0], ravel_pytree(orth)[0]
  cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  assert abs(float(wb.matching_loss(g, orth)) - (1 - cos)) < 1e-6


def _reference_objective(xp, yp, xt, y_adv, s):
  """1 - cos of flat gradients, written out with plain autodiff."""
  module = s.module()
  v = _common.index(_common.cast(s.variables, jnp.float64), 0)
  flat, unravel = ravel_pytree(v["params"])
  mean, std = jnp.asarray(s.mean), jnp.asarray(s.std)

  def nll(theta, x, y):
    logits = module.apply({"params": unravel(theta)}, (x - mean) / std)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None],
                                axis=1)[:, 0]

  g_p = jax.grad(lambda t: jnp.mean(nll(t, xp, yp)))(flat)
  g_t = jax.grad(lambda t: jnp.sum(nll(t, xt, y_adv)))(flat)
  return 1 - g_p @ g_t / (jnp.linalg.norm(g_p) * jnp.linalg.norm(g_t))


def test_objective_and_gradient_match_autodiff_and_finite_differences(
    data, targets, shared):
  x, y, _, _ = data
  s = _common.from_flat(shared, CFG)
  with enable_x64():
    # Noise breaks the ties of max-pooling over flat (all-zero) regions,
    # where the function has kinks and finite differences disagree.
    noise = jax.random.uniform(jax.random.PRNGKey(9), (4, 8, 8, 1),
                               jnp.float64)
    xp = 0.1 + 0.8 * jnp.asarray(x[:4], jnp.float64) / 255 + 0.05 * noise
    yp = jnp.asarray(y[:4])
    xt = jnp.asarray(targets, jnp.float64) / 255
    y_adv = jnp.full(2, ADV)
    f = jax.jit(lambda v: wb.objective(v, yp, xt, ADV, shared=shared,
                                       config=CFG))
    value = float(f(xp))
    assert value == pytest.approx(
        float(_reference_objective(xp, yp, xt, y_adv, s)), abs=1e-10)
    assert 0 < value < 2
    grad = jax.jit(jax.grad(f))(xp)
    assert grad.dtype == jnp.float64 and grad.shape == xp.shape
    ref_grad = jax.grad(_reference_objective)(xp, yp, xt, y_adv, s)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-8, atol=1e-12)
    # Central differences along random directions. The parameter gradient
    # of a ReLU network jumps where a unit switches on or off, so the
    # objective is only piecewise smooth in the images: h stays tiny.
    for i in range(3):
      u = jax.random.normal(jax.random.PRNGKey(i), xp.shape, jnp.float64)
      h = 1e-8
      fd = (float(f(xp + h * u)) - float(f(xp - h * u))) / (2 * h)
      assert float(jnp.vdot(grad, u)) == pytest.approx(fd, rel=1e-4,
                                                        abs=1e-7)


def test_objective_is_zero_when_poison_is_the_target(data, shared):
  # The poison batch *is* the target with the adversarial label: same
  # gradient, cosine 1.
  x, _, _, _ = data
  xt = jnp.asarray(x[:3], jnp.float32) / 255
  labels = jnp.asarray([1, 5, 7])
  value = wb.objective(xt, labels, xt, labels, shared=shared, config=CFG)
  assert abs(float(value)) < 1e-5


# ---------------------------------------------------------------------------
# Crafting.


def test_craft_lowers_the_objective(data, targets, shared, crafted):
  x, y, _, _ = data
  idx, poisons, losses = crafted
  assert [i for i, _ in losses] == list(range(CFG.restarts * CFG.steps))

  def obj(images):
    return float(wb.objective(jnp.asarray(images, jnp.float32) / 255,
                              y[idx], targets / 255, ADV, shared=shared,
                              config=CFG))
  before, after = obj(x[idx]), obj(poisons)
  assert after < before - 0.05, (before, after)
  first = [loss for i, loss in losses if i % CFG.steps == 0]
  last = [loss for i, loss in losses if i % CFG.steps == CFG.steps - 1]
  assert max(last) < min(first)


def test_craft_output_contract(data, crafted):
  x, _, _, _ = data
  idx, poisons, _ = crafted
  assert poisons.shape == (NUM_POISONS, 8, 8, 1)
  assert poisons.dtype == np.uint8
  change = np.abs(poisons.astype(np.int16) - x[idx].astype(np.int16))
  assert change.max() <= 64 and change.max() > 0


def test_poison_changes_only_the_poisons_within_eps(data, poisoned):
  x, y, _, _ = data
  images, idx = poisoned
  assert images.shape == x.shape and images.dtype == np.uint8
  assert idx.shape == (NUM_POISONS,) and np.all(np.diff(idx) > 0)
  assert np.all(y[idx] == ADV)  # poisons of the adversarial class
  rest = np.setdiff1d(np.arange(x.shape[0]), idx)
  np.testing.assert_array_equal(images[rest], x[rest])
  change = np.abs(images[idx].astype(np.int16) - x[idx].astype(np.int16))
  assert 0 < change.max() <= 64


def test_poison_and_craft_are_deterministic(data, targets, poisoned,
                                            shared, crafted):
  x, y, _, _ = data
  images, idx = wb.poison(x, y, x_target=targets, adversarial_label=ADV,
                          key=jax.random.PRNGKey(2), config=CFG)
  assert images.tobytes() == poisoned[0].tobytes()
  np.testing.assert_array_equal(idx, poisoned[1])
  again = wb.craft(x, y, poison_indices=crafted[0], x_target=targets,
                   adversarial_label=[ADV, ADV], key=jax.random.PRNGKey(1),
                   shared=shared, config=CFG)
  assert again.tobytes() == crafted[1].tobytes()


def test_float_inputs_give_the_same_bytes_as_uint8(data, targets, shared,
                                                   crafted):
  x, y, _, _ = data
  idx, poisons, _ = crafted
  out = wb.craft(x.astype(np.float32) / 255, y, poison_indices=idx,
                 x_target=targets.astype(np.float64) / 255,
                 adversarial_label=ADV, key=jax.random.PRNGKey(1),
                 shared=shared, config=CFG)
  assert out.tobytes() == poisons.tobytes()


def test_retrained_model_moves_the_targets_to_the_adversarial_class(
    data, targets, poisoned):
  """A surrogate retrained from scratch on the poisoned set (same key as on
  the clean set) gives the targets a higher adversarial-class probability."""
  x, y, _, _ = data
  images, _ = poisoned
  for seed in (10, 11):
    key = jax.random.PRNGKey(seed)
    clean = wb.train_surrogate(x, y, key=key, config=CFG)
    dirty = wb.train_surrogate(images, y, key=key, config=CFG)
    p_clean = wb.predict(targets, shared=clean, config=CFG)[:, ADV].mean()
    p_dirty = wb.predict(targets, shared=dirty, config=CFG)[:, ADV].mean()
    assert p_dirty > 1.5 * p_clean, (seed, p_clean, p_dirty)


# ---------------------------------------------------------------------------
# Surrogate training.


def test_surrogate_learns_digits(data, shared):
  _, _, x_test, y_test = data
  probs = wb.predict(x_test, shared=shared, config=CFG)
  assert probs.shape == (x_test.shape[0], 10)
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  accuracy = float(np.mean(probs.argmax(1) == y_test))
  assert accuracy > 0.8, accuracy  # chance: 0.1


def test_flat_dict_round_trips_exactly(tmp_path, data, shared):
  assert all(isinstance(k, str) and isinstance(v, np.ndarray)
             for k, v in shared.items())
  assert "variables/params/Conv_0/kernel" in shared
  assert shared["variables/params/Conv_0/kernel"].shape == (1, 3, 3, 1, 32)
  path = tmp_path / "surrogate.npz"
  np.savez(path, **shared)
  with np.load(path) as f:  # no pickle needed
    loaded = dict(f)
  assert sorted(loaded) == sorted(shared)
  for k, v in shared.items():
    assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
    assert loaded[k].tobytes() == v.tobytes(), k
  again = _common.to_flat(_common.from_flat(loaded))
  assert sorted(again) == sorted(shared)
  for k, v in shared.items():
    assert again[k].dtype == v.dtype and again[k].tobytes() == v.tobytes(), k
  _, _, x_test, _ = data
  np.testing.assert_array_equal(
      wb.predict(x_test[:50], shared=loaded, config=CFG),
      wb.predict(x_test[:50], shared=shared, config=CFG))


def test_train_surrogate_is_deterministic_and_keyed(data):
  x, y, _, _ = data
  config = CFG.replace(surrogate_epochs=1)
  a = wb.train_surrogate(x[:300], y[:300], key=jax.random.PRNGKey(5),
                         config=config, num_classes=10)
  b = wb.train_surrogate(x[:300], y[:300], key=jax.random.PRNGKey(5),
                         config=config, num_classes=10)
  c = wb.train_surrogate(x[:300], y[:300], key=jax.random.PRNGKey(6),
                         config=config, num_classes=10)
  k = "variables/params/Dense_1/kernel"
  assert all(a[n].tobytes() == b[n].tobytes() for n in a)
  assert a[k].tobytes() != c[k].tobytes()


def test_augment_shifts_and_flips_exactly():
  x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
  out = _common.augment(jax.random.PRNGKey(0), x, flip=False, integer=True)
  # Whole-pixel shifts with zero padding: every row of the output is a
  # shifted row of the input.
  for b in range(2):
    nonzero = np.asarray(out[b, ..., 0])
    assert set(nonzero.ravel()) - {0.0} <= set(np.asarray(x[b]).ravel())
  flipped = _common.augment(jax.random.PRNGKey(3), x, flip=True,
                            integer=True)
  assert flipped.shape == x.shape
  g = jax.grad(lambda v: jnp.sum(_common.augment(
      jax.random.PRNGKey(1), v, flip=True) ** 2))(x)
  assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------------------
# Bad inputs.


def _craft_kwargs(data, targets, shared):
  x, y, _, _ = data
  return dict(x_train=x, y_train=y, poison_indices=np.arange(3),
              x_target=targets, adversarial_label=ADV,
              key=jax.random.PRNGKey(0), shared=shared, config=CFG)


@pytest.mark.parametrize("change,match", [
    (lambda d: {"x_train": d["x_train"][..., 0]}, "x_train"),
    (lambda d: {"x_train": d["x_train"] / 255.0 * 2}, "x_train"),
    (lambda d: {"x_train": d["x_train"].astype(np.int32)}, "x_train"),
    (lambda d: {"y_train": d["y_train"][:-1]}, "y_train"),
    (lambda d: {"y_train": d["y_train"] + 5}, "y_train"),
    (lambda d: {"poison_indices": np.array([0, 0, 1])}, "poison_indices"),
    (lambda d: {"poison_indices": np.array([10 ** 6])}, "poison_indices"),
    (lambda d: {"poison_indices": np.array([0.0, 1.0])}, "poison_indices"),
    (lambda d: {"poison_indices": np.array([], int)}, "poison_indices"),
    (lambda d: {"x_target": np.zeros((1, 9, 9, 1), np.uint8)}, "x_target"),
    (lambda d: {"adversarial_label": 10}, "adversarial_label"),
    (lambda d: {"adversarial_label": [1, 2, 3]}, "adversarial_label"),
    (lambda d: {"adversarial_label": 1.5}, "adversarial_label"),
    (lambda d: {"y_target": [4]}, "y_target"),
    (lambda d: {"key": 0}, "key"),
    (lambda d: {"config": {"eps": 0.1}}, "config"),
    (lambda d: {"config": CFG.replace(surrogate="convnet")}, "surrogate"),
    (lambda d: {"config": CFG.replace(surrogate_width=8)}, "width"),
    (lambda d: {"shared": {"a": np.zeros(1)}}, "shared"),
    (lambda d: {"num_classes": 12}, "num_classes"),
    (lambda d: {"x_train": d["x_train"][:, :4, :4]}, "x_train"),
])
def test_craft_rejects_bad_inputs(data, targets, shared, change, match):
  kwargs = _craft_kwargs(data, targets, shared)
  kwargs.update(change(kwargs))
  with pytest.raises(ValueError, match=match):
    wb.craft(**kwargs)


def test_train_and_poison_reject_bad_inputs(data, targets):
  x, y, _, _ = data
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="x_train"):
    wb.train_surrogate(x[:, :, :, 0], y, key=key, config=CFG)
  with pytest.raises(ValueError, match="y_train"):
    wb.train_surrogate(x, y[:10], key=key, config=CFG)
  with pytest.raises(ValueError, match="at least 9x9"):
    wb.train_surrogate(x, y, key=key, config=CFG.replace(surrogate="convnet"))
  with pytest.raises(ValueError, match="budget"):
    wb.poison(x, y, x_target=targets, adversarial_label=ADV, key=key,
              config=CFG.replace(budget=0.5))  # more than class 3 has
  with pytest.raises(ValueError, match="budget"):
    wb.poison(x[:20], y[:20], x_target=targets, adversarial_label=ADV,
              key=key, config=CFG.replace(budget=0.01))  # no poisons
  with pytest.raises(ValueError, match="one class"):
    wb.poison(x, y, x_target=targets, adversarial_label=[1, 2], key=key,
              config=CFG)

"""Back-gradient poisoning: hypergradients, memory bound, attack, checks."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga_tfds import sources
from ntga_tfds.transforms import back_gradient as bg
from ntga_tfds.transforms.back_gradient import _inner
from ntga_tfds.transforms.back_gradient import _models

KEY = jax.random.PRNGKey(0)
FAST = bg.BackGradientConfig(inner_steps=40, outer_steps=6)


@pytest.fixture(scope="module")
def binary():
  """Digits 1 vs 7 relabelled 0 / 1: (x_train, y_train, x_val, y_val)."""
  data = sources.load_source("digits", "train")
  keep = np.isin(data.labels, [1, 7])
  x, y = data.images[keep], (data.labels[keep] == 7).astype(np.int64)
  return x[:60], y[:60], x[60:260], y[60:260]


@pytest.fixture(scope="module")
def tiny(binary):
  x, y, xv, yv = binary
  return x[:20], y[:20], xv[:30], yv[:30], xv[30:32], 1 - yv[30:32]


def _grads(tiny, config, unrolled=False):
  x, y, xv, yv, xp, yp = tiny
  fn = bg.unrolled_hypergradient if unrolled else bg.hypergradient
  return fn(xp, yp, x_train=x, y_train=y, x_val=xv, y_val=yv, key=KEY,
            config=config)


# ---------------------------------------------------------------------------
# Hypergradients.


@pytest.mark.parametrize("model,every", [("mlp", 4), ("cnn", None)])
def test_checkpointed_equals_unrolled_float64(tiny, model, every):
  # T = 13 with k = 4: three full segments and a remainder of one step.
  config = bg.BackGradientConfig(model=model, inner_steps=13, momentum=0.5,
                                 weight_decay=1e-3, checkpoint_every=every,
                                 dtype="float64")
  value, grad = _grads(tiny, config)
  ref_value, ref_grad = _grads(tiny, config, unrolled=True)
  assert grad.dtype == np.float64 and grad.shape == tiny[4].shape
  assert np.abs(ref_grad).max() > 1e-6
  assert value == pytest.approx(ref_value, rel=1e-12)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-9,
                             atol=1e-12 * np.abs(ref_grad).max())


def test_checkpointed_equals_unrolled_float32(tiny):
  config = FAST.replace(model="mlp", inner_steps=25)
  value, grad = _grads(tiny, config)
  ref_value, ref_grad = _grads(tiny, config, unrolled=True)
  assert grad.dtype == np.float32
  assert value == pytest.approx(ref_value, rel=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-3,
                             atol=1e-4 * np.abs(ref_grad).max())


def test_reverse_with_momentum_matches_unrolled_float64(tiny):
  # Reversal divides by mu each step: exact in exact arithmetic, and in
  # float64 the amplified rounding (2^T * 1e-16) stays far below 1e-6.
  config = bg.BackGradientConfig(model="logreg", inner_steps=20,
                                 momentum=0.5, method="reverse",
                                 dtype="float64")
  value, grad = _grads(tiny, config)
  ref_value, ref_grad = _grads(tiny, config, unrolled=True)
  assert value == pytest.approx(ref_value, rel=1e-12)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-6,
                             atol=1e-8 * np.abs(ref_grad).max())


def test_reverse_without_momentum_is_approximate(tiny):
  # mu = 0: the reversal solves an implicit equation approximately (as the
  # authors' code does), so the gradient is only close in direction.
  config = bg.BackGradientConfig(model="logreg", inner_steps=10,
                                 method="reverse", dtype="float64")
  _, grad = _grads(tiny, config)
  _, ref_grad = _grads(tiny, config, unrolled=True)
  cos = np.vdot(grad, ref_grad) / (np.linalg.norm(grad)
                                    * np.linalg.norm(ref_grad))
  assert cos > 0.95


# ---------------------------------------------------------------------------
# Memory.


@pytest.mark.parametrize("t", [1, 2, 5, 16, 17, 200, 1000, 10007])
def test_stored_states_is_order_sqrt_t(t):
  config = bg.BackGradientConfig(inner_steps=t)
  k = config.segment_length
  assert k == math.ceil(math.sqrt(t))
  assert bg.stored_states(config) == math.ceil(t / k) + k
  assert bg.stored_states(config) <= 2 * math.ceil(math.sqrt(t))
  assert bg.unrolled_stored_states(config) == t
  assert bg.stored_states(config.replace(checkpoint_every=t)) == t + 1
  assert bg.stored_states(config.replace(method="reverse")) == 1


@pytest.mark.parametrize("t", [16, 64, 256])
def test_saved_states_counted_from_the_vjp(t):
  """Counts the trajectory states that reverse mode actually keeps.

  The residuals of `jax.vjp` (the arrays kept between the forward and the
  backward pass) include the stacked per-step copies of the parameters;
  their leading dimension is how many states are stored: T unrolled,
  ceil(T / k) segment inputs checkpointed (each segment's k states are
  re-made during its own backward pass, which `stored_states` adds).
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((12, 4, 4, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, 12), jnp.int32)
  prob = _inner.Problem(x, y, jnp.ones(12), jnp.array([1]), x, y)
  config = bg.BackGradientConfig(model="mlp", inner_steps=t)
  params0 = _models.init("mlp", KEY, (4, 4, 1), 2)
  hidden = params0["w1"].shape
  counts, sizes = {}, {}
  for name, fn in (("unrolled", _inner.train),
                   ("checkpoint", _inner._checkpointed_train)):
    _, vjp = jax.vjp(lambda xp, fn=fn: _inner.outer_objective(
        fn(params0, xp, prob, config), prob, config), x[:1])
    leaves = jax.tree_util.tree_leaves(vjp)
    counts[name] = max(l.shape[0] for l in leaves
                       if l.ndim == 3 and l.shape[1:] == hidden)
    sizes[name] = sum(l.size for l in leaves)
  k = config.segment_length
  assert counts["unrolled"] == t
  assert counts["checkpoint"] == math.ceil(t / k)
  assert counts["checkpoint"] + k == bg.stored_states(config)
  # Everything kept, not just the parameters: O(sqrt(T)) vs O(T).
  assert sizes["checkpoint"] < 4 * sizes["unrolled"] / math.sqrt(t)


# ---------------------------------------------------------------------------
# The attack.


def test_outer_loss_rises_on_digits(binary):
  x, y, xv, yv = binary
  values = {}
  config = FAST.replace(outer_steps=8)
  clean = bg.objective(np.zeros((0, 8, 8, 1)), None, x_train=x, y_train=y,
                       x_val=xv, y_val=yv, key=KEY, config=config)
  xp, yp = bg.poison(x, y, x_val=xv, y_val=yv, num_poisons=2, key=KEY,
                     config=config,
                     on_step=lambda j, i, v: values.setdefault(j, [])
                     .append(v))
  assert xp.dtype == np.uint8 and xp.shape == (2, 8, 8, 1)
  assert yp.shape == (2,) and set(yp) <= {0, 1}
  assert sorted(values) == [0, 1] and all(len(v) == 8 for v in values.values())
  for v in values.values():
    assert np.all(np.diff(v) > -1e-4)  # (near-)monotone ascent
    assert v[-1] > v[0] + 1e-3
  assert values[0][0] > clean  # a label-flipped point already hurts
  assert values[1][0] > values[0][-1] - 1e-3  # the first one stays in
  poisoned = bg.objective(xp, yp, x_train=x, y_train=y, x_val=xv, y_val=yv,
                          key=KEY, config=config)
  assert poisoned > values[1][-1] - 1e-3
  # train() is the model the attack differentiates through.
  params = bg.train(np.concatenate([x, xp]), np.concatenate([y, yp]),
                    key=KEY, config=config)
  logits = _models.apply(params, jnp.asarray(xv, jnp.float32) / 255)
  ce = -jnp.mean(jax.nn.log_softmax(logits)[np.arange(len(yv)), yv])
  assert float(ce) == pytest.approx(poisoned, rel=1e-4)


def test_deterministic_and_incremental(binary):
  x, y, xv, yv = binary
  config = FAST.replace(outer_steps=3, inner_steps=20)
  kw = dict(x_val=xv, y_val=yv, key=KEY, config=config)
  a = bg.poison(x, y, num_poisons=2, **kw)
  b = bg.poison(x, y, num_poisons=2, **kw)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  first = bg.add_poisons(x, y, x_added=None, y_added=None, count=1, **kw)
  second = bg.add_poisons(x, y, x_added=first[0], y_added=first[1],
                          count=1, **kw)
  np.testing.assert_array_equal(first[0][0], a[0][0])
  # Same point and label; the padded shapes may round differently.
  assert second[1][0] == a[1][1]
  assert np.abs(second[0].astype(int) - a[0][1:].astype(int)).max() <= 1
  other = bg.poison(x, y, num_poisons=2, x_val=xv, y_val=yv,
                    key=jax.random.PRNGKey(1), config=config)
  assert not np.array_equal(other[0], a[0])


def test_specific_attack_and_worst_label(binary):
  data = sources.load_source("digits", "train")
  keep = np.isin(data.labels, [0, 1, 2])
  x, y = data.images[keep][:45], data.labels[keep][:45]
  xv, yv = data.images[keep][45:165], data.labels[keep][45:165]
  config = FAST.replace(attack="specific", target_map=((1, 2),),
                        outer_steps=4, inner_steps=20)
  values = []
  xp, yp = bg.poison(x, y, x_val=xv, y_val=yv, num_poisons=1, key=KEY,
                     config=config, on_step=lambda j, i, v: values.append(v))
  assert list(yp) == [2]
  assert values[-1] > values[0]
  assert all(v < 0 for v in values)  # minus a cross-entropy
  worst = config.replace(attack="generic", target_map=(),
                         label_policy="worst", outer_steps=1)
  _, yw = bg.poison(x, y, x_val=xv, y_val=yv, num_poisons=1, key=KEY,
                    config=worst)
  i, _ = bg._attack._pick(KEY, 0, yv, worst, 3)
  assert yw[0] != yv[i]


def test_train_and_accuracy(binary):
  x, y, xv, yv = binary
  params = bg.train(x, y, key=KEY, config=FAST)
  assert bg.accuracy(params, xv, yv) > 0.95
  assert bg.accuracy(params, xv.astype(np.float32) / 255, yv) > 0.95
  with pytest.raises(ValueError, match="params"):
    bg.accuracy({"w": 1}, xv, yv)


# ---------------------------------------------------------------------------
# Checks.


@pytest.mark.parametrize("kwargs,match", [
    (dict(model="resnet"), "model"),
    (dict(attack="targeted"), "attack"),
    (dict(attack="specific"), "target_map"),
    (dict(attack="specific", target_map=((1, 1),)), "itself"),
    (dict(attack="specific", target_map=((1, 2), (1, 3))), "twice"),
    (dict(attack="specific", target_map=((1, -2),)), "target_map"),
    (dict(attack="specific", target_map=5), "target_map"),
    (dict(target_map=((1, 2),)), "only used"),
    (dict(inner_steps=0), "inner_steps"),
    (dict(inner_steps=2.5), "inner_steps"),
    (dict(inner_lr=0), "inner_lr"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"),
    (dict(weight_decay=-1), "weight_decay"),
    (dict(outer_steps=0), "outer_steps"),
    (dict(outer_lr=float("nan")), "outer_lr"),
    (dict(label_policy="random"), "label_policy"),
    (dict(method="implicit"), "method"),
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_configs_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    bg.BackGradientConfig(**kwargs)


def test_bad_inputs_rejected(binary):
  x, y, xv, yv = binary
  kw = dict(x_val=xv, y_val=yv, key=KEY, config=FAST)
  with pytest.raises(ValueError, match="x_train"):
    bg.poison(x[..., 0], y, num_poisons=1, **kw)
  with pytest.raises(ValueError, match="x_train"):
    bg.poison(x.astype(np.float32), y, num_poisons=1, **kw)  # > 1
  with pytest.raises(ValueError, match="y_train"):
    bg.poison(x, y[:-1], num_poisons=1, **kw)
  with pytest.raises(ValueError, match="x_val"):
    bg.poison(x, y, num_poisons=1, **{**kw, "x_val": xv[:, :4]})
  with pytest.raises(ValueError, match="num_poisons|count"):
    bg.poison(x, y, num_poisons=0, **kw)
  with pytest.raises(ValueError, match="key"):
    bg.poison(x, y, num_poisons=1, **{**kw, "key": 3})
  with pytest.raises(ValueError, match="config"):
    bg.poison(x, y, num_poisons=1, **{**kw, "config": {}})
  with pytest.raises(ValueError, match="num_classes"):
    bg.poison(x, y, num_poisons=1, num_classes=1, **kw)
  with pytest.raises(ValueError, match="target_map"):
    bg.poison(x, y, num_poisons=1, **{**kw, "config": FAST.replace(
        attack="specific", target_map=((1, 5),))})
  with pytest.raises(ValueError, match="y_poison"):
    bg.hypergradient(xv[:2], [0, 1, 1], x_train=x, y_train=y, **kw)
  with pytest.raises(ValueError, match="x_added"):
    bg.add_poisons(x, y, x_added=xv[:2, :4], y_added=yv[:2], count=1, **kw)


def test_config_module_does_not_import_jax():
  code = ("import sys; from ntga_tfds.transforms import back_gradient as bg; "
          "bg.stored_states(bg.BackGradientConfig()); "
          "print('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "False"

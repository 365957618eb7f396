"""The native (C++, XLA FFI) FNN kernel equals the pure-JAX one.

`transforms/ntga/_native/fnn_ntk.cc` computes the FNN's NTK from Gram matrix and
squared norms, and its backward pass, with the recursion of `_fnn_ntk`'s
pure-JAX path (itself tested against neural-tangents in
test_fnn_kernel.py), in float32 on the CPU. Checked here: values and the
cotangents of c0, p1 and p2, for row lengths with and without partial
vectors, the compiled depths and the run-time generic one; the gradient in
the inputs (also of the self-kernel K(x, x)); the attack's whole step; and
how `impl="auto"` chooses (float64, NTGA_TFDS_NATIVE=0).
"""

import jax
from jax.experimental import enable_x64
import jax.numpy as jnp
import numpy as np
import pytest

from ntga_tfds.transforms.ntga import _fnn_ntk
from ntga_tfds.transforms.ntga import _native
from ntga_tfds.transforms.ntga import kernels

pytestmark = pytest.mark.skipif(
    not _fnn_ntk.native_available(),
    reason=f"native FNN kernel unavailable: {_native.build_error('fnn_ntk')}")

ARCH = dict(W_std=kernels.W_STD, b_std=kernels.B_STD)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _inputs(n1, n2, d, seed):
  """Gram matrix and norms of uniform images, plus a cotangent for K."""
  rng = np.random.default_rng(seed)
  x1 = jnp.asarray(rng.uniform(size=(n1, d)), jnp.float32)
  x2 = jnp.asarray(rng.uniform(size=(n2, d)), jnp.float32)
  kb = jnp.asarray(rng.normal(size=(n1, n2)), jnp.float32)
  return (_fnn_ntk.gram(x1, x2), _fnn_ntk.sq_norms(x1), _fnn_ntk.sq_norms(x2),
          kb)


def _value_and_cotangents(impl, depth, c0, p1, p2, kb):
  @jax.jit
  def f(c0, p1, p2, kb):
    k, vjp = jax.vjp(
        lambda *a: _fnn_ntk.ntk_from_gram(*a, depth=depth, impl=impl, **ARCH),
        c0, p1, p2)
    return (k,) + vjp(kb)
  return [np.asarray(o) for o in f(c0, p1, p2, kb)]


# (n1, n2): partial vectors (n2 < 16, 16 < n2 < 64), whole 64-column tiles
# plus a remainder, and the attack's (chunk, block) shape.
@pytest.mark.parametrize("n1, n2", [(3, 5), (17, 37), (9, 133), (40, 512)])
@pytest.mark.parametrize("depth", [1, 5, 7])  # 7: the run-time depth path
def test_native_equals_pure_jax(n1, n2, depth):
  args = _inputs(n1, n2, 48, seed=n1 + n2)
  want = _value_and_cotangents("jax", depth, *args)
  got = _value_and_cotangents("native", depth, *args)
  for name, a, b in zip(("K", "c0_bar", "p1_bar", "p2_bar"), got, want):
    assert a.shape == b.shape and a.dtype == np.float32, name
    assert _rel(a, b) < 1e-5, (name, _rel(a, b))


def test_native_float32_agrees_with_float64():
  """Both float32 paths are within float32 rounding of float64."""
  c0, p1, p2, kb = _inputs(20, 70, 3072, seed=0)
  got = _value_and_cotangents("native", 5, c0, p1, p2, kb)
  with enable_x64():
    want = _value_and_cotangents(
        "jax", 5, *(jnp.asarray(a, jnp.float64) for a in (c0, p1, p2, kb)))
  for name, a, b in zip(("K", "c0_bar", "p1_bar", "p2_bar"), got, want):
    assert _rel(a, b) < 1e-5, (name, _rel(a, b))


def test_input_gradients_and_self_kernel_match_pure_jax():
  rng = np.random.default_rng(1)
  x1 = jnp.asarray(rng.uniform(size=(21, 30)), jnp.float32)
  x2 = jnp.asarray(rng.uniform(size=(19, 30)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(21, 19)), jnp.float32)
  gs = jnp.asarray(rng.normal(size=(21, 21)), jnp.float32)

  def outputs(impl):
    k = lambda a, b: _fnn_ntk.ntk(a, b, depth=5, impl=impl, **ARCH)

    @jax.jit
    def f(x1, x2):
      d1, d2 = jax.grad(lambda a, b: jnp.sum(k(a, b) * g), (0, 1))(x1, x2)
      ds = jax.grad(lambda x: jnp.sum(k(x, x) * gs))(x1)
      return k(x1, x2), d1, d2, k(x1, x1), ds
    return f(x1, x2)

  for a, b in zip(outputs("native"), outputs("jax")):
    assert _rel(a, b) < 1e-5


def test_backward_is_deterministic():
  """Column sums (p2_bar) are added in a fixed order, whatever thread ran
  which rows."""
  args = _inputs(300, 100, 16, seed=3)
  runs = [_value_and_cotangents("native", 5, *args) for _ in range(3)]
  for run in runs[1:]:
    for a, b in zip(run, runs[0]):
      np.testing.assert_array_equal(a, b)


def test_vmap_runs_the_calls_in_sequence():
  c0, p1, p2, _ = _inputs(6, 20, 8, seed=4)
  f = lambda c: _fnn_ntk.ntk_from_gram(c, p1, p2, depth=5, impl="native",
                                       **ARCH)
  batch = jnp.stack([c0, 0.5 * c0])
  np.testing.assert_array_equal(jax.vmap(f)(batch)[1], f(0.5 * c0))


def test_auto_is_native_for_float32_on_cpu_and_kernel_fn_uses_it():
  c0, p1, p2, _ = _inputs(4, 6, 8, seed=5)
  auto = lambda *a: _fnn_ntk.ntk_from_gram(*a, depth=5, **ARCH)
  assert "ntga_fnn_ntk" in jax.jit(auto).lower(c0, p1, p2).as_text()
  x = jnp.ones((3, 4, 4, 1), jnp.float32)
  k = kernels.kernel_fn("fnn", image_shape=(4, 4, 1), num_classes=10)
  assert "ntga_fnn_ntk" in jax.jit(k).lower(x, x).as_text()
  form = kernels.gram_form("fnn")
  assert "ntga_fnn_ntk" in jax.jit(form.from_gram).lower(c0, p1, p2).as_text()


def test_disabled_native_falls_back_to_pure_jax(monkeypatch):
  c0, p1, p2, _ = _inputs(4, 6, 8, seed=6)
  want = np.asarray(_fnn_ntk.ntk_from_gram(c0, p1, p2, depth=5,
                                           impl="native", **ARCH))
  monkeypatch.setenv("NTGA_TFDS_NATIVE", "0")
  assert not _fnn_ntk.native_available()
  auto = lambda *a: _fnn_ntk.ntk_from_gram(*a, depth=5, **ARCH)
  assert "ntga_fnn_ntk" not in jax.jit(auto).lower(c0, p1, p2).as_text()
  assert _rel(auto(c0, p1, p2), want) < 1e-5


def test_float64_inputs_use_pure_jax_and_native_refuses_them():
  with enable_x64():
    c0, p1, p2 = (jnp.asarray(a, jnp.float64)
                  for a in _inputs(4, 6, 8, seed=7)[:3])
    auto = lambda *a: _fnn_ntk.ntk_from_gram(*a, depth=5, **ARCH)
    assert "ntga_fnn_ntk" not in jax.jit(auto).lower(c0, p1, p2).as_text()
    assert auto(c0, p1, p2).dtype == jnp.float64
    with pytest.raises(ValueError, match="float32"):
      _fnn_ntk.ntk_from_gram(c0, p1, p2, depth=5, impl="native", **ARCH)
  with pytest.raises(ValueError, match="impl"):
    _fnn_ntk.ntk_from_gram(c0, p1, p2, depth=5, impl="cuda", **ARCH)


def _step(digits, monkeypatch, native: bool):
  """The attack's float32 loss and gradient (Gram form, chunked)."""
  from ntga_tfds.transforms.common import pgd  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import attack as ntga  # pylint: disable=g-import-not-at-top
  if not native:
    monkeypatch.setenv("NTGA_TFDS_NATIVE", "0")
  x, y = digits
  config = ntga.NTGAConfig(surrogate="fnn", eps=16 / 255, t=64.0,
                           val_chunk_size=23)
  c = ntga._check_inputs(x[:40], y[:40], x[1000:1070], y[1000:1070], 10,
                         config)
  val = ntga._validation_chunks(c, config, 40)
  ntga._programs.cache_clear()  # retrace under this environment
  try:
    programs = ntga._programs(ntga._math_key(config), 10, x.shape[1:])
    args = (jnp.asarray(pgd.snap(c.x)[0]), jax.nn.one_hot(c.y, 10), val)
    hlo = programs.loss_and_grad.lower(*args).as_text()
    assert ("ntga_fnn_ntk" in hlo) == native
    return programs.loss_and_grad(*args)
  finally:
    ntga._programs.cache_clear()
    monkeypatch.delenv("NTGA_TFDS_NATIVE", raising=False)


def test_ntga_step_native_equals_pure_jax(digits, monkeypatch):
  """The attack's step (both kernels: k_train_train and the validation
  chunks' Gram form) gives the loss and gradient of the pure-JAX path."""
  loss, grad = _step(digits, monkeypatch, native=True)
  want_loss, want_grad = _step(digits, monkeypatch, native=False)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert _rel(grad, want_grad) < 1e-4
  big = np.abs(want_grad) > 1e-3 * np.abs(want_grad).max()
  assert np.mean(np.sign(grad)[big] == np.sign(want_grad)[big]) > 0.999

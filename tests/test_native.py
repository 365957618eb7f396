"""The native (C++, XLA FFI) CNN kernel equals the pure-JAX one.

`transforms/ntga/_native/cnn_ntk.cc` computes the same formulas as the pure-JAX
`_cnn_ntk` kernel (itself tested against neural-tangents in
test_kernels.py), in float32 on the CPU: values, gradients w.r.t. both
arguments, and the self-kernel K(x, x) with its gradient, at MNIST- and
CIFAR-shaped images, the compiled 5x5 / 3x3 instances and the generic
run-time path (other filter sizes, channel counts, strides, depths). Also:
how `impl="auto"` chooses, and how a failed build is reported.
"""

import jax
import jax.numpy as jnp
from jax.experimental import enable_x64
import numpy as np
import pytest

from ntga_tfds.transforms.ntga import _cnn_ntk
from ntga_tfds.transforms.ntga import _native
from ntga_tfds.transforms.ntga import kernels

# Tests that run the C++ kernel need a compiler and an x86-64 CPU; elsewhere
# (no compiler, ARM, macOS) they are skipped with the build's reason, and the
# pure-JAX kernel runs the attack (test_ntga's pure-JAX test).
needs_native = pytest.mark.skipif(
    not _cnn_ntk.native_available(),
    reason=f"native CNN kernel unavailable: {_native.build_error('cnn_ntk')}")

SPECS = [  # (image_shape, depth, strides, filter_shape)
    ((28, 28, 1), 2, 2, (5, 5)),   # MNIST: the 5x5, C=1 instance
    ((32, 32, 3), 2, 2, (5, 5)),   # CIFAR-10: the 5x5, C=3 instance
    ((9, 11, 2), 3, 1, (3, 3)),    # generic channels, stride 1, depth 3
    ((10, 10, 1), 2, 3, (3, 3)),   # the 3x3, C=1 instance, stride 3
    ((7, 6, 1), 1, 2, (3, 5)),     # non-square filter: generic path
    # 5x5, stride 2, depth 3: 13 -> 7 -> 4 -> 2, so the ReLU feeding conv
    # layer 2 (7 -> 4, two columns of padding before) takes the stored
    # path and the one feeding layer 3 (4 -> 2) the fused one.
    ((13, 13, 1), 3, 2, (5, 5)),
    ((12, 12, 3), 1, 2, (5, 5)),   # depth 1: the first ReLU is the last
]


def _images(shape, n, seed):
  x = np.random.default_rng(seed).uniform(size=(n,) + shape)
  x[:, :2] = 0.0  # blank rows: exactly aligned windows, as in MNIST
  return jnp.asarray(x, jnp.float32)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _outputs(k, x1, x2, g, gs):
  @jax.jit
  def f(x1, x2):
    kv = k(x1, x2)
    d1, d2 = jax.grad(lambda a, b: jnp.sum(k(a, b) * g), (0, 1))(x1, x2)
    ks = k(x1, x1)
    ds = jax.grad(lambda x: jnp.sum(k(x, x) * gs))(x1)
    return kv, d1, d2, ks, ds
  return [np.asarray(o) for o in f(x1, x2)]


def _case(shape, depth, strides, filter_shape):
  """A spec, 19 x1 images (one full tile of 16 lanes and a partial one), 5
  x2 images, and cotangents for K(x1, x2) and K(x1, x1)."""
  spec = _cnn_ntk.CNNSpec(image_shape=shape, depth=depth, strides=strides,
                          filter_shape=filter_shape)
  x1, x2 = _images(shape, 19, 0), _images(shape, 5, 1)
  rng = np.random.default_rng(2)
  g = jnp.asarray(rng.normal(size=(19, 5)), jnp.float32)
  gs = jnp.asarray(rng.normal(size=(19, 19)), jnp.float32)
  return spec, x1, x2, g, gs


@needs_native
@pytest.mark.parametrize("shape, depth, strides, filter_shape", SPECS)
def test_native_equals_pure_jax(shape, depth, strides, filter_shape):
  spec, x1, x2, g, gs = _case(shape, depth, strides, filter_shape)
  native = _outputs(_cnn_ntk.ntk_fn(spec, impl="native"), x1, x2, g, gs)
  ref = _outputs(_cnn_ntk.ntk_fn(spec, impl="jax"), x1, x2, g, gs)
  for name, a, b in zip(("K", "dK/dx1", "dK/dx2", "K(x,x)", "dK(x,x)/dx"),
                        native, ref):
    assert a.dtype == np.float32
    assert _rel(a, b) < 2e-6, name
  ks = native[3]
  np.testing.assert_array_equal(ks, ks.T)


def _check_x2_gradient(image_shape, n1, n2, zero, seed):
  """Native against pure-JAX x2 gradients of sum(K * g), 5 x 5 at stride 2,
  with g set to zero on the (rows, column) slices in `zero`; a column that
  is all zero must give an exactly zero gradient."""
  spec = _cnn_ntk.CNNSpec(image_shape=image_shape, depth=2, strides=2,
                          filter_shape=(5, 5))
  x1, x2 = _images(image_shape, n1, seed), _images(image_shape, n2, seed + 1)
  g = np.random.default_rng(seed + 2).normal(size=(n1, n2)).astype(np.float32)
  for rows, j in zero:
    g[rows, j] = 0
  grad = lambda impl: np.asarray(jax.jit(jax.grad(
      lambda b: jnp.sum(_cnn_ntk.ntk_fn(spec, impl=impl)(x1, b) * g)))(x2))
  native, ref = grad("native"), grad("jax")
  for j in range(n2):
    if not np.any(g[:, j]):
      assert np.all(native[j] == 0), j
    else:
      assert _rel(native[j], ref[j]) < 2e-6, j


@needs_native
def test_gradient_tiles_in_pairs_and_alone():
  """The x2 gradient contracts two x1 tiles per sweep (5 x 5, stride 2):
  40 x1 images are a pair of tiles and a last one alone; the cotangents
  leave, per x2 image, tile 0 all zero (the pair's second tile alone),
  tile 1 all zero (its first alone), every tile zero, none zero."""
  _check_x2_gradient((28, 28, 1), 40, 4, seed=3, zero=[
      (slice(0, 16), 0), (slice(16, 32), 1), (slice(None), 2)])


@needs_native
def test_gradient_groups_of_tiles_and_images():
  """The x2 gradient runs (tile, image) pairs in groups of up to two tiles
  and two x2 images (5 x 5, stride 2): 27 x2 images make blocks of 3 (a
  pair and a lone image), 40 x1 images a pair of tiles and a lone one; some
  pairs have all-zero cotangents. RGB, so channels are summed too."""
  _check_x2_gradient((12, 12, 3), 40, 27, seed=6, zero=[
      (slice(0, 16), 0), (slice(16, 32), 4), (slice(None), 5),
      (slice(32, None), 7)])


@needs_native
def test_kernel_fn_default_is_native_on_cpu_and_nt_agrees():
  assert kernels.cnn_native_available()
  shape = (28, 28, 1)
  fast = kernels.kernel_fn("cnn", image_shape=shape, num_classes=10)
  nat = kernels.kernel_fn("cnn", image_shape=shape, num_classes=10,
                          impl="native")
  ref = kernels.kernel_fn("cnn", image_shape=shape, num_classes=10,
                          impl="nt")
  a, b = _images(shape, 3, 0), _images(shape, 4, 1)
  np.testing.assert_array_equal(jax.jit(fast)(a, b), jax.jit(nat)(a, b))
  assert _rel(jax.jit(fast)(a, b), jax.jit(ref)(a, b)) < 3e-5
  hlo = jax.jit(fast).lower(a, b).as_text()
  assert "ntga_cnn_ntk" in hlo


@needs_native
def test_disabled_native_falls_back_to_pure_jax(monkeypatch):
  shape = (9, 7, 1)
  spec = _cnn_ntk.CNNSpec(image_shape=shape)
  a, b = _images(shape, 5, 0), _images(shape, 3, 1)
  want = np.asarray(_cnn_ntk.ntk_fn(spec, impl="native")(a, b))
  monkeypatch.setenv("NTGA_TFDS_NATIVE", "0")
  assert not _native.enabled() and not kernels.cnn_native_available()
  k = _cnn_ntk.ntk_fn(spec)  # auto
  assert "ntga_cnn_ntk" not in jax.jit(k).lower(a, b).as_text()
  assert _rel(k(a, b), want) < 2e-6


def test_float64_inputs_use_pure_jax_and_native_refuses_them():
  from jax.experimental import enable_x64
  shape = (8, 8, 1)
  spec = _cnn_ntk.CNNSpec(image_shape=shape)
  with enable_x64():
    a = jnp.asarray(_images(shape, 3, 0), jnp.float64)
    out = _cnn_ntk.ntk_fn(spec)(a, a)
    assert out.dtype == jnp.float64
    with pytest.raises(ValueError, match="float32"):
      _cnn_ntk.ntk_fn(spec, impl="native")(a, a)
  with pytest.raises(ValueError, match="impl"):
    _cnn_ntk.ntk_fn(spec, impl="cuda")


def test_a_failed_build_is_reported_not_hidden(monkeypatch, tmp_path):
  monkeypatch.setenv("NTGA_TFDS_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
  _native.library_path.cache_clear()
  _native.build_error.cache_clear()
  try:
    with pytest.raises(_native.NativeUnavailable, match="building"):
      _native.library_path("cnn_ntk")
    assert not _native.available("cnn_ntk")
    assert "failed" in _native.build_error("cnn_ntk")
    assert not list(tmp_path.rglob("*.so"))  # no half-written library
  finally:
    _native.library_path.cache_clear()
    _native.build_error.cache_clear()
  with pytest.raises(ValueError, match="Unknown native library"):
    _native.library_path("nope")


@needs_native
def test_build_goes_to_the_cache_dir_and_is_reused(monkeypatch, tmp_path):
  monkeypatch.setenv("NTGA_TFDS_CACHE_DIR", str(tmp_path))
  _native.library_path.cache_clear()
  try:
    path = _native.library_path("cnn_ntk")
    assert path.parent == tmp_path / "native" and path.is_file()
    mtime = path.stat().st_mtime_ns
    _native.library_path.cache_clear()
    assert _native.library_path("cnn_ntk") == path
    assert path.stat().st_mtime_ns == mtime  # not rebuilt
  finally:
    _native.library_path.cache_clear()


@needs_native
def test_ntga_step_with_the_native_kernel_matches_float64(digits):
  """The attack's chunked float32 step, on the native kernel, gives the loss
  and gradient of the unchunked float64 formula (pure JAX)."""
  from jax.experimental import enable_x64
  from ntga_tfds.transforms.common import losses, pgd  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import attack as ntga  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import gp as predict  # pylint: disable=g-import-not-at-top
  x, y = digits
  x, y, xv, yv = x[:12], y[:12], x[1000:1070], y[1000:1070]
  config = ntga.NTGAConfig(surrogate="cnn", eps=16 / 255, t=64.0,
                           val_chunk_size=23)
  c = ntga._check_inputs(x, y, xv, yv, 10, config)
  val = ntga._validation_chunks(c, config, 12)
  programs = ntga._programs(ntga._math_key(config), 10, x.shape[1:])
  assert "ntga_cnn_ntk" in programs.loss_and_grad.lower(
      jnp.asarray(pgd.snap(c.x)[0]),
      jax.nn.one_hot(c.y, 10), val).as_text()
  loss, grad = programs.loss_and_grad(jnp.asarray(pgd.snap(c.x)[0]),
                                      jax.nn.one_hot(c.y, 10), val)
  with enable_x64():
    kernel = kernels.kernel_fn("cnn", image_shape=x.shape[1:],
                               num_classes=10)
    x0 = jnp.asarray(pgd.snap(c.x, np.float64)[0])
    xv0 = jnp.asarray(pgd.snap(c.x_val, np.float64)[0])
    y1h = jax.nn.one_hot(c.y, 10, dtype=jnp.float64)

    def plain(x):
      alpha = predict.mean_weights(kernel(x, x), y1h, t=config.t,
                                   diag_reg=config.diag_reg)
      return losses.cross_entropy(kernel(xv0, x) @ alpha, c.y_val,
                                  jnp.ones(70)) / 70

    want_loss, want_grad = jax.value_and_grad(plain)(x0)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert _rel(grad, want_grad) < 1e-3
  # The sign, which the attack steps along, agrees where it is not noise.
  big = np.abs(want_grad) > 1e-3 * np.abs(want_grad).max()
  assert np.mean(np.sign(grad)[big] == np.sign(want_grad)[big]) > 0.999


@needs_native
@pytest.mark.parametrize("shape, depth, strides, filter_shape", SPECS)
def test_native_float32_is_close_to_float64(shape, depth, strides,
                                            filter_shape):
  """theta from the smaller of |cos| and sin keeps float32 accurate near
  alignment (partly blank windows), in K and in both gradients."""
  spec, x1, x2, g, gs = _case(shape, depth, strides, filter_shape)
  native = _outputs(_cnn_ntk.ntk_fn(spec, impl="native"), x1, x2, g, gs)
  with enable_x64():
    exact = _outputs(_cnn_ntk.ntk_fn(spec, impl="jax"),
                     *(jnp.asarray(np.asarray(a), jnp.float64)
                       for a in (x1, x2, g, gs)))
  for name, a, b in zip(("K", "dK/dx1", "dK/dx2", "K(x,x)", "dK(x,x)/dx"),
                        native, exact):
    assert _rel(a, b) < 3e-6, name

"""The fast CNN NTK (`_cnn_ntk`) equals neural-tangents' stax kernel.

Values and gradients (w.r.t. both arguments, and through the self-kernel
K(x, x)) at MNIST-like, CIFAR-like and odd image shapes, strides 2 and 3,
depth 1 and 2, in float64 (to ~1e-10) and float32 (to ~1e-5).

On the diagonal of a self-kernel nt evaluates the ReLU angle as
atan2(sqrt(q11 q22 - q12^2), q12) with q11 and q12 summed in different
orders, so its diagonal carries sqrt(rounding) noise (~1e-9 relative in
float64, ~1e-5 in float32) where the exact value has angle 0; the fast
kernel uses the exact value. Diagonal entries are therefore compared to that
looser tolerance, everything else tightly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import enable_x64

from ntga_tfds.transforms.ntga import _cnn_ntk
from ntga_tfds.transforms.ntga import kernels

CASES = [  # (image_shape, strides, depth)
    ((28, 28, 1), 2, 2),
    ((32, 32, 3), 2, 2),
    ((9, 7, 2), 3, 1),
    ((9, 7, 2), 2, 2),
    ((9, 7, 2), 3, 2),
]


def _images(shape, n, seed, dtype=np.float64):
  """Uniform images with blank top rows (exactly aligned windows, as MNIST)."""
  x = np.random.default_rng(seed).uniform(size=(n,) + shape)
  x[:, :2] = 0.0
  return x.astype(dtype)


def _kernels(shape, strides, depth, **kw):
  common = dict(image_shape=shape, num_classes=10, depth=depth,
                strides=strides)
  return (kernels.kernel_fn("cnn", impl="fast", **common, **kw),
          kernels.kernel_fn("cnn", impl="nt", **common))


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _everything(k):
  """One compiled function: K(x1, x2), its gradients, K(x, x), its gradient."""

  @jax.jit
  def f(x1, x2, g, gs):
    kv = k(x1, x2)
    d1, d2 = jax.grad(lambda a, b: jnp.sum(k(a, b) * g), (0, 1))(x1, x2)
    ks = k(x2, x2)
    ds = jax.grad(lambda x: jnp.sum(k(x, x) * gs))(x2)
    return kv, d1, d2, ks, ds
  return f


@pytest.mark.parametrize("shape, strides, depth", CASES)
def test_float64_values_and_gradients_match_nt(shape, strides, depth):
  fast, ref = _kernels(shape, strides, depth, step_size=3)
  with enable_x64():
    args = (jnp.asarray(_images(shape, 3, 0)),
            jnp.asarray(_images(shape, 4, 1)),
            jnp.asarray(np.random.default_rng(2).normal(size=(3, 4))),
            jnp.asarray(np.random.default_rng(3).normal(size=(4, 4))))
    kf, f1, f2, ksf, dsf = map(np.asarray, _everything(fast)(*args))
    kr, r1, r2, ksr, dsr = map(np.asarray, _everything(ref)(*args))
  assert _rel(kf, kr) < 1e-12
  assert _rel(f1, r1) < 1e-12
  assert _rel(f2, r2) < 1e-12
  # Self-kernel: off-diagonal tight, diagonal to nt's rounding noise.
  off = ~np.eye(4, dtype=bool)
  assert _rel(ksf[off], ksr[off]) < 1e-12
  assert _rel(np.diag(ksf), np.diag(ksr)) < 1e-8
  np.testing.assert_array_equal(ksf, ksf.T)
  assert _rel(dsf, dsr) < 1e-7   # nt: 1/r-amplified noise at the diagonal


@pytest.mark.parametrize("shape, strides, depth", [CASES[0], CASES[1]])
def test_float32_matches_nt(shape, strides, depth):
  fast, ref = _kernels(shape, strides, depth)
  x1, x2 = _images(shape, 3, 0), _images(shape, 4, 1)
  g = np.random.default_rng(2).normal(size=(3, 4))
  gs = np.random.default_rng(3).normal(size=(4, 4))
  with enable_x64():
    out64 = map(np.asarray, _everything(ref)(
        *map(jnp.asarray, (x1, x2, g, gs))))
  out32 = _everything(fast)(*(jnp.asarray(a, jnp.float32)
                              for a in (x1, x2, g, gs)))
  assert all(o.dtype == jnp.float32 for o in out32)
  kr, r1, r2, ksr, dsr = out64
  kf, f1, f2, ksf, dsf = map(np.asarray, out32)
  assert _rel(kf, kr) < 2e-6
  assert _rel(f1, r1) < 1e-5
  assert _rel(f2, r2) < 1e-5
  # The self-kernel (one array object) has the exact diagonal: as close to
  # float64 as the rest (nt's float32 diagonal is off by ~1e-5).
  assert _rel(ksf, ksr) < 2e-6
  assert _rel(dsf, dsr) < 1e-5


def test_step_size_and_jit_do_not_change_the_result():
  shape = (9, 7, 2)
  x1 = jnp.asarray(_images(shape, 11, 0, np.float32))
  x2 = jnp.asarray(_images(shape, 5, 1, np.float32))
  outs = []
  for step in (1, 2, 5, 16):
    k = kernels.kernel_fn("cnn", image_shape=shape, num_classes=3,
                          step_size=step, impl="jax")
    outs.append(np.asarray(jax.jit(k)(x1, x2)))
  for out in outs[1:]:
    np.testing.assert_allclose(out, outs[0], rtol=1e-6)


def test_default_is_fast_and_two_dimensional_images_work():
  shape = (8, 8)
  fast = kernels.kernel_fn("cnn", image_shape=shape, num_classes=3)
  ref = kernels.kernel_fn("cnn", image_shape=shape, num_classes=3,
                          impl="nt")
  # Distinct images (identical pairs carry sqrt(rounding) noise in float32
  # through the general path, in nt and here alike).
  a = jnp.asarray(_images(shape, 2, 0, np.float32))
  b = jnp.asarray(_images(shape, 6, 1, np.float32))
  # Two float32 algorithms: rounding differs at ~1e-5 relative.
  assert _rel(jax.jit(fast)(a, b), jax.jit(ref)(a, b)) < 3e-5
  grad = jax.jit(jax.grad(lambda v: jnp.sum(fast(v, v))))(b)
  assert grad.shape == b.shape and bool(jnp.all(jnp.isfinite(grad)))


def test_flop_count_is_positive_and_grows_with_size():
  small = _cnn_ntk.flops_per_entry(_cnn_ntk.CNNSpec(image_shape=(28, 28, 1)))
  large = _cnn_ntk.flops_per_entry(_cnn_ntk.CNNSpec(image_shape=(32, 32, 3)))
  assert 0 < small["forward"] < small["forward_backward"]
  assert large["forward_backward"] > small["forward_backward"]


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="impl"):
    kernels.kernel_fn("cnn", image_shape=(8, 8, 1), num_classes=3,
                      impl="cuda")
  k = kernels.kernel_fn("cnn", image_shape=(8, 8, 1), num_classes=3)
  with pytest.raises(ValueError, match="shape"):
    k(jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 8, 9, 1)))


@pytest.mark.parametrize("surrogate", ["fnn", "cnn"])
def test_every_impl_computes_the_same_kernel(surrogate):
  shape = (8, 8, 1)
  rng = np.random.default_rng(0)
  x1 = rng.uniform(size=(5,) + shape).astype(np.float32)
  x2 = rng.uniform(size=(3,) + shape).astype(np.float32)
  out = {impl: np.asarray(jax.jit(kernels.kernel_fn(
      surrogate, image_shape=shape, num_classes=10, impl=impl))(x1, x2))
         for impl in kernels.IMPLS}
  for impl in ("fast", "native", "jax"):
    np.testing.assert_allclose(out[impl], out["nt"], rtol=2e-5)
  with pytest.raises(ValueError, match="impl"):
    kernels.kernel_fn(surrogate, image_shape=shape, num_classes=10,
                      impl="exact")

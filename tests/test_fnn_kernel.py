"""The fused FNN NTK and the vectorised atan equal their references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import enable_x64
from neural_tangents import stax

from ntga_tfds.transforms.ntga import _fastmath
from ntga_tfds.transforms.ntga import _fnn_ntk
from ntga_tfds.transforms.ntga import kernels


def _nt_fnn(depth):
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(512, kernels.W_STD, kernels.B_STD), stax.Erf()]
  return stax.serial(*layers)[2]


def test_atan_float32_accuracy_and_exact_derivative():
  t = np.concatenate([np.linspace(-60, 60, 100001),
                      np.logspace(-9, 9, 5001), -np.logspace(-9, 9, 5001),
                      [0.0]]).astype(np.float32)
  ours = np.asarray(_fastmath.atan(jnp.asarray(t)), np.float64)
  ref = np.arctan(t.astype(np.float64))
  assert np.max(np.abs(ours - ref)) < 3e-7
  grads = jax.vmap(jax.grad(_fastmath.atan))(jnp.asarray(t))
  np.testing.assert_allclose(grads, 1 / (1 + t.astype(np.float64) ** 2),
                             rtol=1e-6, atol=1e-30)


def test_atan_float64_is_exact():
  with enable_x64():
    t = np.linspace(-20, 20, 1001)
    np.testing.assert_allclose(_fastmath.atan(jnp.asarray(t)), np.arctan(t),
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_fused_fnn_ntk_equals_neural_tangents(depth):
  rng = np.random.default_rng(depth)
  with enable_x64():
    x1, x2 = rng.uniform(size=(9, 40)), rng.uniform(size=(6, 40))
    ours = _fnn_ntk.ntk(x1, x2, depth=depth, W_std=kernels.W_STD,
                        b_std=kernels.B_STD)
    ref = _nt_fnn(depth)(x1, x2, "ntk")
    np.testing.assert_allclose(ours, ref, rtol=1e-12)

    def ours_sum(x):
      return jnp.sum(jnp.sin(_fnn_ntk.ntk(x1, x, depth=depth,
                                          W_std=kernels.W_STD,
                                          b_std=kernels.B_STD)))

    def ref_sum(x):
      return jnp.sum(jnp.sin(_nt_fnn(depth)(x1, x, "ntk")))

    np.testing.assert_allclose(jax.grad(ours_sum)(x2), jax.grad(ref_sum)(x2),
                               rtol=1e-9)
  x1, x2 = x1.astype(np.float32), x2.astype(np.float32)
  ours32 = _fnn_ntk.ntk(x1, x2, depth=depth, W_std=kernels.W_STD,
                        b_std=kernels.B_STD)
  np.testing.assert_allclose(ours32, ref, rtol=2e-5)


def test_kernel_fn_fnn_uses_the_fused_kernel():
  rng = np.random.default_rng(0)
  x1 = rng.uniform(size=(4, 3, 3, 2)).astype(np.float32)
  x2 = rng.uniform(size=(5, 3, 3, 2)).astype(np.float32)
  k = kernels.kernel_fn("fnn", image_shape=(3, 3, 2), num_classes=10)
  fused = _fnn_ntk.ntk(x1.reshape(4, -1), x2.reshape(5, -1), depth=5,
                       W_std=kernels.W_STD, b_std=kernels.B_STD)
  np.testing.assert_array_equal(k(x1, x2), fused)


@pytest.mark.parametrize("depth", [1, 3])
def test_fused_fnn_ntk_gradients_in_both_arguments_and_self_kernel(depth):
  """The hand-written VJP: first argument, second argument, and K(x, x)."""
  rng = np.random.default_rng(10 + depth)
  kw = dict(depth=depth, W_std=kernels.W_STD, b_std=kernels.B_STD)
  with enable_x64():
    x1, x2 = rng.uniform(size=(7, 30)), rng.uniform(size=(5, 30))
    w = rng.normal(size=(7, 5))
    w_self = rng.normal(size=(5, 5))
    cases = [
        (lambda a: jnp.sum(w * _fnn_ntk.ntk(a, x2, **kw)),
         lambda a: jnp.sum(w * _nt_fnn(depth)(a, x2, "ntk")), x1),
        (lambda a: jnp.sum(w * _fnn_ntk.ntk(x1, a, **kw) ** 2),
         lambda a: jnp.sum(w * _nt_fnn(depth)(x1, a, "ntk") ** 2), x2),
        (lambda a: jnp.sum(w_self * _fnn_ntk.ntk(a, a, **kw)),
         lambda a: jnp.sum(w_self * _nt_fnn(depth)(a, a, "ntk")), x2),
    ]
    for ours, ref, at in cases:
      np.testing.assert_allclose(jax.grad(ours)(at), jax.grad(ref)(at),
                                 rtol=1e-9, atol=1e-12)


def test_self_gram_backward_is_one_matmul_with_the_same_gradient():
  """`ntk(x, x)` (one array object) differentiates its Gram matrix as
  (g + g^T) x / d: the gradient of gram(x1, x2) at x1 = x2 = x, with one
  matmul against x instead of two."""
  rng = np.random.default_rng(3)
  with enable_x64():
    x = rng.uniform(size=(6, 20))
    g = rng.normal(size=(6, 6))
    got = jax.grad(lambda a: jnp.sum(g * _fnn_ntk.self_gram(a)))(x)
    want = jax.grad(lambda a: jnp.sum(g * _fnn_ntk.gram(a, a + 0.0)))(x)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    np.testing.assert_allclose(_fnn_ntk.self_gram(x), _fnn_ntk.gram(x, x),
                               rtol=1e-15)

    def dots(f):
      jaxpr = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(g * f(a))))(x)
      return str(jaxpr).count("dot_general")

    assert dots(_fnn_ntk.self_gram) == dots(lambda a: _fnn_ntk.gram(a, a)) - 1

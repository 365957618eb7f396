"""The differentiable GP mean equals neural-tangents' predictor."""

import math

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
import pytest
from jax.experimental import enable_x64

from ntga_tfds.transforms.ntga import kernels
from ntga_tfds.transforms.ntga import gp as predict


def _problem(dtype, n_train=24, n_test=7, shape=(5, 5, 2), classes=3, seed=0):
  rng = np.random.default_rng(seed)
  x_train = rng.uniform(size=(n_train,) + shape).astype(dtype)
  x_test = rng.uniform(size=(n_test,) + shape).astype(dtype)
  y = np.eye(classes, dtype=dtype)[rng.integers(0, classes, n_train)]
  return x_train, x_test, y


@pytest.mark.parametrize("surrogate", ["fnn", "cnn"])
@pytest.mark.parametrize("t", [1.0, 64.0, 4096.0, math.inf])
@pytest.mark.parametrize("diag_reg", [1e-4, 1e-2])
def test_matches_nt_predict(surrogate, t, diag_reg):
  with enable_x64():
    x_train, x_test, y = _problem(np.float64)
    k = kernels.kernel_fn(surrogate, image_shape=x_train.shape[1:],
                          num_classes=3)
    k_tt, k_st = k(x_train, x_train), k(x_test, x_train)
    ours = predict.mean_prediction(k_tt, y, k_st, t=t, diag_reg=diag_reg)
    predict_fn = nt.predict.gradient_descent_mse(k_tt, y, diag_reg=diag_reg)
    theirs = predict_fn(None if math.isinf(t) else t, 0., 0., k_st)[1]
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_absolute_diag_reg_and_learning_rate_match_nt():
  with enable_x64():
    x_train, x_test, y = _problem(np.float64)
    k = kernels.kernel_fn("fnn", image_shape=x_train.shape[1:], num_classes=3)
    k_tt, k_st = k(x_train, x_train), k(x_test, x_train)
    ours = predict.mean_prediction(k_tt, y, k_st, t=3.0, diag_reg=0.05,
                                   diag_reg_absolute_scale=True,
                                   learning_rate=2.0)
    theirs = nt.predict.gradient_descent_mse(
        k_tt, y, learning_rate=2.0, diag_reg=0.05,
        diag_reg_absolute_scale=True)(3.0, 0., 0., k_st)[1]
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_float32_close_to_float64():
  x_train, x_test, y = _problem(np.float32)
  k = kernels.kernel_fn("fnn", image_shape=x_train.shape[1:], num_classes=3)
  ours = predict.mean_prediction(k(x_train, x_train), y, k(x_test, x_train),
                                 t=64.0, diag_reg=1e-4)
  with enable_x64():
    x64 = [a.astype(np.float64) for a in (x_train, x_test, y)]
    ref = predict.mean_prediction(k(x64[0], x64[0]), x64[2],
                                  k(x64[1], x64[0]), t=64.0, diag_reg=1e-4)
  np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("surrogate", ["fnn", "cnn"])
@pytest.mark.parametrize("t", [2.0, 64.0, math.inf])
def test_gradient_matches_finite_differences(surrogate, t):
  """d loss / d x_train, through kernel and eigendecomposition, vs FD."""
  with enable_x64():
    x_train, x_test, y = _problem(np.float64, n_train=10, n_test=4,
                                  shape=(4, 4, 1))
    k = kernels.kernel_fn(surrogate, image_shape=x_train.shape[1:],
                          num_classes=3)
    labels = jnp.array([0, 1, 2, 1])

    def loss(x):
      fx = predict.mean_prediction(k(x, x), y, k(x_test, x), t=t,
                                   diag_reg=1e-3)
      return -jnp.mean(jax.nn.log_softmax(fx)[jnp.arange(4), labels])

    grad = jax.grad(loss)(x_train)
    rng = np.random.default_rng(1)
    for _ in range(3):
      direction = rng.normal(size=x_train.shape)
      h = 1e-5
      fd = (loss(x_train + h * direction) - loss(x_train - h * direction)) / (
          2 * h)
      np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-5,
                                 atol=1e-9)


def test_gradient_finite_with_repeated_eigenvalues():
  """Duplicate training images give equal eigenvalues; grads stay finite."""
  with enable_x64():
    x_train, x_test, y = _problem(np.float64, n_train=8, n_test=3,
                                  shape=(3, 3, 1))
    x_train[1] = x_train[0]
    x_train[3] = x_train[2]
    k = kernels.kernel_fn("fnn", image_shape=x_train.shape[1:], num_classes=3)

    def loss(x):
      return jnp.sum(predict.mean_prediction(k(x, x), y, k(x_test, x),
                                             t=16.0, diag_reg=0.0) ** 2)

    grad = jax.grad(loss)(x_train)
    assert np.all(np.isfinite(grad))
    direction = np.random.default_rng(2).normal(size=x_train.shape)
    h = 1e-5
    fd = (loss(x_train + h * direction) - loss(x_train - h * direction)) / (
        2 * h)
    np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-4)


@pytest.mark.parametrize("t", [1.0, 64.0, math.inf])
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("n_real", [1, 9, 24])
def test_masked_padding_gives_the_real_examples_weights(t, absolute, n_real):
  """A padded kernel with a mask gives the unpadded weights, 0 for padding,
  and the same gradient in the real kernel entries."""
  with enable_x64():
    x_train, x_test, y = _problem(np.float64)
    k = kernels.kernel_fn("fnn", image_shape=x_train.shape[1:],
                          num_classes=3)
    k_tt = k(x_train, x_train)   # 24 examples: the first n_real are real
    mask = (np.arange(24) < n_real).astype(np.float64)
    y_pad = y * mask[:, None]    # padding targets are zero
    kw = dict(t=t, diag_reg=1e-2, diag_reg_absolute_scale=absolute)
    real = predict.mean_weights(k_tt[:n_real, :n_real], y[:n_real], **kw)
    padded = predict.mean_weights(k_tt, y_pad, mask=jnp.asarray(mask), **kw)
    np.testing.assert_allclose(padded[:n_real], real, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(padded[n_real:], 0.0, atol=1e-12)

    probe = np.random.default_rng(1).normal(size=y.shape)

    def real_fn(kk):
      return jnp.sum(predict.mean_weights(kk, y[:n_real], **kw)
                     * probe[:n_real])

    def padded_fn(kk):
      return jnp.sum(predict.mean_weights(kk, y_pad, mask=mask, **kw)
                     * probe)

    g_real = jax.grad(real_fn)(k_tt[:n_real, :n_real])
    g_pad = jax.grad(padded_fn)(k_tt)
    np.testing.assert_allclose(g_pad[:n_real, :n_real], g_real, rtol=1e-7,
                               atol=1e-10)
    # The padding's own entries do not reach the result.
    np.testing.assert_allclose(g_pad[n_real:, :], 0.0, atol=1e-12)


def test_an_all_ones_mask_changes_nothing():
  x_train, _, y = _problem(np.float32)
  k = kernels.kernel_fn("fnn", image_shape=x_train.shape[1:], num_classes=3)
  k_tt = k(x_train, x_train)
  plain = predict.mean_weights(k_tt, y, t=64.0, diag_reg=1e-4)
  masked = predict.mean_weights(k_tt, y, t=64.0, diag_reg=1e-4,
                                mask=jnp.ones(24))
  np.testing.assert_array_equal(plain, masked)

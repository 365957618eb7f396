"""Differentiable mean prediction of an NTK Gaussian process after time t.

A network trained by gradient descent on the MSE loss, in the infinite width
limit, is a Gaussian process whose mean on test inputs after training time t
has the closed form (Lee et al., 2019)

  mu(t) = k_test_train @ k_train_train^{-1} (I - exp(-k_train_train t / n)) y

with n = y_train.size. `nt.predict.gradient_descent_mse` computes the same
value, but caches an eigendecomposition outside the trace and so cannot sit
under `jax.grad`. This module computes it as a pure function with:

* `diag_reg` relative to the mean trace of `k_train_train` (or absolute),
* eigenvalues clipped at 0,
* time normalised by `y_train.size`,
* `t = inf` through a Cholesky solve,

and gradients of the matrix function from the Daleckii-Krein formula (divided
differences of the eigenvalue function), which stays finite when eigenvalues
are close, where differentiating `eigh` itself divides by their gap.

Everything reduces to the weights `alpha = f(k_train_train) y_train`, so that
`mu = k_test_train @ alpha`: a caller can compute `alpha` once and apply it to
any number of test chunks.

Example:

  >>> alpha = predict.mean_weights(k_train_train, y_train, t=64.)
  >>> fx_test = k_test_train @ alpha          # (n_test, classes)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import jax.scipy as jsp


def _phi(z):
  """(1 - exp(-z)) / z for z >= 0, with its limit 1 at 0."""
  small = z < 1e-3
  zs = jnp.where(small, 1.0, z)
  series = 1.0 - z / 2 + z * z / 6 - z ** 3 / 24
  return jnp.where(small, series, -jnp.expm1(-zs) / zs)


def _dphi(z):
  """d/dz of `_phi`, by its Taylor series near 0 (no cancellation)."""
  small = z < 0.1
  zs = jnp.where(small, 1.0, z)
  series = (-0.5 + z / 3 - z ** 2 / 8 + z ** 3 / 30 - z ** 4 / 144
            + z ** 5 / 840)
  return jnp.where(small, series, (jnp.exp(-zs) * (1 + zs) - 1) / zs ** 2)


def _h(evals, a):
  """The eigenvalue function of the finite-time predictor: (1-e^{-a l})/l."""
  return a * _phi(a * jnp.maximum(evals, 0.0))


def _dh(evals, a):
  return jnp.where(evals > 0, a * a * _dphi(a * jnp.maximum(evals, 0.0)), 0.0)


def _divided_differences(evals, a):
  """H_ij = (h(l_i) - h(l_j)) / (l_i - l_j), and h'(.) where l_i ~ l_j."""
  hv = _h(evals, a)
  li, lj = evals[:, None], evals[None, :]
  gap = li - lj
  scale = jnp.maximum(1.0 / a, jnp.maximum(jnp.abs(li), jnp.abs(lj)))
  close = jnp.abs(gap) <= 0.02 * scale
  safe_gap = jnp.where(close, 1.0, gap)
  return jnp.where(close, _dh((li + lj) / 2, a),
                   (hv[:, None] - hv[None, :]) / safe_gap)


def _eigh(k):
  """`jnp.linalg.eigh` of a symmetric `k`, read once and in row-major order.

  `jnp.linalg.eigh` first symmetrises its input, (k + k^T) / 2, and LAPACK
  takes it column-major: both made XLA compute the elementwise kernel that
  produces `k` in transposed order, with strided reads (16 ms of a 110 ms
  FNN step at block 512). `k` is symmetric here, so LAPACK gets `k^T`,
  whose column-major layout is `k`'s row-major one, unsymmetrised (it reads
  one triangle).
  """
  return jnp.linalg.eigh(k.T, symmetrize_input=False)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _spectral_apply(k, y, a):
  """h(k) @ y for symmetric k, h(l) = (1 - exp(-a max(l, 0))) / l."""
  evals, evecs = _eigh(k)
  return evecs @ (_h(evals, a)[:, None] * (evecs.T @ y))


@_spectral_apply.defjvp
def _spectral_apply_jvp(a, primals, tangents):
  k, y = primals
  dk, dy = tangents
  evals, evecs = _eigh(k)
  hv = _h(evals, a)[:, None]
  qty = evecs.T @ y
  out = evecs @ (hv * qty)
  dk_eig = evecs.T @ ((dk + dk.T) / 2) @ evecs
  d_out = evecs @ ((_divided_differences(evals, a) * dk_eig) @ qty
                   + hv * (evecs.T @ dy))
  return out, d_out


def regularize(k_train_train, diag_reg: float, *,
               diag_reg_absolute_scale: bool = False):
  """k + diag_reg * I, diag_reg scaled by the mean trace unless absolute."""
  n = k_train_train.shape[0]
  scale = diag_reg
  if not diag_reg_absolute_scale:
    scale = diag_reg * jnp.trace(k_train_train) / n
  return k_train_train + scale * jnp.eye(n, dtype=k_train_train.dtype)


def mean_weights(k_train_train, y_train, *, t: float, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False,
                 learning_rate: float = 1.0, mask=None):
  """`alpha` with `mean prediction = k_test_train @ alpha`.

  Args:
    k_train_train: `(n, n)` NTK of the training inputs.
    y_train: `(n, c)` regression targets (one-hot labels).
    t: training time (> 0), `math.inf` for the converged predictor.
    diag_reg: diagonal regulariser, relative to the mean trace unless
      `diag_reg_absolute_scale`.
    learning_rate: multiplies `t`, as in `nt.predict.gradient_descent_mse`.
    mask: optional `(n,)`, 1 for real training examples and 0 for padding
      (it may be traced). The result is that of the real examples alone,
      up to rounding, with zero weights for the padding: one compiled shape
      serves blocks of any size up to `n` (see `pad_train`).

  Returns:
    `(n, c)` array, differentiable in `k_train_train` and `y_train`.

  Example:
    >>> alpha = mean_weights(k_train_train, y_train, t=64., diag_reg=1e-4)
  """
  k = k_train_train
  y = y_train.astype(k.dtype)
  scale = None
  if mask is not None:
    k, y, scale = pad_train(k, y, mask)
  k = regularize(k, diag_reg, diag_reg_absolute_scale=diag_reg_absolute_scale)
  t = float(t) * learning_rate
  if math.isinf(t):
    return jsp.linalg.cho_solve(jsp.linalg.cho_factor(k, lower=False), y)
  if scale is None:
    return _spectral_apply(k, y, t / y_train.size)
  # h_a(l) = (1 - exp(-a l)) / l with a = t / (n_real c), from the padded
  # size's a / s, s = n / n_real: h_a(K) = s h_{a/s}(s K).
  return scale * _spectral_apply(scale * k, y, t / y_train.size)


def pad_train(k_train_train, y_train, mask):
  """The kernel and targets of a padded training set, padding decoupled.

  Padding rows and columns of `k_train_train` become those of `d * I`, with
  `d` the real examples' mean diagonal (so the mean trace, which scales a
  relative `diag_reg`, is the real one), and padding targets become 0. The
  kernel is then block diagonal and the padding's weights are 0.

  Args:
    k_train_train: `(n, n)`.
    y_train: `(n, c)`.
    mask: `(n,)`, 1 for real examples, 0 for padding.

  Returns:
    `(k, y, s)`: the padded kernel and targets, and `s = n / n_real`, by
    which the finite-time predictor's time normalisation (per target) is
    corrected.
  """
  m = mask.astype(k_train_train.dtype)
  n_real = jnp.sum(m)
  mean_diag = jnp.sum(jnp.diagonal(k_train_train) * m) / n_real
  k = (k_train_train * m[:, None] * m[None, :]
       + jnp.diag((1 - m) * mean_diag))
  return k, y_train * m[:, None], m.shape[0] / n_real


def mean_prediction(k_train_train, y_train, k_test_train, *, t: float,
                    diag_reg: float = 0.0,
                    diag_reg_absolute_scale: bool = False,
                    learning_rate: float = 1.0):
  """GP mean on the test inputs after time `t`: `(n_test, c)`.

  Equals `nt.predict.gradient_descent_mse(k_train_train, y_train,
  learning_rate, diag_reg, diag_reg_absolute_scale)(t, 0., 0., k_test_train)`
  for zero initial outputs (the infinite-width mean), and can be
  differentiated.
  """
  alpha = mean_weights(k_train_train, y_train, t=t, diag_reg=diag_reg,
                       diag_reg_absolute_scale=diag_reg_absolute_scale,
                       learning_rate=learning_rate)
  return k_test_train @ alpha

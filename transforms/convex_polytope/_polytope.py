"""The convex polytope objective: simplex projection, coefficients, loss.

For one network with features phi, poisons `x_1 .. x_P` and a target `t`:

  loss = || phi(t) - sum_j c_j phi(x_j) ||^2 / || phi(t) ||^2,
  c in the probability simplex {c >= 0, sum_j c_j = 1}.

The coefficients solve a least-squares problem on the simplex,

  min_c || F^T c - phi(t) ||^2,   F = [phi(x_1); ..; phi(x_P)]   (P, d),

by projected gradient descent (the reference's `least_squares_simplex`),
here with the exact step 1 / lambda_max(F F^T) instead of an estimate and
backtracking, warm-started from the previous solution. All functions are
batched over leading axes (networks, layers, targets) and jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-30


def simplex_projection(v):
  """The Euclidean projection of `v` onto the probability simplex.

  argmin_w ||w - v||_2 subject to w >= 0, sum(w) = 1, by sorting (Held et
  al. 1974; Duchi et al. 2008): with `u` = `v` sorted in decreasing order,
  rho = max{j : u_j - (sum_{i<=j} u_i - 1) / j > 0}, theta = (sum_{i<=rho}
  u_i - 1) / rho, and w = max(v - theta, 0). Exact up to rounding.

  Args:
    v: array `(..., n)`, n >= 1; each vector along the last axis is
      projected.

  Returns:
    Array of `v`'s shape (and floating dtype): non-negative, each vector
    summing to 1.
  """
  v = jnp.asarray(v)
  if not jnp.issubdtype(v.dtype, jnp.floating):
    v = v.astype(jnp.result_type(float))
  if v.ndim == 0 or v.shape[-1] == 0:
    raise ValueError(f"v must have shape (..., n) with n >= 1, got shape "
                     f"{v.shape}.")
  n = v.shape[-1]
  u = -jnp.sort(-v, axis=-1)
  css = jnp.cumsum(u, axis=-1) - 1
  ind = jnp.arange(1, n + 1, dtype=v.dtype)
  cond = u - css / ind > 0
  # The condition holds on a prefix; j = 1 always holds (u_1 - u_1 + 1 > 0).
  rho = jnp.maximum(jnp.max(jnp.where(cond, jnp.arange(1, n + 1), 0),
                            axis=-1, keepdims=True), 1)
  theta = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0)


def simplex_least_squares(gram, cross, init, *, tol: float, max_steps: int):
  """min over the simplex of `c^T gram c - 2 c^T cross` (= ||F^T c - b||^2
  up to a constant, with `gram = F F^T`, `cross = F b`).

  Projected gradient descent with step `1 / lambda_max(gram)` from `init`,
  until the relative change `||c_new - c|| / max(||c||, 1e-8)` of every
  problem of the batch is below `tol`, or `max_steps` steps (the
  reference's stopping rule).

  Args:
    gram: `(..., P, P)` symmetric positive semi-definite.
    cross: `(..., P)`.
    init: `(..., P)` starting point (projected first).
    tol: relative-change tolerance.
    max_steps: most iterations.

  Returns:
    `(..., P)` coefficients on the simplex.
  """
  lipschitz = jnp.linalg.eigvalsh(gram)[..., -1]
  step = 1.0 / jnp.maximum(lipschitz, _TINY)[..., None]

  def update(c):
    grad = jnp.einsum("...ij,...j->...i", gram, c) - cross
    return simplex_projection(c - step * grad)

  def cond(state):
    i, _, change = state
    return jnp.logical_and(i < max_steps, change >= tol)

  def body(state):
    i, c, _ = state
    c_new = update(c)
    rel = (jnp.linalg.norm(c_new - c, axis=-1)
           / jnp.maximum(jnp.linalg.norm(c, axis=-1), 1e-8))
    return i + 1, c_new, jnp.max(rel)

  c0 = simplex_projection(init)
  _, c, _ = jax.lax.while_loop(
      cond, body, (jnp.asarray(0), c0, jnp.asarray(jnp.inf, c0.dtype)))
  return c


def solve_coefficients(poison_feats, target_feats, init, *, tol: float,
                       max_steps: int):
  """The simplex coefficients that best rebuild each target's features.

  Args:
    poison_feats: `(..., P, d)` features of the poisons.
    target_feats: `(..., K, d)` features of the targets.
    init: `(..., K, P)` starting coefficients.
    tol, max_steps: see `simplex_least_squares`.

  Returns:
    `(..., K, P)` coefficients, each row on the simplex (no gradient flows
    through them).
  """
  poison_feats = jax.lax.stop_gradient(poison_feats)
  target_feats = jax.lax.stop_gradient(target_feats)
  gram = jnp.einsum("...pd,...qd->...pq", poison_feats, poison_feats)
  cross = jnp.einsum("...pd,...kd->...kp", poison_feats, target_feats)
  gram = jnp.broadcast_to(gram[..., None, :, :],
                          cross.shape + (cross.shape[-1],))
  return simplex_least_squares(gram, cross, init, tol=tol,
                               max_steps=max_steps)


def polytope_loss(poison_feats, target_feats, coeffs):
  """Sum over the batch and targets of the relative residual.

  Args:
    poison_feats: `(..., P, d)`.
    target_feats: `(..., K, d)`.
    coeffs: `(..., K, P)`.

  Returns:
    Scalar: sum of `||t_k - sum_j c_kj p_j||^2 / ||t_k||^2`.
  """
  recon = jnp.einsum("...kp,...pd->...kd", coeffs, poison_feats)
  residual = jnp.sum((target_feats - recon) ** 2, axis=-1)
  norm = jnp.maximum(jnp.sum(target_feats ** 2, axis=-1), _TINY)
  return jnp.sum(residual / norm)

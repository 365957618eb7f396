"""The FNN surrogate's NTK, [Dense, Erf] x depth, as one fused computation.

Same values as `neural_tangents.stax.serial(*[Dense(w, W_std, b_std), Erf()]
* depth)`'s `kernel_fn(x1, x2, "ntk")` (NTK parameterisation), written out so
that XLA fuses all layers' elementwise work into one pass over the
`(n1, n2)` entries after the single Gram matmul, and keeps per-example
variances as vectors instead of recomputing them per pair. On CIFAR-shaped
input this makes the kernel cost close to that of its Gram matmul.

Recursion (q: per-example variance, g: cross-covariance, k: NTK):

  g = x1 x2^T / d,  q_i = |x_i|^2 / d,  k = 0
  Dense:  g <- W^2 g + b^2,  q <- W^2 q + b^2,  k <- g + W^2 k
  Erf:    s = sqrt((1 + 2 q1)(1 + 2 q2) - 4 g^2)
          k <- k * 4 / (pi s),  g <- 2/pi atan(2 g / s),
          q <- 2/pi atan2(q, sqrt(q + 1/4))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ntga_tfds.transforms import _fastmath


def ntk(x1, x2, *, depth: int, W_std: float, b_std: float):
  """NTK `(n1, n2)` of `depth` x [Dense, Erf] for `x1 (n1, d)`, `x2 (n2, d)`."""
  d = x1.shape[-1]
  w2, b2 = W_std ** 2, b_std ** 2
  g = (x1 @ x2.T) / d
  q1 = jnp.sum(x1 * x1, axis=-1) / d
  q2 = jnp.sum(x2 * x2, axis=-1) / d
  k = jnp.zeros_like(g)
  for _ in range(depth):
    g = w2 * g + b2
    q1, q2 = w2 * q1 + b2, w2 * q2 + b2
    k = g + w2 * k
    # r = 1 / s; written with rsqrt and products, no divisions (a division
    # per entry costs 4x the rest of the layer on CPU).
    r = jax.lax.rsqrt(jnp.maximum(
        (1 + 2 * q1)[:, None] * (1 + 2 * q2)[None, :] - 4 * g * g, 1e-30))
    k = k * (4 / jnp.pi) * r
    g = (2 / jnp.pi) * _fastmath.atan(2 * g * r)
    q1 = (2 / jnp.pi) * _fastmath.atan(q1 * jax.lax.rsqrt(q1 + 0.25))
    q2 = (2 / jnp.pi) * _fastmath.atan(q2 * jax.lax.rsqrt(q2 + 0.25))
  return k

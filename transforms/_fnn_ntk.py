"""The FNN surrogate's NTK, [Dense, Erf] x depth, fused, with its own VJP.

Same values as `neural_tangents.stax.serial(*[Dense(w, W_std, b_std), Erf()]
* depth)`'s `kernel_fn(x1, x2, "ntk")` (NTK parameterisation), written out so
that XLA fuses all layers' elementwise work into one pass over the
`(n1, n2)` entries after the single Gram matmul, and keeps per-example
variances as vectors instead of recomputing them per pair.

Recursion (q: per-example variance, g: cross-covariance, k: NTK):

  g = x1 x2^T / d,  q_i = |x_i|^2 / d,  k = 0
  Dense:  g <- W^2 g + b^2,  q <- W^2 q + b^2,  k <- g + W^2 k
  Erf:    r = 1 / sqrt((1 + 2 q1)(1 + 2 q2) - 4 g^2)
          k <- k * 4 r / pi,  g <- 2/pi atan(2 g r),
          q <- 2/pi atan(q / sqrt(q + 1/4))

The kernel is split at the Gram matrix: `ntk_from_gram(c0, p1, p2)` is the
elementwise part, from `c0 = gram(x1, x2)` and `p = sq_norms(x)`, so that a
caller can compute the Gram matrix of many pairs in one matmul and the
per-example terms of fixed inputs once (`ntga` does both for its validation
set). Its backward pass is written out (`jax.custom_vjp`): it recomputes the
layers from the saved Gram matrix and runs the recursion backwards in one
fused pass per layer; per-example terms go through `jax.jvp` of the (tiny)
variance recursion. The matmuls against the inputs are JAX's own transposes
of `gram`, so a gradient nobody uses (the validation images') is never
computed.

CPU performance notes (XLA:CPU, jaxlib 0.5.3), measured on this project's
2-core machine at (5000, 512) entries, CIFAR-sized inputs:

* A division per entry costs 4x the rest of a layer: `rsqrt` and products
  are used instead, and `_fastmath.atan` instead of XLA's scalar `atan2`.
* When an elementwise fusion writes its result into the buffer of its own
  input (XLA reuses a dead operand's buffer), the loop is not vectorised:
  the 5-layer pass took 0.19 s in place against 0.02 s out of place.
  `_out_of_place` prevents that buffer reuse; it made the forward kernel
  0.31 s -> 0.11 s (the Gram matmul alone: 0.09 s). `_cnn_ntk` avoids the
  same trap with its stages.
* The backward pass starts behind an optimisation barrier, so that XLA does
  not merge its recomputed layers with the forward pass's: merged, every
  layer's arrays were materialised one by one.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ntga_tfds.transforms import _fastmath

_TINY = 1e-30


def _out_of_place(out, src):
  """`out` (computed elementwise from `src`), never written over `src`.

  XLA lets an elementwise fusion overwrite an operand's buffer when every
  read of that operand is at the output's own index. Reading one more,
  fixed element of `src` (times zero, which XLA does not fold away for
  floats) breaks that condition, so the fusion writes to a fresh buffer and
  stays vectorised.
  """
  corner = src[(slice(0, 1),) * src.ndim]
  return out + jnp.zeros((), out.dtype) * corner.astype(out.dtype)


def _variances(sq_norms, *, depth, w2, b2):
  """`(depth, n)`: 1 + 2 q_l, the per-example factor of each Erf layer."""
  p = sq_norms
  out = []
  for _ in range(depth):
    q = w2 * p + b2
    out.append(1 + 2 * q)
    p = (2 / math.pi) * _fastmath.atan(q * jax.lax.rsqrt(q + 0.25))
  return jnp.stack(out)


def _layers(c0, a1, a2, *, w2, b2):
  """Forward through the layers from c0 = x1 x2^T / d; keeps each layer."""
  c, k = c0, None
  saved = []
  for a1l, a2l in zip(a1, a2):
    g = w2 * c + b2
    kp = g if k is None else g + w2 * k
    det = a1l[:, None] * a2l[None, :] - 4 * g * g
    r = jax.lax.rsqrt(jnp.maximum(det, _TINY))
    k = kp * (4 / math.pi) * r
    c = (2 / math.pi) * _fastmath.atan(2 * g * r)
    saved.append((g, kp, r, det > _TINY))
  return k, saved


def sq_norms(x):
  """`(n,)`: p = |x_i|^2 / d for flat inputs `x (n, d)`."""
  return jnp.sum(x * x, axis=-1) / x.shape[-1]


def gram(x1, x2):
  """`(n1, n2)`: c0 = x1 x2^T / d for flat inputs."""
  return x1 @ x2.T / x1.shape[-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _from_gram(c0, p1, p2, depth, w2, b2):
  a1 = _variances(p1, depth=depth, w2=w2, b2=b2)
  a2 = _variances(p2, depth=depth, w2=w2, b2=b2)
  k, _ = _layers(c0, a1, a2, w2=w2, b2=b2)
  return _out_of_place(k, c0)


def _from_gram_fwd(c0, p1, p2, depth, w2, b2):
  return _from_gram(c0, p1, p2, depth, w2, b2), (c0, p1, p2)


def _from_gram_bwd(depth, w2, b2, res, k_bar):
  # The barrier keeps XLA from merging this recomputation with the forward
  # pass's (common subexpressions): merged, every layer's arrays would be
  # materialised separately instead of living in two fused passes.
  c0, p1, p2 = jax.lax.optimization_barrier(res)
  # Per-example chains: a_l = 1 + 2 q_l depends on p only, so its gradient
  # is (d a_l / d p) times the pair terms, summed over layers inside the one
  # elementwise pass below (e1, e2), then over pairs.
  chain = functools.partial(_variances, depth=depth, w2=w2, b2=b2)
  a1, s1 = jax.jvp(chain, (p1,), (jnp.ones_like(p1),))
  a2, s2 = jax.jvp(chain, (p2,), (jnp.ones_like(p2),))
  _, saved = _layers(c0, a1, a2, w2=w2, b2=b2)
  kb, cb = k_bar, None
  e1 = e2 = None
  for l in reversed(range(depth)):
    g, kp, r, active = saved[l]
    kp_bar = kb * (4 / math.pi) * r
    r_bar = kb * (4 / math.pi) * kp
    g_bar = kp_bar
    if cb is not None:  # c = 2/pi atan(u), u = 2 g r
      u = 2 * g * r
      dc = cb * (2 / math.pi) / (1 + u * u)
      r_bar = r_bar + dc * 2 * g
      g_bar = g_bar + dc * 2 * r
    # r = det^(-1/2), det = a1 a2 - 4 g^2 (constant where clipped).
    det_bar = jnp.where(active, -0.5 * r * r * r * r_bar, 0.0)
    g_bar = g_bar - 8 * g * det_bar
    t1 = det_bar * a2[l][None, :] * s1[l][:, None]
    t2 = det_bar * a1[l][:, None] * s2[l][None, :]
    e1 = t1 if e1 is None else e1 + t1
    e2 = t2 if e2 is None else e2 + t2
    kb = w2 * kp_bar
    cb = w2 * g_bar
  return _out_of_place(cb, k_bar), jnp.sum(e1, 1), jnp.sum(e2, 0)


_from_gram.defvjp(_from_gram_fwd, _from_gram_bwd)


def ntk_from_gram(c0, p1, p2, *, depth: int, W_std: float, b_std: float):
  """The NTK from its inputs' Gram matrix and squared norms.

  The FNN's NTK sees its inputs only through `c0 = gram(x1, x2)` and
  `p = sq_norms(x)`. A caller that evaluates many kernels against fixed
  inputs can compute those terms once (the attack's validation set) or in
  one large matmul instead of many small ones.

  Args:
    c0: `(n1, n2)` = x1 x2^T / d.
    p1: `(n1,)` = |x1_i|^2 / d.
    p2: `(n2,)` = |x2_j|^2 / d.
    depth, W_std, b_std: the [Dense, Erf] stack.

  Returns:
    `(n1, n2)` NTK, differentiable in reverse mode in all three arrays.
  """
  return _from_gram(c0, p1, p2, int(depth), float(W_std) ** 2,
                    float(b_std) ** 2)


def ntk(x1, x2, *, depth: int, W_std: float, b_std: float):
  """NTK `(n1, n2)` of `depth` x [Dense, Erf] for `x1 (n1, d)`, `x2 (n2, d)`.

  Differentiable in reverse mode in both inputs (the two matmuls against
  the inputs are JAX's own transposes of `gram`).
  """
  return ntk_from_gram(gram(x1, x2), sq_norms(x1), sq_norms(x2), depth=depth,
                       W_std=W_std, b_std=b_std)

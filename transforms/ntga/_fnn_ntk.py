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
set). Its backward pass is written out (`jax.custom_vjp`): from the saved Gram
matrix, one pass runs the recursion backwards to the Gram matrix's
cotangent, and one forward-mode pass per argument gives the norms'
cotangents (see `_from_gram_bwd` for why, and for how XLA:CPU's fusion
decisions shaped it). The matmuls against the inputs are JAX's own transposes
of `gram`, so a gradient nobody uses (the validation images') is never
computed.

Two implementations of `ntk_from_gram` (`impl`), same values:

* native (the default for float32 on the CPU): `_native/fnn_ntk.cc`, one
  C++ pass for the kernel and one for all three cotangents, on XLA's
  intra-op threads, called through XLA FFI. At (2000, 512) entries on this
  project's 2-core machine: ~1.6 ns per entry forward and ~2.3 backward,
  against ~5 and ~20 for the pure-JAX passes, which XLA:CPU runs
  single-threaded (a CIFAR-10 attack step: 0.46 s -> 0.34 s).
* jax: the pure-JAX passes described below, for float64, GPUs, or where no
  C++ compiler is found or NTGA_TFDS_NATIVE=0.

CPU performance notes on the pure-JAX path (XLA:CPU, jaxlib 0.5.3),
measured on this project's 2-core machine at (5000, 512) entries,
CIFAR-sized inputs:

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

from ntga_tfds.transforms.ntga import _fastmath

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


def _per_example_arrays(*vectors):
  """The per-example factors, computed once, before the loops over pairs.

  Left to itself, XLA:CPU fused their (cheap-looking) recursion, atan and
  all, into every pair's iteration.
  """
  return jax.lax.optimization_barrier(vectors)


def sq_norms(x):
  """`(n,)`: p = |x_i|^2 / d for flat inputs `x (n, d)`."""
  return jnp.sum(x * x, axis=-1) / x.shape[-1]


def gram(x1, x2):
  """`(n1, n2)`: c0 = x1 x2^T / d for flat inputs."""
  return x1 @ x2.T / x1.shape[-1]


@jax.custom_vjp
def self_gram(x):
  """`gram(x, x)`, whose backward pass is one matmul, (g + g^T) x / d.

  Differentiated as `gram(x1, x2)` at x1 = x2 = x, JAX's backward is two
  matmuls, g x and g^T x, added afterwards (XLA does not merge them):
  7.5 ms each at (512, 3072) on this project's machine, per attack step.
  """
  return gram(x, x)


def _self_gram_fwd(x):
  return gram(x, x), x


def _self_gram_bwd(x, g):
  return ((g + g.T) @ x / x.shape[-1],)


self_gram.defvjp(_self_gram_fwd, _self_gram_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _from_gram(c0, p1, p2, depth, w2, b2):
  a1, a2 = _per_example_arrays(_variances(p1, depth=depth, w2=w2, b2=b2),
                               _variances(p2, depth=depth, w2=w2, b2=b2))
  k, _ = _layers(c0, a1, a2, w2=w2, b2=b2)
  return _out_of_place(k, c0)


def _from_gram_fwd(c0, p1, p2, depth, w2, b2):
  return _from_gram(c0, p1, p2, depth, w2, b2), (c0, p1, p2)


def _c0_bar(c0, a1, a2, k_bar, *, w2, b2):
  """The layers' recursion run backwards: the Gram matrix's cotangent."""
  _, saved = _layers(c0, a1, a2, w2=w2, b2=b2)
  kb, cb = k_bar, None
  for l in reversed(range(len(saved))):
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
    kb = w2 * kp_bar
    cb = w2 * g_bar
  return _out_of_place(cb, k_bar)


def _norm_tangent(c0, a1, a2, da1, da2, *, w2, b2):
  """d k / d t for per-example factors moving as a + t da (c0 fixed).

  Forward mode through the same recursion: with da2 = d a / d p2 (da1 =
  None), entry (i, j) is d k_ij / d p2_j, since k_ij depends on p2 only
  through p2_j. Written out rather than `jax.jvp` of `_layers`, which XLA
  compiled into a split pass at 81 ms against 6 ms here (2000 x 512).
  """
  c, k, dc, dk = c0, None, None, None
  for l in range(len(a1)):
    g = w2 * c + b2
    dg = None if dc is None else w2 * dc
    kp = g if k is None else g + w2 * k
    dkp = dg if dk is None else (w2 * dk if dg is None else dg + w2 * dk)
    det = a1[l][:, None] * a2[l][None, :] - 4 * g * g
    ddet = (da1[l][:, None] * a2[l][None, :] if da1 is not None
            else a1[l][:, None] * da2[l][None, :])
    if dg is not None:
      ddet = ddet - 8 * g * dg
    # det >= 1 + 2 q1 + 2 q2 > 0 (|g| <= sqrt(q1 q2)): never clipped.
    r = jax.lax.rsqrt(jnp.maximum(det, _TINY))
    dr = -0.5 * r * r * r * ddet
    k = kp * (4 / math.pi) * r
    dk = (4 / math.pi) * (kp * dr if dkp is None else kp * dr + dkp * r)
    # c = 2/pi atan(u), u = 2 g r; d atan(u) = du / (1 + u^2), and
    # 1 + u^2 = a1 a2 / det. Written as det * (1 / (a1 a2)): with
    # `det / outer` (the product shared with `det`), XLA:CPU split the pass
    # into materialising fusions, 10x slower.
    u = 2 * g * r
    du = 2 * g * dr if dg is None else 2 * (g * dr + dg * r)
    c = (2 / math.pi) * _fastmath.atan(u)
    dc = (2 / math.pi) * du * (det * (1 / (a1[l][:, None] * a2[l][None, :])))
  return dk


def _from_gram_bwd(depth, w2, b2, res, k_bar):
  """c0_bar by the recursion run backwards; p1_bar, p2_bar by forward mode.

  k_ij depends on p2 only through p2_j, so one forward-mode pass with the
  tangent d a / d p2 gives every d k_ij / d p2_j at once, and p2_bar is the
  column sums of k_bar times it (p1_bar likewise, row sums). Each pass is
  one elementwise loop over the pairs that recomputes the layers from the
  saved Gram matrix, 5-10 ns per pair at 2000 x 512 here.

  How XLA:CPU fuses this matters more than the arithmetic. In the backward
  recursion, the norms' cotangents gave its intermediates several users,
  and XLA split it into ~25 fusions that each materialised arrays, with the
  sums fused whole into single-threaded reductions: 96 ms against 9 ms for
  c0_bar alone. Independent passes were merged again into one slow
  multi-output fusion (75 ms), so each pass starts behind a barrier that
  carries the previous pass's result: 16 ms for c0_bar and p2_bar. An
  unused output (the validation chunks' p1_bar) is dead code, never
  computed.
  """
  kw = dict(w2=w2, b2=b2)
  chain = functools.partial(_variances, depth=depth, **kw)

  def inputs(after):
    c0, p1, p2, kb, _ = jax.lax.optimization_barrier((*res, k_bar, after))
    a1, s1 = jax.jvp(chain, (p1,), (jnp.ones_like(p1),))
    a2, s2 = jax.jvp(chain, (p2,), (jnp.ones_like(p2),))
    return (c0, *_per_example_arrays(a1, a2, s1, s2), kb)

  c0, a1, a2, _, _, kb = inputs(0)
  c0_bar = _c0_bar(c0, a1, a2, kb, **kw)
  c0, a1, a2, _, s2, kb = inputs(c0_bar)
  p2_bar = _col_sums(kb * _norm_tangent(c0, a1, a2, None, s2, **kw))
  c0, a1, a2, s1, _, kb = inputs(p2_bar)
  p1_bar = _row_sums(kb * _norm_tangent(c0, a1, a2, s1, None, **kw))
  return c0_bar, p1_bar, p2_bar


def _row_sums(e):
  """`jnp.sum(e, 1)`, as a matmul with a ones matrix (two columns, so that
  the dot is not strength-reduced back into a reduction, which XLA:CPU
  would fuse with the pass producing `e` into a single-threaded loop)."""
  return (e @ jnp.ones((e.shape[1], 2), e.dtype))[:, 0]


def _col_sums(e):
  """`jnp.sum(e, 0)`, likewise (no transpose: XLA would then produce `e`
  column-major, with strided writes)."""
  return (jnp.ones((2, e.shape[0]), e.dtype) @ e)[0]


_from_gram.defvjp(_from_gram_fwd, _from_gram_bwd)


# The native (C++, XLA FFI) kernel: same recursion, see `_native/fnn_ntk.cc`.


def _ffi_params(depth, w2, b2):
  """The architecture as the C++ kernel reads it (see `Params` there)."""
  return jnp.asarray([depth, w2, b2], jnp.float32)


def _native_forward(c0, p1, p2, depth, w2, b2):
  out = jax.ShapeDtypeStruct(c0.shape, jnp.float32)
  return jax.ffi.ffi_call("ntga_fnn_ntk", out, vmap_method="sequential")(
      c0, p1, p2, _ffi_params(depth, w2, b2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _native_from_gram(c0, p1, p2, depth, w2, b2):
  return _native_forward(c0, p1, p2, depth, w2, b2)


def _native_from_gram_fwd(c0, p1, p2, depth, w2, b2):
  return _native_forward(c0, p1, p2, depth, w2, b2), (c0, p1, p2)


def _native_from_gram_bwd(depth, w2, b2, res, k_bar):
  """All three cotangents from one C++ pass that recomputes the layers."""
  c0, p1, p2 = res
  outs = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in res)
  return jax.ffi.ffi_call("ntga_fnn_ntk_bwd", outs, vmap_method="sequential")(
      c0, p1, p2, k_bar.astype(jnp.float32), _ffi_params(depth, w2, b2))


_native_from_gram.defvjp(_native_from_gram_fwd, _native_from_gram_bwd)


def native_available() -> bool:
  """Whether the C++ kernel can run here: JAX on the CPU, and it builds."""
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  return _native.available("fnn_ntk")


def ntk_from_gram(c0, p1, p2, *, depth: int, W_std: float, b_std: float,
                  impl: str = "auto"):
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
    impl: "native" (the C++ kernel, float32 on the CPU; see `_native`),
      "jax" (pure JAX, any dtype and device), or "auto": native when all
      three arrays are float32, JAX runs on the CPU and the kernel builds
      (not with NTGA_TFDS_NATIVE=0), else jax.

  Returns:
    `(n1, n2)` NTK, differentiable in reverse mode in all three arrays.

  Raises:
    ValueError: a bad `impl`; "native" on other than float32 arrays.
    NativeUnavailable: "native" where the kernel cannot be built.
  """
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  args = (c0, p1, p2, int(depth), float(W_std) ** 2, float(b_std) ** 2)
  if _native.use_native("fnn_ntk", impl,
                        [jnp.result_type(a) for a in (c0, p1, p2)]):
    return _native_from_gram(*args)
  return _from_gram(*args)


def ntk(x1, x2, *, depth: int, W_std: float, b_std: float,
        impl: str = "auto"):
  """NTK `(n1, n2)` of `depth` x [Dense, Erf] for `x1 (n1, d)`, `x2 (n2, d)`.

  Differentiable in reverse mode in both inputs (the two matmuls against
  the inputs are JAX's own transposes of `gram`). `ntk(x, x)` with one
  array object for both arguments is the self-kernel, whose Gram matrix
  costs one matmul in the backward pass (`self_gram`). `impl` as in
  `ntk_from_gram`.
  """
  if x1 is x2:
    p = sq_norms(x1)
    return ntk_from_gram(self_gram(x1), p, p, depth=depth, W_std=W_std,
                         b_std=b_std, impl=impl)
  return ntk_from_gram(gram(x1, x2), sq_norms(x1), sq_norms(x2), depth=depth,
                       W_std=W_std, b_std=b_std, impl=impl)

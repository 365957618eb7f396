"""Fast exact NTK of the NTGA CNN surrogate, in pure JAX.

The surrogate (see `kernels.cnn`) is

  depth x [Conv(kh x kw, stride s, SAME, W_std, b_std), ReLU],
  Flatten, Dense, ..., Dense        (num_dense layers, same W_std, b_std)

in neural-tangents' NTK parameterisation. Its infinite-width NTK, as
`neural_tangents.stax` computes it, is (a = W_std^2, b = b_std^2, f = kh kw):

* input:   nngp0[i,j,p] = x1[i,p,:] . x2[j,p,:] / C  at every pixel p (only
           same-position covariances are ever needed: the readout is Flatten,
           which averages the diagonal, and a conv of a diagonal-spatial
           kernel only reads diagonal entries); ntk0 = 0.
* Conv:    nngp' = a/f * box(nngp) + b,  ntk' = a/f * box(ntk) + nngp', with
           box the (kh, kw) window sum at stride s over the zero-padded
           ('SAME') map, divided by f whether or not the window overlaps the
           padding. Self-variances q11, q22 follow the same map per image.
* ReLU:    r = sqrt(max(q11 q22 - q12^2, 0)), theta = atan2(r, q12),
           dot = 1/2 - theta / (2 pi),
           nngp' = r / (2 pi) + dot q12,  ntk' = dot ntk,  q11' = q11 / 2.
* Flatten: mean over positions.
* Dense:   nngp' = a nngp + b,  ntk' = nngp' + a ntk.

This module evaluates exactly that (same formulas; in float64 the same
to ~1e-16) in two implementations, chosen by `ntk_fn(impl=...)`:

* native (the default for float32 on the CPU): `_native/cnn_ntk.cc`, one
  C++ pass per (x2 image, tile of 16 x1 images) through every layer,
  vectorised over the tile and threaded over x2 images (OpenMP), called
  through XLA FFI (`_native_kernel`). XLA:CPU runs the pure-JAX version's
  small per-step ops one at a time on one core; this measured 2.9x faster per
  NTGA step on 2 cores (MNIST, block 512, 10,000 validation images). The
  self-variances and their chain rule stay in JAX (`_flat_variances`).
* pure JAX (float64, GPUs, and where no C++ compiler is found or
  NTGA_TFDS_NATIVE=0), organised for speed on CPU (XLA:CPU):

* Per-image quantities (self-variances q11, q22 and 1 / sqrt of them) are
  computed once per image, not per pair (`_self_variances`, `_prepare`).
* Only same-position covariances are formed; the kernel between x1 (n1
  images) and x2 (n2) walks x2 in steps of `nb` images (`lax.map`); a step's
  pair arrays have layout (nb, Hl, Wl, n1): the x1 images are the minor,
  vectorised axis, and small steps keep a step's arrays in the L2 cache.
* The first conv's cross-covariance is a separable window sum of the
  product of the (pre-padded) images: row sums at stride s with the product
  fused in, then column sums.
* theta: float32 takes acos(|cos theta|) as asin of the smaller of
  |cos theta| = |q12| / sqrt(q11 q22) and sin theta = r / sqrt(q11 q22),
  r = sqrt(q11 q22 - q12^2), by one polynomial on [0, 1/sqrt(2)]
  (|error| < 1.5e-8 turns; XLA's CPU atan2 / acos are scalar libm calls,
  ~20 ns each), with 1 / sqrt(q11 q22) a product of per-image factors (no
  per-pair division); where q11 q22 - q12^2 <= 0, r = 0 gives nt's exact
  theta = 0 (or pi). Near alignment this is as accurate as r (float64
  comparison: 3-16x closer than acos(|cos theta|) by polynomial, which
  loses digits at small theta). float64 uses `jnp.arctan2` as nt does.
* Stages (`_stage`) are separate XLA computations, so that each ReLU's
  square root and polynomial are evaluated once per position and stored,
  instead of being re-fused into each tap of the next window sum.
* The backward pass is hand-written (`jax.custom_vjp`): per step it
  recomputes the forward, propagates the cotangent through the ReLUs in
  closed form and through transposed window sums (in polyphase form: no
  dilating pads), and contracts the first layer against x1 as a reduction
  over the x1 images (the minor axis). Steps are independent: nothing is
  accumulated across them. The kernel computes the gradient w.r.t. its
  second argument; the first argument's uses K(x1, x2) = K(x2, x1)^T, and
  for the self-kernel K(x, x) the cotangent is symmetrised (gK + gK^T), so
  one pass gives the full gradient.
* ReLU derivatives follow nt's conventions where r = 0 (inputs exactly
  aligned): the theta terms contribute nothing. On the diagonal of a
  self-kernel r is set to exactly 0 (theta = 0), the exact value, instead of
  the square root of float rounding noise (nt's diagonal carries ~1e-5
  relative noise in float32 for that reason).

Layouts: images are NHWC. All shapes in docstrings: n1, n2 batch sizes,
(H, W, C) image, (Hl, Wl) the map after conv layer l.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

_TWO_PI = 2 * math.pi
# asin(z) / (2 pi) ~ z Q(z^2) on [0, 1/sqrt(2)], fitted for uniform absolute
# error: < 1.4e-8 turns evaluated in float32 (the same coefficients as the
# native kernel's `AsinTurnsQ`, which leaves the factor z to its caller).
_ASIN_TURNS_COEFFS = (1.5915491987e-01, 2.6527921430e-02, 1.1881593366e-02,
                      7.7472055906e-03, 9.3051074311e-04, 1.6611153765e-02,
                      -2.0517343658e-02, 2.0779819463e-02)
# Below this, sqrt(q11 q22 - q12^2) counts as 0 for derivatives (nt's
# `_sqrt` custom JVP uses the squared threshold 1e-30).
_R_TOL = 1e-15


@dataclasses.dataclass(frozen=True)
class CNNSpec:
  """The surrogate's architecture, as far as its NTK depends on it.

  Attributes:
    image_shape: (H, W, C).
    depth: number of [Conv, ReLU] blocks.
    filter_shape: (kh, kw).
    strides: s, in both spatial dimensions.
    W_std, b_std: weight and bias standard deviations (all layers).
    num_dense: Dense layers after Flatten (hidden layers + readout).
  """
  image_shape: Tuple[int, int, int]
  depth: int = 2
  filter_shape: Tuple[int, int] = (5, 5)
  strides: int = 2
  W_std: float = math.sqrt(1.76)
  b_std: float = math.sqrt(0.18)
  num_dense: int = 3

  def layer_shapes(self) -> List[Tuple[int, int]]:
    """[(H1, W1), ..., (HL, WL)]: map sizes after each conv layer."""
    h, w = self.image_shape[:2]
    out = []
    for _ in range(self.depth):
      h, w = -(-h // self.strides), -(-w // self.strides)
      out.append((h, w))
    return out


# ----------------------------------------------------------------------------
# Geometry helpers.


def _same_pads(size: int, k: int, s: int) -> Tuple[int, int, int]:
  """(out, lo, hi) of 'SAME' padding, as `lax.padtype_to_pads`."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return out, total // 2, total - total // 2


def _taps(x, k: int, s: int, n: int, axis: int, start: int = 0):
  """The k strided slices x[start + d :: s][:n] along `axis`, d < k."""
  return [lax.slice_in_dim(x, start + d, start + d + s * (n - 1) + 1, s, axis)
          for d in range(k)]


def _box(x, axis: int, k: int, s: int):
  """'SAME' window sum (size k, stride s) along `axis` (pads inside)."""
  out, lo, hi = _same_pads(x.shape[axis], k, s)
  cfg = [(0, 0, 0)] * x.ndim
  cfg[axis] = (lo, hi, 0)
  xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)
  return sum(_taps(xp, k, s, out, axis))


def _phase_taps(g, axis: int, k: int, s: int, rho: int, n_out: int):
  """E[a] = sum over d < k, d = rho (mod s), of g[a - (d - rho) / s].

  One phase of a transposed strided window sum: position s a + rho of the
  (padded) input map receives E[a]. g is zero outside [0, len); a ranges
  over [0, n_out). Unit-stride slices of an edge-padded g: fusible.
  """
  taps = [d for d in range(k) if d % s == rho]
  if not taps:
    shape = list(g.shape)
    shape[axis] = n_out
    return jnp.zeros(shape, g.dtype)
  back = (taps[-1] - rho) // s
  cfg = [(0, 0, 0)] * g.ndim
  cfg[axis] = (back, max(0, n_out - g.shape[axis]), 0)
  gp = lax.pad(g, jnp.zeros((), g.dtype), cfg)
  return sum(lax.slice_in_dim(gp, back - (d - rho) // s,
                              back - (d - rho) // s + n_out, 1, axis)
             for d in taps)


def _interleave(parts, axis: int):
  """parts[rho][..., a, ...] -> out[..., s a + rho, ...] (same lengths)."""
  inter = jnp.stack(parts, axis + 1)
  shape = list(parts[0].shape)
  shape[axis] *= len(parts)
  return inter.reshape(shape)


def _box_t(g, axis: int, size: int, k: int, s: int, lo: int):
  """Transpose of a window sum along `axis` (onto a map of length `size`).

  `y[p] = sum_d xpad[s p + d]` (d < k) with `x = xpad[lo : lo + size]`;
  returns `x`'s cotangent given `y`'s, `g`: the s phases of `_phase_taps`,
  interleaved, cropped. No dilating (interior) pad, which XLA:CPU does not
  fuse.
  """
  n_a = -(-(lo + size) // s)
  inter = _interleave([_phase_taps(g, axis, k, s, rho, n_a)
                       for rho in range(s)], axis)
  return lax.slice_in_dim(inter, lo, lo + size, 1, axis)


def _asin_turns(z):
  """asin(z) / (2 pi) for z in [0, 1/sqrt(2)] (float32 polynomial)."""
  u = z * z
  p = _ASIN_TURNS_COEFFS[-1]
  for c in _ASIN_TURNS_COEFFS[-2::-1]:
    p = p * u + c
  return z * p


def _dot(q, r, inv_s12):
  """1/2 - theta / (2 pi), theta = atan2(r, q) the angle between two ReLU
  inputs.

  Args:
    q: cross-covariance q12.
    r: sqrt(max(q11 q22 - q12^2, 0)), 0 for aligned inputs (nt's d).
    inv_s12: 1 / sqrt(q11 q22) (products of per-image factors).

  float64: `jnp.arctan2`, exactly nt's formula. float32: acos(|cos theta|)
  / (2 pi) is asin(sin theta) where cos theta is the larger, else 1/4 -
  asin(|cos theta|), from one polynomial on [0, 1/sqrt(2)].
  """
  if q.dtype == jnp.float64:
    return 0.5 - jnp.arctan2(r, q) / _TWO_PI
  x = jnp.abs(q) * inv_s12
  y = r * inv_s12
  s = _asin_turns(jnp.minimum(x, y))
  a = jnp.where(x > y, s, 0.25 - s)
  return jnp.where(q >= 0, 0.5 - a, a)


def _dense(n, t, spec: CNNSpec):
  a, b = spec.W_std ** 2, spec.b_std ** 2
  for _ in range(spec.num_dense):
    n = a * n + b
    t = n + a * t
  return t


# ----------------------------------------------------------------------------
# Per-image quantities.


def _self_variances(x, spec: CNNSpec) -> List[jnp.ndarray]:
  """Pre-ReLU self-variances of each conv layer.

  Args:
    x: (n, H, W, C) images.
    spec: the architecture.

  Returns:
    [q_1, ..., q_L], q_l of shape (n, Hl, Wl): nt's `cov1` after conv l.
  """
  kh, kw = spec.filter_shape
  s = spec.strides
  c = spec.W_std ** 2 / (kh * kw)
  v = jnp.mean(x * x, -1)
  out = []
  for layer in range(spec.depth):
    if layer:
      v = v * 0.5  # ReLU: cov' = cov / 2
    v = c * _box(_box(v, 2, kw, s), 1, kh, s) + spec.b_std ** 2
    out.append(v)
  return out


# ----------------------------------------------------------------------------
# One step: nb images of x2 against all na images of x1.
#
# Pair arrays have layout (nb, Hl, Wl, na): the x1 images are the minor,
# vectorised axis (many of them), the step's x2 images the major one (few).
# Reductions over x1 images are then minor-axis reductions, which XLA fuses
# with their producers, and a step needs no accumulator carried between
# steps. Materialised arrays are stacked or reshaped so that no fusion
# writes in place over a same-shaped operand (XLA:CPU then falls back to
# scalar code: LLVM's runtime alias check fails for exact aliasing).


class _Geometry:
  """Static sizes of the computation."""

  def __init__(self, spec: CNNSpec):
    self.spec = spec
    H, W, _ = spec.image_shape
    kh, kw = spec.filter_shape
    s = spec.strides
    self.H1, self.lo_h, self.hi_h = _same_pads(H, kh, s)
    self.W1, self.lo_w, self.hi_w = _same_pads(W, kw, s)
    self.Hp = H + self.lo_h + self.hi_h
    self.Wp = W + self.lo_w + self.hi_w
    self.shapes = spec.layer_shapes()
    self.c = spec.W_std ** 2 / (kh * kw)
    self.b = spec.b_std ** 2


def _sum_minor(x, lanes: int = 32):
  """Sum over the last axis, fused with the producer of x.

  XLA:CPU rewrites a reduction over more than 32 elements into a
  reduce-window (which does not fuse, so the summand is materialised). Summing
  unrolled 32-lane slices first keeps one fusion.
  """
  n = x.shape[-1]
  if n <= lanes:
    return jnp.sum(x, -1)
  acc = None
  for c0 in range(0, n - n % lanes, lanes):
    part = x[..., c0:c0 + lanes]
    acc = part if acc is None else acc + part
  out = jnp.sum(acc, -1)
  if n % lanes:
    out = out + jnp.sum(x[..., n - n % lanes:], -1)
  return out


def _mean_positions(x):
  """Mean over axes 1, 2 of (nb, Hl, Wl, na), fused with x's producer."""
  h, w = x.shape[1:3]
  if h * w > 256:
    return jnp.mean(x, (1, 2))
  return sum(x[:, i, j] for i in range(h) for j in range(w)) / (h * w)


def _stage(one, fn, *args):
  """fn(*args), computed as its own XLA computation (materialised outputs).

  XLA:CPU fuses greedily: a cheap-looking producer is recomputed inside every
  consumer (a first-layer row sum inside each of its column-window taps, a
  ReLU inside each tap of the next conv), and optimisation barriers are
  removed before fusion. A conditional on a runtime-true predicate, whose
  branches are both `fn`, is a boundary fusion cannot cross; its outputs are
  fresh buffers (no in-place writes over an input, which XLA:CPU runs as
  scalar code).
  """
  shapes = jax.eval_shape(fn, *args)

  def never(*_):  # the runtime predicate is always true: keep this cheap
    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                  shapes)
  return lax.cond(one > 0, fn, never, *args)


def _relu_fwd(q, v1, v2, is1, is2, diag, keep):
  """r, dot (and 1 / r if `keep`) of a ReLU layer, elementwise."""
  d = v1 * v2 - q * q
  if diag is not None:
    d = jnp.where(diag, 0, d)
  r = jnp.sqrt(jnp.maximum(d, 0))
  dot = _dot(q, r, is1 * is2)
  if not keep:
    return r, dot
  live = r > _R_TOL
  return r, dot, jnp.where(live, 1 / jnp.where(live, r, 1), 0)


def _step_forward(g: _Geometry, x2p, x1p, v1, v2, is1, is2, diag, one, keep):
  """Kernel between a step's x2 images and all x1 images.

  Args:
    g: geometry.
    x2p: (nb, Hp, Wp, C) zero-padded x2 images of this step.
    x1p: (Hp, Wp, C, na) zero-padded x1 images, image axis last.
    v1, is1: per layer (1, Hl, Wl, na): x1 self-variances, 1 / sqrt of them.
    v2, is2: per layer (nb, Hl, Wl, 1): the same for x2.
    diag: None, or (nb, 1, 1, na) bool: pairs that are one image (K(x, x)).
    one: runtime scalar 1 (see `_stage`).
    keep: also return what the backward pass needs.

  Returns:
    (nb, na) kernel values K(x1, x2)^T, and per layer, if `keep`,
    (q, t_in, r, dot, inv_r), each (nb, Hl, Wl, na).
  """
  spec = g.spec
  kh, kw = spec.filter_shape
  s = spec.strides
  C = x1p.shape[2]

  def rows_fn(x2p, x1p):
    rows = None
    for a2, a1 in zip(_taps(x2p, kw, s, g.W1, 2),
                      _taps(x1p, kw, s, g.W1, 1)):
      for ch in range(C):
        p = a2[..., ch, None] * a1[None, :, :, ch]
        rows = p if rows is None else rows + p
    return rows                                            # (nb, Hp, W1, na)

  def layer1_fn(rows, v1, v2, is1, is2, diag):
    q = (g.c / C) * sum(_taps(rows, kh, s, g.H1, 1)) + g.b
    return (q,) + _relu_fwd(q, v1, v2, is1, is2, diag, keep)

  def conv_rows_fn(q, t, r, dot):
    n = r / _TWO_PI + dot * q
    return _box(n, 2, kw, s), _box(t * dot, 2, kw, s)

  def layer_fn(rn, rt, v1, v2, is1, is2, diag):
    q = g.c * _box(rn, 1, kh, s) + g.b
    t = g.c * _box(rt, 1, kh, s) + q
    return (q, t) + _relu_fwd(q, v1, v2, is1, is2, diag, keep)

  rows = _stage(one, rows_fn, x2p, x1p)
  out = _stage(one, layer1_fn, rows, v1[0], v2[0], is1[0], is2[0], diag)
  q, r, dot = out[0], out[1], out[2]
  t = q
  res = [(q, t) + tuple(out[1:])]
  for layer in range(1, spec.depth):
    rn, rt = _stage(one, conv_rows_fn, q, t, r, dot)
    out = _stage(one, layer_fn, rn, rt, v1[layer], v2[layer], is1[layer],
                 is2[layer], diag)
    q, t, r, dot = out[:4]
    res.append(tuple(out))
  n = r / _TWO_PI + dot * q
  k = _dense(_mean_positions(n), _mean_positions(t * dot), spec)
  return k, (res if keep else None)


def _x1_phases(x1p, s: int, n_h: int, n_w: int):
  """x1p[s a + rho, s b + sigma, c, i], zero beyond the padded map.

  Returns [rho][sigma] -> (n_h, n_w, C, na).
  """
  hp, wp = x1p.shape[:2]
  x1p = jnp.pad(x1p, ((0, s * n_h - hp), (0, s * n_w - wp), (0, 0), (0, 0)))
  return [[x1p[rho::s, sigma::s] for sigma in range(s)] for rho in range(s)]


def _step_backward(g: _Geometry, x2p, x1p, v1, v2, is1, is2, diag, one, gk):
  """Gradient of sum(gk * K^T) w.r.t. a step's x2 images.

  Args:
    g, x2p, x1p, v1, v2, is1, is2, diag, one: as `_step_forward`.
    gk: (nb, na) cotangent of the step's kernel values (transposed).

  Returns:
    (nb, H, W, C) gradient through the pair terms, and per layer
    (nb, Hl, Wl) cotangents of x2's self-variances.
  """
  spec = g.spec
  kh, kw = spec.filter_shape
  s = spec.strides
  C = x1p.shape[2]
  k, res = _step_forward(g, x2p, x1p, v1, v2, is1, is2, diag, one, keep=True)
  zero = jnp.zeros_like(k)
  _, dense_vjp = jax.vjp(lambda n, t: _dense(n, t, spec), zero, zero)
  gnm, gtm = dense_vjp(gk)
  hl, wl = g.shapes[-1]
  gn = (gnm / (hl * wl))[:, None, None, :]
  gt = (gtm / (hl * wl))[:, None, None, :]

  def relu_bwd_fn(gn, gt, q, t_in, r, dot, inv_r, v2):
    g_t = gt * dot
    gtr = gt * t_in * inv_r
    # n = r / 2pi + dot q:  dn/dq = dot,  dn/dq22 = r / (4 pi q22).
    # t' = t dot:  dt'/dq = t / (2 pi r),  dt'/dq22 = -t q / (4 pi q22 r);
    # and t itself depends on q (t = box(t_prev) + q, or t = q).
    g_q = gn * dot + gtr / _TWO_PI + g_t
    gv2 = _sum_minor((gn * r - gtr * q) / (2 * _TWO_PI)) / v2[..., 0]
    return g_q, g_t, gv2

  def conv_t_fn(g_q, g_t, hp, lo_h):
    return (_box_t(g_q, 1, hp, kh, s, lo_h), _box_t(g_t, 1, hp, kh, s, lo_h))

  gv2 = [None] * spec.depth
  for layer in range(spec.depth - 1, -1, -1):
    if layer < spec.depth - 1:
      hp, wp = g.shapes[layer]
      _, lo_w, _ = _same_pads(wp, kw, s)
      gh_n, gh_t = gh
      # Next level's column-window transpose, fused into its consumer.
      gn = g.c * _box_t(gh_n, 2, wp, kw, s, lo_w)
      gt = g.c * _box_t(gh_t, 2, wp, kw, s, lo_w)
    g_q, g_t, gv2[layer] = _stage(one, relu_bwd_fn, gn, gt, *res[layer],
                                  v2[layer])
    if layer:
      hp, _ = g.shapes[layer - 1]
      _, lo_h, _ = _same_pads(hp, kh, s)
      gh = _stage(one, functools.partial(conv_t_fn, hp=hp, lo_h=lo_h),
                  g_q, g_t)
  # First layer: q = c/C sum_dh rows[s ph + dh] + b on the padded grid, and
  # rows[hp, pw] = sum_dw,c x2p[hp, s pw + dw, c] x1p[hp, s pw + dw, c]
  # (t_1 = q_1: g_q includes the ntk path). In phases hp = s a + rho,
  # wp = s b + sigma of the padded grid (no interleaving of pair arrays):
  #   grow_rho[a, pw] = c/C sum_{dh = rho} g_q[a - (dh - rho)/s, pw],
  #   dx2p[s a + rho, s b + sigma, c] =
  #       sum_i x1p[.., c, i] sum_{dw = sigma} grow_rho[a, b - (dw-sigma)/s, i].
  n_h = -(-g.Hp // s)
  n_w = -(-g.Wp // s)
  grows = _stage(one, lambda g_q: tuple(
      (g.c / C) * _phase_taps(g_q, 1, kh, s, rho, n_h) for rho in range(s)),
                 g_q)                                   # s x (nb,n_h,W1,na)
  x1ph = _x1_phases(x1p, s, n_h, n_w)
  rows_out = []
  for rho in range(s):
    cols_out = []
    for sigma in range(s):
      tap = _phase_taps(grows[rho], 2, kw, s, sigma, n_w)  # (nb,n_h,n_w,na)
      cols_out.append(jnp.stack(
          [_sum_minor(tap * x1ph[rho][sigma][None, :, :, ch])
           for ch in range(C)], -1))                     # (nb,n_h,n_w,C)
    rows_out.append(_interleave(cols_out, 2))
  gx2p = _interleave(rows_out, 1)                        # (nb,s n_h,s n_w,C)
  H, W, _ = spec.image_shape
  return gx2p[:, g.lo_h:g.lo_h + H, g.lo_w:g.lo_w + W], gv2


# ----------------------------------------------------------------------------
# Whole kernels.


def _pad_rows(x, multiple: int):
  extra = -x.shape[0] % multiple
  if extra:
    x = jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], x.dtype)])
  return x


def _prepare(g: _Geometry, x1, x2, nb: int):
  """Padded, transposed, tiled operands and per-image factors."""
  spec = g.spec
  pad = ((0, 0), (g.lo_h, g.hi_h), (g.lo_w, g.hi_w), (0, 0))
  x2 = _pad_rows(x2, nb)
  nB = x2.shape[0] // nb
  v1 = _self_variances(x1, spec)
  v2 = _self_variances(x2, spec)
  tiny = jnp.finfo(x1.dtype).tiny
  ops = dict(
      x1p=jnp.transpose(jnp.pad(x1, pad), (1, 2, 3, 0)),     # (Hp,Wp,C,na)
      v1=[jnp.transpose(v, (1, 2, 0))[None] for v in v1],     # (1,Hl,Wl,na)
      x2p=jnp.pad(x2, pad).reshape((nB, nb, g.Hp, g.Wp, -1)),
      v2=[v.reshape((nB, nb) + v.shape[1:] + (1,)) for v in v2])
  ops["is1"] = [lax.rsqrt(jnp.maximum(v, tiny)) for v in ops["v1"]]
  ops["is2"] = [lax.rsqrt(jnp.maximum(v, tiny)) for v in ops["v2"]]
  # A runtime 1 that XLA cannot constant-fold (see `_stage`).
  ops["one"] = 1 + 0 * x1.reshape(-1)[0]
  return ops, x2, nB


def _diag(symmetric, jt, nb, na):
  if not symmetric:
    return None
  b = jt * nb + jnp.arange(nb)
  return (b[:, None] == jnp.arange(na)[None, :])[:, None, None, :]


# x1 images (the vectorised axis) are padded with zero images to a multiple
# of this: no scalar remainder loops (16 float32 lanes = one AVX-512 vector).
_LANES = 16


def _forward(spec: CNNSpec, x1, x2, symmetric: bool, nb: int):
  """K(x1, x2): (n1, n2)."""
  g = _Geometry(spec)
  n1, n2 = x1.shape[0], x2.shape[0]
  x1 = _pad_rows(x1, _LANES)
  na = x1.shape[0]
  o, _, nB = _prepare(g, x1, x2, nb)

  def step(args):
    jt, x2p, v2, is2 = args
    return _step_forward(g, x2p, o["x1p"], o["v1"], v2, o["is1"], is2,
                         _diag(symmetric, jt, nb, na), o["one"], False)[0]

  out = lax.map(step, (jnp.arange(nB), o["x2p"], o["v2"], o["is2"]))
  return out.reshape(nB * nb, na)[:n2, :n1].T


def _grad_x2(spec: CNNSpec, x1, x2, gk, symmetric: bool, nb: int):
  """sum_ij gk[i, j] dK(x1_i, x2_j) / dx2: (n2, H, W, C)."""
  g = _Geometry(spec)
  n2 = x2.shape[0]
  x1 = _pad_rows(x1, _LANES)
  gk = _pad_rows(gk, _LANES)          # zero cotangent for the padding
  n1 = x1.shape[0]
  o, x2full, nB = _prepare(g, x1, x2, nb)
  gkt = _pad_rows(gk.T, nb).reshape(nB, nb, n1)

  def step(args):
    jt, x2p, v2, is2, gkj = args
    return _step_backward(g, x2p, o["x1p"], o["v1"], v2, o["is1"], is2,
                          _diag(symmetric, jt, nb, n1), o["one"], gkj)

  gx2, gv2 = lax.map(step, (jnp.arange(nB), o["x2p"], o["v2"], o["is2"],
                            gkt))
  gx2 = gx2.reshape((nB * nb,) + gx2.shape[2:])
  gv2 = [v.reshape((nB * nb,) + v.shape[2:]) for v in gv2]
  _, var_vjp = jax.vjp(lambda x: _self_variances(x, spec), x2full)
  return (gx2 + var_vjp(gv2)[0])[:n2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _kernel(spec, x1, x2, nb):
  return _forward(spec, x1, x2, False, nb)


def _kernel_fwd(spec, x1, x2, nb):
  return _forward(spec, x1, x2, False, nb), (x1, x2)


def _kernel_bwd(spec, nb, res, gk):
  x1, x2 = res
  # K(x1, x2) = K(x2, x1)^T: x1's gradient is x2's with the roles swapped.
  return (_grad_x2(spec, x2, x1, gk.T, False, nb),
          _grad_x2(spec, x1, x2, gk, False, nb))


_kernel.defvjp(_kernel_fwd, _kernel_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 2))
def _self_kernel(spec, x, nb):
  return _forward(spec, x, x, True, nb)


def _self_kernel_fwd(spec, x, nb):
  return _forward(spec, x, x, True, nb), x


def _self_kernel_bwd(spec, nb, x, gk):
  # Both arguments are x: by symmetry of K, one pass with gk + gk^T.
  return (_grad_x2(spec, x, x, gk + gk.T, True, nb),)


_self_kernel.defvjp(_self_kernel_fwd, _self_kernel_bwd)


def default_step_size(spec: CNNSpec, n1: int,
                      budget_bytes: Optional[int] = None) -> int:
  """x2 images per step so that one (nb, H1, W1, n1) array is ~budget.

  On the CPU (default budget 256 KiB, at most 16 images), small steps keep a
  step's dozen live pair arrays in the L2 cache (measured on a 2 MiB-L2
  core: one x2 image per step is fastest for n1 >= 256). On an accelerator
  (default budget 512 MiB, no cap), a step is one parallel launch: the
  larger, the fewer sequential steps.
  """
  cpu = jax.default_backend() == "cpu"
  if budget_bytes is None:
    budget_bytes = 1 << 18 if cpu else 1 << 29
  h1, w1 = spec.layer_shapes()[0]
  per_image = h1 * w1 * max(n1, 1) * 4
  return int(max(1, min(16 if cpu else 1 << 30, budget_bytes // per_image)))


# ----------------------------------------------------------------------------
# The native (C++, XLA FFI) kernel: same formulas, see `_native/cnn_ntk.cc`.


def _flat_variances(x, spec: CNNSpec):
  """(n, S): every conv layer's self-variances, concatenated."""
  return jnp.concatenate(
      [v.reshape(v.shape[0], -1) for v in _self_variances(x, spec)], 1)


def _ffi_params(spec: CNNSpec, symmetric: bool):
  """The architecture as the C++ kernel reads it (see `Params` there)."""
  kh, kw = spec.filter_shape
  return jnp.asarray([spec.depth, kh, kw, spec.strides, spec.W_std ** 2,
                      spec.b_std ** 2, spec.num_dense, float(symmetric)],
                     jnp.float32)


def _native_forward(spec, x1, x2, symmetric):
  out = jax.ShapeDtypeStruct((x1.shape[0], x2.shape[0]), jnp.float32)
  return jax.ffi.ffi_call("ntga_cnn_ntk", out, vmap_method="sequential")(
      x1, x2, _flat_variances(x1, spec), _flat_variances(x2, spec),
      _ffi_params(spec, symmetric))


def _native_grad_x2(spec, x1, x2, gk, symmetric):
  """sum_ij gk[i, j] dK(x1_i, x2_j) / dx2, pair terms in C++, the
  self-variances' chain rule in JAX."""
  v2, var_vjp = jax.vjp(lambda x: _flat_variances(x, spec), x2)
  outs = (jax.ShapeDtypeStruct(x2.shape, jnp.float32),
          jax.ShapeDtypeStruct(v2.shape, jnp.float32))
  gx2, gv2 = jax.ffi.ffi_call("ntga_cnn_ntk_grad_x2", outs,
                              vmap_method="sequential")(
      x1, x2, _flat_variances(x1, spec), v2, gk.astype(jnp.float32),
      _ffi_params(spec, symmetric))
  return gx2 + var_vjp(gv2)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _native_kernel(spec, x1, x2):
  return _native_forward(spec, x1, x2, False)


def _native_kernel_fwd(spec, x1, x2):
  return _native_forward(spec, x1, x2, False), (x1, x2)


def _native_kernel_bwd(spec, res, gk):
  x1, x2 = res
  return (_native_grad_x2(spec, x2, x1, gk.T, False),
          _native_grad_x2(spec, x1, x2, gk, False))


_native_kernel.defvjp(_native_kernel_fwd, _native_kernel_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _native_self_kernel(spec, x):
  return _native_forward(spec, x, x, True)


def _native_self_kernel_fwd(spec, x):
  return _native_forward(spec, x, x, True), x


def _native_self_kernel_bwd(spec, x, gk):
  return (_native_grad_x2(spec, x, x, gk + gk.T, True),)


_native_self_kernel.defvjp(_native_self_kernel_fwd, _native_self_kernel_bwd)


def native_available() -> bool:
  """Whether the C++ kernel can run here: JAX on the CPU, and it builds."""
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  return _native.available("cnn_ntk")


def ntk_fn(spec: CNNSpec, *, step_size=None, impl: str = "auto"):
  """The surrogate's NTK as `k(x1, x2) -> (n1, n2)`.

  Args:
    spec: the architecture.
    step_size: x2 images per step of the pure-JAX kernel (default
      `default_step_size`).
    impl: "native" (the C++ kernel, float32 on the CPU; see `_native`),
      "jax" (pure JAX, any dtype and device), or "auto": native for float32
      inputs when JAX runs on the CPU and the kernel builds, else jax.

  Returns:
    `k(x1 (n1, H, W, C), x2 (n2, H, W, C)) -> (n1, n2)`, differentiable in
    both arguments (reverse mode, `jax.custom_vjp`). `k(x, x)` with the same
    array object is the symmetric self-kernel: exact diagonal, one backward
    pass for the full gradient.

  Raises:
    ValueError: a bad `impl`; "native" on float64 inputs.
    NativeUnavailable: "native" where the kernel cannot be built.
  """
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  _native.check_impl(impl)
  shape = tuple(spec.image_shape)

  def k(x1, x2):
    for name, x in (("x1", x1), ("x2", x2)):
      if tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{name} must have shape (n, {', '.join(map(str, shape))}), got "
            f"{tuple(x.shape)}.")
    if _native.use_native("cnn_ntk", impl, (x1.dtype, x2.dtype)):
      if x1 is x2:
        return _native_self_kernel(spec, x1)
      return _native_kernel(spec, x1, x2)
    nb = step_size or default_step_size(spec, x1.shape[0])
    nb = max(1, min(nb, x2.shape[0]))
    if x1 is x2:
      return _self_kernel(spec, x1, nb)
    return _kernel(spec, x1, x2, nb)
  return k


# ----------------------------------------------------------------------------
# Arithmetic count.

# Per position of a ReLU layer, forward: d = v1 v2 - q^2 (3), r = sqrt(max)
# (2), x = |q| is1 is2 (3), y = r is1 is2 (1), asin of min(x, y): min, z^2,
# 7 FMA, times z (17), the selects and subtractions for acos and for the
# sign of q (4), n = r / 2pi + dot q (3), t dot (1).
_RELU_FWD_FLOPS = 34
# Backward: 1 / r (2), g_t (1), gt t / r (2), g_q (4), w (4), sum over the
# x1 images (1).
_RELU_BWD_FLOPS = 14


def flops_per_entry(spec: CNNSpec) -> dict:
  """Floating-point operations per kernel entry (one x1, x2 pair).

  The count of this algorithm's arithmetic, minimal version: per-image
  terms (self-variances, their square roots) are not per pair and not
  counted; a fused multiply-add counts 2, sqrt and division count 1 each;
  the backward pass is counted without recomputing the forward (which this
  implementation does: see `ntk_fn`). Zero-padded rows are skipped.

  Args:
    spec: the architecture.

  Returns:
    {"forward", "backward", "forward_backward"}: FLOPs per entry.
  """
  H, W, C = spec.image_shape
  kh, kw = spec.filter_shape
  shapes = [(H, W)] + spec.layer_shapes()
  h1, w1 = shapes[1]
  fwd = H * w1 * (2 * kw * C - 1) + h1 * w1 * (kh - 1 + 2)
  bwd = h1 * w1 * kh + H * w1 * kw + 2 * H * W * C + H * W
  for layer in range(1, spec.depth + 1):
    hl, wl = shapes[layer]
    fwd += hl * wl * _RELU_FWD_FLOPS
    bwd += hl * wl * _RELU_BWD_FLOPS
    if layer > 1:
      hp, wp = shapes[layer - 1]
      # n and t: row then column window sums, and the affine maps.
      fwd += 2 * (hp * wl * (kw - 1) + hl * wl * (kh - 1)) + 4 * hl * wl
      # transposes: each cotangent entry is added into kh, then kw places.
      bwd += 2 * (hl * wl * kh + hp * wl * kw) + 2 * hp * wp
  hl, wl = shapes[-1]
  fwd += 2 * hl * wl
  return {"forward": float(fwd), "backward": float(bwd),
          "forward_backward": float(fwd + bwd)}

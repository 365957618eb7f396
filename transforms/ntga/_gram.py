"""The FNN's Gram matrix against 8-bit validation images, on native kernels.

`ntga`'s FNN step spends most of its time in two float32 matmuls against the
validation set: c0 = x_val x^T / d and its transpose in the backward pass,
dc0^T x_val / d, which XLA:CPU runs at the AVX-512 float32 rate. The
validation images are on the 8-bit grid, x_val = u / 255. Two kernels use
that, whichever the CPU has (`backend`):

* "amx" (Intel AMX, `_native/gram_amx.cc`): u is exact in bfloat16; the
  other operand, split into three bfloat16 parts, keeps float32 precision;
  AMX multiplies bfloat16 tiles with float32 accumulation at many times the
  float32 rate. Both products.
* "vnni" (AVX-512 VNNI, `_native/gram_vnni.cc`), in 8-bit integer
  products (int32 sums, exact), at four times the float32 FMA rate per
  cycle:
  - forward, when the block is on the 8-bit grid too, x = v / 255, as the
    attack's iterates are at its defaults (eps and step multiples of 1/255,
    no random start): u v^T is exact, and c0 is rounded once, at the end.
    Off the grid (checked on every call, `_GRID_TOL`), the float32 matmul
    runs.
  - backward: each column of the cotangent dc is quantised to 24 bits of
    its largest magnitude (three 8-bit digits, three integer products),
    and the sum is exact until one final rounding: the error is at most
    2^-23 max|dc[:, b]| sum_v x_val[v, k] / d, next to float32 rounding of
    the terms' own sizes (see the tests for both against float64).

Usage (`ntga._chunk_validation` prepares once per validation set, and each
step calls `val_gram`):

  >>> op = _gram.prepare(u8_val)               # None where none can run
  >>> c0 = _gram.val_gram(op, x_val, x_block)  # == x_val @ x_block.T / d

with x_val = u8_val / 255 in float32. `prepare` returns None (the caller
then uses the plain matmul) unless: JAX runs on the CPU, the attack
computes in float32, native kernels are enabled (NTGA_TFDS_NATIVE != 0), and
one of the kernels builds and runs on this CPU: AMX (granted by the OS, and
NTGA_TFDS_AMX != 0), else VNNI (NTGA_TFDS_VNNI != 0; images of at most
32,768 values, so that the integer sums fit in int32). The two switches are
for comparisons: they leave the other native kernels on.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms.ntga import _fnn_ntk

_NAME = "gram_amx"
_VNNI = "gram_vnni"
BACKENDS = ("amx", "vnni")
# A block is on the 8-bit grid when every 255 x is within this of an
# integer in [0, 255]. The attack's iterates drift from the grid by float32
# rounding only (~1e-5 levels after 10 steps); any real off-grid value
# (a random start, eps not a multiple of 1/255) is far beyond it.
_GRID_TOL = 1e-3
# The VNNI kernels' int32 sums hold 255^2 d (forward) and 255^2 m
# (backward, per digit) for d and m up to this.
_VNNI_MAX_DEPTH = 32768


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("u", "ut"), meta_fields=("m", "d"))
@dataclasses.dataclass(frozen=True)
class ValOperand:
  """The validation images `(m, d)` as AMX operands: the pixels u = 255 x,
  exact integers 0..255 in bfloat16, zero-padded to multiples of 32 and laid
  out in AMX tiles, `[rows/16][cols/32][16][32]` (`NtgaAmxTileU8`).

  u: u, `(m, d)` padded, the forward product's left operand.
  ut: u^T, `(d, m)` padded, the backward product's left operand.
  m, d: the unpadded shape (static).
  """
  u: jnp.ndarray
  ut: jnp.ndarray
  m: int
  d: int


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("a", "at", "usum"), meta_fields=("m", "d"))
@dataclasses.dataclass(frozen=True)
class VnniOperand:
  """The validation images `(m, d)` as the VNNI kernels' signed operands.

  a: u - 128 as int8, `(mp, kp)`: rows zero-padded to a multiple of the
    micro-kernel's rows (6), columns to a multiple of 4 (the forward's).
  at: (u - 128)^T as int8, `(dp, mp)`: d padded to a multiple of 6, m to a
    multiple of 4 (the backward's); None where m > 32,768 (the backward
    then runs the float32 matmul).
  usum: `(d,)` int32, the column sums of u (the backward's).
  m, d: the unpadded shape (static).
  """
  a: jnp.ndarray
  at: Optional[jnp.ndarray]
  usum: Optional[jnp.ndarray]
  m: int
  d: int


Operand = Union[ValOperand, VnniOperand]


def _switch(name: str) -> bool:
  return os.environ.get(name, "1") != "0"


@functools.lru_cache(maxsize=None)
def _amx_ready() -> bool:
  """Whether the CPU has AMX and Linux grants it (asked once; the library
  must build: see `available`)."""
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  return bool(_native.load(_NAME).NtgaAmxInit())


@functools.lru_cache(maxsize=None)
def _vnni_ready() -> bool:
  """Whether the CPU has AVX-512 VNNI (asked once; the library must build)."""
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  return bool(_native.load(_VNNI).NtgaVnniReady())


def available(kind: str = "amx") -> bool:
  """Whether kernel `kind` ("amx" or "vnni") can run here: its switch on,
  JAX on the CPU, the library built, and the CPU able."""
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  if kind == "amx":
    return (_switch("NTGA_TFDS_AMX") and _native.available(_NAME)
            and _amx_ready())
  if kind == "vnni":
    return (_switch("NTGA_TFDS_VNNI") and _native.available(_VNNI)
            and _vnni_ready())
  raise ValueError(f"kind must be one of {BACKENDS}, got {kind!r}.")


def backend() -> Optional[str]:
  """The kernel `prepare` picks here: "amx", else "vnni", else None."""
  for kind in BACKENDS:
    if available(kind):
      return kind
  return None


def prepare(u8, dtype=np.float32) -> Optional[Operand]:
  """Validation pixels `u8 (m, d)` as the operand of this CPU's kernel.

  Args:
    u8: flat validation images as uint8 pixels (x_val = u8 / 255), numpy.
    dtype: the attack's dtype; the kernels compute float32 only.

  Returns:
    A `ValOperand` (AMX) or `VnniOperand` for `val_gram`, or None where
    neither can run: not float32, not uint8 `(m, d)`, or no kernel (see the
    module docstring).
  """
  u8 = np.asarray(u8)
  if np.dtype(dtype) != np.float32 or u8.dtype != np.uint8 or u8.ndim != 2:
    return None
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  m, d = u8.shape
  u8 = np.ascontiguousarray(u8)
  ptr = ctypes.c_void_p
  if available("amx"):
    mp, kp = -(-m // 32) * 32, -(-d // 32) * 32
    a = np.empty((mp // 16, kp // 32, 16, 32), np.uint16)
    at = np.empty((kp // 16, mp // 32, 16, 32), np.uint16)
    _native.load(_NAME).NtgaAmxTileU8(
        u8.ctypes.data_as(ptr), ctypes.c_int64(m), ctypes.c_int64(d),
        a.ctypes.data_as(ptr), at.ctypes.data_as(ptr))
    return ValOperand(jnp.asarray(a.view(jnp.bfloat16)),
                      jnp.asarray(at.view(jnp.bfloat16)), m, d)
  if d <= _VNNI_MAX_DEPTH and available("vnni"):
    lib = _native.load(_VNNI)
    mr = int(lib.NtgaVnniMr())
    a = np.zeros((-(-m // mr) * mr, -(-d // 4) * 4), np.int8)
    # u - 128 as int8 is u with its top bit flipped.
    a[:m, :d] = (u8 ^ np.uint8(0x80)).view(np.int8)
    at = usum = None
    if m <= _VNNI_MAX_DEPTH:
      at = np.empty((-(-d // mr) * mr, -(-m // 4) * 4), np.int8)
      usum = np.empty((d,), np.int32)
      lib.NtgaVnniTransposeU8(
          u8.ctypes.data_as(ptr), ctypes.c_int64(m), ctypes.c_int64(d),
          at.ctypes.data_as(ptr), usum.ctypes.data_as(ptr))
      at, usum = jnp.asarray(at), jnp.asarray(usum)
    return VnniOperand(jnp.asarray(a), at, usum, m, d)
  return None


def val_gram(op: Operand, x_val, x):
  """`(m, n)`: x_val x^T / d, for `op = prepare(u8)`, `x_val (m, d)` =
  u8 / 255 and `x (n, d)` float32.

  Differentiable in `x` (reverse mode: dc^T x_val / d); the validation
  operands get no gradient. The AMX kernel reads `op` only; the VNNI kernel
  reads `x_val` for its float32 paths (off the grid, and backward).
  """
  if isinstance(op, ValOperand):
    return _amx_gram(op, x)
  return _vnni_gram(op, x_val, x)


def _amx_forward(op: ValOperand, x):
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  _native.ensure_registered(_NAME)
  out = jax.ShapeDtypeStruct((op.m, x.shape[0]), jnp.float32)
  return jax.ffi.ffi_call("ntga_gram_amx", out, vmap_method="sequential")(
      op.u, x)


@jax.custom_vjp
def _amx_gram(op: ValOperand, x):
  return _amx_forward(op, x)


def _amx_gram_fwd(op, x):
  return _amx_forward(op, x), op


def _amx_gram_bwd(op, dc):
  out = jax.ShapeDtypeStruct((dc.shape[1], op.d), jnp.float32)
  dx = jax.ffi.ffi_call("ntga_gram_amx_bwd", out, vmap_method="sequential")(
      op.ut, dc.astype(jnp.float32))
  return None, dx


_amx_gram.defvjp(_amx_gram_fwd, _amx_gram_bwd)


def on_grid(x):
  """Scalar bool: every 255 x within `_GRID_TOL` of an integer in [0, 255]."""
  s = x * 255
  r = jnp.round(s)
  return jnp.all((jnp.abs(s - r) <= _GRID_TOL) & (r >= 0) & (r <= 255))


def _vnni_forward(op: VnniOperand, x_val, x):
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  _native.ensure_registered(_VNNI)
  out = jax.ShapeDtypeStruct((op.m, x.shape[0]), jnp.float32)
  exact = jax.ffi.ffi_call("ntga_gram_vnni", out, vmap_method="sequential")
  return jax.lax.cond(on_grid(x), lambda x: exact(op.a, x),
                      lambda x: _fnn_ntk.gram(x_val, x), x)


@jax.custom_vjp
def _vnni_gram(op: VnniOperand, x_val, x):
  return _vnni_forward(op, x_val, x)


def _vnni_gram_fwd(op, x_val, x):
  return _vnni_forward(op, x_val, x), (op, x_val)


def _vnni_gram_bwd(res, dc):
  op, x_val = res
  if op.at is None:
    return None, None, (dc / x_val.shape[-1]).T @ x_val
  out = jax.ShapeDtypeStruct((dc.shape[1], op.d), jnp.float32)
  dx = jax.ffi.ffi_call("ntga_gram_vnni_bwd", out, vmap_method="sequential")(
      op.at, op.usum, dc.astype(jnp.float32))
  return None, None, dx


_vnni_gram.defvjp(_vnni_gram_fwd, _vnni_gram_bwd)

"""The FNN's Gram matrix against 8-bit validation images, on Intel AMX.

`ntga`'s FNN step spends most of its time in two float32 matmuls against the
validation set: c0 = x_val x^T / d and its transpose in the backward pass,
dc0^T x_val / d, which XLA:CPU runs at the AVX-512 float32 rate. The
validation images are on the 8-bit grid, x_val = u / 255, and u is exact in
bfloat16; the other operand, split into three bfloat16 parts, keeps float32
precision; AMX multiplies bfloat16 tiles with float32 accumulation at many
times the float32 rate (see `_native/gram_amx.cc`).

Usage (`ntga._chunk_validation` prepares once per validation set, and each
step calls `val_gram`):

  >>> op = _gram.prepare(u8_val)        # None where it cannot run
  >>> c0 = _gram.val_gram(op, x_block)  # == (u8_val / 255) @ x_block.T / d

`prepare` returns None (the caller then uses the plain matmul) unless: JAX
runs on the CPU, the attack computes in float32, native
kernels are enabled (NTGA_TFDS_NATIVE != 0), the kernel builds, the CPU
and the OS grant AMX to this process, and NTGA_TFDS_AMX != 0 (a switch for
comparisons: it leaves the other native kernels on).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

_NAME = "gram_amx"


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


@functools.lru_cache(maxsize=None)
def _amx_ready() -> bool:
  """Whether the CPU has AMX and Linux grants it (asked once; the library
  must build: see `available`)."""
  from ntga_tfds.transforms import _native  # pylint: disable=g-import-not-at-top
  return bool(_native.load(_NAME).NtgaAmxInit())


def available() -> bool:
  """Whether the AMX Gram kernel can run here (CPU backend, built, AMX)."""
  from ntga_tfds.transforms import _native  # pylint: disable=g-import-not-at-top
  return (os.environ.get("NTGA_TFDS_AMX", "1") != "0"
          and _native.available(_NAME) and _amx_ready())


def prepare(u8, dtype=np.float32) -> Optional[ValOperand]:
  """Validation pixels `u8 (m, d)` as AMX operands, or None.

  Args:
    u8: flat validation images as uint8 pixels (x_val = u8 / 255), numpy.
    dtype: the attack's dtype; the kernel computes float32 only.

  Returns:
    A `ValOperand` for `val_gram`, or None where it cannot run: not
    float32, or AMX unavailable (see the module docstring).
  """
  u8 = np.asarray(u8)
  if (np.dtype(dtype) != np.float32 or u8.dtype != np.uint8 or u8.ndim != 2
      or not available()):
    return None
  from ntga_tfds.transforms import _native  # pylint: disable=g-import-not-at-top
  m, d = u8.shape
  mp, kp = -(-m // 32) * 32, -(-d // 32) * 32
  u8 = np.ascontiguousarray(u8)
  a = np.empty((mp // 16, kp // 32, 16, 32), np.uint16)
  at = np.empty((kp // 16, mp // 32, 16, 32), np.uint16)
  ptr = ctypes.c_void_p
  _native.load(_NAME).NtgaAmxTileU8(
      u8.ctypes.data_as(ptr), ctypes.c_int64(m), ctypes.c_int64(d),
      a.ctypes.data_as(ptr), at.ctypes.data_as(ptr))
  return ValOperand(jnp.asarray(a.view(jnp.bfloat16)),
                    jnp.asarray(at.view(jnp.bfloat16)), m, d)


def _forward(op: ValOperand, x):
  from ntga_tfds.transforms import _native  # pylint: disable=g-import-not-at-top
  _native.ensure_registered(_NAME)
  out = jax.ShapeDtypeStruct((op.m, x.shape[0]), jnp.float32)
  return jax.ffi.ffi_call("ntga_gram_amx", out, vmap_method="sequential")(
      op.u, x)


@jax.custom_vjp
def val_gram(op: ValOperand, x):
  """`(m, n)`: x_val x^T / d, for `op = prepare(u8)`, x_val = u8 / 255, and
  `x (n, d)` float32.

  Differentiable in `x` (reverse mode: dc^T x_val / d, also on AMX); the
  validation operand gets no gradient.
  """
  return _forward(op, x)


def _val_gram_fwd(op, x):
  return _forward(op, x), op


def _val_gram_bwd(op, dc):
  out = jax.ShapeDtypeStruct((dc.shape[1], op.d), jnp.float32)
  dx = jax.ffi.ffi_call("ntga_gram_amx_bwd", out, vmap_method="sequential")(
      op.ut, dc.astype(jnp.float32))
  return None, dx


val_gram.defvjp(_val_gram_fwd, _val_gram_bwd)

"""Vectorisable elementary functions for the kernels' elementwise passes.

XLA on CPU lowers `atan2`/`arcsin`/`arccos` to scalar library calls (about
20-25 ns per float32 element here, 40x a multiply-add), which dominated the
NTK's cost. `atan` below is a range-reduced odd polynomial (the classic
Cephes `atanf` scheme, max error ~1e-7 relative) that XLA vectorises, with
the exact derivative 1 / (1 + t^2) attached so gradients do not inherit the
polynomial's error. float64 inputs use `jnp.arctan` (full precision).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_TAN_3PI_8 = 2.414213562373095
_TAN_PI_8 = 0.4142135623730950


def _atan_f32(t):
  sign = jnp.sign(t)
  a = jnp.abs(t)
  big = a > _TAN_3PI_8
  mid = (a > _TAN_PI_8) & ~big
  # 1/y = rsqrt(y)^2 for y > 0: XLA vectorises rsqrt, not division.
  inv_a = jnp.square(jax.lax.rsqrt(jnp.where(big, a, 1.0)))
  inv_a1 = jnp.square(jax.lax.rsqrt(a + 1.0))
  x = jnp.where(big, -inv_a, jnp.where(mid, (a - 1.0) * inv_a1, a))
  offset = jnp.where(big, np.pi / 2, jnp.where(mid, np.pi / 4, 0.0))
  z = x * x
  poly = (((8.05374449538e-2 * z - 1.38776856032e-1) * z
           + 1.99777106478e-1) * z - 3.33329491539e-1) * z * x + x
  return sign * (offset + poly)


@jax.custom_jvp
def atan(t):
  """arctan(t), vectorised in float32."""
  if t.dtype == jnp.float64:
    return jnp.arctan(t)
  return _atan_f32(t)


@atan.defjvp
def _atan_jvp(primals, tangents):
  (t,), (dt,) = primals, tangents
  return atan(t), dt / (1.0 + t * t)



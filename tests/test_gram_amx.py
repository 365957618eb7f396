"""The AMX Gram matrix against 8-bit validation images (`_gram`).

`transforms/ntga/_native/gram_amx.cc` computes c0 = (u / 255) x^T / d and its
gradient in x with bfloat16 tiles: u exact, x (or the cotangent) split into
three bfloat16 parts. Checked here, against float64 numpy: values and
gradient within a small factor of the float32 XLA matmul's own error, at
sizes that are not multiples of the tiles (16 rows, 32 columns, 32 deep) and
at the CIFAR-10 size; where it is not used (float64, NTGA_TFDS_NATIVE=0,
NTGA_TFDS_AMX=0, not uint8); and the attack's step with and without it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga_tfds.transforms.ntga import _gram
from ntga_tfds.transforms.ntga import _native

pytestmark = pytest.mark.skipif(
    not _gram.available("amx"),
    reason=("AMX Gram kernel unavailable (no AMX, or the build failed: "
            f"{_native.build_error('gram_amx')})"))

# Rounding of the AMX products is that of a float32 GEMM, not identical to
# XLA's (another summation order): within this factor of XLA's error.
_FACTOR = 4


def _rel(a, ref):
  return float(np.max(np.abs(np.asarray(a, np.float64) - ref))
               / np.max(np.abs(ref)))


def _case(m, n, d, seed):
  rng = np.random.default_rng(seed)
  u8 = rng.integers(0, 256, (m, d)).astype(np.uint8)
  x = rng.uniform(-1, 1, (n, d)).astype(np.float32)
  dc = rng.normal(size=(m, n)).astype(np.float32)
  return u8, x, dc


@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (37, 19, 45), (300, 40, 100),
                                   (129, 33, 784), (1000, 512, 3072)])
def test_values_and_gradient_match_float64(m, n, d):
  u8, x, dc = _case(m, n, d, seed=m + n + d)
  xv = u8.astype(np.float32) / np.float32(255)
  op = _gram.prepare(u8)
  assert op is not None
  c0, vjp = jax.vjp(lambda x: _gram.val_gram(op, jnp.asarray(xv), x),
                    jnp.asarray(x))
  (gx,) = vjp(jnp.asarray(dc))
  assert c0.shape == (m, n) and gx.shape == (n, d)

  x64, v64 = x.astype(np.float64), xv.astype(np.float64)
  want_c0 = v64 @ x64.T / d
  want_gx = dc.astype(np.float64).T @ v64 / d
  xla_c0 = jnp.asarray(xv) @ jnp.asarray(x).T / d
  xla_gx = jnp.asarray(dc).T @ jnp.asarray(xv) / d
  # A floor of float32's unit roundoff for tiny sums, where XLA may be exact.
  tol_c0 = _FACTOR * max(_rel(xla_c0, want_c0), 6e-8)
  tol_gx = _FACTOR * max(_rel(xla_gx, want_gx), 6e-8)
  assert _rel(c0, want_c0) <= tol_c0
  assert _rel(gx, want_gx) <= tol_gx


def test_jit_and_tiny_values():
  """Under jit, and for a cotangent of tiny numbers (the split keeps
  float32's precision at any scale, as long as bfloat16's range holds)."""
  u8, x, dc = _case(70, 35, 90, seed=1)
  op = _gram.prepare(u8)
  xv = u8.astype(np.float64) / 255
  f = jax.jit(lambda op, x, dc: jax.vjp(
      lambda x: _gram.val_gram(op, jnp.asarray(xv, jnp.float32), x),
      x)[1](dc)[0])
  gx = f(op, jnp.asarray(x), jnp.asarray(dc * 1e-20))
  want = (dc.astype(np.float64) * 1e-20).T @ xv / 90
  assert _rel(gx, want) < 1e-6


def test_prepare_declines(monkeypatch):
  u8 = np.zeros((5, 7), np.uint8)
  assert _gram.prepare(u8, np.float64) is None
  assert _gram.prepare(u8.astype(np.float32)) is None  # not 8-bit pixels
  monkeypatch.setenv("NTGA_TFDS_AMX", "0")
  assert not _gram.available("amx")
  assert not isinstance(_gram.prepare(u8), _gram.ValOperand)
  monkeypatch.delenv("NTGA_TFDS_AMX")
  monkeypatch.setenv("NTGA_TFDS_NATIVE", "0")
  assert not _gram.available("amx") and _gram.prepare(u8) is None
  monkeypatch.delenv("NTGA_TFDS_NATIVE")
  assert isinstance(_gram.prepare(u8), _gram.ValOperand)


def _step(digits, amx: bool, dtype="float32"):
  """The attack's loss and gradient; `val.op` set by `_validation_chunks`."""
  from ntga_tfds.transforms.common import pgd  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import attack as ntga  # pylint: disable=g-import-not-at-top
  x, y = digits
  config = ntga.NTGAConfig(surrogate="fnn", eps=16 / 255, t=64.0,
                           val_chunk_size=23, dtype=dtype)
  c = ntga._check_inputs(x[:40], y[:40], x[1000:1070], y[1000:1070], 10,
                         config)
  with ntga._precision(config):
    val = ntga._validation_chunks(c, config, 40)
    assert (val.op is not None) == (dtype == "float32")
    if not amx:
      val = val._replace(op=None)
    programs = ntga._programs(ntga._math_key(config), 10, x.shape[1:])
    args = (jnp.asarray(pgd.snap(c.x, dtype)[0]),
            jax.nn.one_hot(c.y, 10, dtype=dtype), val)
    hlo = programs.loss_and_grad.lower(*args).as_text()
    assert ("ntga_gram_amx" in hlo) == (amx and dtype == "float32")
    return programs.loss_and_grad(*args)


def test_ntga_step_uses_amx_and_matches_matmul(digits):
  loss, grad = _step(digits, amx=True)
  want_loss, want_grad = _step(digits, amx=False)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert _rel(grad, np.asarray(want_grad, np.float64)) < 1e-4
  _step(digits, amx=True, dtype="float64")  # float64: not used

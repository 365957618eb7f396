"""The VNNI Gram matrix against 8-bit validation images (`_gram`).

`transforms/ntga/_native/gram_vnni.cc` computes c0 = (u / 255)(v / 255)^T / d
in exact integer arithmetic when the block x = v / 255 is on the 8-bit
grid (`_gram` falls back to the float32 matmul off the grid), and the
gradient dc^T x_val / d with the cotangent in three 8-bit digits per
column. Checked here, against float64 numpy: one rounding on the grid and
the gradient's quantisation bound (at sizes that are not multiples of the
micro-kernel's 6 rows, 64 columns and 4 deep, and at the CIFAR-10 block
size); the fallback off the grid (values between levels, outside [0, 1])
and near it (float32 drift, which the grid check accepts); cotangent
columns tiny, huge, zero and not finite; where it is not used; and the
attack's step. AMX, preferred where present, is switched off here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga_tfds.transforms.ntga import _gram
from ntga_tfds.transforms.ntga import _native

pytestmark = pytest.mark.skipif(
    not _gram.available("vnni"),
    reason=("VNNI Gram kernel unavailable (no AVX-512 VNNI, or the build "
            f"failed: {_native.build_error('gram_vnni')})"))

# One rounding of the exact integer sum to float32, one of the scale
# 1/(255^2 d), one of their product: at most 3 units of 2^-24.
_ONE_ROUNDING = 3 * 2.0**-24


@pytest.fixture(autouse=True)
def _no_amx(monkeypatch):
  monkeypatch.setenv("NTGA_TFDS_AMX", "0")


def _case(m, n, d, seed):
  rng = np.random.default_rng(seed)
  u8 = rng.integers(0, 256, (m, d)).astype(np.uint8)
  v8 = rng.integers(0, 256, (n, d)).astype(np.uint8)
  xv = u8.astype(np.float32) / np.float32(255)
  x = v8.astype(np.float32) / np.float32(255)
  return u8, v8, xv, x


def _gram_and_vjp(op, xv, x):
  return jax.vjp(lambda x: _gram.val_gram(op, jnp.asarray(xv), x),
                 jnp.asarray(x))


@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (7, 3, 5), (37, 19, 45),
                                   (300, 65, 100), (129, 130, 784),
                                   (1000, 512, 3072)])
def test_on_the_grid_values_are_rounded_once(m, n, d):
  u8, v8, xv, x = _case(m, n, d, seed=m + n + d)
  op = _gram.prepare(u8)
  assert isinstance(op, _gram.VnniOperand)
  c0 = np.asarray(jax.jit(_gram.val_gram)(op, xv, x), np.float64)
  assert c0.shape == (m, n)
  # Integer products: float64 holds the exact sum.
  want = u8.astype(np.float64) @ v8.astype(np.float64).T / (255.0**2 * d)
  err = np.abs(c0 - want)
  assert np.all(err <= _ONE_ROUNDING * np.abs(want))
  xla = np.asarray(jnp.asarray(xv) @ jnp.asarray(x).T / d, np.float64)
  assert err.max() <= np.abs(xla - want).max()


def _grad(op, xv, x, dc):
  _, vjp = _gram_and_vjp(op, xv, x)
  return np.asarray(vjp(jnp.asarray(dc))[0], np.float64)


def _grad_bound(dc, xv, want):
  """The backward's error bound: each cotangent column is quantised to
  23 bits of its largest magnitude, and the sum is exact until one final
  rounding."""
  d = xv.shape[1]
  col_max = np.max(np.abs(dc.astype(np.float64)), axis=0)
  return (2.0**-23 * col_max[:, None] * xv.astype(np.float64).sum(0)[None] / d
          + 2.0**-23 * np.abs(want))


@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (7, 3, 5), (37, 19, 45),
                                   (300, 65, 100), (129, 130, 784),
                                   (1000, 512, 3072)])
def test_gradient_is_within_its_quantisation_bound(m, n, d):
  u8, _, xv, x = _case(m, n, d, seed=m + n + d)
  rng = np.random.default_rng(m * n)
  # Heavy-tailed cotangents: a column's largest entry sets its scale.
  dc = (rng.normal(size=(m, n)) * np.exp(2 * rng.normal(size=(m, n)))
        ).astype(np.float32)
  op = _gram.prepare(u8)
  assert op.at is not None
  gx = _grad(op, xv, x, dc)
  assert gx.shape == (n, d)
  want = dc.astype(np.float64).T @ xv.astype(np.float64) / d
  assert np.all(np.abs(gx - want) <= _grad_bound(dc, xv, want))
  # Against the float32 matmul's error, on the scale of the terms summed,
  # for cotangents without heavy tails (with them, the quantisation's
  # share grows with max / typical magnitude, as the bound says).
  dc = rng.normal(size=(m, n)).astype(np.float32)
  gx = _grad(op, xv, x, dc)
  want = dc.astype(np.float64).T @ xv.astype(np.float64) / d
  terms = np.abs(dc.astype(np.float64)).T @ xv.astype(np.float64) / d
  xla = np.asarray((jnp.asarray(dc) / d).T @ jnp.asarray(xv), np.float64)
  assert (np.max(np.abs(gx - want) / terms)
          <= 4 * max(np.max(np.abs(xla - want) / terms), 6e-8))


def test_gradient_columns_at_any_scale_zero_and_not_finite():
  u8, _, xv, x = _case(40, 6, 30, seed=8)
  dc = np.random.default_rng(9).normal(size=(40, 6)).astype(np.float32)
  dc[:, 1] *= np.float32(1e-30)   # per-column scales keep the precision
  dc[:, 2] *= np.float32(1e30)
  dc[:, 3] = 0
  dc[5, 4] = np.nan
  dc[7, 5] = np.inf
  gx = _grad(_gram.prepare(u8), xv, x, dc)
  ok = [0, 1, 2]
  want = dc[:, ok].astype(np.float64).T @ xv.astype(np.float64) / 30
  assert np.all(np.abs(gx[ok] - want) <= _grad_bound(dc[:, ok], xv, want))
  assert np.all(gx[3] == 0)
  assert np.all(np.isnan(gx[4:]))  # as NaN or inf would poison the matmul


def test_gradient_of_a_large_validation_set_uses_the_matmul():
  """Past 32,768 validation images the backward's int32 sums could
  overflow: the float32 matmul runs instead."""
  u8, _, xv, x = _case(32769, 3, 4, seed=10)
  op = _gram.prepare(u8)
  assert op.at is None and op.usum is None
  dc = np.random.default_rng(11).normal(size=(32769, 3)).astype(np.float32)
  want = dc.astype(np.float64).T @ xv.astype(np.float64) / 4
  np.testing.assert_allclose(_grad(op, xv, x, dc), want, rtol=1e-4,
                             atol=1e-5)


def test_off_the_grid_falls_back_to_the_float32_matmul():
  u8, _, xv, x = _case(50, 20, 60, seed=5)
  op = _gram.prepare(u8)
  f = jax.jit(_gram.val_gram)
  column = np.arange(60)
  for bad in (x + np.float32(0.3 / 255),                      # between levels
              np.where(column == 0, np.float32(-1 / 255), x),  # below 0
              np.where(column == 1, np.float32(256 / 255), x)):  # above 1
    bad = np.asarray(bad, np.float32)
    want = xv.astype(np.float64) @ bad.astype(np.float64).T / 60
    # The integer kernel would round 255 x: errors ~1e-3, not ~1e-7.
    np.testing.assert_allclose(f(op, xv, bad), want, rtol=1e-5, atol=1e-7)


def test_float32_drift_stays_on_the_grid():
  """The attack's iterates, x + k step in float32, are a few ulps off the
  grid; they take the integer path, whose result is the exact Gram matrix
  of the snapped block."""
  u8, v8, xv, x = _case(40, 30, 50, seed=6)
  drift = x + np.float32(2 / 255) - np.float32(2 / 255)
  drift = drift + np.random.default_rng(7).normal(
      0, 1e-7, x.shape).astype(np.float32)
  assert bool(_gram.on_grid(drift))
  assert not bool(_gram.on_grid(x + np.float32(0.01 / 255)))
  c0 = np.asarray(jax.jit(_gram.val_gram)(_gram.prepare(u8), xv, drift),
                  np.float64)
  want = u8.astype(np.float64) @ v8.astype(np.float64).T / (255.0**2 * 50)
  assert np.all(np.abs(c0 - want) <= _ONE_ROUNDING * np.abs(want))


def test_prepare_declines(monkeypatch):
  u8 = np.zeros((5, 7), np.uint8)
  assert _gram.prepare(u8, np.float64) is None
  assert _gram.prepare(u8.astype(np.float32)) is None  # not 8-bit pixels
  assert _gram.prepare(np.zeros((2, 32769), np.uint8)) is None  # int32 sums
  assert isinstance(_gram.prepare(np.zeros((2, 32768), np.uint8)),
                    _gram.VnniOperand)
  monkeypatch.setenv("NTGA_TFDS_VNNI", "0")
  assert not _gram.available("vnni") and _gram.prepare(u8) is None
  assert _gram.backend() is None
  monkeypatch.delenv("NTGA_TFDS_VNNI")
  monkeypatch.setenv("NTGA_TFDS_NATIVE", "0")
  assert not _gram.available("vnni") and _gram.prepare(u8) is None
  monkeypatch.delenv("NTGA_TFDS_NATIVE")
  assert _gram.backend() == "vnni"
  with pytest.raises(ValueError, match="kind must be one of"):
    _gram.available("avx")


def _step(digits, vnni: bool):
  """The attack's loss and gradient; `val.op` set by `_validation_chunks`."""
  from ntga_tfds.transforms.common import pgd  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import attack as ntga  # pylint: disable=g-import-not-at-top
  x, y = digits
  config = ntga.NTGAConfig(surrogate="fnn", eps=16 / 255, t=64.0,
                           val_chunk_size=23)
  c = ntga._check_inputs(x[:40], y[:40], x[1000:1070], y[1000:1070], 10,
                         config)
  with ntga._precision(config):
    val = ntga._validation_chunks(c, config, 40)
    assert isinstance(val.op, _gram.VnniOperand)
    if not vnni:
      val = val._replace(op=None)
    programs = ntga._programs(ntga._math_key(config), 10, x.shape[1:])
    args = (jnp.asarray(pgd.snap(c.x)[0]), jax.nn.one_hot(c.y, 10), val)
    hlo = programs.loss_and_grad.lower(*args).as_text()
    assert ("ntga_gram_vnni" in hlo) == vnni
    return programs.loss_and_grad(*args)


def test_ntga_step_uses_vnni_and_matches_matmul(digits):
  loss, grad = _step(digits, vnni=True)
  want_loss, want_grad = _step(digits, vnni=False)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  want = np.asarray(want_grad, np.float64)
  assert np.max(np.abs(grad - want)) < 1e-4 * np.max(np.abs(want))

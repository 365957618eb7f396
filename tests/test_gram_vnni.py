"""The VNNI Gram matrix against 8-bit validation images (`_gram`).

`transforms/_native/gram_vnni.cc` computes c0 = (u / 255)(v / 255)^T / d
in exact integer arithmetic when the block x = v / 255 is on the 8-bit
grid, and `_gram` falls back to the float32 matmul off the grid and for the
gradient. Checked here, against float64 numpy: one rounding on the grid (at
sizes that are not multiples of the micro-kernel's 6 rows, 64 columns and 4
deep, and at the CIFAR-10 block size); the fallback off the grid (values
between levels, outside [0, 1]) and near it (float32 drift, which the grid
check accepts); the gradient; where it is not used; and the attack's step.
AMX, preferred where present, is switched off here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga_tfds.transforms import _gram
from ntga_tfds.transforms import _native

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


def test_gradient_is_the_float32_transpose_product():
  u8, _, xv, x = _case(130, 70, 300, seed=3)
  dc = np.random.default_rng(4).normal(size=(130, 70)).astype(np.float32)
  _, vjp = _gram_and_vjp(_gram.prepare(u8), xv, x)
  (gx,) = vjp(jnp.asarray(dc))
  want = dc.astype(np.float64).T @ xv.astype(np.float64) / 300
  np.testing.assert_allclose(gx, want, rtol=1e-5, atol=1e-6)


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
  from ntga_tfds.transforms import ntga, pgd  # pylint: disable=g-import-not-at-top
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

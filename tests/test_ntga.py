"""NTGA attack: PGD, budget after quantisation, blocks, determinism, checks."""

import math

import jax
from jax.experimental import enable_x64
import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl

from ntga_tfds.transforms.ntga import kernels
from ntga_tfds.transforms.common import losses
from ntga_tfds.transforms.ntga import attack as ntga
from ntga_tfds.transforms.common import pgd
from ntga_tfds.transforms.ntga import gp as predict

KEY = jax.random.PRNGKey(0)
FAST = ntga.NTGAConfig(eps=16 / 255, t=64.0, optimizer="pgd", nb_iter=4,
                       block_size=48)


@pytest.fixture(scope="module")
def small(digits):
  x, y = digits
  return x[:60], y[:60], x[1000:1200], y[1000:1200]


def _levels_moved(x_poison, x_clean_u8):
  return np.abs(x_poison.astype(np.int32) - x_clean_u8.astype(np.int32))


def test_pgd_iterations_accumulate(small):
  x, y, xv, yv = small
  x, y = x[:40], y[:40]
  losses = []
  pgd_out = ntga.poison_block(x, y, x_val=xv, y_val=yv, key=KEY,
                              config=FAST.replace(nb_iter=6),
                              on_step=lambda i, l: losses.append(l))
  one_step = ntga.poison_block(x, y, x_val=xv, y_val=yv, key=KEY,
                               config=FAST.replace(optimizer="as_published"))
  assert len(losses) == 6
  assert not np.array_equal(pgd_out, one_step)
  # Loss measured before each step rises across steps...
  assert losses[-1] > losses[0]
  # ...and the poisoned block's loss is above the clean one's.
  clean = ntga.surrogate_loss(x, y, x_val=xv, y_val=yv, config=FAST)
  poisoned = ntga.surrogate_loss(pgd_out, y, x_val=xv, y_val=yv, config=FAST)
  assert clean == pytest.approx(losses[0], rel=1e-4)
  assert poisoned > clean + 1e-3


def test_as_published_is_one_full_eps_signed_step(small):
  x, y, xv, yv = small
  steps = []
  out = ntga.poison_block(x[:30], y[:30], x_val=xv, y_val=yv, key=KEY,
                          config=FAST.replace(optimizer="as_published"),
                          on_step=lambda i, l: steps.append(i))
  assert steps == [0]
  k = pgd.levels(FAST.eps)
  moved = out.astype(int) - x[:30].astype(int)
  # Every moved pixel moved by the full eps unless [0, 255] clipped it.
  free = (moved != 0) & (out > 0) & (out < 255)
  assert free.any()
  assert np.all(np.abs(moved[free]) == k)


def test_sign_finish_puts_pgd_perturbations_on_the_vertices(small):
  x, y, xv, yv = small
  config = FAST.replace(nb_iter=3, rand_init=True)
  kw = dict(x_val=xv, y_val=yv, key=KEY)
  plain = ntga.poison_block(x[:30], y[:30], config=config, **kw)
  finished = ntga.poison_block(x[:30], y[:30],
                               config=config.replace(sign_finish=True), **kw)
  k = pgd.levels(FAST.eps)
  clean = x[:30].astype(int)
  before, after = plain.astype(int) - clean, finished.astype(int) - clean
  # PGD left some pixels strictly inside the ball; the finish moves every
  # perturbed pixel to the full eps along the same sign, unless [0, 255]
  # clips it, and leaves unperturbed pixels alone.
  assert ((before != 0) & (np.abs(before) < k)).any()
  np.testing.assert_array_equal(np.sign(after), np.sign(before))
  free = (after != 0) & (finished > 0) & (finished < 255)
  assert free.any()
  assert np.all(np.abs(after[free]) == k)
  np.testing.assert_array_equal(after[before == 0], 0)


def test_momentum_step_accumulates_normalised_gradients():
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(0.2, 0.8, (3, 4, 4, 1)), jnp.float32)
  g1 = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  g2 = jnp.asarray(rng.normal(size=x0.shape) * 100, jnp.float32)
  kw = dict(step_size=0.01, eps=0.05, norm="linf")
  # From rest, one step is a PGD step (sign of the gradient) ...
  x1, v1 = pgd.momentum_step(x0, jnp.zeros_like(x0), g1, x0, mu=1.0, **kw)
  np.testing.assert_array_equal(x1, pgd.ascent_step(x0, g1, x0, **kw))
  # ... the velocity holds the gradient over its mean |.| per example ...
  scale = np.abs(np.asarray(g1)).mean(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(v1, np.asarray(g1) / scale, rtol=1e-5)
  # ... and the next step moves along mu * v + g2 / mean|g2|: a gradient 100
  # times larger does not outweigh the history.
  x2, v2 = pgd.momentum_step(x1, v1, g2, x0, mu=0.5, **kw)
  scale2 = np.abs(np.asarray(g2)).mean(axis=(1, 2, 3), keepdims=True)
  want_v = 0.5 * np.asarray(v1) + np.asarray(g2) / scale2
  np.testing.assert_allclose(v2, want_v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      x2, np.clip(np.clip(np.asarray(x1) + 0.01 * np.sign(want_v),
                          np.asarray(x0) - 0.05, np.asarray(x0) + 0.05),
                  0, 1), atol=1e-6)
  # mu = 0 forgets the history: the step is PGD's along g2.
  x3, _ = pgd.momentum_step(x1, v1, g2, x0, mu=0.0, **kw)
  np.testing.assert_array_equal(x3, pgd.ascent_step(x1, g2, x0, **kw))


def test_momentum_attack_raises_the_loss_within_the_budget(small):
  x, y, xv, yv = small
  config = FAST.replace(optimizer="momentum", nb_iter=4)
  assert config.step_size == pytest.approx(FAST.eps / 4)  # MI-FGSM's
  kw = dict(x_val=xv, y_val=yv, key=KEY)
  steps = []
  out = ntga.poison_block(x[:40], y[:40], config=config,
                          on_step=lambda i, l: steps.append(l), **kw)
  assert len(steps) == 4 and steps[-1] > steps[0]
  assert _levels_moved(out, x[:40]).max() <= pgd.levels(FAST.eps)
  clean = ntga.surrogate_loss(x[:40], y[:40], x_val=xv, y_val=yv,
                              config=FAST)
  assert ntga.surrogate_loss(out, y[:40], x_val=xv, y_val=yv,
                             config=FAST) > clean + 1e-3
  # Deterministic, and not PGD: the accumulated direction differs.
  again = ntga.poison_block(x[:40], y[:40], config=config, **kw)
  np.testing.assert_array_equal(again, out)
  plain = ntga.poison_block(
      x[:40], y[:40], config=FAST.replace(nb_iter=4,
                                          eps_iter=config.step_size), **kw)
  assert not np.array_equal(plain, out)
  # One momentum step from rest is one PGD step of the same size.
  one = dict(nb_iter=1, eps_iter=FAST.eps / 2)
  np.testing.assert_array_equal(
      ntga.poison_block(x[:40], y[:40], config=config.replace(**one), **kw),
      ntga.poison_block(x[:40], y[:40], config=FAST.replace(**one), **kw))


def test_momentum_on_a_padded_partial_block(small, monkeypatch):
  x, y, xv, yv = small
  config = FAST.replace(optimizer="momentum", block_size=32, nb_iter=3)
  kw = dict(x_val=xv[:100], y_val=yv[:100], key=KEY, config=config,
            num_classes=10)
  runs = {}
  for pad in (False, True):
    monkeypatch.setattr(ntga, "_PAD_PARTIAL_BLOCKS", pad)
    runs[pad] = ntga.poison_block(x[:20], y[:20], **kw)
  assert runs[True].shape == runs[False].shape
  assert np.mean(runs[True] != runs[False]) < 0.01


@pytest.mark.parametrize("changes", [dict(norm="l2", eps=0.5),
                                     dict(optimizer="as_published"),
                                     dict(rand_init=1)])
def test_sign_finish_and_flags_reject_bad_settings(changes):
  with pytest.raises(ValueError, match="sign_finish|rand_init"):
    ntga.NTGAConfig(**{"sign_finish": not changes.get("rand_init"),
                       **changes})


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [1 / 255, 8 / 255, 0.1, 0.3])
def test_linf_budget_after_quantisation(seed, eps):
  rng = np.random.default_rng(seed)
  shape = (20, 4, 4, 1)
  if seed % 2:   # off-grid floats in [0, 1]
    x = rng.uniform(size=shape).astype(np.float32)
  else:          # uint8 images, including saturated pixels
    x = rng.choice([0, 1, 128, 254, 255], size=shape).astype(np.uint8)
  xv = rng.uniform(size=(30, 4, 4, 1)).astype(np.float32)
  y, yv = rng.integers(0, 3, 20), rng.integers(0, 3, 30)
  config = ntga.NTGAConfig(eps=eps, t=16.0, optimizer="pgd", nb_iter=3,
                           rand_init=True, block_size=16)
  out = ntga.poison(x, y, x_val=xv, y_val=yv, key=jax.random.PRNGKey(seed),
                    config=config, num_classes=3)
  assert out.dtype == np.uint8 and out.shape == shape
  _, clean_u8 = pgd.snap(x if x.dtype != np.uint8 else x / 255.0)
  moved = _levels_moved(out, clean_u8)
  k = math.floor(eps * 255 + 1e-6)
  assert moved.max() <= k
  assert moved.max() == k   # eps = k/255 allows exactly k levels, no slip
  assert np.all(moved / 255.0 <= eps + 1e-12)


def test_reference_rounding_bug_not_reproduced():
  # The reference code rounds eps 0.3 up to 77/255 > 0.3; we allow 76.
  assert pgd.levels(0.3) == 76 and 76 / 255 <= 0.3 < 77 / 255
  assert pgd.levels(8 / 255) == 8
  assert all(pgd.levels(k / 255) == k for k in range(1, 255))


def test_l2_budget_after_quantisation(small):
  x, y, xv, yv = small
  eps = 0.5
  out = ntga.poison_block(x[:20], y[:20], x_val=xv, y_val=yv, key=KEY,
                          config=FAST.replace(norm="l2", eps=eps,
                                              rand_init=True))
  delta = (out.astype(np.float64) - x[:20]) / 255.0
  norms = np.sqrt(np.sum(delta.reshape(20, -1) ** 2, axis=1))
  assert np.all(norms <= eps + 1e-9)
  assert norms.max() > 0.5 * eps


def test_partial_last_block_is_poisoned(small):
  x, y, xv, yv = small
  n = 50   # blocks of 16: 16, 16, 16, 2
  config = FAST.replace(block_size=16, nb_iter=2)
  blocks = []
  out = ntga.poison(x[:n], y[:n], x_val=xv, y_val=yv, key=KEY, config=config,
                    on_block=lambda b, total: blocks.append((b, total)))
  assert blocks == [(0, 4), (1, 4), (2, 4), (3, 4)]
  moved = _levels_moved(out, x[:n]).reshape(n, -1)
  assert np.all(moved.max(axis=1) > 0), "every example must be perturbed"
  # Block b is reproducible alone with fold_in(key, b).
  last = ntga.poison_block(x[48:n], y[48:n], x_val=xv, y_val=yv,
                           key=jax.random.fold_in(KEY, 3), config=config,
                           num_classes=10)
  np.testing.assert_array_equal(out[48:n], last)


@pytest.mark.parametrize("surrogate", ["fnn", "cnn"])
def test_a_padded_partial_block_matches_the_unpadded_one(small, monkeypatch,
                                                         surrogate):
  """Padding a partial block to `block_size` (the accelerator default) gives
  the unpadded attack up to rounding: same losses, same bytes but for rare
  sign flips of near-zero gradients."""
  x, y, xv, yv = small
  config = FAST.replace(surrogate=surrogate, block_size=32, nb_iter=3,
                        rand_init=True)
  kw = dict(x_val=xv[:100], y_val=yv[:100], key=KEY, config=config,
            num_classes=10)
  runs = {}
  for pad in (False, True):
    monkeypatch.setattr(ntga, "_PAD_PARTIAL_BLOCKS", pad)
    losses_seen = []
    out = ntga.poison_block(x[:20], y[:20], **kw,
                            on_step=lambda i, l: losses_seen.append(l))
    runs[pad] = out, losses_seen
  (plain, plain_losses), (padded, padded_losses) = runs[False], runs[True]
  np.testing.assert_allclose(padded_losses, plain_losses, rtol=1e-4)
  assert padded.shape == plain.shape
  assert np.mean(plain != padded) < 0.01
  assert _levels_moved(padded, x[:20]).max() <= pgd.levels(config.eps)


def test_padded_blocks_share_one_compiled_step(small, monkeypatch):
  x, y, xv, yv = small
  monkeypatch.setattr(ntga, "_PAD_PARTIAL_BLOCKS", True)
  # A t of its own: programs compiled by no other test.
  config = FAST.replace(block_size=16, nb_iter=2, t=63.0)
  out = ntga.poison(x[:50], y[:50], x_val=xv, y_val=yv, key=KEY,
                    config=config, num_classes=10)   # blocks 16, 16, 16, 2
  programs = ntga._programs(ntga._math_key(config), 10, x.shape[1:], True)
  assert programs.step._cache_size() == 1
  # Unpadded, the last block compiles a step of its own.
  monkeypatch.setattr(ntga, "_PAD_PARTIAL_BLOCKS", False)
  config = config.replace(t=62.0)
  ntga.poison(x[:50], y[:50], x_val=xv, y_val=yv, key=KEY, config=config,
              num_classes=10)
  unpadded = ntga._programs(ntga._math_key(config), 10, x.shape[1:], False)
  assert unpadded.step._cache_size() == 2
  moved = _levels_moved(out, x[:50]).reshape(50, -1)
  assert np.all(moved.max(axis=1) > 0)
  assert moved.max() <= pgd.levels(config.eps)


def test_deterministic(small):
  x, y, xv, yv = small
  config = FAST.replace(rand_init=True, nb_iter=2)
  a = ntga.poison(x, y, x_val=xv, y_val=yv, key=KEY, config=config)
  b = ntga.poison(x, y, x_val=xv, y_val=yv, key=KEY, config=config)
  c = ntga.poison(x, y, x_val=xv, y_val=yv, key=jax.random.PRNGKey(1),
                  config=config)
  assert a.tobytes() == b.tobytes()
  assert a.tobytes() != c.tobytes()


def test_steps_run_with_one_blas_thread(small):
  """BLAS threads spin after each LAPACK call (`ntga._one_blas_thread`):
  while the steps run, every loaded BLAS has one thread; afterwards, as
  many as before."""
  x, y, xv, yv = small
  blas = lambda: [p["num_threads"] for p in threadpoolctl.threadpool_info()
                  if p["user_api"] == "blas"]
  before = blas()
  during = []
  ntga.poison_block(x[:20], y[:20], x_val=xv, y_val=yv, key=KEY,
                    config=FAST.replace(nb_iter=2),
                    on_step=lambda i, l: during.append(blas()))
  assert before and len(during) == 2
  assert all(threads == [1] * len(before) for threads in during)
  assert blas() == before


def test_validation_chunking_does_not_change_result(small):
  x, y, xv, yv = small
  a = ntga.poison_block(x[:20], y[:20], x_val=xv[:90], y_val=yv[:90],
                        key=KEY, config=FAST.replace(val_chunk_size=90))
  b = ntga.poison_block(x[:20], y[:20], x_val=xv[:90], y_val=yv[:90],
                        key=KEY, config=FAST.replace(val_chunk_size=40))
  # Chunk sums are reordered float additions: allow rare 1-level flips.
  assert np.mean(a != b) < 0.01


def test_cnn_surrogate_poisons(small):
  x, y, xv, yv = small
  config = FAST.replace(surrogate="cnn", nb_iter=2)
  out = ntga.poison_block(x[:16], y[:16], x_val=xv[:40], y_val=yv[:40],
                          key=KEY, config=config)
  assert _levels_moved(out, x[:16]).max() == pgd.levels(config.eps)


@pytest.mark.parametrize("kwargs, name", [
    (dict(eps=0.0), "eps"), (dict(eps=-0.1), "eps"), (dict(eps=1.0), "eps"),
    (dict(t=0.0), "t"), (dict(t=-1.0), "t"), (dict(t=float("nan")), "t"),
    (dict(block_size=0), "block_size"), (dict(nb_iter=0), "nb_iter"),
    (dict(surrogate="resnet"), "surrogate"), (dict(loss="hinge"), "loss"),
    (dict(norm="l1"), "norm"), (dict(optimizer="adam"), "optimizer"),
    (dict(eps_iter=-1.0), "eps_iter"), (dict(dtype="float16"), "dtype"),
    (dict(momentum_decay=-0.5), "momentum_decay"),
    (dict(momentum_decay=True), "momentum_decay"),
    (dict(momentum_decay=float("nan")), "momentum_decay"),
])
def test_bad_config_raises(kwargs, name):
  with pytest.raises(ValueError, match=name):
    ntga.NTGAConfig(**kwargs)


def test_infinite_time_allowed():
  assert ntga.NTGAConfig(t=math.inf).t == math.inf


@pytest.mark.parametrize("mutate, name", [
    (lambda d: d.update(y_train=d["y_train"][:-1]), "y_train"),
    (lambda d: d.update(y_val=d["y_val"][:-2]), "y_val"),
    (lambda d: d.update(y_train=d["y_train"] + 10), "y_train"),
    (lambda d: d.update(y_train=d["y_train"] - 11), "y_train"),
    (lambda d: d.update(x_train=d["x_train"] * 2.0), "x_train"),
    (lambda d: d.update(x_train=d["x_train"] - 0.5), "x_train"),
    (lambda d: d.update(x_val=np.full_like(d["x_val"], np.nan)), "x_val"),
    (lambda d: d.update(x_train=d["x_train"][:0], y_train=d["y_train"][:0]),
     "x_train"),
    (lambda d: d.update(x_val=d["x_val"][:, :4]), "x_val"),
    (lambda d: d.update(key=3), "key"),
    (lambda d: d.update(config="fnn"), "config"),
])
def test_bad_inputs_raise(small, mutate, name):
  x, y, xv, yv = small
  args = dict(x_train=x[:10] / 255.0, y_train=y[:10], x_val=xv / 255.0,
              y_val=yv, key=KEY, config=FAST, num_classes=10)
  mutate(args)
  with pytest.raises(ValueError, match=name):
    ntga.poison(args.pop("x_train"), args.pop("y_train"), **args)


def test_digits_surrogate_accuracy_falls(digits):
  """On real digits, the surrogate trained on poison does worse on test."""
  x, y = digits
  x_tr, y_tr, x_te, y_te = x[:1000], y[:1000], x[1400:], y[1400:]
  config = ntga.NTGAConfig(eps=32 / 255, t=64.0, optimizer="pgd", nb_iter=5,
                           block_size=500)
  x_p = ntga.poison(x_tr[:500], y_tr[:500], x_val=x_tr[500:],
                    y_val=y_tr[500:], key=KEY, config=config)
  clean = ntga.accuracy(x_tr[:500], y_tr[:500], x_te, y_te, config=config)
  poisoned = ntga.accuracy(x_p, y_tr[:500], x_te, y_te, config=config)
  assert clean > 0.8
  assert poisoned < clean - 0.05, (clean, poisoned)


@pytest.mark.parametrize("surrogate", ["fnn", "cnn"])
def test_step_gradient_equals_autodiff_of_the_plain_formula(small, surrogate):
  """The chunked step (FNN: Gram form, one matmul against the whole
  validation set) returns the loss and gradient of the unchunked formula."""
  x, y, xv, yv = small
  config = FAST.replace(surrogate=surrogate, dtype="float64",
                        val_chunk_size=23)
  c = ntga._check_inputs(x[:12], y[:12], xv[:70], yv[:70], 10, config)
  with enable_x64():
    val = ntga._validation_chunks(c, config, 12)
    assert val.x.shape[:2] == (4, 18)  # 70 in balanced chunks, 2 padded
    assert (val.p is None) == (surrogate == "cnn")
    programs = ntga._programs(ntga._math_key(config), 10, x.shape[1:])
    x0 = jnp.asarray(pgd.snap(c.x, np.float64)[0])
    y1h = jax.nn.one_hot(c.y, 10, dtype=jnp.float64)
    loss, grad = programs.loss_and_grad(x0, y1h, val)
    kernel = kernels.kernel_fn(surrogate, image_shape=x.shape[1:],
                               num_classes=10)
    xv0 = jnp.asarray(pgd.snap(c.x_val, np.float64)[0])

    def plain(x):
      alpha = predict.mean_weights(kernel(x, x), y1h, t=config.t,
                                   diag_reg=config.diag_reg)
      fx = kernel(xv0, x) @ alpha
      return losses.cross_entropy(fx, c.y_val, jnp.ones(70)) / 70

    want_loss, want_grad = jax.value_and_grad(plain)(x0)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-8,
                             atol=1e-10 * np.abs(want_grad).max())


def test_float32_bytes_match_a_float64_run(small):
  """float32 arithmetic leaves the poisoned bytes as float64 makes them,
  but for rare pixels whose gradient sign is a rounding error."""
  x, y, xv, yv = small
  kw = dict(x_val=xv, y_val=yv, key=KEY)
  for surrogate in ("fnn", "cnn"):
    config = FAST.replace(surrogate=surrogate, nb_iter=6)
    a = ntga.poison_block(x[:48], y[:48], config=config, **kw)
    b = ntga.poison_block(x[:48], y[:48],
                          config=config.replace(dtype="float64"), **kw)
    assert b.dtype == np.uint8
    assert np.mean(a == b) > 0.999, surrogate
    config64 = config.replace(dtype="float64")
    loss_a = ntga.surrogate_loss(a, y[:48], x_val=xv, y_val=yv,
                                 config=config64)
    loss_b = ntga.surrogate_loss(b, y[:48], x_val=xv, y_val=yv,
                                 config=config64)
    assert abs(loss_a - loss_b) < 1e-4 * abs(loss_b), surrogate


def test_the_pure_jax_path_alone_runs_the_attack():
  """Where the native kernels cannot be built (no compiler, ARM, macOS) the
  pure-JAX kernels run the whole attack: here with NTGA_TFDS_NATIVE=0, in a
  fresh process, both surrogates, checked as the attack's tests check it."""
  import os
  import subprocess
  import sys
  import textwrap
  code = textwrap.dedent("""
      import jax, numpy as np
      from sklearn.datasets import load_digits
      from ntga_tfds.transforms import ntga
      impl = ntga.implementation()
      assert not impl["native_fnn"] and not impl["native_cnn"], impl
      assert impl["gram"] is None, impl
      d = load_digits()
      x = np.rint(d.images / 16 * 255).astype(np.uint8)[..., None]
      y = d.target
      for surrogate in ("fnn", "cnn"):
        cfg = ntga.NTGAConfig(eps=16 / 255, optimizer="pgd", nb_iter=3,
                              surrogate=surrogate)
        losses = []
        kw = dict(x_val=x[500:620], y_val=y[500:620],
                  key=jax.random.PRNGKey(0), config=cfg)
        out = ntga.poison_block(x[:48], y[:48], on_step=lambda i, l:
                                losses.append(l), **kw)
        assert out.dtype == np.uint8
        assert np.abs(out.astype(int) - x[:48]).max() <= 16
        assert losses[-1] > losses[0], losses
        again = ntga.poison_block(x[:48], y[:48], **kw)
        assert again.tobytes() == out.tobytes()
      print("OK")
  """)
  env = dict(os.environ, NTGA_TFDS_NATIVE="0")
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("OK")

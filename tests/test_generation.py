"""Generation: the plan, checkpoints and resume, statistics, real attacks."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import ntga_tfds  # noqa: F401  (registers the builders)
from ntga_tfds import configs
from ntga_tfds import generation
from ntga_tfds import sources
from ntga_tfds.transforms import ntga
from ntga_tfds.transforms import random_noise

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_train():
  return sources.load_source("digits", "train")


@pytest.fixture(scope="module")
def digits_test():
  return sources.load_source("digits", "test")


def _small_ntga(**kw):
  return ntga.NTGAConfig(**{"eps": 8 / 255, "t": 64.0, "block_size": 32,
                            "nb_iter": 3, **kw})


# ---------------------------------------------------------------- the plan


def test_all_train_plan_poisons_everything_against_other_examples():
  plan = generation.make_plan(1000, block_size=256, val_size=100, seed=3)
  assert plan.num_blocks == 4
  blocks = [plan.block(b) for b in range(plan.num_blocks)]
  assert [len(b) for b in blocks] == [256, 256, 256, 232]  # last partial
  np.testing.assert_array_equal(np.concatenate(blocks), np.arange(1000))
  folds = [plan.validation(b) for b in range(plan.num_blocks)]
  for block, fold in zip(blocks, folds):
    assert len(fold) == 100 == len(np.unique(fold))
    assert not set(block) & set(fold)          # never the block itself
    assert fold.min() >= 0 and fold.max() < 1000  # only training indices
  assert len({tuple(f) for f in folds}) == 4   # a fresh fold per block
  again = generation.make_plan(1000, block_size=256, val_size=100, seed=3)
  np.testing.assert_array_equal(again.validation(2), folds[2])
  other = generation.make_plan(1000, block_size=256, val_size=100, seed=4)
  assert not np.array_equal(other.validation(2), folds[2])
  assert plan.heldout_indices.size == 0


def test_paper_plan_holds_out_one_clean_validation_set():
  plan = generation.make_plan(1000, block_size=256, protocol="paper",
                              val_size=200, seed=0)
  held = plan.heldout_indices
  assert len(held) == 200 and len(plan.poison_indices) == 800
  assert not set(held) & set(plan.poison_indices)
  assert sorted(np.concatenate([held, plan.poison_indices])) == list(
      range(1000))
  for b in range(plan.num_blocks):
    np.testing.assert_array_equal(plan.validation(b), held)
  assert plan.to_json()["num_heldout"] == 200


def test_plan_defaults_and_limits():
  assert generation.default_val_size(60000) == 10000
  assert generation.default_val_size(1442) == 288
  tiny = generation.make_plan(24, block_size=512)
  assert tiny.num_blocks == 2 and tiny.block_size == 12  # so folds exist
  assert tiny.val_size == 4
  with pytest.raises(ValueError, match="val_size"):
    generation.make_plan(100, block_size=60, val_size=50)
  with pytest.raises(ValueError, match="held-out"):
    generation.make_plan(100, block_size=60, protocol="paper", val_size=100)
  noise = generation.make_plan(100, block_size=None, uses_validation=False)
  assert noise.num_blocks == 1 and noise.val_size == 0
  assert noise.validation(0).size == 0


def test_keyed_choice_draws_without_replacement_from_candidates():
  cands = np.arange(0, 10000, 7)
  pick = generation.keyed_choice(0, 5, cands, 300)
  assert len(np.unique(pick)) == 300 and set(pick) <= set(cands)
  assert np.all(np.diff(pick) > 0)
  # Roughly uniform: both halves are represented.
  assert 100 < np.sum(pick < 5000) < 200


# ------------------------------------------------------------ statistics


def test_perturbation_stats_match_a_direct_computation():
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 256, (7, 5, 5, 3), dtype=np.uint8)
  delta = rng.integers(-9, 10, clean.shape)
  poisoned = np.clip(clean.astype(int) + delta, 0, 255).astype(np.uint8)
  s = generation.perturbation_stats(clean, poisoned, chunk=3)
  d = (poisoned.astype(float) - clean) / 255
  assert s["linf_max_levels"] == int(np.abs(poisoned.astype(int)
                                            - clean).max())
  l2 = np.sqrt((d.reshape(7, -1) ** 2).sum(1))
  assert s["l2_mean"] == pytest.approx(l2.mean())
  assert s["l2_max"] == pytest.approx(l2.max())
  assert s["psnr_db"] == pytest.approx(10 * np.log10(1 / np.mean(d ** 2)))
  assert s["changed_pixel_fraction"] == pytest.approx(np.mean(d != 0))
  same = generation.perturbation_stats(clean, clean)
  assert same["psnr_db"] is None and same["linf_max_levels"] == 0


# ----------------------------------------------------- real attacks, small


def test_ntga_generation_follows_the_documented_plan(digits_train):
  x, y = digits_train.images[:96], digits_train.labels[:96]
  cfg = _small_ntga()
  result = generation.generate(x, y, attack=generation.ntga_attack(cfg),
                               num_classes=10, seed=7, progress=False)
  plan = result.plan
  assert plan.num_blocks == 3 and plan.val_size == 19
  assert result.images.dtype == np.uint8 and result.images.shape == x.shape
  diff = np.abs(result.images.astype(int) - x)
  assert diff.max() <= 8 and diff.max() > 0
  assert result.stats["linf_max_levels"] == diff.max()
  # Block 1 is `poison_block` on its fold with key fold_in(PRNGKey(7), 1).
  b = 1
  expected = ntga.poison_block(
      x[plan.block(b)], y[plan.block(b)], x_val=x[plan.validation(b)],
      y_val=y[plan.validation(b)], key=jax.random.fold_in(
          jax.random.PRNGKey(7), b), config=cfg, num_classes=10)
  np.testing.assert_array_equal(result.images[plan.block_slice(b)], expected)


def test_paper_protocol_equals_the_transforms_own_loop(digits_train):
  x, y = digits_train.images[:120], digits_train.labels[:120]
  cfg = _small_ntga()
  result = generation.generate(
      x, y, attack=generation.ntga_attack(cfg), num_classes=10, seed=1,
      protocol="paper", val_size=24, progress=False)
  plan = result.plan
  expected = ntga.poison(
      x[plan.poison_indices], y[plan.poison_indices],
      x_val=x[plan.heldout_indices], y_val=y[plan.heldout_indices],
      key=jax.random.PRNGKey(1), config=cfg, num_classes=10)
  np.testing.assert_array_equal(result.images, expected)


def test_random_noise_generation(digits_train):
  x, y = digits_train.images, digits_train.labels
  cfg = random_noise.RandomNoiseConfig(eps=20 / 255)
  result = generation.generate(
      x, y, attack=generation.random_noise_attack(cfg), num_classes=10,
      seed=0, progress=False)
  assert result.plan.val_size == 0 and result.plan.num_blocks == 1
  diff = np.abs(result.images.astype(int) - x)
  assert diff.max() == 20
  expected = random_noise.poison(x, y, key=jax.random.fold_in(
      jax.random.PRNGKey(0), 0), config=cfg)
  np.testing.assert_array_equal(result.images, expected)


def test_ntga_drops_the_surrogates_test_accuracy(digits_train, digits_test):
  """The attack works on real data: the digits, MNIST's budget (eps76)."""
  cfg = configs.ntga_config("eps76_t64").attack_config()
  result = generation.generate(
      digits_train.images, digits_train.labels,
      attack=generation.ntga_attack(cfg), num_classes=10, progress=False)
  args = (digits_test.images, digits_test.labels)
  clean = ntga.accuracy(digits_train.images, digits_train.labels, *args,
                        config=cfg, num_classes=10)
  poisoned = ntga.accuracy(result.images, digits_train.labels, *args,
                           config=cfg, num_classes=10)
  assert clean > 0.8
  assert poisoned < clean - 0.4
  assert result.stats["linf_max_levels"] == 76


# ------------------------------------------------------------ checkpoints


class _Stop(Exception):
  pass


def _stop_after(n):
  def on_block(b, num_blocks):
    del num_blocks
    if b + 1 >= n:
      raise _Stop()
  return on_block


def test_checkpoints_resume_to_identical_bytes(digits_train, tmp_path):
  x, y = digits_train.images[:96], digits_train.labels[:96]
  attack = generation.ntga_attack(_small_ntga())
  reference = generation.generate(x, y, attack=attack, num_classes=10,
                                  progress=False)
  with pytest.raises(_Stop):
    generation.generate(x, y, attack=attack, num_classes=10, progress=False,
                        checkpoint_dir=tmp_path, on_block=_stop_after(2))
  (fp_dir,) = tmp_path.iterdir()
  assert sorted(p.name for p in fp_dir.glob("block_*.npy")) == [
      "block_000000.npy", "block_000001.npy"]
  assert (fp_dir / "manifest.json").exists()
  assert not list(fp_dir.glob(".*tmp*"))  # atomic writes leave no debris
  resumed = generation.generate(x, y, attack=attack, num_classes=10,
                                progress=False, checkpoint_dir=tmp_path)
  assert (resumed.blocks_resumed, resumed.blocks_computed) == (2, 1)
  assert resumed.fingerprint == fp_dir.name
  assert resumed.images.tobytes() == reference.images.tobytes()


def test_stale_or_damaged_checkpoints_are_not_reused(digits_train, tmp_path):
  x, y = digits_train.images[:64], digits_train.labels[:64]
  attack = generation.ntga_attack(_small_ntga())
  first = generation.generate(x, y, attack=attack, num_classes=10,
                              progress=False, checkpoint_dir=tmp_path)
  # Another attack config, other data or another seed: new fingerprints.
  other = generation.generate(
      x, y, attack=generation.ntga_attack(_small_ntga(nb_iter=2)),
      num_classes=10, progress=False, checkpoint_dir=tmp_path)
  x2 = x.copy()
  x2[0, 0, 0, 0] ^= 1
  changed = generation.generate(x2, y, attack=attack, num_classes=10,
                                progress=False, checkpoint_dir=tmp_path)
  seeded = generation.generate(x, y, attack=attack, num_classes=10, seed=1,
                               progress=False, checkpoint_dir=tmp_path)
  fps = {first.fingerprint, other.fingerprint, changed.fingerprint,
         seeded.fingerprint}
  assert len(fps) == 4 and len(list(tmp_path.iterdir())) == 4
  for r in (other, changed, seeded):
    assert r.blocks_resumed == 0
  # A damaged block file is recomputed, to the same bytes.
  block0 = pathlib.Path(first.checkpoint_dir) / "block_000000.npy"
  block0.write_bytes(block0.read_bytes()[:100])
  again = generation.generate(x, y, attack=attack, num_classes=10,
                              progress=False, checkpoint_dir=tmp_path)
  assert (again.blocks_resumed, again.blocks_computed) == (1, 1)
  assert again.images.tobytes() == first.images.tobytes()


def test_fingerprint_covers_the_attack_source_and_versions(digits_train):
  attack = generation.ntga_attack(_small_ntga())
  plan = generation.make_plan(64, block_size=32)
  payload = generation.fingerprint_payload(
      attack=attack, plan=plan, data_sha256="x", num_classes=10)
  assert payload["transforms_sha256"] == \
      generation.transforms_source_sha256()
  assert {"jax", "neural-tangents", "ntga-tfds"} <= set(payload["versions"])
  changed = dict(payload, transforms_sha256="0" * 64)
  assert generation.fingerprint(changed) != generation.fingerprint(payload)


# ------------------------------------- a killed build resumes (tfds build)

def _resume_config():
  return configs.ntga_config("eps16_t64", name="resume_test", nb_iter=3,
                             block_size=96, max_train_examples=480,
                             max_test_examples=50)


_BUILD_SCRIPT = textwrap.dedent("""
    import sys
    import ntga_tfds
    import tensorflow_datasets as tfds
    from ntga_tfds import configs
    cfg = configs.ntga_config("eps16_t64", name="resume_test", nb_iter=3,
                              block_size=96, max_train_examples=480,
                              max_test_examples=50)
    builder = tfds.builder("digits_ntga", config=cfg, data_dir=sys.argv[1])
    builder.download_and_prepare()
    print("BLOCKS_RESUMED", builder.info.metadata["blocks_resumed"])
""")


def _build(data_dir, **popen_kw):
  env = dict(os.environ, NTGA_TFDS_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT,
                           str(data_dir)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **popen_kw)


def _stored_examples(data_dir):
  """Every stored record, per file, as its features' serialized bytes.

  Compared feature by feature: the order in which protobuf serializes the
  feature map differs between processes, so whole records are not
  byte-comparable even for TFDS's own datasets; each feature's bytes (the
  PNG-encoded image, the label, the index) and the record order are.
  """
  import tensorflow as tf
  d = pathlib.Path(data_dir) / "digits_ntga" / "resume_test" / "1.0.0"
  files = sorted(d.glob("*.tfrecord*"))
  assert files, f"no tfrecords in {d}"
  out = {}
  for f in files:
    records = []
    for raw in tf.data.TFRecordDataset(str(f)).as_numpy_iterator():
      ex = tf.train.Example.FromString(raw)
      records.append(sorted((k, v.SerializeToString())
                            for k, v in ex.features.feature.items()))
    out[f.name] = records
  return out


def _arrays(data_dir, cfg):
  builder = tfds.builder("digits_ntga", data_dir=data_dir, config=cfg)
  return {split: tfds.as_numpy(builder.as_dataset(split=split,
                                                  batch_size=-1))
          for split in ("train", "test")}


def test_killed_build_resumes_to_identical_bytes(tmp_path):
  killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
  ckpt = (killed_dir / "downloads" / "ntga_tfds_checkpoints" / "digits_ntga"
          / "resume_test" / "1.0.0")
  proc = _build(killed_dir)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if len(list(ckpt.glob("*/block_*.npy"))) >= 2:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the build ended before it could be killed:\n" \
      + proc.stdout.read()
  proc.send_signal(signal.SIGKILL)   # mid-way: 2 of 5 blocks done
  proc.wait()
  proc.stdout.close()
  done = len(list(ckpt.glob("*/block_*.npy")))
  assert 2 <= done < 5
  # A killed build is not a dataset.
  builder = tfds.builder("digits_ntga", data_dir=killed_dir,
                         config=_resume_config())
  assert not builder.is_prepared()
  with pytest.raises(AssertionError):
    builder.as_dataset(split="train")

  resumed = _build(killed_dir)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out
  assert f"BLOCKS_RESUMED {done}" in out
  assert not list(ckpt.glob("*/block_*.npy"))  # removed once complete

  # The same build, uninterrupted (here, in-process).
  clean = tfds.builder("digits_ntga", data_dir=clean_dir,
                       config=builder.builder_config)
  clean.download_and_prepare()
  assert clean.info.metadata["blocks_resumed"] == 0
  assert _stored_examples(killed_dir) == _stored_examples(clean_dir)
  a, b = _arrays(killed_dir, builder.builder_config), _arrays(
      clean_dir, builder.builder_config)
  for split in a:
    for feature in ("image", "label", "index"):
      assert a[split][feature].tobytes() == b[split][feature].tobytes()

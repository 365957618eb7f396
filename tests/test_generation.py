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
from ntga_tfds import families
from ntga_tfds import generation
from ntga_tfds import plans
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
                            "optimizer": "pgd", "nb_iter": 3, **kw})


def _ntga_job(x, y, config, *, seed=0, protocol="all_train", val_size=None):
  """The NTGA family's blockwise job on arrays."""
  def poison_fn(xb, yb, *, x_val, y_val, key, num_classes, on_step):
    return ntga.poison_block(xb, yb, x_val=x_val, y_val=y_val, key=key,
                             config=config, num_classes=num_classes,
                             on_step=on_step)
  return plans.BlockJob(x, y, family="ntga", config=config,
                        poison_fn=poison_fn, num_classes=10, seed=seed,
                        block_size=config.block_size, protocol=protocol,
                        val_size=val_size, steps_per_block=config.nb_iter)


def _run(job, **kw):
  kw.setdefault("data_sha256", sources.content_sha256(job.x_train,
                                                       job.y_train))
  return generation.run(job, progress=False, **kw)


def _train_images(result):
  return result.splits["train"]["image"]


# ---------------------------------------------------------------- the plan


def test_all_train_plan_poisons_everything_against_other_examples():
  plan = plans.make_block_plan(1000, block_size=256, val_size=100, seed=3)
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
  again = plans.make_block_plan(1000, block_size=256, val_size=100, seed=3)
  np.testing.assert_array_equal(again.validation(2), folds[2])
  other = plans.make_block_plan(1000, block_size=256, val_size=100, seed=4)
  assert not np.array_equal(other.validation(2), folds[2])
  assert plan.heldout_indices.size == 0


def test_shared_fold_plan_attacks_every_block_against_one_fold():
  n, v = 1000, 100
  shared = plans.make_block_plan(n, block_size=256, protocol="shared_fold",
                                 val_size=v, seed=3)
  own = plans.make_block_plan(n, block_size=256, val_size=v, seed=3)
  assert shared.num_blocks == 4
  np.testing.assert_array_equal(shared.poison_indices, np.arange(n))
  folds = [shared.validation(b) for b in range(4)]
  for b, fold in enumerate(folds):
    assert len(fold) == v == len(np.unique(fold))
    assert not set(shared.block(b)) & set(fold)   # never the block itself
  # One fold, less each block's own images: every fold is the first v
  # images outside its block in one keyed order of all training images...
  scores = plans.keyed_scores(3, plans._SHARED_FOLD_STREAM, np.arange(n))
  order = np.lexsort((np.arange(n), scores))
  for b, fold in enumerate(folds):
    first = [i for i in order if i not in set(shared.block(b))][:v]
    np.testing.assert_array_equal(fold, np.sort(first))
  # ...so two blocks' folds overlap far more than the fresh folds of
  # "all_train" (about v * v / (n - 256) images in common there).
  common = lambda p: min(len(set(p.validation(b)) & set(p.validation(c)))
                         for b in range(4) for c in range(b))
  assert common(shared) >= v // 3 and common(own) < v // 4
  assert plans.make_block_plan(n, block_size=256, protocol="shared_fold",
                               val_size=v, seed=4).validation(0).tolist() != \
      folds[0].tolist()


def test_paper_plan_holds_out_one_clean_validation_set():
  plan = plans.make_block_plan(1000, block_size=256, protocol="heldout",
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
  assert plans.default_val_size(60000) == 10000
  assert plans.default_val_size(1442) == 288
  tiny = plans.make_block_plan(24, block_size=512)
  assert tiny.num_blocks == 2 and tiny.block_size == 12  # so folds exist
  assert tiny.val_size == 4
  with pytest.raises(ValueError, match="val_size"):
    plans.make_block_plan(100, block_size=60, val_size=50)
  with pytest.raises(ValueError, match="held-out"):
    plans.make_block_plan(100, block_size=60, protocol="heldout", val_size=100)
  noise = plans.make_block_plan(100, block_size=None, uses_validation=False)
  assert noise.num_blocks == 1 and noise.val_size == 0
  assert noise.validation(0).size == 0


def test_keyed_choice_draws_without_replacement_from_candidates():
  cands = np.arange(0, 10000, 7)
  pick = plans.keyed_choice(0, 5, cands, 300)
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
  job = _ntga_job(x, y, cfg, seed=7)
  result = _run(job)
  plan = job.plan
  images = _train_images(result)
  assert plan.num_blocks == 3 and plan.val_size == 19
  assert images.dtype == np.uint8 and images.shape == x.shape
  diff = np.abs(images.astype(int) - x)
  assert diff.max() <= 8 and diff.max() > 0
  assert result.stats["linf_max_levels"] == diff.max()
  # Block 1 is `poison_block` on its fold with key fold_in(PRNGKey(7), 1).
  b = 1
  expected = ntga.poison_block(
      x[plan.block(b)], y[plan.block(b)], x_val=x[plan.validation(b)],
      y_val=y[plan.validation(b)], key=jax.random.fold_in(
          jax.random.PRNGKey(7), b), config=cfg, num_classes=10)
  np.testing.assert_array_equal(images[plan.block_slice(b)], expected)


def test_paper_protocol_equals_the_transforms_own_loop(digits_train):
  x, y = digits_train.images[:120], digits_train.labels[:120]
  cfg = _small_ntga()
  job = _ntga_job(x, y, cfg, seed=1, protocol="heldout", val_size=24)
  result = _run(job)
  plan = job.plan
  expected = ntga.poison(
      x[plan.poison_indices], y[plan.poison_indices],
      x_val=x[plan.heldout_indices], y_val=y[plan.heldout_indices],
      key=jax.random.PRNGKey(1), config=cfg, num_classes=10)
  np.testing.assert_array_equal(_train_images(result), expected)
  np.testing.assert_array_equal(result.splits["validation"]["index"],
                                plan.heldout_indices)


def test_random_noise_generation(digits_train):
  x, y = digits_train.images, digits_train.labels
  cfg = random_noise.RandomNoiseConfig(eps=20 / 255)
  noise = families.get("random_noise")
  bcfg = noise.config(eps=20 / 255, distribution="uniform")
  spec = sources.source_spec("digits")
  job = noise.job(bcfg, digits_train, None, spec)
  result = _run(job)
  assert job.plan.val_size == 0 and job.plan.num_blocks == 1
  diff = np.abs(_train_images(result).astype(int) - x)
  assert diff.max() == 20
  expected = random_noise.poison(x, y, key=jax.random.fold_in(
      jax.random.PRNGKey(0), 0), config=cfg)
  np.testing.assert_array_equal(_train_images(result), expected)


def test_ntga_drops_the_surrogates_test_accuracy(digits_train, digits_test):
  """The attack works on real data: the digits, MNIST's budget (eps76)."""
  fam = families.get("ntga")
  bcfg = fam.config("eps76_t64")
  cfg = bcfg.attack
  job = fam.job(bcfg, digits_train, digits_test,
                sources.source_spec("digits"))
  result = _run(job)
  args = (digits_test.images, digits_test.labels)
  clean = ntga.accuracy(digits_train.images, digits_train.labels, *args,
                        config=cfg, num_classes=10)
  poisoned = ntga.accuracy(_train_images(result), digits_train.labels, *args,
                           config=cfg, num_classes=10)
  assert clean > 0.8
  assert poisoned < clean - 0.4
  assert result.stats["linf_max_levels"] == 76


# ------------------------------------------------------------ checkpoints


def test_checkpoints_resume_to_identical_bytes(digits_train, tmp_path):
  x, y = digits_train.images[:96], digits_train.labels[:96]
  job = _ntga_job(x, y, _small_ntga())
  reference = _run(job)
  with pytest.raises(generation.Interrupted):
    _run(job, checkpoint_dir=tmp_path, stop_after=2)
  (fp_dir,) = tmp_path.iterdir()
  assert sorted(p.name for p in fp_dir.glob("unit_*.npz")) == [
      "unit_000000.npz", "unit_000001.npz"]
  assert (fp_dir / "manifest.json").exists()
  assert not list(fp_dir.glob(".*tmp*"))  # atomic writes leave no debris
  resumed = _run(job, checkpoint_dir=tmp_path)
  assert (resumed.units_resumed, resumed.units_computed) == (2, 1)
  assert resumed.fingerprint == fp_dir.name
  assert _train_images(resumed).tobytes() == \
      _train_images(reference).tobytes()


def test_stale_or_damaged_checkpoints_are_not_reused(digits_train, tmp_path):
  x, y = digits_train.images[:64], digits_train.labels[:64]
  job = _ntga_job(x, y, _small_ntga())
  first = _run(job, checkpoint_dir=tmp_path)
  # Another attack config, other data, another seed or another
  # implementation: new fingerprints.
  other = _run(_ntga_job(x, y, _small_ntga(nb_iter=2)),
               checkpoint_dir=tmp_path)
  x2 = x.copy()
  x2[0, 0, 0, 0] ^= 1
  changed = _run(_ntga_job(x2, y, _small_ntga()), checkpoint_dir=tmp_path)
  seeded = _run(_ntga_job(x, y, _small_ntga(), seed=1),
                checkpoint_dir=tmp_path)
  impl = dict(ntga.implementation(), native_fnn=False)
  pure = _run(job, checkpoint_dir=tmp_path, implementation=impl)
  fps = {first.fingerprint, other.fingerprint, changed.fingerprint,
         seeded.fingerprint, pure.fingerprint}
  assert len(fps) == 5 and len(list(tmp_path.iterdir())) == 5
  for r in (other, changed, seeded, pure):
    assert r.units_resumed == 0
  # A damaged unit file is recomputed, to the same bytes.
  unit0 = pathlib.Path(first.checkpoint_dir) / "unit_000000.npz"
  unit0.write_bytes(unit0.read_bytes()[:100])
  again = _run(job, checkpoint_dir=tmp_path)
  assert (again.units_resumed, again.units_computed) == (1, 1)
  assert _train_images(again).tobytes() == _train_images(first).tobytes()


def test_fingerprint_covers_the_attack_source_native_code_and_switches(
    monkeypatch):
  job = plans.BlockJob(np.zeros((64, 4, 4, 1), np.uint8), np.zeros(64, int),
                       family="ntga", config=_small_ntga(),
                       poison_fn=None, num_classes=10, block_size=32)
  payload = generation.fingerprint_payload(
      job, data_sha256="x", implementation=ntga.implementation())
  assert payload["transforms_sha256"] == \
      generation.transforms_source_sha256()
  assert {"jax", "neural-tangents", "ntga-tfds"} <= set(payload["versions"])
  changed = dict(payload, transforms_sha256="0" * 64)
  assert generation.fingerprint(changed) != generation.fingerprint(payload)
  # The native C++ sources are part of the source hash.
  from ntga_tfds import transforms
  root = pathlib.Path(transforms.__file__).parent
  cc = sorted(root.rglob("*.cc"))
  assert cc, "no native sources found"
  # The switches that change output bytes are part of the implementation.
  monkeypatch.setenv("NTGA_TFDS_VNNI", "0")
  switched = ntga.implementation()
  assert switched["switches"] == {"NTGA_TFDS_VNNI": "0"}
  monkeypatch.setenv("NTGA_TFDS_PROGRESS", "0")  # does not change bytes
  assert ntga.implementation()["switches"] == {"NTGA_TFDS_VNNI": "0"}
  assert generation.fingerprint(generation.fingerprint_payload(
      job, data_sha256="x", implementation=switched)) != \
      generation.fingerprint(payload)


def test_transforms_source_hash_changes_with_a_native_file(tmp_path,
                                                            monkeypatch):
  from ntga_tfds import transforms
  root = tmp_path / "transforms"
  (root / "ntga" / "_native").mkdir(parents=True)
  (root / "__init__.py").write_text("")
  (root / "ntga" / "_native" / "k.cc").write_text("int f() { return 1; }")
  monkeypatch.setattr(transforms, "__file__", str(root / "__init__.py"))
  before = generation.transforms_source_sha256()
  (root / "ntga" / "_native" / "k.cc").write_text("int f() { return 2; }")
  assert generation.transforms_source_sha256() != before


# ------------------------------------- a killed build resumes (tfds build)

_VERSION = str(tfds.builder_cls("digits_ntga").VERSION)


def _resume_config():
  return families.get("ntga").config(
      "eps16_t64_folds_pgd", name="resume_test", nb_iter=3, block_size=96,
      max_train_examples=480, max_test_examples=50)


_BUILD_SCRIPT = textwrap.dedent("""
    import sys
    import ntga_tfds
    import tensorflow_datasets as tfds
    from ntga_tfds import families
    cfg = families.get("ntga").config(
        "eps16_t64_folds_pgd", name="resume_test", nb_iter=3, block_size=96,
        max_train_examples=480, max_test_examples=50)
    builder = tfds.builder("digits_ntga", config=cfg, data_dir=sys.argv[1])
    builder.download_and_prepare()
    print("UNITS_RESUMED", builder.info.metadata["units_resumed"])
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
  d = pathlib.Path(data_dir) / "digits_ntga" / "resume_test" / _VERSION
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
          / "resume_test" / _VERSION)
  proc = _build(killed_dir)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if len(list(ckpt.glob("*/unit_*.npz"))) >= 2:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the build ended before it could be killed:\n" \
      + proc.stdout.read()
  proc.send_signal(signal.SIGKILL)   # mid-way: 2 of 5 blocks done
  proc.wait()
  proc.stdout.close()
  done = len(list(ckpt.glob("*/unit_*.npz")))
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
  assert f"UNITS_RESUMED {done}" in out
  assert not list(ckpt.glob("*/unit_*.npz"))  # removed once complete

  # The same build, uninterrupted (here, in-process).
  clean = tfds.builder("digits_ntga", data_dir=clean_dir,
                       config=builder.builder_config)
  clean.download_and_prepare()
  assert clean.info.metadata["units_resumed"] == 0
  assert _stored_examples(killed_dir) == _stored_examples(clean_dir)
  a, b = _arrays(killed_dir, builder.builder_config), _arrays(
      clean_dir, builder.builder_config)
  for split in a:
    for feature in ("image", "label", "index"):
      assert a[split][feature].tobytes() == b[split][feature].tobytes()


def test_checkpoints_keep_every_array_exactly(tmp_path):
  store = generation.CheckpointStore(tmp_path, {"x": 1})
  arrays = {"scalar": np.asarray(3, np.int64), "text": np.asarray("cnn"),
            "f": np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2]}
  store.save(0, arrays)
  back = store.load(0)
  for k, v in arrays.items():
    assert back[k].shape == v.shape and back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v)

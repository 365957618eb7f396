"""Test helpers for the builder folders (imports `tfds.testing`).

Every folder's test is one class:

  class Cifar10NtgaTest(testing.PoisonedBuilderTestCase):
    DATASET_CLASS = cifar10_ntga_dataset_builder.Builder

which builds every named config of the builder on its source's shared dummy
data (`builders/dummy_data/<source>/`, one folder per source) and checks the
splits' sizes (`Family.expected_splits` of the clean labels). Sources that need no files (the
digits, embedded in scikit-learn) are built on small subsets of the real
data instead (`SUBSET`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

# Split hashes of the named configs built before the attack-families
# refactor (commit decf222): the same configs must still give these bytes.
_GOLDEN = (pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
           / "builder_bytes_decf222.json")

# Examples in each source's dummy data (train, test); see
# builders/_make_dummy_data.py.
DUMMY_SIZES = {"mnist": (24, 8), "fashion_mnist": (24, 8),
               "cifar10": (24, 8), "imagenet_bulbul_jellyfish": (12, 4)}
# Sources without dummy files, built on subsets of the real data.
SUBSET = dict(max_train_examples=60, max_test_examples=20)


def dummy_data_dir(source: str) -> pathlib.Path:
  from ntga_tfds import builders  # pylint: disable=g-import-not-at-top
  return pathlib.Path(builders.__file__).parent / "dummy_data" / source


class PoisonedBuilderTestCase(tfds.testing.DatasetBuilderTestCase):
  """Builds every named config of `DATASET_CLASS` on its source's dummy data.

  Set `BUILDER_CONFIG_NAMES_TO_TEST` or `SPLITS` to override what is built
  and expected.
  """

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    builder = cls.__dict__.get("DATASET_CLASS")
    if builder is None:
      return
    fam, source = builder.family(), builder.SOURCE
    if "EXAMPLE_DIR" not in cls.__dict__:
      cls.EXAMPLE_DIR = str(dummy_data_dir(source))
    subset = source not in DUMMY_SIZES
    if "BUILDER_CONFIG_NAMES_TO_TEST" not in cls.__dict__ and hasattr(
        fam, "test_configs"):
      # Families whose named configs are too slow to build in a test say
      # which small versions to build.
      cls.BUILDER_CONFIG_NAMES_TO_TEST = fam.test_configs(
          source, **(SUBSET if subset else {}))
    if "BUILDER_CONFIG_NAMES_TO_TEST" not in cls.__dict__:
      cls.BUILDER_CONFIG_NAMES_TO_TEST = [
          fam.config(c.name, **SUBSET) if subset else c.name
          for c in builder.BUILDER_CONFIGS]
    if "SPLITS" not in cls.__dict__:
      first = cls.BUILDER_CONFIG_NAMES_TO_TEST[0]
      cfg = first if not isinstance(first, str) else \
          builder.BUILDER_CONFIGS[0]
      cls.SPLITS = fam.expected_splits(
          cfg, *_labels(source, cfg, None if subset else cls.EXAMPLE_DIR))

  def _assertAsDataset(self, builder):  # pylint: disable=invalid-name
    super()._assertAsDataset(builder)
    want = golden(f"{builder.name}/{builder.builder_config.name}")
    if want is not None:  # configs that existed before the refactor
      got = {s: list(split_sha256(builder, s)) for s in builder.info.splits}
      self.assertEqual(got, want, "bytes differ from the recorded build")


def _labels(source, cfg, manual_dir):
  """The labels of the clean (train, test) splits `cfg` reads."""
  from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
  return tuple(
      sources.load_source(source, split, manual_dir=manual_dir,
                          max_examples=limit).labels
      for split, limit in (("train", cfg.max_train_examples),
                           ("test", cfg.max_test_examples)))


def split_sha256(builder, split: str):
  """(count, sha256) of a split: rows sorted by `index` (then label and
  pixels), each as int64 index, int64 label, image bytes."""
  rows = sorted((int(ex["index"]), int(ex["label"]), ex["image"].tobytes())
                for ex in tfds.as_numpy(builder.as_dataset(split=split)))
  h = hashlib.sha256()
  for i, label, image in rows:
    h.update(np.int64(i).tobytes())
    h.update(np.int64(label).tobytes())
    h.update(image)
  return len(rows), h.hexdigest()


@functools.lru_cache(maxsize=None)
def _recorded() -> dict:
  return json.loads(_GOLDEN.read_text()) if _GOLDEN.exists() else {}


def golden(key: str):
  """The recorded split hashes of `<builder>/<config>`, or None."""
  return _recorded().get(key)


def main():
  tfds.testing.test_main()


__all__ = ["PoisonedBuilderTestCase", "DUMMY_SIZES", "SUBSET",
           "dummy_data_dir", "main"]

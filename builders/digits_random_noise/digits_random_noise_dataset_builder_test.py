"""digits_random_noise on small subsets of scikit-learn's digits (embedded,
offline).

Every named config is built on the first 60 training and 20 test examples of
the canonical order (`max_train_examples`/`max_test_examples`, which give the
config a distinct name); the digits need no dummy files.
"""

import tensorflow_datasets as tfds

from ntga_tfds import configs
from ntga_tfds.builders.digits_random_noise import (
    digits_random_noise_dataset_builder)

_SUBSET = dict(max_train_examples=60, max_test_examples=20)


class DigitsRandomNoiseTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = digits_random_noise_dataset_builder.Builder
  SPLITS = {"train": 60, "test": 20}
  BUILDER_CONFIG_NAMES_TO_TEST = [
      configs.random_noise_config(c.name, **_SUBSET)
      for c in configs.named_random_noise_configs("digits")
  ]


if __name__ == "__main__":
  tfds.testing.test_main()

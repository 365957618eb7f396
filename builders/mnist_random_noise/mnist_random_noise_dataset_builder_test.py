"""mnist_random_noise on dummy data: tiny idx files read by the offline reader.

Every named config is built.
"""

import tensorflow_datasets as tfds

from ntga_tfds.builders.mnist_random_noise import (
    mnist_random_noise_dataset_builder)


class MnistRandomNoiseTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = mnist_random_noise_dataset_builder.Builder
  SPLITS = {"train": 24, "test": 8}


if __name__ == "__main__":
  tfds.testing.test_main()

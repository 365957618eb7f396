"""fashion_mnist_random_noise on dummy data: tiny idx files read by the offline
reader.

Every named config is built.
"""

import tensorflow_datasets as tfds

from ntga_tfds.builders.fashion_mnist_random_noise import (
    fashion_mnist_random_noise_dataset_builder)


class FashionMnistRandomNoiseTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = fashion_mnist_random_noise_dataset_builder.Builder
  SPLITS = {"train": 24, "test": 8}


if __name__ == "__main__":
  tfds.testing.test_main()

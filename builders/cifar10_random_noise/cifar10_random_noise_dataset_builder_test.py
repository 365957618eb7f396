"""cifar10_random_noise on dummy data: a tiny cifar-10-batches-bin/.

Every named config is built.
"""

import tensorflow_datasets as tfds

from ntga_tfds.builders.cifar10_random_noise import (
    cifar10_random_noise_dataset_builder)


class Cifar10RandomNoiseTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cifar10_random_noise_dataset_builder.Builder
  SPLITS = {"train": 24, "test": 8}


if __name__ == "__main__":
  tfds.testing.test_main()

"""fashion_mnist_ntga on dummy data: tiny idx files read by the offline reader.

Every named config is built.
"""

import tensorflow_datasets as tfds

from ntga_tfds.builders.fashion_mnist_ntga import (
    fashion_mnist_ntga_dataset_builder)


class FashionMnistNtgaTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = fashion_mnist_ntga_dataset_builder.Builder
  SPLITS = {"train": 24, "test": 8}


if __name__ == "__main__":
  tfds.testing.test_main()

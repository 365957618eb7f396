"""mnist_ntga on dummy data: tiny idx files read by the offline reader.

Every named config is built.
"""

import tensorflow_datasets as tfds

from ntga_tfds.builders.mnist_ntga import mnist_ntga_dataset_builder


class MnistNtgaTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = mnist_ntga_dataset_builder.Builder
  SPLITS = {"train": 24, "test": 8}


if __name__ == "__main__":
  tfds.testing.test_main()

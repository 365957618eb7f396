"""cifar10_ntga on dummy data: a tiny cifar-10-batches-bin/ (own reader).

Every named config is built.
"""

import tensorflow_datasets as tfds

from ntga_tfds import configs
from ntga_tfds.builders.cifar10_ntga import cifar10_ntga_dataset_builder


class Cifar10NtgaTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cifar10_ntga_dataset_builder.Builder
  SPLITS = {"train": 24, "test": 8}


class Cifar10NtgaPaperProtocolTest(tfds.testing.DatasetBuilderTestCase):
  """The paper protocol by grammar name: 4 (= 24 // 5) clean held-out images
  released as `validation`."""
  DATASET_CLASS = cifar10_ntga_dataset_builder.Builder
  SPLITS = {"train": 20, "validation": 4, "test": 8}
  BUILDER_CONFIG_NAMES_TO_TEST = [configs.ntga_config("eps8_t4096_paper")]


if __name__ == "__main__":
  tfds.testing.test_main()

"""cifar10_ntga: every named config built on its source's shared dummy data (builders/dummy_data/cifar10/)."""

from ntga_tfds import testing
from ntga_tfds.builders.cifar10_ntga import cifar10_ntga_dataset_builder


class Cifar10NtgaTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = cifar10_ntga_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

"""cifar10_witches_brew: every named config built on its source's shared dummy data (builders/dummy_data/cifar10/)."""

from ntga_tfds import testing
from ntga_tfds.builders.cifar10_witches_brew import cifar10_witches_brew_dataset_builder


class Cifar10WitchesBrewTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = cifar10_witches_brew_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

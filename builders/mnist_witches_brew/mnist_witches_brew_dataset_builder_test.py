"""mnist_witches_brew: every named config built on its source's shared dummy data (builders/dummy_data/mnist/)."""

from ntga_tfds import testing
from ntga_tfds.builders.mnist_witches_brew import mnist_witches_brew_dataset_builder


class MnistWitchesBrewTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = mnist_witches_brew_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

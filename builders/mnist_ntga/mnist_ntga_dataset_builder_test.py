"""mnist_ntga: every named config built on its source's shared dummy data (builders/dummy_data/mnist/)."""

from ntga_tfds import testing
from ntga_tfds.builders.mnist_ntga import mnist_ntga_dataset_builder


class MnistNtgaTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = mnist_ntga_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

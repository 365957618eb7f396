"""mnist_back_gradient: every named config built on its source's shared dummy data (builders/dummy_data/mnist/)."""

from ntga_tfds import testing
from ntga_tfds.builders.mnist_back_gradient import mnist_back_gradient_dataset_builder


class MnistBackGradientTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = mnist_back_gradient_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

"""fashion_mnist_ntga: every named config built on its source's shared dummy data (builders/dummy_data/fashion_mnist/)."""

from ntga_tfds import testing
from ntga_tfds.builders.fashion_mnist_ntga import fashion_mnist_ntga_dataset_builder


class FashionMnistNtgaTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = fashion_mnist_ntga_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

"""fashion_mnist_random_noise: every named config built on its source's shared dummy data (builders/dummy_data/fashion_mnist/)."""

from ntga_tfds import testing
from ntga_tfds.builders.fashion_mnist_random_noise import fashion_mnist_random_noise_dataset_builder


class FashionMnistRandomNoiseTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = fashion_mnist_random_noise_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

"""mnist_random_noise: every named config built on its source's shared dummy data (builders/dummy_data/mnist/)."""

from ntga_tfds import testing
from ntga_tfds.builders.mnist_random_noise import mnist_random_noise_dataset_builder


class MnistRandomNoiseTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = mnist_random_noise_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

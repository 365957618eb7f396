"""digits_random_noise: every named config built on small subsets of the real data (embedded, offline)."""

from ntga_tfds import testing
from ntga_tfds.builders.digits_random_noise import digits_random_noise_dataset_builder


class DigitsRandomNoiseTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = digits_random_noise_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

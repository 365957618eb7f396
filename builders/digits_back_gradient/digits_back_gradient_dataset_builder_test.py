"""digits_back_gradient: every named config built on small subsets of the real data (embedded, offline)."""

from ntga_tfds import testing
from ntga_tfds.builders.digits_back_gradient import digits_back_gradient_dataset_builder


class DigitsBackGradientTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = digits_back_gradient_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

"""digits_ntga: every named config built on small subsets of the real data (embedded, offline)."""

from ntga_tfds import testing
from ntga_tfds.builders.digits_ntga import digits_ntga_dataset_builder


class DigitsNtgaTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = digits_ntga_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

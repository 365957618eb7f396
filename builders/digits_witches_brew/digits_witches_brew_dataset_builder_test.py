"""digits_witches_brew: every named config built on small subsets of the real data (embedded, offline)."""

from ntga_tfds import testing
from ntga_tfds.builders.digits_witches_brew import digits_witches_brew_dataset_builder


class DigitsWitchesBrewTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = digits_witches_brew_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

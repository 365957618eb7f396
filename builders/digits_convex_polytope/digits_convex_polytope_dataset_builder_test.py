"""digits_convex_polytope: every named config built on small subsets of the real data (embedded, offline)."""

from ntga_tfds import testing
from ntga_tfds.builders.digits_convex_polytope import digits_convex_polytope_dataset_builder


class DigitsConvexPolytopeTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = digits_convex_polytope_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

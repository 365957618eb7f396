"""cifar10_convex_polytope: every named config built on its source's shared dummy data (builders/dummy_data/cifar10/)."""

from ntga_tfds import testing
from ntga_tfds.builders.cifar10_convex_polytope import cifar10_convex_polytope_dataset_builder


class Cifar10ConvexPolytopeTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = cifar10_convex_polytope_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

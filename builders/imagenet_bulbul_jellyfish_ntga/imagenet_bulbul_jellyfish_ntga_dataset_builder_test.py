"""imagenet_bulbul_jellyfish_ntga: every named config built on its source's shared dummy data (builders/dummy_data/imagenet_bulbul_jellyfish/)."""

from ntga_tfds import testing
from ntga_tfds.builders.imagenet_bulbul_jellyfish_ntga import imagenet_bulbul_jellyfish_ntga_dataset_builder


class ImagenetBulbulJellyfishNtgaTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = imagenet_bulbul_jellyfish_ntga_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

"""imagenet_bulbul_jellyfish_random_noise: every named config built on its source's shared dummy data (builders/dummy_data/imagenet_bulbul_jellyfish/)."""

from ntga_tfds import testing
from ntga_tfds.builders.imagenet_bulbul_jellyfish_random_noise import imagenet_bulbul_jellyfish_random_noise_dataset_builder


class ImagenetBulbulJellyfishRandomNoiseTest(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = imagenet_bulbul_jellyfish_random_noise_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()

"""imagenet2_random_noise: 2-class ImageNet (bulbul, jellyfish), train split
with random noise.

The dataset card is README.md next to this file.
"""

from ntga_tfds import configs
from ntga_tfds import dataset_builder


class Builder(dataset_builder.RandomNoiseBuilder):
  """2-class ImageNet (bulbul, jellyfish), train split with random noise."""

  SOURCE = "imagenet2"
  BUILDER_CONFIGS = configs.named_random_noise_configs("imagenet2")

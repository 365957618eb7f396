"""digits_random_noise: scikit-learn's 8x8 digits, train split with random
noise.

The dataset card is README.md next to this file.
"""

from ntga_tfds import configs
from ntga_tfds import dataset_builder


class Builder(dataset_builder.RandomNoiseBuilder):
  """scikit-learn's 8x8 digits, train split with random noise."""

  SOURCE = "digits"
  BUILDER_CONFIGS = configs.named_random_noise_configs("digits")

"""cifar10_random_noise: CIFAR-10, train split with random noise.

The dataset card is README.md next to this file.
"""

from ntga_tfds import configs
from ntga_tfds import dataset_builder


class Builder(dataset_builder.RandomNoiseBuilder):
  """CIFAR-10, train split with random noise."""

  SOURCE = "cifar10"
  BUILDER_CONFIGS = configs.named_random_noise_configs("cifar10")

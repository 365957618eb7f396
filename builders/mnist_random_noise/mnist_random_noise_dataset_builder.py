"""mnist_random_noise: MNIST, train split with random noise.

The dataset card is README.md next to this file.
"""

from ntga_tfds import configs
from ntga_tfds import dataset_builder


class Builder(dataset_builder.RandomNoiseBuilder):
  """MNIST, train split with random noise."""

  SOURCE = "mnist"
  BUILDER_CONFIGS = configs.named_random_noise_configs("mnist")

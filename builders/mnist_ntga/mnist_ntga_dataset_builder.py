"""mnist_ntga: MNIST, train split poisoned by NTGA.

The dataset card is README.md next to this file.
"""

from ntga_tfds import configs
from ntga_tfds import dataset_builder


class Builder(dataset_builder.NTGABuilder):
  """MNIST, train split poisoned by NTGA."""

  SOURCE = "mnist"
  BUILDER_CONFIGS = configs.named_ntga_configs("mnist")

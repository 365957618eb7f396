"""digits_ntga: scikit-learn's 8x8 digits, train split poisoned by NTGA.

The dataset card is README.md next to this file.
"""

from ntga_tfds import configs
from ntga_tfds import dataset_builder


class Builder(dataset_builder.NTGABuilder):
  """scikit-learn's 8x8 digits, train split poisoned by NTGA."""

  SOURCE = "digits"
  BUILDER_CONFIGS = configs.named_ntga_configs("digits")

"""imagenet2_ntga: 2-class ImageNet (bulbul, jellyfish), train split poisoned
by NTGA.

The dataset card is README.md next to this file.
"""

from ntga_tfds import configs
from ntga_tfds import dataset_builder


class Builder(dataset_builder.NTGABuilder):
  """2-class ImageNet (bulbul, jellyfish), train split poisoned by NTGA."""

  SOURCE = "imagenet2"
  BUILDER_CONFIGS = configs.named_ntga_configs("imagenet2")
  PAPER_VAL_SIZE = 380  # the paper attacked 2,220 images against 380

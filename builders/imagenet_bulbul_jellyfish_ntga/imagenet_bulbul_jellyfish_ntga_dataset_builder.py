"""imagenet_bulbul_jellyfish_ntga: 2-class ImageNet (bulbul vs jellyfish), training set poisoned by NTGA.

The dataset card is README.md next to this file, rendered from the ntga
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("imagenet_bulbul_jellyfish", "ntga")):
  """2-class ImageNet (bulbul vs jellyfish), training set poisoned by NTGA."""

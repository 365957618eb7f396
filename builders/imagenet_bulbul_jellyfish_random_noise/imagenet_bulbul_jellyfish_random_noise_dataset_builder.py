"""imagenet_bulbul_jellyfish_random_noise: 2-class ImageNet (bulbul vs jellyfish), training set with random noise (the attacks' control).

The dataset card is README.md next to this file, rendered from the random_noise
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("imagenet_bulbul_jellyfish", "random_noise")):
  """2-class ImageNet (bulbul vs jellyfish), training set with random noise (the attacks' control)."""

"""mnist_random_noise: MNIST, training set with random noise (the attacks' control).

The dataset card is README.md next to this file, rendered from the random_noise
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("mnist", "random_noise")):
  """MNIST, training set with random noise (the attacks' control)."""

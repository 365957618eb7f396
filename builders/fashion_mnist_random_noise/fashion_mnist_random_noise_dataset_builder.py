"""fashion_mnist_random_noise: Fashion-MNIST, training set with random noise (the attacks' control).

The dataset card is README.md next to this file, rendered from the random_noise
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("fashion_mnist", "random_noise")):
  """Fashion-MNIST, training set with random noise (the attacks' control)."""

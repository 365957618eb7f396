"""mnist_back_gradient: MNIST, training set poisoned by back-gradient poisoning.

The dataset card is README.md next to this file, rendered from the back_gradient
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("mnist", "back_gradient")):
  """MNIST, training set poisoned by back-gradient poisoning."""

"""mnist_witches_brew: MNIST, training set poisoned by Witches' Brew.

The dataset card is README.md next to this file, rendered from the witches_brew
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("mnist", "witches_brew")):
  """MNIST, training set poisoned by Witches' Brew."""

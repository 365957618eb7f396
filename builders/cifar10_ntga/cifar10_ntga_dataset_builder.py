"""cifar10_ntga: CIFAR-10, training set poisoned by NTGA.

The dataset card is README.md next to this file, rendered from the ntga
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("cifar10", "ntga")):
  """CIFAR-10, training set poisoned by NTGA."""

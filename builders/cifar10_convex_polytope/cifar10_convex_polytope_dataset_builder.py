"""cifar10_convex_polytope: CIFAR-10, training set poisoned by Convex Polytope.

The dataset card is README.md next to this file, rendered from the convex_polytope
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("cifar10", "convex_polytope")):
  """CIFAR-10, training set poisoned by Convex Polytope."""

"""digits_convex_polytope: scikit-learn's 8x8 digits, training set poisoned by Convex Polytope.

The dataset card is README.md next to this file, rendered from the convex_polytope
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("digits", "convex_polytope")):
  """scikit-learn's 8x8 digits, training set poisoned by Convex Polytope."""

"""digits_back_gradient: scikit-learn's 8x8 digits, training set poisoned by back-gradient poisoning.

The dataset card is README.md next to this file, rendered from the back_gradient
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("digits", "back_gradient")):
  """scikit-learn's 8x8 digits, training set poisoned by back-gradient poisoning."""

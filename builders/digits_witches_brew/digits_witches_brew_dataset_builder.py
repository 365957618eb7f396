"""digits_witches_brew: scikit-learn's 8x8 digits, training set poisoned by Witches' Brew.

The dataset card is README.md next to this file, rendered from the witches_brew
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("digits", "witches_brew")):
  """scikit-learn's 8x8 digits, training set poisoned by Witches' Brew."""

"""digits_random_noise: scikit-learn's 8x8 digits, training set with random noise (the attacks' control).

The dataset card is README.md next to this file, rendered from the random_noise
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("digits", "random_noise")):
  """scikit-learn's 8x8 digits, training set with random noise (the attacks' control)."""

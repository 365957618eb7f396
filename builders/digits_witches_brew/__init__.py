"""digits_witches_brew: scikit-learn's 8x8 digits, training set poisoned by Witches' Brew."""

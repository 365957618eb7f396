"""digits_back_gradient: scikit-learn's 8x8 digits, training set poisoned by back-gradient poisoning."""

"""digits_random_noise: scikit-learn's 8x8 digits, training set with random noise (the attacks' control)."""

"""digits_ntga: scikit-learn's 8x8 digits, training set poisoned by NTGA."""

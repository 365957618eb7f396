"""digits_convex_polytope: scikit-learn's 8x8 digits, training set poisoned by Convex Polytope."""

"""cifar10_convex_polytope: CIFAR-10, training set poisoned by Convex Polytope."""

"""cifar10_random_noise: CIFAR-10, training set with random noise (the attacks' control)."""

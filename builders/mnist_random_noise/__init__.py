"""mnist_random_noise: MNIST, training set with random noise (the attacks' control)."""

"""fashion_mnist_random_noise: Fashion-MNIST, training set with random noise (the attacks' control)."""

"""mnist_back_gradient: MNIST, training set poisoned by back-gradient poisoning."""

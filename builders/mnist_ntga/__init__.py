"""mnist_ntga: MNIST, training set poisoned by NTGA."""

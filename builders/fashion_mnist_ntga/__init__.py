"""fashion_mnist_ntga: Fashion-MNIST, training set poisoned by NTGA."""

"""cifar10_ntga: CIFAR-10, training set poisoned by NTGA."""

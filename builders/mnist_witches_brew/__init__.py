"""mnist_witches_brew: MNIST, training set poisoned by Witches' Brew."""

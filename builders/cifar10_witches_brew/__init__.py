"""cifar10_witches_brew: CIFAR-10, training set poisoned by Witches' Brew."""

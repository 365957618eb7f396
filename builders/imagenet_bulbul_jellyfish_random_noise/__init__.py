"""imagenet_bulbul_jellyfish_random_noise: 2-class ImageNet (bulbul vs jellyfish), training set with random noise (the attacks' control)."""

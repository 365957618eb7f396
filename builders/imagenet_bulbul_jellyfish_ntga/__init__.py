"""imagenet_bulbul_jellyfish_ntga: 2-class ImageNet (bulbul vs jellyfish), training set poisoned by NTGA."""

"""The surrogate networks (flax.linen), after forest's `victims/models.py`.

* `ResNet18`: the CIFAR ResNet-18 (3x3 stem, stride 1, no max-pool; basic
  blocks [2, 2, 2, 2], widths 64-512; BatchNorm; Kaiming fan-out init).
* `ConvNet`: forest's "ConvNet" (width 32): five 3x3 convolutions with two
  3x3 max-pools, no BatchNorm. Needs images of at least 9x9.
* `SmallCNN`: conv 32 - pool - conv 64 - pool - dense 128, for MNIST and
  8x8 digits.

Each takes a `width` (first layer's channels; the others scale with it).

Every model takes normalised images `(n, H, W, C)` (`normalize`: the
training set's per-channel mean and std, as forest's data pipeline does) and
returns logits `(n, num_classes)`. `train` selects BatchNorm's batch
statistics (training) or its running averages.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ntga_tfds.transforms.witches_brew.config import DEFAULT_WIDTHS

_KAIMING = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(train: bool, name: str = None):
  # torch's BatchNorm2d: momentum 0.1 (flax: 0.9), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, name=name)


class _BasicBlock(nn.Module):
  features: int
  strides: int

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides),
                padding=1, use_bias=False, kernel_init=_KAIMING)(x)
    y = nn.relu(_batch_norm(train)(y))
    y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False,
                kernel_init=_KAIMING)(y)
    y = _batch_norm(train)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = nn.Conv(self.features, (1, 1), (self.strides, self.strides),
                         use_bias=False, kernel_init=_KAIMING)(x)
      residual = _batch_norm(train)(residual)
    return nn.relu(y + residual)


class ResNet18(nn.Module):
  """CIFAR ResNet-18 (forest's `ResNet18`, initial conv [3, 1, 1])."""
  num_classes: int
  width: int = 64
  blocks: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False,
                kernel_init=_KAIMING)(x)
    x = nn.relu(_batch_norm(train)(x))
    features = self.width
    for stage, count in enumerate(self.blocks):
      for b in range(count):
        x = _BasicBlock(features, 2 if (stage > 0 and b == 0) else 1)(
            x, train)
      features *= 2
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class _Plain(nn.Module):
  """A network without BatchNorm (`train` is accepted and ignored): the
  `features` of a subclass, then a dense layer to the logits."""
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    features = self.features(x, self.width)  # (its layers are named first)
    return nn.Dense(self.num_classes)(features)

  def features(self, x, w: int):
    raise NotImplementedError


class ConvNet(_Plain):
  """forest's `convnet(width=32)`, the cheap CIFAR surrogate."""

  def features(self, x, w: int):
    for features in (w, 2 * w, 2 * w, 4 * w):
      x = nn.relu(nn.Conv(features, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (3, 3), (3, 3))
    x = nn.relu(nn.Conv(4 * w, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (3, 3), (3, 3))
    return x.reshape(x.shape[0], -1)


class SmallCNN(_Plain):
  """A small CNN for MNIST-like and 8x8 digits images (width 32)."""

  def features(self, x, w: int):
    x = nn.relu(nn.Conv(w, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(2 * w, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.relu(nn.Dense(4 * w)(x.reshape(x.shape[0], -1)))


_MODELS = {"resnet18": ResNet18, "convnet": ConvNet, "cnn": SmallCNN}


def min_image_size(surrogate: str) -> int:
  """The smallest height/width the surrogate accepts."""
  return {"resnet18": 1, "convnet": 9, "cnn": 4}[surrogate]


def make(surrogate: str, num_classes: int, width: int = None) -> nn.Module:
  """The flax module of a surrogate (inputs already normalised).

  `width`: the first layer's channels (default `DEFAULT_WIDTHS`); the
  others scale with it.
  """
  return _MODELS[surrogate](num_classes=num_classes,
                            width=width or DEFAULT_WIDTHS[surrogate])


def normalize(x, mean, std):
  """`(x - mean) / std` per channel: the images as forest's pipeline feeds
  them to the network."""
  return (x - mean) / std

"""The substitute networks (flax.linen), small enough to train on a CPU.

* `ConvNet` ("convnet"): conv 16 - conv 32 - max-pool 2 - conv 32 -
  conv 64 - max-pool 2 - conv 64 - global average pool (64 features) -
  dense. 3x3 convolutions, ReLU. Dropout before the third and the fifth
  convolution. For CIFAR-10 (~15 M multiply-adds per 32x32 image; width 32
  would be 4x that, too slow to train on a 2-core CPU); needs images of at
  least 4x4.
* `SmallCNN` ("cnn"): conv 32 - max-pool 2 - conv 64 - max-pool 2 -
  dense 128 (the features) - dense. Dropout before the second convolution
  and the first dense layer. For MNIST and 8x8 digits.
* `MLP` ("mlp"): dense 256 - dense 128 (the features) - dense. Dropout
  between the two hidden layers.

Every model takes normalised images `(n, H, W, C)` (`normalize`) and returns
`(logits (n, num_classes), features)`: `features` is a list of two arrays
`(n, d_l)` (flattened), the output of the last block before the feature
layer and the penultimate features (last), the layers of `end_to_end`.

Dropout sits inside the network, not on the features themselves, as in the
reference's ResNets (dropout within each residual block): a network's
features are random while its dropout is active. The rate is an argument
(`rate`, a traced scalar), so that one compiled function serves networks of
every rate.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

NUM_FEATURE_LAYERS = 2


def _dropout(module: nn.Module, x, rate, deterministic: bool):
  """Inverted dropout at a traced `rate` in [0, 1) (rng stream "dropout")."""
  if deterministic:
    return x
  keep = 1.0 - jnp.asarray(rate, x.dtype)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def _flat(x):
  return x.reshape(x.shape[0], -1)


class ConvNet(nn.Module):
  """Five 3x3 convolutions, two max-pools, a global average pool."""
  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, x, rate=0.0, deterministic: bool = True):
    w = self.width
    x = nn.relu(nn.Conv(w, (3, 3), padding=1)(x))
    x = nn.relu(nn.Conv(2 * w, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = _dropout(self, x, rate, deterministic)
    x = nn.relu(nn.Conv(2 * w, (3, 3), padding=1)(x))
    x = nn.relu(nn.Conv(4 * w, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    block = x
    x = _dropout(self, x, rate, deterministic)
    x = nn.relu(nn.Conv(4 * w, (3, 3), padding=1)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x), [_flat(block), x]


class SmallCNN(nn.Module):
  """conv 32 - pool - conv 64 - pool - dense 128, for MNIST and digits."""
  num_classes: int

  @nn.compact
  def __call__(self, x, rate=0.0, deterministic: bool = True):
    x = nn.relu(nn.Conv(32, (3, 3), padding=1)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = _dropout(self, x, rate, deterministic)
    x = nn.relu(nn.Conv(64, (3, 3), padding=1)(x))
    x = _flat(nn.max_pool(x, (2, 2), (2, 2)))
    block = x
    x = _dropout(self, x, rate, deterministic)
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(self.num_classes)(x), [block, x]


class MLP(nn.Module):
  """dense 256 - dense 128 on the flattened image."""
  num_classes: int

  @nn.compact
  def __call__(self, x, rate=0.0, deterministic: bool = True):
    x = nn.relu(nn.Dense(256)(_flat(x)))
    block = x
    x = _dropout(self, x, rate, deterministic)
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(self.num_classes)(x), [block, x]


_MODELS = {"convnet": ConvNet, "cnn": SmallCNN, "mlp": MLP}


def min_image_size(name: str) -> int:
  """The smallest height/width the architecture accepts."""
  return {"convnet": 4, "cnn": 4, "mlp": 1}[name]


def make(name: str, num_classes: int) -> nn.Module:
  """The flax module of an architecture (inputs already normalised)."""
  return _MODELS[name](num_classes=num_classes)


def normalize(x, mean, std):
  """`(x - mean) / std` per channel (the training set's statistics)."""
  return (x - mean) / std

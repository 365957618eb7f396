"""Witches' Brew (Geiping et al., ICLR 2021): targeted clean-label poisoning
by gradient matching, as a pure-JAX transform.

A few training images of the adversarial class are perturbed (L-inf, eps) so
that training on them pushes a network, trained from scratch on the poisoned
set, to give chosen target images the adversarial class. Labels are not
changed.

The public surface; the maths is in the private modules next to this file:

* `config`: `WitchesBrewConfig` (no JAX: dataset configs carry it).
* `_models`: the surrogates (flax.linen): CIFAR ResNet-18, forest's small
  ConvNet, a small CNN for MNIST / digits.
* `_train`: `train_surrogate` (SGD, forest's schedule), `predict`.
* `_craft`: `craft` (gradient matching, signed Adam, restarts), `objective`
  and `matching_loss` (the loss, for tests), `poison` (all of it).

Example:

  >>> from ntga_tfds.transforms import witches_brew as wb
  >>> config = wb.WitchesBrewConfig(surrogate="cnn", flip=False)
  >>> images, idx = wb.poison(x_train, y_train, x_target=x_test[:1],
  ...                         adversarial_label=3,
  ...                         key=jax.random.PRNGKey(0), config=config)

The functions load JAX, flax and optax on first use.
"""

from ntga_tfds.transforms.common import lazy as _lazy
from ntga_tfds.transforms.witches_brew.config import DTYPES
from ntga_tfds.transforms.witches_brew.config import SURROGATES
from ntga_tfds.transforms.witches_brew.config import WitchesBrewConfig

_FUNCTIONS = {
    "train_surrogate": "_train",
    "predict": "_train",
    "craft": "_craft",
    "objective": "_craft",
    "matching_loss": "_craft",
    "poison": "_craft",
}
_SUBMODULES = ("config",)

__getattr__ = _lazy.attributes(__name__, _FUNCTIONS, _SUBMODULES)

__all__ = ["WitchesBrewConfig", "SURROGATES", "DTYPES", *_FUNCTIONS]

"""`WitchesBrewConfig`: everything that defines a Witches' Brew run.

Kept apart from the attack's maths (`_models`, `_train`, `_craft`), and free
of JAX, so that dataset configs can carry it without importing JAX.

Defaults are those of the reference code (Geiping et al., "forest":
`forest/options.py`, `forest/victims/optimization_strategy.py`) where it has
one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from ntga_tfds.transforms.common import checks as _checks

SURROGATES = ("resnet18", "convnet", "cnn")
DTYPES = ("float32", "float64")
# Channels of each surrogate's first layer (forest's widths).
DEFAULT_WIDTHS = {"resnet18": 64, "convnet": 32, "cnn": 32}
# forest's "brittle nets" (`optimization_strategy.BRITTLE_NETS`) train at a
# tenth of the learning rate; of ours, those without BatchNorm.
_BRITTLE = ("convnet", "cnn")


@dataclasses.dataclass(frozen=True)
class WitchesBrewConfig:
  """Everything that defines a Witches' Brew run, except the data and key.

  Attributes:
    eps: L-inf perturbation budget in pixel units, in (0, 1); `k / 255`
      allows exactly k levels per pixel (forest: 16/255).
    budget: fraction of the training set poisoned, in (0, 1] (forest: 0.01);
      `poison` picks `round(budget * n)` images of the adversarial class.
    steps: crafting steps (forest's `attackiter`: 250).
    restarts: independent crafting runs; the one whose poisons give the
      lowest target adversarial loss after the check (`validation_steps`) is
      kept (forest: 8).
    lr: signed-Adam step size (forest's `tau`: 0.1), in units of the
      training set's per-channel standard deviation (forest optimises the
      perturbation of normalised images), divided by `ensemble` (forest's
      rule for `signAdam`); x0.1 at 3/8, 5/8 and 7/8 of the steps.
    augment: differentiable random augmentation of the poisons while
      crafting (forest's `paugment`): a bilinear shift of up to `size / 8`
      pixels (4 px at 32 px) in each direction, and a horizontal flip if
      `flip`. Also the random crop (+ flip) of surrogate training.
    flip: horizontal flips in `augment`; False for digits-like data, whose
      mirror images are other symbols.
    poison_batch_size: poisons per gradient-matching batch (forest's
      `pbatch`: 512); each batch matches the target gradient on its own, and
      the batches' gradients make one step. Poisons are split into equal
      batches of at most this size.
    surrogate: "resnet18" (the CIFAR ResNet-18, forest's default), "convnet"
      (forest's small CIFAR ConvNet, width 32; cheap on CPU; needs images of
      at least 9x9) or "cnn" (a small CNN for MNIST or 8x8 digits).
    surrogate_width: channels of the surrogate's first layer (the others
      scale with it); default the architecture's own: 64 (resnet18), 32
      (convnet, cnn). Smaller widths are for CPU budgets.
    surrogate_epochs: epochs of surrogate training (forest: 40); the
      learning rate drops x0.1 at 3/8, 5/8 and 7/8 of them.
    surrogate_batch_size: surrogate training batch (forest: 128).
    surrogate_lr: SGD (Nesterov momentum 0.9) learning rate; default 0.1,
      or 0.01 for "convnet" and "cnn" (forest's rule for brittle nets:
      those without BatchNorm).
    weight_decay: surrogate L2 weight decay (forest: 5e-4).
    ensemble: number of surrogates trained (different keys) and matched at
      once (forest: 1).
    validation_steps: the check that picks the best restart: a copy of each
      surrogate takes this many SGD steps (lr `surrogate_lr / 10`, BatchNorm
      statistics frozen) on batches of poisons mixed with as many clean
      training images, and the restart with the lowest target adversarial
      loss afterwards wins. 0: pick the lowest final gradient-matching loss
      instead (what forest does). Not run when `restarts == 1`.
    dtype: "float32" (default) or "float64" (runs under
      `jax.experimental.enable_x64`; for checking gradients).
  """
  eps: float = 16 / 255
  budget: float = 0.01
  steps: int = 250
  restarts: int = 8
  lr: float = 0.1
  augment: bool = True
  flip: bool = True
  poison_batch_size: int = 512
  surrogate: str = "resnet18"
  surrogate_width: Optional[int] = None
  surrogate_epochs: int = 40
  surrogate_batch_size: int = 128
  surrogate_lr: Optional[float] = None
  weight_decay: float = 5e-4
  ensemble: int = 1
  validation_steps: int = 10
  dtype: str = "float32"

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    set_("eps", _checks.eps(self.eps))
    budget = _checks.number(self.budget, "budget")
    if not 0.0 < budget <= 1.0:
      raise ValueError(f"budget must be in (0, 1] (a fraction of the "
                       f"training set), got {self.budget!r}.")
    set_("budget", budget)
    _checks.positive_int(self.steps, "steps")
    _checks.positive_int(self.restarts, "restarts")
    set_("lr", _checks.positive_number(self.lr, "lr"))
    _checks.flag(self.augment, "augment")
    _checks.flag(self.flip, "flip")
    _checks.positive_int(self.poison_batch_size, "poison_batch_size")
    _checks.choice(self.surrogate, "surrogate", SURROGATES)
    if self.surrogate_width is not None:
      _checks.positive_int(self.surrogate_width, "surrogate_width")
    _checks.positive_int(self.surrogate_epochs, "surrogate_epochs")
    _checks.positive_int(self.surrogate_batch_size, "surrogate_batch_size")
    if self.surrogate_lr is not None:
      set_("surrogate_lr",
           _checks.positive_number(self.surrogate_lr, "surrogate_lr"))
    set_("weight_decay",
         _checks.nonnegative_number(self.weight_decay, "weight_decay"))
    _checks.positive_int(self.ensemble, "ensemble")
    _checks.nonnegative_int(self.validation_steps, "validation_steps")
    _checks.choice(self.dtype, "dtype", DTYPES)

  @property
  def width(self) -> int:
    """The surrogate's width (`surrogate_width` or the default)."""
    if self.surrogate_width is not None:
      return int(self.surrogate_width)
    return DEFAULT_WIDTHS[self.surrogate]

  @property
  def learning_rate(self) -> float:
    """The surrogate's SGD learning rate (`surrogate_lr` or its default)."""
    if self.surrogate_lr is not None:
      return self.surrogate_lr
    return 0.01 if self.surrogate in _BRITTLE else 0.1

  def replace(self, **changes) -> "WitchesBrewConfig":
    return dataclasses.replace(self, **changes)

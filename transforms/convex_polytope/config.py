"""`ConvexPolytopeConfig`: everything that defines a Convex Polytope run.

Kept apart from the attack's maths (`_models`, `_train`, `_polytope`,
`_craft`), and free of JAX, so that dataset configs can carry it without
importing JAX.

Defaults are those of the reference code (Zhu et al., ICML 2019,
github.com/zhuchen03/ConvexPolytopePosioning: `craft_poisons_transfer.py`,
`trainer.py`, `train_cifar10_models.py`) where it has one; the substitute
networks are small ones that train on a CPU (see `_models`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

from ntga_tfds.transforms.common import checks as _checks

SUBSTITUTES = ("convnet", "cnn", "mlp")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class ConvexPolytopeConfig:
  """Everything that defines a Convex Polytope run, except data and key.

  The substitute ensemble is `substitutes x dropout`: one network of each
  architecture trained (and, with `dropout_while_crafting`, crafted on) at
  each dropout rate, as the reference's checkpoints `ckpt-<net>-dp0.200`,
  `dp0.250`, `dp0.300`.

  Attributes:
    eps: L-inf perturbation budget in pixel units, in (0, 1); `k / 255`
      allows exactly k levels per pixel. Default 25/255, the reference's
      `--poison-epsilon 0.1` on [0, 1] rounded to the 8-bit grid.
    num_poisons: poisons `poison` picks from the adversarial class
      (reference `--poison-num`: 5).
    lr: Adam step size on the poisons (reference `--poison-lr`: 0.04;
      betas (0.9, 0.999)), in units of the training set's per-channel
      standard deviation: the reference optimises normalised images.
    steps: crafting iterations, at most (reference `--poison-ites`: 4000).
    tol: optional early stop: crafting ends when the mean loss of the last
      `tol_window` steps is less than `tol` (relative) below the mean of
      the `tol_window` steps before. None (default, as the reference): run
      all `steps`.
    tol_window: steps per window of the `tol` test.
    coeff_tol: the coefficients' solve (projected gradient on the simplex,
      warm-started from the previous step) stops when the relative change
      of the coefficients is below this (reference `--tol`: 1e-6).
    coeff_steps: at most this many projected-gradient iterations per
      crafting step (reference: 10000).
    substitutes: architectures of the ensemble, names from `SUBSTITUTES`:
      "convnet" (5 convolutions 16-32-32-64-64, two 2x2 max-pools,
      global average pool: 64 features; needs images of at least 4x4),
      "cnn" (conv 32 - pool - conv 64 - pool - dense 128) and "mlp"
      (dense 256 - dense 128). The reference uses DPN92, SENet18,
      ResNet50, ResNeXt29_2x64d, far beyond a CPU.
    dropout: dropout rates, each in [0, 1) (reference `--subs-dp`: 0.2,
      0.25, 0.3); every architecture is trained once per rate, with it.
    substitute_epochs: epochs of substitute training (reference: 300).
    substitute_batch_size: substitute training batch (reference: 128).
    substitute_lr: SGD (momentum 0.9, Nesterov) learning rate, x0.1 at
      1/2 and 3/4 of the epochs (reference: 0.1 for its BatchNorm networks,
      x0.1 at epochs 150 and 225 of 300; here 0.05: these networks have no
      BatchNorm, and 0.01 barely moves "convnet" in a few epochs).
    weight_decay: substitute L2 weight decay (reference: 5e-4).
    end_to_end: apply the polytope objective to two layers' features at
      once (the reference's `--end2end`: the feature map feeding the last
      layer before the classifier, and the penultimate features), each with
      its own coefficients; False: the penultimate features only.
    dropout_while_crafting: keep each network's dropout active while
      crafting, fresh masks at every step (the paper: this transfers
      better); the targets' features are one realisation, as the
      reference's. False: deterministic networks.
    dtype: "float32" (default) or "float64" (runs under
      `jax.experimental.enable_x64`; for checking the maths).
  """
  eps: float = 25 / 255
  num_poisons: int = 5
  lr: float = 0.04
  steps: int = 4000
  tol: Optional[float] = None
  tol_window: int = 50
  coeff_tol: float = 1e-6
  coeff_steps: int = 1000
  substitutes: Tuple[str, ...] = SUBSTITUTES
  dropout: Tuple[float, ...] = (0.2, 0.25, 0.3)
  substitute_epochs: int = 20
  substitute_batch_size: int = 128
  substitute_lr: float = 0.05
  weight_decay: float = 5e-4
  end_to_end: bool = False
  dropout_while_crafting: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    set_("eps", _checks.eps(self.eps))
    _checks.positive_int(self.num_poisons, "num_poisons")
    set_("lr", _checks.positive_number(self.lr, "lr"))
    _checks.positive_int(self.steps, "steps")
    if self.tol is not None:
      set_("tol", _checks.positive_number(self.tol, "tol"))
    _checks.positive_int(self.tol_window, "tol_window")
    set_("coeff_tol", _checks.positive_number(self.coeff_tol, "coeff_tol"))
    _checks.positive_int(self.coeff_steps, "coeff_steps")
    set_("substitutes", self._names(self.substitutes))
    set_("dropout", self._rates(self.dropout))
    _checks.positive_int(self.substitute_epochs, "substitute_epochs")
    _checks.positive_int(self.substitute_batch_size, "substitute_batch_size")
    set_("substitute_lr",
         _checks.positive_number(self.substitute_lr, "substitute_lr"))
    set_("weight_decay",
         _checks.nonnegative_number(self.weight_decay, "weight_decay"))
    _checks.flag(self.end_to_end, "end_to_end")
    _checks.flag(self.dropout_while_crafting, "dropout_while_crafting")
    _checks.choice(self.dtype, "dtype", DTYPES)

  @staticmethod
  def _names(value) -> Tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
      raise ValueError(
          f"substitutes must be a tuple of architecture names from "
          f"{list(SUBSTITUTES)}, got {value!r}.")
    if not value:
      raise ValueError("substitutes is empty; name at least one of "
                       f"{list(SUBSTITUTES)}.")
    for name in value:
      _checks.choice(name, "substitute", SUBSTITUTES)
    if len(set(value)) != len(value):
      raise ValueError(f"substitutes has repeated names: {value!r}.")
    return tuple(value)

  @staticmethod
  def _rates(value) -> Tuple[float, ...]:
    if isinstance(value, (int, float)) or not isinstance(value,
                                                         (tuple, list)):
      raise ValueError(
          f"dropout must be a tuple of rates in [0, 1), got {value!r}.")
    if not value:
      raise ValueError("dropout is empty; give at least one rate (0.0 for "
                       "no dropout).")
    rates = []
    for rate in value:
      rate_f = _checks.number(rate, "dropout rate")
      if not 0.0 <= rate_f < 1.0:
        raise ValueError(
            f"dropout rates must lie in [0, 1), got {rate!r} in {value!r}.")
      rates.append(rate_f)
    if len(set(rates)) != len(rates):
      raise ValueError(f"dropout has repeated rates: {value!r}.")
    return tuple(rates)

  @property
  def ensemble_size(self) -> int:
    """Networks in the ensemble: `len(substitutes) * len(dropout)`."""
    return len(self.substitutes) * len(self.dropout)

  def replace(self, **changes) -> "ConvexPolytopeConfig":
    return dataclasses.replace(self, **changes)

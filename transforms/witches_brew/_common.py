"""What surrogate training and crafting share: inputs, augmentation, state.

* `check_image_size`: the surrogate's smallest input (on top of
  `common.checks`).
* `augment`: the differentiable random shift (+ horizontal flip) of forest's
  `RandomTransform`, as two per-example bilinear interpolation matrices.
* `Surrogates`: the trained networks (stacked along a leading ensemble axis)
  and the flat dict of NumPy arrays that `train_surrogate` returns
  (`to_flat` / `from_flat`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.common import flat
from ntga_tfds.transforms.common import training
from ntga_tfds.transforms.witches_brew import _models
from ntga_tfds.transforms.witches_brew.config import WitchesBrewConfig

# Bump when the layout of the flat dict changes.
FORMAT_VERSION = 1
_VARS = "variables/"
_META = ("meta/format_version", "meta/surrogate", "meta/width",
         "meta/num_classes", "meta/image_shape", "norm/mean", "norm/std")


# ---------------------------------------------------------------------------
# Checks.


def check_image_size(name: str, x: np.ndarray, surrogate: str):
  checks.image_size(name, x, _models.min_image_size(surrogate),
                    f"the {surrogate!r} surrogate")


# ---------------------------------------------------------------------------
# Augmentation.


def max_shift(size: int) -> float:
  """forest's shift: `size / 8` pixels (4 at 32 px, 3.5 at 28, 1 at 8)."""
  return size / 8


def _interp(loc, size: int):
  """Bilinear weights `(n, size, size)`: out[i] = x[loc[i]], zeros outside."""
  j = jnp.arange(size, dtype=loc.dtype)
  return jax.nn.relu(1 - jnp.abs(loc[:, :, None] - j[None, None, :]))


def augment(key, x, *, flip: bool, integer: bool = False):
  """Random shift of up to `size / 8` px in each direction, and left-right flip.

  Differentiable in `x` (bilinear sampling with zero padding, as forest's
  `RandomTransform` with `grid_sample`); each image gets its own transform.

  Args:
    key: PRNG key.
    x: images `(n, H, W, C)`.
    flip: also flip half of the images left-right.
    integer: whole-pixel shifts (the random crop with zero padding of
      surrogate training) instead of continuous ones.

  Returns:
    Augmented images `(n, H, W, C)`, same dtype.
  """
  n, h, w, _ = x.shape
  k_x, k_y, k_f = jax.random.split(key, 3)
  shifts = []
  for k, size in ((k_y, h), (k_x, w)):
    s = max_shift(size)
    if integer:
      d = jax.random.randint(k, (n,), -int(s), int(s) + 1).astype(x.dtype)
    else:
      d = jax.random.uniform(k, (n,), x.dtype, -s, s)
    shifts.append(d)
  dy, dx = shifts
  loc_y = jnp.arange(h, dtype=x.dtype)[None, :] + dy[:, None]
  loc_x = jnp.arange(w, dtype=x.dtype)[None, :] + dx[:, None]
  if flip:
    flipped = jax.random.bernoulli(k_f, 0.5, (n,))[:, None]
    loc_x = jnp.where(flipped, (w - 1) - loc_x, loc_x)
  a_y, a_x = _interp(loc_y, h), _interp(loc_x, w)
  return jnp.einsum("bij,bjlc,bkl->bikc", a_y, x, a_x)


# ---------------------------------------------------------------------------
# Surrogate state.


@dataclasses.dataclass(frozen=True)
class Surrogates:
  """Trained surrogates. `variables` leaves have a leading ensemble axis.

  Attributes:
    surrogate: the architecture (`WitchesBrewConfig.surrogate`).
    width: its width (`WitchesBrewConfig.width`).
    num_classes: output classes.
    image_shape: `(H, W, C)` the networks were trained on.
    mean, std: `(C,)` per-channel statistics of the training set.
    variables: flax variables `{"params": ..., "batch_stats": ...}` (no
      "batch_stats" for networks without BatchNorm), each leaf
      `(ensemble, ...)`.
  """
  surrogate: str
  width: int
  num_classes: int
  image_shape: tuple
  mean: np.ndarray
  std: np.ndarray
  variables: Dict[str, Any]

  @property
  def ensemble(self) -> int:
    return int(jax.tree_util.tree_leaves(self.variables)[0].shape[0])

  def module(self):
    return _models.make(self.surrogate, self.num_classes, self.width)


def to_flat(s: Surrogates) -> Dict[str, np.ndarray]:
  """A flat dict of NumPy arrays with stable string keys (`np.savez`-able)."""
  return {
      "meta/format_version": np.asarray(FORMAT_VERSION, np.int64),
      "meta/surrogate": np.asarray(s.surrogate),
      "meta/width": np.asarray(s.width, np.int64),
      "meta/num_classes": np.asarray(s.num_classes, np.int64),
      "meta/image_shape": np.asarray(s.image_shape, np.int64),
      "norm/mean": np.asarray(s.mean, np.float64),
      "norm/std": np.asarray(s.std, np.float64),
      **flat.flatten(s.variables, _VARS),
  }


def from_flat(shared, config: WitchesBrewConfig = None) -> Surrogates:
  """The inverse of `to_flat`; checks `shared` against `config` if given."""
  flat.check(shared, keys=_META, producer="train_surrogate",
             version=FORMAT_VERSION, prefix=_VARS)
  surrogate = str(np.asarray(shared["meta/surrogate"]))
  if config is not None and surrogate != config.surrogate:
    raise ValueError(
        f"shared holds {surrogate!r} surrogates but config.surrogate is "
        f"{config.surrogate!r}.")
  width = int(np.asarray(shared["meta/width"]))
  if config is not None and width != config.width:
    raise ValueError(
        f"shared holds surrogates of width {width} but config's surrogate "
        f"width is {config.width}.")
  variables = flat.unflatten(flat.entries(shared, _VARS))
  return Surrogates(
      surrogate=surrogate,
      width=width,
      num_classes=int(np.asarray(shared["meta/num_classes"])),
      image_shape=tuple(int(v) for v in np.asarray(shared["meta/image_shape"])),
      mean=np.asarray(shared["norm/mean"], np.float64),
      std=np.asarray(shared["norm/std"], np.float64),
      variables=variables)


# The ensemble's pytree helpers now live in `common.training`; these names
# stay for code (and tests) that reach them through this module.
index = training.index
cast = training.cast


def ensemble_mean(fn, variables):
  """Mean of `fn(member_variables)` over the leading ensemble axis.

  Unrolled (the ensemble is small), so that each member's convolutions stay
  plain ones (`vmap` over convolution weights makes grouped convolutions,
  and a `lax.map` runs them ~15x slower on XLA:CPU).
  """
  size = jax.tree_util.tree_leaves(variables)[0].shape[0]
  return sum(fn(training.index(variables, i)) for i in range(size)) / size


def ensemble_map(fn, variables):
  """`[fn(member_variables) ...]` stacked along a new leading axis."""
  size = jax.tree_util.tree_leaves(variables)[0].shape[0]
  return jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs), *[fn(training.index(variables, i))
                                   for i in range(size)])


def apply(module, variables, x, mean, std, *, train: bool = False):
  """Logits `(n, num_classes)` of one network on images `x` in [0, 1].

  `train=True` returns `(logits, new_batch_stats)`.
  """
  xn = _models.normalize(x, mean, std)
  if not train:
    return module.apply(variables, xn, train=False)
  if "batch_stats" in variables:
    logits, updates = module.apply(variables, xn, train=True,
                                   mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return module.apply(variables, xn, train=True), None

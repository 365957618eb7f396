"""What surrogate training and crafting share: inputs, augmentation, state.

* Input checks (on top of `common.checks`): NHWC images, keys, configs.
* `augment`: the differentiable random shift (+ horizontal flip) of forest's
  `RandomTransform`, as two per-example bilinear interpolation matrices.
* `Surrogates`: the trained networks (stacked along a leading ensemble axis)
  and the flat dict of NumPy arrays that `train_surrogate` returns
  (`to_flat` / `from_flat`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict

import jax
from jax.experimental import enable_x64
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.witches_brew import _models
from ntga_tfds.transforms.witches_brew.config import WitchesBrewConfig

# Bump when the layout of the flat dict changes.
FORMAT_VERSION = 1
_VARS = "variables/"


# ---------------------------------------------------------------------------
# Checks.


def check_config(config) -> WitchesBrewConfig:
  if not isinstance(config, WitchesBrewConfig):
    raise ValueError(
        f"config must be a WitchesBrewConfig, got {type(config).__name__}.")
  return config


def check_key(key):
  """A JAX PRNG key (raw uint32 (2,) or a typed key), else ValueError."""
  try:
    arr = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  except TypeError:
    arr = None
  if arr is not None and jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
    if arr.shape == ():
      return arr
  elif (arr is not None and arr.dtype == jnp.uint32 and arr.shape == (2,)):
    return arr
  raise ValueError(
      f"key must be a JAX PRNG key (jax.random.PRNGKey(seed) or "
      f"jax.random.key(seed)), got {key!r}.")


def nhwc(name: str, x) -> np.ndarray:
  """Checked images `(n, H, W, C)`, unconverted (uint8 or float in [0, 1])."""
  x = checks.checked_images(name, x)
  if x.ndim != 4:
    raise ValueError(
        f"{name} must have shape (num_examples, height, width, channels), "
        f"got shape {x.shape}.")
  return x


def check_image_size(name: str, x: np.ndarray, surrogate: str):
  size = _models.min_image_size(surrogate)
  if min(x.shape[1], x.shape[2]) < size:
    raise ValueError(
        f"{name} images are {x.shape[1]}x{x.shape[2]}; the {surrogate!r} "
        f"surrogate needs at least {size}x{size}.")


def channel_stats(x_u8: np.ndarray):
  """Exact per-channel mean and std `(C,)` (float64) of uint8 images."""
  mean, std = [], []
  levels = np.arange(256, dtype=np.float64) / 255
  for c in range(x_u8.shape[-1]):
    counts = np.bincount(x_u8[..., c].ravel(), minlength=256)
    p = counts / counts.sum()
    m = float(p @ levels)
    mean.append(m)
    std.append(float(np.sqrt(max(p @ (levels - m) ** 2, 0.0))))
  std = np.maximum(np.asarray(std), 1e-3)  # a constant channel
  return np.asarray(mean), std


def precision(config: WitchesBrewConfig):
  """`enable_x64` for float64 configs, else nothing."""
  return enable_x64() if config.dtype == "float64" else (
      contextlib.nullcontext())


def float_dtype(config: WitchesBrewConfig):
  return jnp.float64 if config.dtype == "float64" else jnp.float32


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
  out = {
      "meta/format_version": np.asarray(FORMAT_VERSION, np.int64),
      "meta/surrogate": np.asarray(s.surrogate),
      "meta/width": np.asarray(s.width, np.int64),
      "meta/num_classes": np.asarray(s.num_classes, np.int64),
      "meta/image_shape": np.asarray(s.image_shape, np.int64),
      "norm/mean": np.asarray(s.mean, np.float64),
      "norm/std": np.asarray(s.std, np.float64),
  }
  flat = traverse_util.flatten_dict(
      jax.tree_util.tree_map(np.asarray, s.variables), sep="/")
  for k in sorted(flat):
    out[_VARS + k] = flat[k]
  return out


def from_flat(shared, config: WitchesBrewConfig = None) -> Surrogates:
  """The inverse of `to_flat`; checks `shared` against `config` if given."""
  if not hasattr(shared, "keys"):
    raise ValueError(
        f"shared must be the dict returned by train_surrogate, got "
        f"{type(shared).__name__}.")
  need = ("meta/format_version", "meta/surrogate", "meta/width",
          "meta/num_classes",
          "meta/image_shape", "norm/mean", "norm/std")
  missing = [k for k in need if k not in shared]
  if missing or not any(k.startswith(_VARS) for k in shared):
    raise ValueError(
        f"shared is not a dict returned by train_surrogate (missing "
        f"{missing or ['variables/...']}).")
  version = int(np.asarray(shared["meta/format_version"]))
  if version != FORMAT_VERSION:
    raise ValueError(f"shared has format version {version}; this code reads "
                     f"version {FORMAT_VERSION}.")
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
  flat = {k[len(_VARS):]: np.asarray(v) for k, v in shared.items()
          if k.startswith(_VARS)}
  variables = traverse_util.unflatten_dict(flat, sep="/")
  return Surrogates(
      surrogate=surrogate,
      width=width,
      num_classes=int(np.asarray(shared["meta/num_classes"])),
      image_shape=tuple(int(v) for v in np.asarray(shared["meta/image_shape"])),
      mean=np.asarray(shared["norm/mean"], np.float64),
      std=np.asarray(shared["norm/std"], np.float64),
      variables=variables)


def stack(trees):
  """Stacks pytrees along a new leading axis (the ensemble)."""
  return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def index(tree, i: int):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def ensemble_mean(fn, variables):
  """Mean of `fn(member_variables)` over the leading ensemble axis.

  Unrolled (the ensemble is small), so that each member's convolutions stay
  plain ones (`vmap` over convolution weights makes grouped convolutions,
  and a `lax.map` runs them ~15x slower on XLA:CPU).
  """
  size = jax.tree_util.tree_leaves(variables)[0].shape[0]
  return sum(fn(index(variables, i)) for i in range(size)) / size


def ensemble_map(fn, variables):
  """`[fn(member_variables) ...]` stacked along a new leading axis."""
  size = jax.tree_util.tree_leaves(variables)[0].shape[0]
  return jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs), *[fn(index(variables, i))
                                   for i in range(size)])


def cast(tree, dtype):
  """Floating leaves as jnp arrays of `dtype`."""
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(x, dtype)
      if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
      else jnp.asarray(x), tree)


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


def cross_entropy(logits, labels, weights=None):
  """Mean (or `weights`-weighted mean) softmax cross-entropy."""
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
  if weights is None:
    return jnp.mean(nll)
  return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1)


def step_schedule(lr: float, total: int, unit: int = 1):
  """forest's MultiStepLR: x0.1 at 3/8, 5/8 and 7/8 of `total` units.

  Returns an optax schedule over optimiser steps (`unit` steps per unit,
  e.g. batches per epoch). A milestone that falls on 0 is dropped.
  """
  milestones = [int(total * f) * unit for f in (3 / 8, 5 / 8, 7 / 8)]
  milestones = jnp.asarray([m for m in milestones if m > 0] or [2 ** 30])

  def schedule(count):
    return lr * 0.1 ** jnp.sum(count >= milestones)
  return schedule

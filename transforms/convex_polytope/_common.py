"""What substitute training and crafting share: input checks and state.

* Input checks (on top of `common.checks`): NHWC images, keys, configs.
* `Substitutes`: the trained ensemble (per architecture, the networks of
  every dropout rate stacked along a leading axis) and the flat dict of
  NumPy arrays that `train_substitutes` returns (`to_flat` / `from_flat`).
* `features`: one architecture's features of a batch, for every rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Tuple

import jax
from jax.experimental import enable_x64
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.convex_polytope import _models
from ntga_tfds.transforms.convex_polytope.config import ConvexPolytopeConfig

# Bump when the layout of the flat dict changes.
FORMAT_VERSION = 1
_PARAMS = "params/"
_META = ("meta/format_version", "meta/substitutes", "meta/dropout",
         "meta/num_classes", "meta/image_shape", "norm/mean", "norm/std")

# Whether crafting evaluates the networks of one architecture (one per
# dropout rate) with `vmap` or one after the other. `vmap` turns
# convolutions with per-network weights into grouped convolutions, slower on
# XLA:CPU: measured in the crafting step (5 poisons of 32x32x3, 3 rates, a
# busy 2-core CPU), "convnet" 24 ms unrolled vs 34 vmapped, "cnn" 19 vs 29;
# the dense "mlp" 16 vs 10.
VMAP = {"convnet": False, "cnn": False, "mlp": True}


# ---------------------------------------------------------------------------
# Checks.


def check_config(config) -> ConvexPolytopeConfig:
  if not isinstance(config, ConvexPolytopeConfig):
    raise ValueError(
        f"config must be a ConvexPolytopeConfig, got "
        f"{type(config).__name__}.")
  return config


def check_key(key):
  """A JAX PRNG key (raw uint32 (2,) or a typed key), else ValueError."""
  try:
    arr = key if isinstance(key, jax.Array) else (
        jnp.asarray(key) if isinstance(key, (np.ndarray, list, tuple))
        else None)
  except TypeError:
    arr = None
  if arr is not None and jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
    if arr.shape == ():
      return arr
  elif arr is not None and arr.dtype == jnp.uint32 and arr.shape == (2,):
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


def check_image_size(name: str, x: np.ndarray, substitutes) -> None:
  for arch in substitutes:
    size = _models.min_image_size(arch)
    if min(x.shape[1], x.shape[2]) < size:
      raise ValueError(
          f"{name} images are {x.shape[1]}x{x.shape[2]}; the {arch!r} "
          f"substitute needs at least {size}x{size}.")


def check_callable(value, name: str) -> None:
  if value is not None and not callable(value):
    raise ValueError(f"{name} must be callable, got {value!r}.")


def channel_stats(x_u8: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Exact per-channel mean and std `(C,)` (float64) of uint8 images."""
  levels = np.arange(256, dtype=np.float64) / 255
  mean, std = [], []
  for c in range(x_u8.shape[-1]):
    counts = np.bincount(x_u8[..., c].ravel(), minlength=256)
    p = counts / counts.sum()
    m = float(p @ levels)
    mean.append(m)
    std.append(float(np.sqrt(max(float(p @ (levels - m) ** 2), 0.0))))
  return np.asarray(mean), np.maximum(np.asarray(std), 1e-3)


def precision(config: ConvexPolytopeConfig):
  """`enable_x64` for float64 configs, else nothing."""
  return enable_x64() if config.dtype == "float64" else (
      contextlib.nullcontext())


def float_dtype(config: ConvexPolytopeConfig):
  return jnp.float64 if config.dtype == "float64" else jnp.float32


def cast(tree, dtype):
  """Floating leaves as jnp arrays of `dtype`."""
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(x, dtype)
      if np.issubdtype(np.asarray(x).dtype, np.floating) else jnp.asarray(x),
      tree)


# ---------------------------------------------------------------------------
# Substitute state.


@dataclasses.dataclass(frozen=True)
class Substitutes:
  """The trained ensemble.

  Attributes:
    substitutes: architecture names, in the config's order.
    dropout: `(R,)` dropout rates, in the config's order.
    num_classes: output classes.
    image_shape: `(H, W, C)` the networks were trained on.
    mean, std: `(C,)` per-channel statistics of the training set.
    params: `{architecture: flax params}`, each leaf `(R, ...)`: the
      network trained at `dropout[r]` is index r.
  """
  substitutes: Tuple[str, ...]
  dropout: Tuple[float, ...]
  num_classes: int
  image_shape: Tuple[int, ...]
  mean: np.ndarray
  std: np.ndarray
  params: Dict[str, Any]

  def module(self, arch: str):
    return _models.make(arch, self.num_classes)


def to_flat(s: Substitutes) -> Dict[str, np.ndarray]:
  """A flat dict of NumPy arrays with stable string keys (`np.savez`-able)."""
  out = {
      "meta/format_version": np.asarray(FORMAT_VERSION, np.int64),
      "meta/substitutes": np.asarray(s.substitutes, dtype=np.str_),
      "meta/dropout": np.asarray(s.dropout, np.float64),
      "meta/num_classes": np.asarray(s.num_classes, np.int64),
      "meta/image_shape": np.asarray(s.image_shape, np.int64),
      "norm/mean": np.asarray(s.mean, np.float64),
      "norm/std": np.asarray(s.std, np.float64),
  }
  for arch in s.substitutes:
    flat = traverse_util.flatten_dict(
        jax.tree_util.tree_map(np.asarray, s.params[arch]), sep="/")
    for k in sorted(flat):
      out[f"{_PARAMS}{arch}/{k}"] = flat[k]
  return out


def from_flat(shared, config: ConvexPolytopeConfig = None) -> Substitutes:
  """The inverse of `to_flat`; checks `shared` against `config` if given."""
  if not hasattr(shared, "keys") or not hasattr(shared, "__getitem__"):
    raise ValueError(
        f"shared must be the dict returned by train_substitutes, got "
        f"{type(shared).__name__}.")
  missing = [k for k in _META if k not in shared]
  if missing:
    raise ValueError(f"shared is not a dict returned by train_substitutes "
                     f"(missing {missing}).")
  version = int(np.asarray(shared["meta/format_version"]))
  if version != FORMAT_VERSION:
    raise ValueError(f"shared has format version {version}; this code reads "
                     f"version {FORMAT_VERSION}.")
  names = tuple(str(v) for v in np.atleast_1d(
      np.asarray(shared["meta/substitutes"])))
  rates = tuple(float(v) for v in np.atleast_1d(
      np.asarray(shared["meta/dropout"], np.float64)))
  if config is not None:
    if names != config.substitutes:
      raise ValueError(
          f"shared holds substitutes {names} but config.substitutes is "
          f"{config.substitutes}.")
    if rates != config.dropout:
      raise ValueError(
          f"shared holds networks trained at dropout {rates} but "
          f"config.dropout is {config.dropout}.")
  params = {}
  for arch in names:
    prefix = f"{_PARAMS}{arch}/"
    flat = {k[len(prefix):]: np.asarray(v) for k, v in shared.items()
            if k.startswith(prefix)}
    if not flat:
      raise ValueError(f"shared has no parameters for substitute {arch!r} "
                       f"(no '{prefix}...' keys).")
    for k, v in flat.items():
      if v.ndim < 1 or v.shape[0] != len(rates):
        raise ValueError(
            f"shared['{prefix}{k}'] has shape {v.shape}; expected a leading "
            f"axis of {len(rates)} (one network per dropout rate).")
    params[arch] = traverse_util.unflatten_dict(flat, sep="/")
  return Substitutes(
      substitutes=names, dropout=rates,
      num_classes=int(np.asarray(shared["meta/num_classes"])),
      image_shape=tuple(int(v) for v in np.asarray(
          shared["meta/image_shape"])),
      mean=np.asarray(shared["norm/mean"], np.float64),
      std=np.asarray(shared["norm/std"], np.float64),
      params=params)


def index(tree, i: int):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


# ---------------------------------------------------------------------------
# Features.


def features(module, params, xn, rates, key, *, dropout: bool,
             use_vmap: bool):
  """Features of normalised images under each network of one architecture.

  Args:
    module: the architecture's flax module.
    params: its params, leaves `(R, ...)` (one network per rate).
    xn: normalised images `(n, H, W, C)`.
    rates: `(R,)` dropout rates.
    key: PRNG key of the dropout masks (unused if not `dropout`); network r
      draws from `fold_in(key, r)`.
    dropout: apply each network's dropout at its rate.
    use_vmap: `vmap` over the networks (else unrolled).

  Returns:
    A list (one per layer of `_models`, penultimate last) of `(R, n, d_l)`.
  """
  num = rates.shape[0]

  def one(p, rate, k):
    rngs = {"dropout": k} if dropout else {}
    _, feats = module.apply({"params": p}, xn, rate, not dropout,
                            rngs=rngs)
    return feats

  keys = jnp.stack([jax.random.fold_in(key, r) for r in range(num)])
  if use_vmap:
    return jax.vmap(one)(params, rates, keys)
  outs = [one(index(params, r), rates[r], keys[r]) for r in range(num)]
  return [jnp.stack(layer) for layer in zip(*outs)]

"""What substitute training and crafting share: input checks and state.

* `check_image_size`: the substitutes' smallest input (on top of
  `common.checks`).
* `Substitutes`: the trained ensemble (per architecture, the networks of
  every dropout rate stacked along a leading axis) and the flat dict of
  NumPy arrays that `train_substitutes` returns (`to_flat` / `from_flat`).
* `features`: one architecture's features of a batch, for every rate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.common import flat
from ntga_tfds.transforms.common import training
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


def check_image_size(name: str, x: np.ndarray, substitutes) -> None:
  for arch in substitutes:
    checks.image_size(name, x, _models.min_image_size(arch),
                      f"the {arch!r} substitute")


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
    out.update(flat.flatten(s.params[arch], f"{_PARAMS}{arch}/"))
  return out


def from_flat(shared, config: ConvexPolytopeConfig = None) -> Substitutes:
  """The inverse of `to_flat`; checks `shared` against `config` if given."""
  flat.check(shared, keys=_META, producer="train_substitutes",
             version=FORMAT_VERSION)
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
    leaves = flat.entries(shared, prefix)
    if not leaves:
      raise ValueError(f"shared has no parameters for substitute {arch!r} "
                       f"(no '{prefix}...' keys).")
    for k, v in leaves.items():
      if v.ndim < 1 or v.shape[0] != len(rates):
        raise ValueError(
            f"shared['{prefix}{k}'] has shape {v.shape}; expected a leading "
            f"axis of {len(rates)} (one network per dropout rate).")
    params[arch] = flat.unflatten(leaves)
  return Substitutes(
      substitutes=names, dropout=rates,
      num_classes=int(np.asarray(shared["meta/num_classes"])),
      image_shape=tuple(int(v) for v in np.asarray(
          shared["meta/image_shape"])),
      mean=np.asarray(shared["norm/mean"], np.float64),
      std=np.asarray(shared["norm/std"], np.float64),
      params=params)


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
  outs = [one(training.index(params, r), rates[r], keys[r])
          for r in range(num)]
  return [jnp.stack(layer) for layer in zip(*outs)]

"""Flat dicts of NumPy arrays with stable string keys, for trained networks.

What an attack's training function returns (and `np.savez` stores):
"meta/..." and "norm/..." entries, and the leaves of parameter pytrees
under a prefix, their paths joined by "/". `flatten` / `entries` +
`unflatten` convert, `check` validates the header.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np
from flax import traverse_util


def flatten(tree, prefix: str) -> Dict[str, np.ndarray]:
  """`{prefix + "a/b/c": leaf}` (NumPy leaves), in sorted key order."""
  flat = traverse_util.flatten_dict(
      jax.tree_util.tree_map(np.asarray, tree), sep="/")
  return {prefix + k: flat[k] for k in sorted(flat)}


def entries(shared, prefix: str) -> Dict[str, np.ndarray]:
  """The entries of `shared` under `prefix`, the prefix stripped."""
  return {k[len(prefix):]: np.asarray(v) for k, v in shared.items()
          if k.startswith(prefix)}


def unflatten(flat: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """The nested dict of `{"a/b/c": leaf}` (the inverse of `flatten`, less
  its prefix)."""
  return traverse_util.unflatten_dict(flat, sep="/")


def check(shared, *, keys: Sequence[str], producer: str, version: int,
          prefix: Optional[str] = None) -> None:
  """ValueError unless `shared` looks like what `producer` returned.

  Args:
    shared: the dict to read.
    keys: entries it must hold ("meta/format_version" among them).
    producer: the function that makes it, for the messages.
    version: the format version this code reads.
    prefix: if given, at least one entry must start with it.
  """
  if not hasattr(shared, "keys") or not hasattr(shared, "__getitem__"):
    raise ValueError(
        f"shared must be the dict returned by {producer}, got "
        f"{type(shared).__name__}.")
  missing = [k for k in keys if k not in shared]
  if missing or (prefix is not None
                 and not any(k.startswith(prefix) for k in shared)):
    raise ValueError(
        f"shared is not a dict returned by {producer} (missing "
        f"{missing or [prefix + '...']}).")
  found = int(np.asarray(shared["meta/format_version"]))
  if found != version:
    raise ValueError(f"shared has format version {found}; this code reads "
                     f"version {version}.")

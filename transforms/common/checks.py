"""Input checks shared by every attack in `ntga_tfds.transforms`.

Each check raises `ValueError` naming the offending argument, so a caller
learns which input is wrong without reading a traceback into JAX internals.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

# The choices attack configs validate against (here, not in `pgd` / `losses`,
# so that configs can be made without importing JAX).
NORMS = ("linf", "l2")
OPTIMIZERS = ("pgd", "as_published")
LOSSES = ("cross_entropy", "mse")


def images(name: str, x) -> np.ndarray:
  """Returns `x` as float32 in [0, 1]; uint8 input is divided by 255.

  Args:
    name: the argument's name, used in error messages.
    x: array `(n, ...)` of uint8 pixels or of floats in [0, 1].

  Returns:
    float32 array of the same shape.
  """
  return to_unit(checked_images(name, x))


def to_unit(x: np.ndarray) -> np.ndarray:
  """Checked images (`checked_images`) as float32 in [0, 1]."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255)
  return x.astype(np.float32)


def checked_images(name: str, x) -> np.ndarray:
  """`x` as an array, unconverted, after the checks of `images`.

  For callers that convert the pixels themselves (uint8 validation sets of
  10,000 images are checked per block; a float32 copy would be 120 MB).
  """
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(
        f"{name} must have shape (num_examples, ...), got shape {x.shape}.")
  if x.shape[0] == 0 or x.size == 0:
    raise ValueError(f"{name} is empty (shape {x.shape}).")
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(
        f"{name} must be uint8 or floating point in [0, 1], got dtype "
        f"{x.dtype}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains non-finite values (nan or inf).")
  lo, hi = float(x.min()), float(x.max())
  if lo < 0.0 or hi > 1.0:
    raise ValueError(
        f"{name} pixels must lie in [0, 1], got values in [{lo}, {hi}].")
  return x


def labels(name: str, y, *, num_examples: int, images_name: str,
           num_classes: int) -> np.ndarray:
  """Returns integer labels `(n,)` after checking length and range."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(
        f"{name} must be a 1-D array of integer class ids, got shape "
        f"{y.shape}.")
  if y.shape[0] != num_examples:
    raise ValueError(
        f"{name} has {y.shape[0]} labels but {images_name} has "
        f"{num_examples} images; they must have the same length.")
  if y.size == 0:
    raise ValueError(f"{name} is empty.")
  if not np.issubdtype(y.dtype, np.integer):
    if not np.all(np.equal(np.mod(y, 1), 0)):
      raise ValueError(f"{name} must hold integer class ids.")
  y = y.astype(np.int32)
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(
        f"{name} must lie in [0, num_classes={num_classes}), got values in "
        f"[{int(y.min())}, {int(y.max())}].")
  return y


def num_classes(value: Optional[int], *label_arrays) -> int:
  """`value` if given (checked >= 2), else 1 + the largest label seen."""
  if value is None:
    value = 1 + max(int(np.max(np.asarray(y))) for y in label_arrays)
    value = max(value, 2)
  if not isinstance(value, (int, np.integer)) or value < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {value!r}.")
  return int(value)


def eps(value: float, name: str = "eps") -> float:
  if not isinstance(value, (int, float, np.floating)) or not (
      0.0 < float(value) < 1.0):
    raise ValueError(
        f"{name} must be a float in (0, 1) (pixel units; 8/255 for "
        f"8 levels), got {value!r}.")
  return float(value)


def time(value: float, name: str = "t") -> float:
  try:
    t = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a positive number or inf, got "
                     f"{value!r}.") from None
  if math.isnan(t) or t <= 0.0:
    raise ValueError(f"{name} must be > 0 (math.inf allowed), got {value!r}.")
  return t


def positive_int(value: int, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 1):
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
  return int(value)


def choice(value: str, name: str, allowed) -> str:
  if value not in allowed:
    raise ValueError(
        f"Unknown {name} {value!r}; expected one of {sorted(allowed)}.")
  return value


def same_trailing_shape(name: str, x: np.ndarray, ref_name: str,
                        ref: np.ndarray) -> None:
  if x.shape[1:] != ref.shape[1:]:
    raise ValueError(
        f"{name} images have shape {x.shape[1:]} but {ref_name} images have "
        f"shape {ref.shape[1:]}; they must match.")

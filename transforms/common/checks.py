"""Input checks shared by every attack in `ntga_tfds.transforms`.

Each check raises `ValueError` naming the offending argument, so a caller
learns which input is wrong without reading a traceback into JAX internals.

* Images, labels, class counts; NHWC images and their size; poison
  indices and target images of the clean-label attacks; PRNG keys.
* Config fields: numbers, flags, integers, choices (configs validate with
  these without importing JAX; only `key` imports it, when called).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

# The choices attack configs validate against (here, not in `pgd` / `losses`,
# so that configs can be made without importing JAX).
NORMS = ("linf", "l2")
OPTIMIZERS = ("pgd", "as_published", "momentum")
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


# For functions whose argument of that name hides it.
_num_classes = num_classes


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


# ---------------------------------------------------------------------------
# Config fields (no JAX: configs validate with these).


def number(value, name: str) -> float:
  """`value` as a finite float; bools and non-numbers are refused."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{name} must be a number, got {value!r}.")
  if not math.isfinite(float(value)):
    raise ValueError(f"{name} must be finite, got {value!r}.")
  return float(value)


def positive_number(value, name: str) -> float:
  """`number(value)`, which must be > 0."""
  value_f = number(value, name)
  if not value_f > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}.")
  return value_f


def nonnegative_number(value, name: str) -> float:
  """`number(value)`, which must be >= 0."""
  value_f = number(value, name)
  if not value_f >= 0:
    raise ValueError(f"{name} must be >= 0, got {value!r}.")
  return value_f


def nonnegative_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
  return value


def flag(value, name: str) -> bool:
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}.")
  return value


def sign_finish(value, *, norm: str, optimizer: str) -> bool:
  """PGD's `sign_finish` flag: only with norm "linf" and optimizer "pgd"."""
  if flag(value, "sign_finish") and (norm != "linf" or optimizer != "pgd"):
    raise ValueError("sign_finish needs norm='linf' and optimizer='pgd', got "
                     f"norm={norm!r}, optimizer={optimizer!r}.")
  return value


# ---------------------------------------------------------------------------
# Arguments of the attacks' functions.


def instance(value, cls, name: str = "config"):
  """`value` if it is a `cls`, else ValueError (e.g. the attack's config)."""
  if not isinstance(value, cls):
    raise ValueError(
        f"{name} must be a {cls.__name__}, got {type(value).__name__}.")
  return value


def key(value):
  """A JAX PRNG key (raw uint32 (2,) or a typed key), else ValueError.

  Imports JAX (only when called).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  try:
    arr = value if isinstance(value, jax.Array) else (
        jnp.asarray(value) if isinstance(value, (np.ndarray, list, tuple))
        else None)
  except (TypeError, ValueError):
    arr = None
  if arr is not None and jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
    if arr.shape == ():
      return arr
  elif arr is not None and arr.dtype == jnp.uint32 and arr.shape == (2,):
    return arr
  raise ValueError(
      f"key must be a JAX PRNG key (jax.random.PRNGKey(seed) or "
      f"jax.random.key(seed)), got {value!r}.")


def callable_or_none(value, name: str) -> None:
  if value is not None and not callable(value):
    raise ValueError(f"{name} must be callable, got {value!r}.")


def nhwc(name: str, x) -> np.ndarray:
  """Checked images `(n, H, W, C)`, unconverted (uint8 or float in [0, 1])."""
  x = checked_images(name, x)
  if x.ndim != 4:
    raise ValueError(
        f"{name} must have shape (num_examples, height, width, channels), "
        f"got shape {x.shape}.")
  return x


def image_size(name: str, x: np.ndarray, size: int, network: str) -> None:
  """ValueError unless NHWC `x` is at least `size` x `size` (what `network`,
  e.g. "the 'cnn' surrogate", accepts)."""
  if min(x.shape[1], x.shape[2]) < size:
    raise ValueError(
        f"{name} images are {x.shape[1]}x{x.shape[2]}; {network} needs at "
        f"least {size}x{size}.")


def labelled_nhwc(x, y, num_classes: Optional[int], *, x_name: str = "x_train",
                  y_name: str = "y_train"):
  """`(x, y, num_classes)`: `nhwc(x)`, its labels, and the number of classes
  (`num_classes(num_classes, y)`)."""
  x = nhwc(x_name, x)
  num_classes = _num_classes(num_classes, y)
  y = labels(y_name, y, num_examples=x.shape[0], images_name=x_name,
             num_classes=num_classes)
  return x, y, num_classes


def trained_labels(x: np.ndarray, y, num_classes: Optional[int], *,
                   trained_classes: int, image_shape, networks: str):
  """`(y, num_classes)` for NHWC `x_train` and labels `y`, checked against
  networks (e.g. "surrogates") trained on `trained_classes` classes of
  images of `image_shape`; `num_classes` defaults to `trained_classes`."""
  if num_classes is None:
    num_classes = trained_classes
  num_classes = _num_classes(num_classes)
  if num_classes != trained_classes:
    raise ValueError(f"num_classes is {num_classes} but the {networks} in "
                     f"shared have {trained_classes} classes.")
  y = labels("y_train", y, num_examples=x.shape[0], images_name="x_train",
             num_classes=num_classes)
  if tuple(x.shape[1:]) != image_shape:
    raise ValueError(
        f"x_train images have shape {x.shape[1:]} but the {networks} in "
        f"shared were trained on {image_shape}.")
  return y, num_classes


def poison_indices(value, n: int) -> np.ndarray:
  """Distinct indices `(P,)` into a training set of `n` images (int64)."""
  idx = np.asarray(value)
  if idx.ndim != 1 or idx.size == 0:
    raise ValueError(f"poison_indices must be a non-empty 1-D array of "
                     f"indices, got shape {idx.shape}.")
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(
        f"poison_indices must hold integers, got dtype {idx.dtype}.")
  if idx.min() < 0 or idx.max() >= n:
    raise ValueError(
        f"poison_indices must lie in [0, {n}) (x_train has {n} images), got "
        f"values in [{int(idx.min())}, {int(idx.max())}].")
  if np.unique(idx).size != idx.size:
    raise ValueError("poison_indices has repeated indices.")
  return idx.astype(np.int64)


def target_images(x_target, x_train: np.ndarray) -> np.ndarray:
  """Target images `(k, H, W, C)` (one `(H, W, C)` image: k = 1), shaped as
  the images of `x_train`."""
  x = np.asarray(x_target)
  if x.ndim == 3:
    x = x[None]
  x = nhwc("x_target", x)
  same_trailing_shape("x_target", x, "x_train", x_train)
  return x

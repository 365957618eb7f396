"""The poisons of a clean-label attack: which training images, and the
training set with them in place (Witches' Brew, Convex Polytope)."""

from __future__ import annotations

import jax
import numpy as np

from ntga_tfds.transforms.common import pgd


def draw(key, pool: np.ndarray, num: int) -> np.ndarray:
  """`num` of the indices `pool`, drawn without replacement, sorted."""
  return np.sort(pool[np.asarray(jax.random.permutation(key, pool.size))[
      :num]])


def in_place(x_train, poison_indices: np.ndarray,
             poisons: np.ndarray) -> np.ndarray:
  """The training set as uint8 (`pgd.snap`) with `poisons` at
  `poison_indices` (a new array)."""
  _, images = pgd.snap(x_train)
  images = images.copy()
  images[poison_indices] = poisons
  return images

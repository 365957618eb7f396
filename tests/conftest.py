"""Shared fixtures: small real data (scikit-learn's 8x8 digits) and paths."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def digits():
  """(x uint8 (1797, 8, 8, 1), y int) from scikit-learn's bundled digits."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = np.rint(d.images / 16.0 * 255).astype(np.uint8)[..., None]
  return x, d.target.astype(np.int64)


@pytest.fixture(scope="session")
def shared_data():
  if not SHARED_DATA.is_dir():
    raise FileNotFoundError(
        f"Real data expected at {SHARED_DATA} (see the README's Testing "
        "section); it is part of the CI checkout.")
  return SHARED_DATA

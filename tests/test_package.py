"""`import ntga_tfds`: light, and TensorFlow set to share a GPU with JAX."""

import os
import subprocess
import sys

import pytest

_PROBE = ("import os, sys, ntga_tfds; "
          "print(os.environ.get('TF_FORCE_GPU_ALLOW_GROWTH')); "
          "print('tensorflow' in sys.modules, 'jax' in sys.modules)")


@pytest.mark.parametrize("preset, want", [(None, "true"), ("false", "false")])
def test_import_sets_tensorflow_gpu_growth_unless_the_user_did(preset, want):
  env = {k: v for k, v in os.environ.items()
         if k != "TF_FORCE_GPU_ALLOW_GROWTH"}
  if preset is not None:
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = preset
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True,
                       capture_output=True, text=True).stdout.split("\n")
  assert out[0] == want
  # Registering the builders imports neither TensorFlow nor JAX.
  assert out[1] == "False False"


_WITHOUT_TF_STACK = r"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
  # As on a host that has JAX but not TensorFlow, TFDS or neural-tangents.
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets",
                              "neural_tangents", "keras"):
      raise ModuleNotFoundError(f"No module named {name!r}")
    return None

sys.meta_path.insert(0, Block())
import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: (
    None if name == "tensorflow_datasets" else _find_spec(name, *a))
"""


def test_the_attack_imports_and_runs_without_the_tensorflow_stack():
  # An accelerator host may have JAX alone: `ntga_tfds.transforms` must
  # import (builders are then not registered) and poison a block.
  code = _WITHOUT_TF_STACK + """
import numpy as np, jax
import ntga_tfds
from ntga_tfds.transforms import ntga
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
y = np.arange(16) % 4
for surrogate in ("fnn", "cnn"):
  out = ntga.poison_block(x, y, x_val=x[:8], y_val=y[:8],
                          key=jax.random.PRNGKey(0),
                          config=ntga.NTGAConfig(eps=8 / 255, nb_iter=2,
                                                 optimizer="pgd",
                                                 surrogate=surrogate))
  assert out.dtype == np.uint8 and out.shape == x.shape
  assert np.abs(out.astype(int) - x).max() <= 8
print(sorted(m for m in ("tensorflow", "tensorflow_datasets",
                         "neural_tangents") if m in sys.modules))
"""
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip().splitlines()[-1] == "[]"

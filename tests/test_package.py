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

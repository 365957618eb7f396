"""Data-poisoning attacks as pure JAX functions: no files, no TensorFlow.

One subpackage (or module) per attack, each with the same conventions: a
frozen config dataclass validated on construction, and

  poison(x_train, y_train, *, key, config, ...) -> uint8 images

that checks its inputs (ValueError naming the argument), never reads files or
TensorFlow objects, and returns images within the attack's budget with labels
untouched.

* `ntga`: Neural Tangent Generalization Attack (NTGA, B-NTGA).
* `random_noise`: the control, uniform noise of the same L-inf size.
* `common`: projections, quantisation within eps, input checks, losses.

Attacks are imported on first use (`from ntga_tfds.transforms import ntga`
or `transforms.ntga`), so adding one is adding its folder: nothing here
lists them.
"""

import importlib as _importlib
import pkgutil as _pkgutil


def attacks():
  """Names of the attack modules and subpackages in this package."""
  return tuple(sorted(
      m.name for m in _pkgutil.iter_modules(__path__)
      if not m.name.startswith("_") and m.name != "common"))


def __getattr__(name):
  if name == "common" or name in attacks():
    return _importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["attacks", "common"]

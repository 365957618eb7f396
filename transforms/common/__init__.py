"""What every attack in `ntga_tfds.transforms` shares.

* `checks`: input checks that raise `ValueError` naming the argument, and
  the choices configs validate against (no JAX).
* `pgd`: L-inf / L2 projections, projected ascent, and the uint8
  quantisation that keeps every pixel within eps of the clean one.
* `losses`: weighted cross-entropy and MSE on logits.

Submodules load on first use, so configs import without JAX.
"""

import importlib as _importlib

_SUBMODULES = ("checks", "losses", "pgd")


def __getattr__(name):
  if name in _SUBMODULES:
    return _importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_SUBMODULES)

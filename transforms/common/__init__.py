"""What every attack in `ntga_tfds.transforms` shares.

* `checks`: input checks that raise `ValueError` naming the argument
  (images, labels, keys, poison indices, targets; config fields: numbers,
  flags, choices), and the choices configs validate against (no JAX).
* `pgd`: L-inf / L2 projections, projected ascent, and the uint8
  quantisation that keeps every pixel within eps of the clean one.
* `losses`: weighted cross-entropy and MSE on logits.
* `training`: flax + optax training pieces: precision, normalisation
  statistics, MultiStepLR schedule, Nesterov SGD, cross-entropy, the epoch
  loop around a jitted step, ensemble pytrees.
* `poisons`: clean-label poisons drawn from a class, and the training set
  with them in place.
* `flat`: parameter pytrees to flat dicts of NumPy arrays and back.
* `lazy`: the `__getattr__` that loads a package's functions on first use
  (no JAX).

Submodules load on first use, so configs import without JAX.
"""

from ntga_tfds.transforms.common import lazy as _lazy

_SUBMODULES = ("checks", "losses", "pgd", "training", "flat", "poisons",
               "lazy")

__getattr__ = _lazy.attributes(__name__, {}, _SUBMODULES)

__all__ = list(_SUBMODULES)

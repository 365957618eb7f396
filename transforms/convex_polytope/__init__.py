"""Convex Polytope (Zhu et al., ICML 2019): transferable clean-label
poisoning by feature collision with a convex hull, as a pure-JAX transform.

A few training images of the adversarial class are perturbed (L-inf, eps)
so that, in the feature space of an ensemble of substitute networks (with
dropout active), the target's features lie inside the convex hull of the
poisons' features: a network trained on the poisoned set, whose features
are alike, then gives the target the poisons' class. Labels are not
changed.

The public surface; the maths is in the private modules next to this file:

* `config`: `ConvexPolytopeConfig` (no JAX: dataset configs carry it).
* `_models`: the substitutes (flax.linen): "convnet", "cnn", "mlp".
* `_train`: `train_substitutes` (SGD, dropout), `predict`.
* `_polytope`: `simplex_projection`, the coefficients' least squares on the
  simplex, the polytope loss.
* `_craft`: `craft` (alternating coefficients and Adam steps on the
  poisons), `objective` (the loss, for tests), `poison` (all of it).

Example:

  >>> from ntga_tfds.transforms import convex_polytope as cp
  >>> config = cp.ConvexPolytopeConfig(substitutes=("cnn", "mlp"),
  ...                                  steps=500)
  >>> images, idx = cp.poison(x_train, y_train, x_target=x_test[:1],
  ...                         adversarial_label=3,
  ...                         key=jax.random.PRNGKey(0), config=config)

The functions load JAX, flax and optax on first use.
"""

from ntga_tfds.transforms.common import lazy as _lazy
from ntga_tfds.transforms.convex_polytope.config import ConvexPolytopeConfig
from ntga_tfds.transforms.convex_polytope.config import DTYPES
from ntga_tfds.transforms.convex_polytope.config import SUBSTITUTES

_FUNCTIONS = {
    "train_substitutes": "_train",
    "predict": "_train",
    "simplex_projection": "_polytope",
    "craft": "_craft",
    "objective": "_craft",
    "poison": "_craft",
}
_SUBMODULES = ("config",)

__getattr__ = _lazy.attributes(__name__, _FUNCTIONS, _SUBMODULES)

__all__ = ["ConvexPolytopeConfig", "SUBSTITUTES", "DTYPES", *_FUNCTIONS]

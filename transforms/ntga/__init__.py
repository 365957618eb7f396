"""Neural Tangent Generalization Attack (NTGA; Yuan & Wu, ICML 2021).

The public surface of the attack; the maths is in the modules next to this
file:

* `config`: `NTGAConfig` (no JAX: dataset configs carry it).
* `attack`: `poison` (B-NTGA over a whole set), `poison_block` (one block
  against a validation set), `surrogate_loss`, `predict`, `accuracy`,
  `implementation` (which kernels run here).
* `kernels`: the surrogates' NTKs (FNN, CNN) as neural-tangents `stax`
  definitions and the fast kernels that compute the same values
  (`_fnn_ntk`, `_cnn_ntk`, `_gram`, `_native/`).
* `gp`: the differentiable NTK-GP mean prediction after time t.

Example:

  >>> from ntga_tfds.transforms import ntga
  >>> config = ntga.NTGAConfig(eps=8 / 255, t=64.)
  >>> x_poison = ntga.poison(x_train, y_train, x_val=x_val, y_val=y_val,
  ...                        key=jax.random.PRNGKey(0), config=config)

The functions load the attack (and JAX) on first use.
"""

from ntga_tfds.transforms.common import lazy as _lazy
from ntga_tfds.transforms.ntga.config import DTYPES
from ntga_tfds.transforms.ntga.config import NTGAConfig
from ntga_tfds.transforms.ntga.config import SURROGATES

_ATTACK = ("poison", "poison_block", "surrogate_loss", "predict", "accuracy",
           "implementation")
_SUBMODULES = ("attack", "kernels", "gp", "config")

__getattr__ = _lazy.attributes(
    __name__, {name: "attack" for name in _ATTACK}, _SUBMODULES)

__all__ = ["NTGAConfig", "SURROGATES", "DTYPES", *_ATTACK]

"""Back-gradient poisoning (Munoz-Gonzalez et al., AISec 2017), pure JAX.

Poison points are added to a training set one at a time; each starts from
a validation point with a flipped label and climbs the validation loss of
a model trained on the poisoned set, by gradient steps on its pixels. The
gradient (the hypergradient) goes back through the whole T-step training
run: by checkpointed autodiff (O(sqrt(T)) stored states, exact) or by the
paper's back-gradient (reversing the training trajectory, O(1) states).

The public surface; the maths is in the private modules next to this file:

* `config`: `BackGradientConfig` and `stored_states` (no JAX: dataset
  configs carry it).
* `_models`: the inner learners (logistic regression, MLP, small CNN).
* `_inner`: the bilevel problem, its three hypergradients (unrolled,
  checkpointed, reversed), the outer step.
* `_attack`: `hypergradient`, `unrolled_hypergradient`, `objective`,
  `add_poisons`, `poison`, `train`, `accuracy`.

Example:

  >>> from ntga_tfds.transforms import back_gradient as bg
  >>> config = bg.BackGradientConfig(model="mlp")
  >>> x_p, y_p = bg.poison(x_train, y_train, x_val=x_val, y_val=y_val,
  ...                      num_poisons=20, key=jax.random.PRNGKey(0),
  ...                      config=config)
  >>> params = bg.train(np.concatenate([x_train, x_p]),
  ...                   np.concatenate([y_train, y_p]),
  ...                   key=jax.random.PRNGKey(0), config=config)
  >>> bg.accuracy(params, x_test, y_test)

The functions load JAX on first use.
"""

from ntga_tfds.transforms.back_gradient.config import ATTACKS
from ntga_tfds.transforms.back_gradient.config import BackGradientConfig
from ntga_tfds.transforms.back_gradient.config import DTYPES
from ntga_tfds.transforms.back_gradient.config import LABEL_POLICIES
from ntga_tfds.transforms.back_gradient.config import METHODS
from ntga_tfds.transforms.back_gradient.config import MODELS
from ntga_tfds.transforms.back_gradient.config import stored_states
from ntga_tfds.transforms.back_gradient.config import unrolled_stored_states
from ntga_tfds.transforms.common import lazy as _lazy

_FUNCTIONS = ("hypergradient", "unrolled_hypergradient", "objective",
              "add_poisons", "poison", "train", "accuracy")
_SUBMODULES = ("config",)

__getattr__ = _lazy.attributes(
    __name__, {name: "_attack" for name in _FUNCTIONS}, _SUBMODULES)

__all__ = ["BackGradientConfig", "MODELS", "ATTACKS", "LABEL_POLICIES",
           "METHODS", "DTYPES", "stored_states", "unrolled_stored_states",
           *_FUNCTIONS]

"""Data-poisoning attacks as pure JAX functions.

One module per attack, each with the same conventions: a frozen config
dataclass validated on construction, and

  poison(x_train, y_train, *, key, config, ...) -> uint8 images

that checks its inputs (ValueError naming the argument), never reads files or
TensorFlow objects, and returns images within the attack's budget with labels
untouched.

* `ntga`: Neural Tangent Generalization Attack (NTGA, B-NTGA).
* `random_noise`: the control, uniform noise of the same L-inf size.

Building blocks: `kernels` (NTK surrogates), `predict` (differentiable GP
mean), `losses`, `pgd` (projected ascent, projections, quantisation).
"""

from ntga_tfds.transforms import kernels
from ntga_tfds.transforms import losses
from ntga_tfds.transforms import ntga
from ntga_tfds.transforms import pgd
from ntga_tfds.transforms import predict
from ntga_tfds.transforms import random_noise
from ntga_tfds.transforms.ntga import NTGAConfig
from ntga_tfds.transforms.random_noise import RandomNoiseConfig

__all__ = [
    "kernels", "losses", "ntga", "pgd", "predict", "random_noise",
    "NTGAConfig", "RandomNoiseConfig",
]

"""The inner learners, as pure functions of a parameter dict.

* "logreg": multinomial logistic regression on the flattened pixels,
  `logits = x W + b`; zero initialisation (the authors' `trainLR2.m`), so
  the key does not matter.
* "mlp": one hidden layer of `MLP_HIDDEN` = 10 tanh units (the paper's MLP,
  `testAttackMLPmnist.m`); weights ~ N(0, 0.1^2) as the authors', biases 0.
* "cnn": a small CNN: conv 3x3 x `CNN_FILTERS` = 8 (SAME), tanh, 2x2
  average pool (VALID), dense to the classes; LeCun-normal weights, biases
  0. Smooth everywhere (tanh, average pooling), so the hypergradient is
  well defined.

Every model takes images `(n, H, W, C)` in [0, 1] and returns logits
`(n, num_classes)`. The model of a parameter dict is read off its keys
(`model_of`), so `apply(params, x)` needs nothing else.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

MLP_HIDDEN = 10
CNN_FILTERS = 8
_KEYS = {
    "logreg": ("b", "w"),
    "mlp": ("b1", "b2", "w1", "w2"),
    "cnn": ("b", "conv_b", "conv_w", "w"),
}


def min_image_size(model: str) -> int:
  """The smallest height/width `model` accepts (the CNN pools 2x2)."""
  return 2 if model == "cnn" else 1


def init(model: str, key, image_shape, num_classes: int,
         dtype=jnp.float32) -> Dict[str, jax.Array]:
  """The initial parameters of `model`.

  Args:
    model: "logreg", "mlp" or "cnn".
    key: JAX PRNG key (unused by "logreg", which starts at zero).
    image_shape: `(H, W, C)`.
    num_classes: number of outputs.
    dtype: parameter dtype.

  Returns:
    Dict of arrays, e.g. logreg `{"w": (H*W*C, num_classes), "b":
    (num_classes,)}`.
  """
  h, w, c = image_shape
  d = h * w * c
  if model == "logreg":
    return {"w": jnp.zeros((d, num_classes), dtype),
            "b": jnp.zeros((num_classes,), dtype)}
  k1, k2 = jax.random.split(key)
  if model == "mlp":
    return {
        "w1": 0.1 * jax.random.normal(k1, (d, MLP_HIDDEN), dtype),
        "b1": jnp.zeros((MLP_HIDDEN,), dtype),
        "w2": 0.1 * jax.random.normal(k2, (MLP_HIDDEN, num_classes), dtype),
        "b2": jnp.zeros((num_classes,), dtype),
    }
  if model == "cnn":
    features = (h // 2) * (w // 2) * CNN_FILTERS
    return {
        "conv_w": jax.random.normal(k1, (3, 3, c, CNN_FILTERS), dtype)
                  / np.sqrt(9 * c),
        "conv_b": jnp.zeros((CNN_FILTERS,), dtype),
        "w": jax.random.normal(k2, (features, num_classes), dtype)
             / np.sqrt(features),
        "b": jnp.zeros((num_classes,), dtype),
    }
  raise ValueError(f"Unknown model {model!r}; expected one of "
                   f"{sorted(_KEYS)}.")


def model_of(params) -> str:
  """Which model a parameter dict belongs to, from its keys."""
  keys = tuple(sorted(params)) if isinstance(params, dict) else None
  for name, want in _KEYS.items():
    if keys == want:
      return name
  raise ValueError(
      f"params must be a parameter dict of one of the models "
      f"{sorted(_KEYS)} (as `train` returns), got keys {keys!r}.")


def _conv3x3(x, kernel):
  """SAME 3x3 convolution as 9 shifted copies and one matmul.

  Equal to `lax.conv_general_dilated(x, kernel, (1, 1), "SAME")` (NHWC,
  HWIO). Its first and second derivatives are slices, pads and matmuls,
  which XLA:CPU runs far faster than the convolutions (with swapped
  dimensions) that differentiating a convolution twice produces.
  """
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate(
      [xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
  return patches @ kernel.reshape(9 * c, -1)


def apply(params, x: jax.Array) -> jax.Array:
  """Logits `(n, num_classes)` of images `x` `(n, H, W, C)`."""
  model = model_of(params)
  if model == "logreg":
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
  if model == "mlp":
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]
  y = _conv3x3(x, params["conv_w"])
  y = jnp.tanh(y + params["conv_b"])
  n, h, w, c = y.shape
  y = y[:, :h // 2 * 2, :w // 2 * 2]
  y = y.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return y.reshape(n, -1) @ params["w"] + params["b"]

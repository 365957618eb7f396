"""The control: random noise of the same size as an attack's budget.

Each pixel gets independent noise, uniform on [-eps, eps] ("uniform") or
exactly +-eps with a random sign ("sign"), clipped to [0, 1] and quantised to
uint8 within `levels(eps)` of the clean pixel, as NTGA's output is. A model
trained on it should learn almost as well as on clean data: the comparison
shows that NTGA's effect comes from the perturbation's direction, not its
size.

Example:

  >>> x_noisy = random_noise.poison(
  ...     x_train, y_train, key=jax.random.PRNGKey(0),
  ...     config=random_noise.RandomNoiseConfig(eps=8 / 255))
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ntga_tfds.transforms.common import checks as _checks

DISTRIBUTIONS = ("uniform", "sign")


@dataclasses.dataclass(frozen=True)
class RandomNoiseConfig:
  """eps: L-inf radius in (0, 1); distribution: "uniform" or "sign"."""
  eps: float = 8 / 255
  distribution: str = "uniform"

  def __post_init__(self):
    object.__setattr__(self, "eps", _checks.eps(self.eps))
    _checks.choice(self.distribution, "distribution", DISTRIBUTIONS)


def poison(x_train, y_train=None, *, key,
           config: RandomNoiseConfig) -> np.ndarray:
  """`(n, ...)` uint8 images with random noise of L-inf size `config.eps`.

  `y_train` is accepted for the common calling convention and only checked
  for length.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.common import pgd  # pylint: disable=g-import-not-at-top
  if not isinstance(config, RandomNoiseConfig):
    raise ValueError(
        f"config must be a RandomNoiseConfig, got {type(config).__name__}.")
  x = _checks.images("x_train", x_train)
  if y_train is not None and len(y_train) != x.shape[0]:
    raise ValueError(
        f"y_train has {len(y_train)} labels but x_train has {x.shape[0]} "
        f"images; they must have the same length.")
  x_clean, x_u8 = pgd.snap(x)
  if config.distribution == "uniform":
    noise = jax.random.uniform(key, x.shape, minval=-config.eps,
                               maxval=config.eps)
  else:
    noise = config.eps * jax.random.rademacher(key, x.shape).astype(
        np.float32)
  x_noisy = np.clip(x_clean + np.asarray(noise), 0.0, 1.0)
  return pgd.quantize(x_noisy, x_u8, eps=config.eps, norm="linf")

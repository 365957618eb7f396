"""Projected gradient ascent, projections and uint8 quantisation within eps.

Shared by every attack in `ntga_tfds.transforms` that perturbs inputs under an
L-infinity or L2 budget. Pure functions; `ascend` is the only loop, and it
calls a jitted `step_fn` once per iteration (one compiled program per step).

Two optimisers:

* "pgd": true projected gradient ascent (Madry et al.): each step takes the
  gradient at the current iterate, moves `step_size` along its sign (L-inf)
  or its normalised direction (L2), and projects back onto the eps ball
  around the clean input and onto [0, 1]. Optional random start.
* "momentum": MI-FGSM (Dong et al., "Boosting Adversarial Attacks with
  Momentum", CVPR 2018): each step adds the gradient, divided by its mean
  absolute value per example, to a velocity decayed by `mu`, and moves
  along the velocity's sign (L-inf) or normalised direction (L2), then
  projects. Accumulating directions across steps keeps the iterate from
  overfitting the surrogate's local curvature; its adversarial examples
  transfer to other models better than PGD's and one step's.
* "as_published": what the reference NTGA code computes. Its loop restarts
  from the clean images with the full eps at every iteration, so its result
  is one signed-gradient step of size eps from the clean block; we compute
  that step once.

`sign_finish` (L-inf, "pgd" only) ends the ascent on the vertices of the
ball: every pixel's perturbation is pushed to +-eps along its sign (a pixel
PGD left unperturbed stays), then projected onto [0, 1]. One signed step
from the clean input puts every pixel there too; this keeps PGD's
directions with the one step's energy.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms.common import checks

NORMS = checks.NORMS
OPTIMIZERS = checks.OPTIMIZERS
_TINY = 1e-12


def levels(eps: float) -> int:
  """How many 8-bit levels an L-inf radius allows: floor(eps * 255).

  eps = k/255 gives exactly k, with no float slip to k - 1; eps = 0.3 gives
  76 (76/255 <= 0.3), not the reference's 77.
  """
  return int(math.floor(eps * 255 + 1e-6))


def _per_example_norm(x):
  axes = tuple(range(1, x.ndim))
  return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def project(x, x_clean, *, eps, norm: str):
  """Projects `x` onto {|x - x_clean|_norm <= eps} intersected with [0, 1]."""
  delta = x - x_clean
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    delta = delta * jnp.minimum(1.0, eps / (_per_example_norm(delta) + _TINY))
  return jnp.clip(x_clean + delta, 0.0, 1.0)


def ascent_step(x, grad, x_clean, *, step_size, eps, norm: str):
  """One ascent step along `grad`, then the projection. Shapes `(n, ...)`."""
  if norm == "linf":
    direction = jnp.sign(grad)
  else:
    direction = grad / (_per_example_norm(grad) + _TINY)
  return project(x + step_size * direction, x_clean, eps=eps, norm=norm)


def momentum_step(x, velocity, grad, x_clean, *, step_size, eps, mu,
                  norm: str):
  """One MI-FGSM step: `(x_next, velocity_next)`. Shapes `(n, ...)`.

  velocity_next = mu * velocity + grad / mean(|grad|) (per example), then
  `ascent_step` along velocity_next.
  """
  axes = tuple(range(1, grad.ndim))
  scale = jnp.mean(jnp.abs(grad), axis=axes, keepdims=True)
  velocity = mu * velocity + grad / (scale + _TINY)
  return ascent_step(x, velocity, x_clean, step_size=step_size, eps=eps,
                     norm=norm), velocity


def to_vertices(x, x_clean, *, eps):
  """L-inf: each nonzero perturbation moved to +-eps (its sign), in [0, 1]."""
  return jnp.clip(x_clean + eps * jnp.sign(x - x_clean), 0.0, 1.0)


def random_start(key, x_clean, *, eps, norm: str):
  """A uniform point of the L-inf ball, or a random L2 direction and radius."""
  if norm == "linf":
    delta = jax.random.uniform(key, x_clean.shape, x_clean.dtype, -eps, eps)
  else:
    k1, k2 = jax.random.split(key)
    direction = jax.random.normal(k1, x_clean.shape, x_clean.dtype)
    direction = direction / (_per_example_norm(direction) + _TINY)
    radius = jax.random.uniform(
        k2, (x_clean.shape[0],) + (1,) * (x_clean.ndim - 1), x_clean.dtype)
    delta = direction * radius * eps
  return project(x_clean + delta, x_clean, eps=eps, norm=norm)


def snap(x: np.ndarray, dtype=np.float32):
  """Clean images on the 8-bit grid: (u/255 as `dtype`, uint8 u), u=round(255x).

  Inputs decoded from uint8 are unchanged (uint8 input is taken as it is);
  the attack's eps ball is centred on the snapped image so that its uint8
  output can honour the bound exactly.
  """
  x = np.asarray(x)
  u8 = x if x.dtype == np.uint8 else np.clip(
      np.rint(np.asarray(x, np.float64) * 255), 0, 255).astype(np.uint8)
  # One pass, one allocation (the same values as u8.astype(dtype) / 255; a
  # CIFAR-10 validation set of 10,000 is snapped per block: 3-10x faster).
  return np.divide(u8, np.asarray(255, dtype), dtype=dtype), u8


def quantize(x_adv, x_clean_u8: np.ndarray, *, eps: float,
             norm: str) -> np.ndarray:
  """uint8 images within the budget of the clean uint8 images.

  L-inf: round to the nearest level, then clip to the `levels(eps)` levels
  around the clean pixel. L2: round each pixel's change toward zero, which
  never increases the L2 norm of the perturbation.
  """
  x_adv = np.asarray(x_adv, np.float64) * 255
  clean = x_clean_u8.astype(np.int32)
  if norm == "linf":
    k = levels(eps)
    q = np.clip(np.rint(x_adv).astype(np.int32), clean - k, clean + k)
  else:
    q = clean + np.trunc(x_adv - clean).astype(np.int32)
  return np.clip(q, 0, 255).astype(np.uint8)


StepFn = Callable[..., tuple]


def ascend(step_fn: StepFn, x_clean, *, key, eps: float,
           step_size: float, nb_iter: int, norm: str, optimizer: str,
           rand_init: bool, sign_finish: bool = False,
           momentum_decay: float = 1.0,
           on_step: Optional[Callable[[int, float], None]] = None):
  """Runs the optimiser; returns the float adversarial inputs.

  Args:
    step_fn: jitted `(x, x_clean, step_size, eps) -> (x_next, loss)`, the
      loss measured at `x` before the step; for "momentum",
      `(x, x_clean, step_size, eps, velocity, mu) -> (x_next, velocity_next,
      loss)` (see `momentum_step`).
    x_clean: `(n, ...)` clean inputs in [0, 1].
    key: PRNG key for the random start.
    eps, step_size, nb_iter, norm, optimizer, rand_init, sign_finish: see
      module doc.
    momentum_decay: "momentum"'s mu.
    on_step: called as `on_step(step, loss)` after each step.
  """
  checks.sign_finish(sign_finish, norm=norm, optimizer=optimizer)
  x_clean = jnp.asarray(x_clean)
  eps_a = jnp.asarray(eps, x_clean.dtype)
  if optimizer == "as_published":
    x, loss = step_fn(x_clean, x_clean, eps_a, eps_a)
    if on_step is not None:
      on_step(0, float(loss))
    return x
  x = x_clean
  if rand_init:
    x = random_start(key, x_clean, eps=eps, norm=norm)
  step_a = jnp.asarray(step_size, x_clean.dtype)
  if optimizer == "momentum":
    velocity = jnp.zeros_like(x_clean)
    mu = jnp.asarray(momentum_decay, x_clean.dtype)
  for i in range(nb_iter):
    if optimizer == "momentum":
      x, velocity, loss = step_fn(x, x_clean, step_a, eps_a, velocity, mu)
    else:
      x, loss = step_fn(x, x_clean, step_a, eps_a)
    if on_step is not None:
      on_step(i, float(loss))
  if sign_finish:
    x = to_vertices(x, x_clean, eps=eps_a)
  return x

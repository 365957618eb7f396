"""Pieces of flax + optax training that the attacks share.

* `precision` / `float_dtype`: a config's "float32" / "float64".
* `channel_stats`: exact per-channel normalisation statistics of uint8
  images.
* `multistep_schedule`, `sgd`: torch's MultiStepLR (x0.1 at fractions of the
  run) and SGD with Nesterov momentum and weight decay added to the
  gradient.
* `cross_entropy`: mean (or weighted mean) softmax cross-entropy.
* `u8_batch`, `apply_gradients`, `epoch_order`, `train_epochs`: a training
  step's batch and update, and the epoch loop around a jitted step.
* `stack`, `index`, `cast`: pytrees of an ensemble (leading axis).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional, Sequence, Tuple

import jax
from jax.experimental import enable_x64
import jax.numpy as jnp
import numpy as np
import optax

# ---------------------------------------------------------------------------
# Precision.


def precision(dtype: str):
  """`enable_x64` for "float64", else nothing."""
  return enable_x64() if dtype == "float64" else contextlib.nullcontext()


def float_dtype(dtype: str):
  """`jnp.float64` for "float64", else `jnp.float32`."""
  return jnp.float64 if dtype == "float64" else jnp.float32


# ---------------------------------------------------------------------------
# Normalisation.


def channel_stats(x_u8: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Exact per-channel mean and std `(C,)` (float64) of uint8 images.

  A constant channel's std is raised to 1e-3.
  """
  levels = np.arange(256, dtype=np.float64) / 255
  mean, std = [], []
  for c in range(x_u8.shape[-1]):
    counts = np.bincount(x_u8[..., c].ravel(), minlength=256)
    p = counts / counts.sum()
    m = float(p @ levels)
    mean.append(m)
    std.append(float(np.sqrt(max(float(p @ (levels - m) ** 2), 0.0))))
  return np.asarray(mean), np.maximum(np.asarray(std), 1e-3)


# ---------------------------------------------------------------------------
# Optimisation.


def multistep_schedule(lr: float, total: int, unit: int = 1,
                       fractions: Sequence[float] = (3 / 8, 5 / 8, 7 / 8)):
  """torch's MultiStepLR: `lr`, x0.1 at each of `fractions` of `total` units.

  Returns an optax schedule over optimiser steps (`unit` steps per unit,
  e.g. batches per epoch). A milestone that falls on 0 is dropped.
  """
  milestones = [int(total * f) * unit for f in fractions]
  milestones = jnp.asarray([m for m in milestones if m > 0] or [2 ** 30])

  def schedule(count):
    return lr * 0.1 ** jnp.sum(count >= milestones)
  return schedule


def sgd(learning_rate, weight_decay: float):
  """Weight decay added to the gradient (as torch's SGD), then SGD with
  Nesterov momentum 0.9."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=0.9, nesterov=True))


def cross_entropy(logits, labels, weights=None):
  """Mean (or `weights`-weighted mean) softmax cross-entropy."""
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
  if weights is None:
    return jnp.mean(nll)
  return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1)


def u8_batch(x_u8, idx, dtype):
  """The images `x_u8[idx]` as `dtype` in [0, 1] (inside a jitted step)."""
  return x_u8[idx].astype(dtype) / jnp.asarray(255, dtype)


def apply_gradients(tx, grads, opt_state, params):
  """One optax update: `(new_params, new_opt_state)`."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def epoch_order(key, n: int, steps: int, batch_size: int):
  """Batch indices `(steps, batch_size)` of an epoch (a permutation of
  `range(n)`, the last partial batch dropped) and a key per step."""
  k_perm, k_steps = jax.random.split(key)
  perm = jax.random.permutation(k_perm, n)[:steps * batch_size]
  return perm.reshape(steps, batch_size), jax.random.split(k_steps, steps)


def train_epochs(step: Callable, params, opt_state, *, key, epochs: int,
                 num_examples: int, batch_size: int,
                 on_epoch: Optional[Callable[[int, float], None]] = None):
  """Runs `epochs` epochs of `step`; the trained params (NumPy leaves).

  Epoch e draws its order from `fold_in(key, e)` (`epoch_order`). Steps run
  from a Python loop: on XLA:CPU a `lax.scan` over them runs convolutions
  ~15x slower.

  Args:
    step: `step(params, opt_state, idx, key) -> (params, opt_state, loss)`,
      `idx` the batch's indices `(batch_size,)`.
    params: the initial params (whatever `step` updates).
    opt_state: the optimiser's initial state.
    key: PRNG key of the batch order and of the steps' keys.
    epochs: epochs to run.
    num_examples: training set size n; `n // batch_size` steps an epoch.
    batch_size: examples per step.
    on_epoch: called as `on_epoch(epoch, mean_loss)` after each epoch.
  """
  steps = num_examples // batch_size
  for e in range(epochs):
    order, keys = epoch_order(jax.random.fold_in(key, e), num_examples,
                              steps, batch_size)
    losses = []
    for i in range(steps):
      params, opt_state, loss = step(params, opt_state, order[i], keys[i])
      losses.append(loss)
    if on_epoch is not None:
      on_epoch(e, float(jnp.mean(jnp.stack(losses))))
  return jax.tree_util.tree_map(np.asarray, params)


# ---------------------------------------------------------------------------
# Ensembles.


def stack(trees):
  """Stacks pytrees along a new leading axis (NumPy; the ensemble)."""
  return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def index(tree, i: int):
  """Member `i` of a stacked pytree."""
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def cast(tree, dtype):
  """Floating leaves as jnp arrays of `dtype` (the others as jnp arrays)."""
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(x, dtype)
      if np.issubdtype(np.result_type(x), np.floating) else jnp.asarray(x),
      tree)

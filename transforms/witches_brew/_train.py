"""Surrogate training, after forest's `victims/training.py` ("conservative").

SGD with Nesterov momentum 0.9, weight decay (added to the gradient, as
torch's SGD), batch `surrogate_batch_size`, learning rate x0.1 at 3/8, 5/8
and 7/8 of `surrogate_epochs` (forest: epochs 15, 25, 35 of 40), random crop
(zero padding of `size / 8` px) and, with `flip`, horizontal flips. One
jitted function makes a step (the batch is gathered inside it); each epoch
takes a fresh permutation and drops the last partial batch.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.common import pgd
from ntga_tfds.transforms.common import training
from ntga_tfds.transforms.witches_brew import _common
from ntga_tfds.transforms.witches_brew import _models
from ntga_tfds.transforms.witches_brew.config import WitchesBrewConfig


def sgd(config: WitchesBrewConfig, learning_rate):
  """forest's surrogate optimiser: weight decay, then Nesterov SGD."""
  return training.sgd(learning_rate, config.weight_decay)


def _make_step(module, tx, *, augment: bool, flip: bool, dtype):
  """A jitted step `(variables, opt_state, x_u8, y, idx, mean, std, key)`.

  The batch `x_u8[idx]` is gathered inside. Steps run from a Python loop:
  on XLA:CPU a `lax.scan` over them runs convolutions ~15x slower.
  """

  def loss_fn(params, batch_stats, xb, yb, mean, std):
    variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
    logits, new_stats = _common.apply(module, variables, xb, mean, std,
                                      train=True)
    return training.cross_entropy(logits, yb), new_stats

  @jax.jit
  def step(variables, opt_state, x_u8, y, idx, mean, std, key):
    xb = training.u8_batch(x_u8, idx, dtype)
    if augment:
      xb = _common.augment(key, xb, flip=flip, integer=True)
    params = variables["params"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, variables.get("batch_stats"), xb, y[idx], mean, std)
    params, opt_state = training.apply_gradients(tx, grads, opt_state,
                                                 params)
    out = {"params": params}
    if new_stats is not None:
      out["batch_stats"] = new_stats
    return out, opt_state, loss

  return step


@functools.lru_cache(maxsize=16)
def _cached_step(config: WitchesBrewConfig, num_classes: int,
                 steps_per_epoch: int):
  """The module, optimiser and jitted step of a config (compiled once)."""
  module = _models.make(config.surrogate, num_classes, config.width)
  tx = sgd(config, training.multistep_schedule(
      config.learning_rate, config.surrogate_epochs, steps_per_epoch))
  step = _make_step(module, tx, augment=config.augment, flip=config.flip,
                    dtype=training.float_dtype(config.dtype))
  return module, tx, step


def train_one(x_u8: np.ndarray, y: np.ndarray, *, key, config, num_classes,
              mean, std, on_epoch=None):
  """Trains one surrogate; its flax variables (NumPy leaves)."""
  dtype = training.float_dtype(config.dtype)
  n = x_u8.shape[0]
  batch_size = min(config.surrogate_batch_size, n)
  module, tx, step = _cached_step(config, num_classes, n // batch_size)
  k_init, k_data = jax.random.split(key)
  variables = module.init(k_init, jnp.zeros((1,) + x_u8.shape[1:], dtype),
                          train=False)
  variables = training.cast(dict(variables), dtype)
  x_dev, y_dev = jnp.asarray(x_u8), jnp.asarray(y)
  mean_d, std_d = jnp.asarray(mean, dtype), jnp.asarray(std, dtype)
  return training.train_epochs(
      lambda v, opt_state, idx, k: step(v, opt_state, x_dev, y_dev, idx,
                                        mean_d, std_d, k),
      variables, tx.init(variables["params"]), key=k_data,
      epochs=config.surrogate_epochs, num_examples=n, batch_size=batch_size,
      on_epoch=on_epoch)


def train_surrogate(x_train, y_train, *, key, config: WitchesBrewConfig,
                    num_classes: Optional[int] = None,
                    on_epoch: Optional[Callable[[int, float], None]] = None
                    ) -> Dict[str, np.ndarray]:
  """Trains `config.ensemble` surrogates on the clean training set.

  Args:
    x_train: `(n, H, W, C)` uint8 images, or floats in [0, 1] (snapped to
      the 8-bit grid).
    y_train: `(n,)` integer labels.
    key: JAX PRNG key; member i of the ensemble trains with
      `jax.random.split(key, ensemble)[i]` (initialisation, order, crops).
    config: `WitchesBrewConfig` (surrogate, surrogate_*, weight_decay,
      augment, flip, ensemble, dtype).
    num_classes: default 1 + the largest label (at least 2).
    on_epoch: called as `on_epoch(epoch, mean_loss)` after each epoch (for
      each member in turn).

  Returns:
    A flat dict of NumPy arrays with stable string keys ("meta/...",
    "norm/mean", "norm/std", "variables/params/...",
    "variables/batch_stats/..."; variables have a leading ensemble axis):
    `np.savez(path, **shared)` and `dict(np.load(path))` restore it exactly.
  """
  config = checks.instance(config, WitchesBrewConfig)
  key = checks.key(key)
  x, y, num_classes = checks.labelled_nhwc(x_train, y_train, num_classes)
  _common.check_image_size("x_train", x, config.surrogate)
  _, x_u8 = pgd.snap(x)
  mean, std = training.channel_stats(x_u8)
  with training.precision(config.dtype):
    members = [
        train_one(x_u8, y, key=k, config=config, num_classes=num_classes,
                  mean=mean, std=std, on_epoch=on_epoch)
        for k in jax.random.split(key, config.ensemble)]
  return _common.to_flat(_common.Surrogates(
      surrogate=config.surrogate, width=config.width,
      num_classes=num_classes,
      image_shape=tuple(x.shape[1:]), mean=mean, std=std,
      variables=training.stack(members)))


def predict(x, *, shared, config: WitchesBrewConfig,
            batch_size: int = 1000) -> np.ndarray:
  """Class probabilities `(n, num_classes)`, averaged over the ensemble.

  Args:
    x: `(n, H, W, C)` uint8 images or floats in [0, 1].
    shared: the dict returned by `train_surrogate`.
    config: the config it was trained with (surrogate, dtype).
    batch_size: images per forward pass.
  """
  config = checks.instance(config, WitchesBrewConfig)
  x = checks.to_unit(checks.nhwc("x", x))
  s = _common.from_flat(shared, config)
  if tuple(x.shape[1:]) != s.image_shape:
    raise ValueError(f"x images have shape {x.shape[1:]} but the surrogates "
                     f"were trained on {s.image_shape}.")
  module = s.module()
  with training.precision(config.dtype):
    dtype = training.float_dtype(config.dtype)
    variables = training.cast(s.variables, dtype)
    mean, std = jnp.asarray(s.mean, dtype), jnp.asarray(s.std, dtype)

    @jax.jit
    def probs(variables, xb):
      return _common.ensemble_mean(
          lambda v: jax.nn.softmax(_common.apply(module, v, xb, mean, std)),
          variables)

    out = [np.asarray(probs(variables,
                            jnp.asarray(x[i:i + batch_size], dtype)))
           for i in range(0, x.shape[0], batch_size)]
  return np.concatenate(out).astype(np.float32)

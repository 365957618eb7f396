"""Substitute training, after the reference's `train_cifar10_models.py`.

Each network of the ensemble (`substitutes x dropout`) trains on the clean
set with its own dropout rate active: cross-entropy, SGD with Nesterov
momentum 0.9, weight decay (added to the gradient, as torch's SGD), batch
`substitute_batch_size`, learning rate x0.1 at 1/2 and 3/4 of
`substitute_epochs` (the reference: epochs 150 and 225 of 300). No data
augmentation (the reference crops and flips; its 300 epochs need it, a few
epochs on a CPU do not). One jitted function per architecture makes a step
for every rate (the rate is an argument); each epoch takes a fresh
permutation and drops the last partial batch.
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
from ntga_tfds.transforms.convex_polytope import _common
from ntga_tfds.transforms.convex_polytope import _models
from ntga_tfds.transforms.convex_polytope.config import ConvexPolytopeConfig


def _sgd(lr: float, epochs: int, steps_per_epoch: int, weight_decay: float):
  """The reference's optimiser: weight decay, then SGD (Nesterov here), the
  learning rate x0.1 at 1/2 and 3/4 of the epochs."""
  return training.sgd(
      training.multistep_schedule(lr, epochs, steps_per_epoch,
                                  fractions=(1 / 2, 3 / 4)),
      weight_decay)


@functools.lru_cache(maxsize=16)
def _make_step(arch: str, num_classes: int, lr: float, epochs: int,
               steps_per_epoch: int, weight_decay: float, dtype_name: str):
  """`(tx, step)`: the optimiser and a jitted step `(params, opt_state, x_u8,
  y, idx, mean, std, rate, key)` (cached: the networks of every rate, and
  repeated calls, share one compilation).

  The batch `x_u8[idx]` is gathered inside. Steps run from a Python loop
  (on XLA:CPU a `lax.scan` over convolutions runs them much slower).
  """
  module = _models.make(arch, num_classes)
  dtype = jnp.dtype(dtype_name)
  tx = _sgd(lr, epochs, steps_per_epoch, weight_decay)

  def loss_fn(params, xb, yb, rate, key):
    logits, _ = module.apply({"params": params}, xb, rate, False,
                             rngs={"dropout": key})
    return training.cross_entropy(logits, yb)

  @jax.jit
  def step(params, opt_state, x_u8, y, idx, mean, std, rate, key):
    xb = _models.normalize(training.u8_batch(x_u8, idx, dtype), mean, std)
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, y[idx], rate, key)
    params, opt_state = training.apply_gradients(tx, grads, opt_state,
                                                 params)
    return params, opt_state, loss

  return tx, step


@functools.lru_cache(maxsize=16)
def _init_fn(arch: str, num_classes: int):
  """A jitted `(key, x) -> params` (eager flax init is slow on a CPU)."""
  module = _models.make(arch, num_classes)
  return jax.jit(lambda key, x: module.init(key, x)["params"])


def _train_one(step, tx, params, x_dev, y_dev, *, key, rate, config,
               mean, std, on_epoch):
  n = x_dev.shape[0]
  rate = jnp.asarray(rate, mean.dtype)
  return training.train_epochs(
      lambda p, opt_state, idx, k: step(p, opt_state, x_dev, y_dev, idx,
                                        mean, std, rate, k),
      params, tx.init(params), key=key, epochs=config.substitute_epochs,
      num_examples=n, batch_size=min(config.substitute_batch_size, n),
      on_epoch=on_epoch)


def train_substitutes(x_train, y_train, *, key, config: ConvexPolytopeConfig,
                      num_classes: Optional[int] = None,
                      on_epoch: Optional[Callable[[int, float], None]] = None
                      ) -> Dict[str, np.ndarray]:
  """Trains the substitute ensemble (`substitutes x dropout`) on clean data.

  Args:
    x_train: `(n, H, W, C)` uint8 images, or floats in [0, 1] (snapped to
      the 8-bit grid).
    y_train: `(n,)` integer labels.
    key: JAX PRNG key; network (a, r) (architecture `substitutes[a]`, rate
      `dropout[r]`) trains with `jax.random.split(key, ensemble_size)[a * R
      + r]` (initialisation, batch order, dropout masks).
    config: `ConvexPolytopeConfig` (substitutes, dropout, substitute_*,
      weight_decay, dtype).
    num_classes: default 1 + the largest label (at least 2).
    on_epoch: called as `on_epoch(epoch, mean_loss)` after each epoch of
      each network, network by network in the order above.

  Returns:
    A flat dict of NumPy arrays with stable string keys ("meta/...",
    "norm/mean", "norm/std", "params/<architecture>/<layer>/<name>", the
    params with a leading axis of `len(dropout)`): `np.savez(path,
    **shared)` and `dict(np.load(path))` restore it exactly.
  """
  config = checks.instance(config, ConvexPolytopeConfig)
  key = checks.key(key)
  x, y, num_classes = checks.labelled_nhwc(x_train, y_train, num_classes)
  _common.check_image_size("x_train", x, config.substitutes)
  checks.callable_or_none(on_epoch, "on_epoch")
  _, x_u8 = pgd.snap(x)
  mean, std = training.channel_stats(x_u8)
  num_rates = len(config.dropout)
  keys = jax.random.split(key, config.ensemble_size)
  params = {}
  with training.precision(config.dtype):
    dtype = training.float_dtype(config.dtype)
    x_dev, y_dev = jnp.asarray(x_u8), jnp.asarray(y)
    mean_d, std_d = jnp.asarray(mean, dtype), jnp.asarray(std, dtype)
    n = x.shape[0]
    steps = n // min(config.substitute_batch_size, n)
    for a, arch in enumerate(config.substitutes):
      tx, step = _make_step(arch, num_classes, config.substitute_lr,
                            config.substitute_epochs, steps,
                            config.weight_decay, config.dtype)
      members = []
      for r, rate in enumerate(config.dropout):
        k_init, k_data = jax.random.split(keys[a * num_rates + r])
        init = _init_fn(arch, num_classes)(
            k_init, jnp.zeros((1,) + x.shape[1:], dtype))
        members.append(_train_one(
            step, tx, training.cast(init, dtype), x_dev, y_dev,
            key=k_data, rate=rate, config=config, mean=mean_d, std=std_d,
            on_epoch=on_epoch))
      params[arch] = training.stack(members)
  return _common.to_flat(_common.Substitutes(
      substitutes=config.substitutes, dropout=config.dropout,
      num_classes=num_classes, image_shape=tuple(x.shape[1:]), mean=mean,
      std=std, params=params))


def predict(x, *, shared, config: ConvexPolytopeConfig,
            batch_size: int = 1000) -> np.ndarray:
  """Class probabilities `(n, num_classes)`, averaged over the ensemble.

  Dropout is off (deterministic networks).

  Args:
    x: `(n, H, W, C)` uint8 images or floats in [0, 1].
    shared: the dict returned by `train_substitutes`.
    config: the config it was trained with (substitutes, dropout, dtype).
    batch_size: images per forward pass.
  """
  config = checks.instance(config, ConvexPolytopeConfig)
  x = checks.to_unit(checks.nhwc("x", x))
  s = _common.from_flat(shared, config)
  if tuple(x.shape[1:]) != s.image_shape:
    raise ValueError(f"x images have shape {x.shape[1:]} but the substitutes "
                     f"were trained on {s.image_shape}.")
  checks.positive_int(batch_size, "batch_size")
  with training.precision(config.dtype):
    dtype = training.float_dtype(config.dtype)
    params = training.cast(s.params, dtype)
    mean, std = jnp.asarray(s.mean, dtype), jnp.asarray(s.std, dtype)

    @jax.jit
    def probs(params, xb):
      xn = _models.normalize(xb, mean, std)
      total = 0.0
      for arch in s.substitutes:
        module = s.module(arch)
        logits = jax.vmap(lambda p: module.apply({"params": p}, xn)[0])(
            params[arch])
        total = total + jnp.sum(jax.nn.softmax(logits), axis=0)
      return total / (len(s.substitutes) * len(s.dropout))

    out = [np.asarray(probs(params, jnp.asarray(x[i:i + batch_size], dtype)))
           for i in range(0, x.shape[0], batch_size)]
  return np.concatenate(out).astype(np.float32)

"""Validation losses the attacker maximises, summed with per-example weights.

Weights let a caller pad a validation chunk to a fixed shape (weight 0) so that
one compiled step serves every chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ntga_tfds.transforms.common import checks

LOSSES = checks.LOSSES


def cross_entropy(fx, labels, weights):
  """sum_i w_i * -log softmax(fx_i)[labels_i]. fx: (m, c), labels: (m,)."""
  logp = jax.nn.log_softmax(fx, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  return jnp.sum(weights * nll)


def mse(fx, labels, weights):
  """sum_i w_i * 0.5 * mean_c (fx_ic - onehot_ic)^2."""
  onehot = jax.nn.one_hot(labels, fx.shape[-1], dtype=fx.dtype)
  return jnp.sum(weights * 0.5 * jnp.mean((fx - onehot) ** 2, axis=-1))


def get(name: str):
  return {"cross_entropy": cross_entropy, "mse": mse}[name]

"""The bilevel problem and its hypergradient through T training steps.

Inner problem (the victim's training, full batch): from fixed parameters
`w_0` (`_models.init`, from the key) and `v_0 = 0`, T steps of heavy-ball
gradient descent

  g_t = grad_w L_train(w_t, x_p),   v_{t+1} = mu v_t - lr g_t,
  w_{t+1} = w_t + v_{t+1},

on L_train(w, x_p) = sum_i a_i CE(f(w, x_i), y_i) / sum_i a_i + wd / 2
|w|^2 over the training points (weights `a_i`: 1, or 0 for the padding
slots of `add_poisons`) and the poisons `x_p` (weight 1, labels fixed).

Outer objective, maximised over the poison pixels: A(x_p) = s * mean_j
CE(f(w_T, xv_j), yv'_j) on the validation set, with s = +1, yv' = yv for the
generic attack and s = -1, yv' = the labels relabelled by `target_map` for
the specific one (`outer_labels`).

Hypergradient dA/dx_p through the whole run, three ways:

* `unrolled_value_and_grad`: plain reverse-mode autodiff of a `lax.scan`;
  the scan saves every step's inputs: T trajectory states (the reference).
* `checkpoint_value_and_grad`: the same derivative (up to floating-point
  reassociation: the recomputed steps are the same operations), with the T
  steps split into segments of k steps, each under `jax.checkpoint` inside
  an outer `lax.scan`. The forward pass saves only the ceil(T / k) segment
  inputs; the backward pass of a segment re-runs its k steps and stores
  them. Peak: ceil(T / k) + k states, 2 ceil(sqrt(T)) at most for the
  default k = ceil(sqrt(T)), i.e. O(sqrt(T)) parameter states, for one
  extra forward pass of compute (about 4/3 of the unrolled cost:
  forward, re-forward, backward).
* `reverse_value_and_grad`: the paper's back-gradient (Domke 2012,
  Maclaurin et al. 2015, the authors' `reverseLR2.m` / `reverseMLP2.m`):
  run forward to (w_T, v_T) keeping nothing, then walk back, recovering
  each state from the next one and accumulating the adjoints with one
  vector-Jacobian product of the inner gradient per step (exact
  Hessian-vector products, where the authors use finite differences):

    w_t = w_{t+1} - v_{t+1},
    v_t = (v_{t+1} + lr g(w_t)) / mu                      (mu > 0), or
    v_t = -lr g(w_t - v_t), solved by `_FIXED_POINT_ITERS` fixed-point
          iterations from v_{t+1}                            (mu = 0),
    a = dv_{t+1} + dw_{t+1},
    dw_t = dw_{t+1} - lr H_ww a,   dv_t = mu a,   dx_p -= lr H_xw a.

  Memory O(1) states. NOT exact in floating point: Maclaurin et al. make
  the reversal exact with fixed-point arithmetic and an information
  buffer for the bits that `* mu` destroys; we do not. Each reversed step
  adds a rounding error, which the reversal then amplifies (by up to 1/mu
  per step for mu > 0; the fixed-point solve for mu = 0 contracts by
  lr * L per iteration, L the inner loss' curvature, and leaves an error
  of order (lr L)^K lr |g| per step). Good for float64 and moderate T; for
  float32 or large T prefer "checkpoint", which is exact.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ntga_tfds.transforms.back_gradient import _models
from ntga_tfds.transforms.back_gradient.config import BackGradientConfig

_FIXED_POINT_ITERS = 3
_tmap = jax.tree_util.tree_map


class Problem(NamedTuple):
  """The data of one bilevel problem (a pytree of arrays).

  Attributes:
    x_train: fixed training images `(n, H, W, C)` in [0, 1] (the clean set,
      poisons already added, padding slots).
    y_train: their labels `(n,)` int32.
    a_train: their weights `(n,)` (1, or 0 for a padding slot).
    y_poison: labels `(p,)` of the optimised poisons.
    x_val: validation images `(m, H, W, C)`.
    y_val: validation labels used by the outer objective `(m,)`
      (`outer_labels`).
  """
  x_train: jax.Array
  y_train: jax.Array
  a_train: jax.Array
  y_poison: jax.Array
  x_val: jax.Array
  y_val: jax.Array


def outer_labels(y_val, config: BackGradientConfig):
  """The validation labels of the outer objective: `y_val`, with each
  source class of `target_map` replaced by its target (specific attack)."""
  y = jnp.asarray(y_val)
  out = y
  for source, target in config.target_map:
    out = jnp.where(y == source, target, out)
  return out


def _cross_entropy(logits, labels):
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def inner_loss(params, x_poison, prob: Problem, weight_decay: float):
  """L_train(w, x_p): weighted mean cross-entropy plus L2 (a scalar)."""
  x = jnp.concatenate([prob.x_train, x_poison.astype(prob.x_train.dtype)])
  y = jnp.concatenate([prob.y_train, prob.y_poison])
  a = jnp.concatenate([prob.a_train,
                       jnp.ones(x_poison.shape[0], prob.a_train.dtype)])
  ce = _cross_entropy(_models.apply(params, x), y)
  loss = jnp.sum(a * ce) / jnp.sum(a)
  if weight_decay:
    loss = loss + 0.5 * weight_decay * sum(
        jnp.sum(p ** 2) for p in jax.tree_util.tree_leaves(params))
  return loss


def outer_objective(params, prob: Problem, config: BackGradientConfig):
  """A(w): +- mean validation cross-entropy (see the module docstring)."""
  ce = jnp.mean(_cross_entropy(_models.apply(params, prob.x_val),
                               prob.y_val))
  return -ce if config.attack == "specific" else ce


def _grad_fn(prob: Problem, config: BackGradientConfig):
  return jax.grad(functools.partial(inner_loss, prob=prob,
                                    weight_decay=config.weight_decay))


def _step_fn(prob: Problem, config: BackGradientConfig):
  """One training step `((w, v), x_p) -> (w', v')`."""
  grad = _grad_fn(prob, config)
  lr, mu = config.inner_lr, config.momentum

  def step(state, x_poison):
    w, v = state
    g = grad(w, x_poison)
    v = _tmap(lambda vi, gi: mu * vi - lr * gi, v, g)
    return _tmap(jnp.add, w, v), v
  return step


def _scan(step, state, x_poison, length: int):
  return jax.lax.scan(lambda s, _: (step(s, x_poison), None), state, None,
                      length=length)[0]


def _start(params0):
  return params0, _tmap(jnp.zeros_like, params0)


def train(params0, x_poison, prob: Problem, config: BackGradientConfig,
          steps: int = None):
  """w_T: the parameters after `steps` (default T) training steps."""
  steps = config.inner_steps if steps is None else steps
  return _scan(_step_fn(prob, config), _start(params0), x_poison, steps)[0]


def objective(x_poison, params0, prob: Problem, config: BackGradientConfig):
  """A(x_p) after T steps (forward only)."""
  return outer_objective(train(params0, x_poison, prob, config), prob,
                         config)


def _checkpointed_train(params0, x_poison, prob, config):
  step = _step_fn(prob, config)
  t, k = config.inner_steps, config.segment_length
  num_segments, rest = divmod(t, k)

  def segment(length):
    return jax.checkpoint(lambda s, x: _scan(step, s, x, length),
                          prevent_cse=False)

  state = _start(params0)
  full = segment(k)
  state = jax.lax.scan(lambda s, _: (full(s, x_poison), None), state, None,
                       length=num_segments)[0]
  if rest:
    state = segment(rest)(state, x_poison)
  return state[0]


def _value_and_grad(train_fn, x_poison, params0, prob, config):
  def f(x):
    return outer_objective(train_fn(params0, x, prob, config), prob, config)
  return jax.value_and_grad(f)(x_poison)


@functools.partial(jax.jit, static_argnames="config")
def unrolled_value_and_grad(x_poison, params0, prob: Problem, *,
                            config: BackGradientConfig):
  """(A(x_p), dA/dx_p) by plain autodiff of the T-step scan (O(T) memory)."""
  return _value_and_grad(train, x_poison, params0, prob, config)


@functools.partial(jax.jit, static_argnames="config")
def checkpoint_value_and_grad(x_poison, params0, prob: Problem, *,
                              config: BackGradientConfig):
  """(A(x_p), dA/dx_p) with checkpointed segments (O(sqrt(T)) memory)."""
  return _value_and_grad(_checkpointed_train, x_poison, params0, prob,
                         config)


@functools.partial(jax.jit, static_argnames="config")
def reverse_value_and_grad(x_poison, params0, prob: Problem, *,
                           config: BackGradientConfig):
  """(A(x_p), dA/dx_p) by reversing the trajectory (O(1) states)."""
  step = _step_fn(prob, config)
  grad = _grad_fn(prob, config)
  lr, mu = config.inner_lr, config.momentum
  w_t, v_t = _scan(step, _start(params0), x_poison, config.inner_steps)
  value, dw = jax.value_and_grad(outer_objective)(w_t, prob, config)

  def back(carry, _):
    w, v, dw, dv, dx = carry
    w = _tmap(jnp.subtract, w, v)  # w_t = w_{t+1} - v_{t+1}
    g, vjp = jax.vjp(grad, w, x_poison)
    if mu > 0:
      v = _tmap(lambda vi, gi: (vi + lr * gi) / mu, v, g)
    else:
      for _ in range(_FIXED_POINT_ITERS):
        gp = grad(_tmap(jnp.subtract, w, v), x_poison)
        v = _tmap(lambda gi: -lr * gi, gp)
    a = _tmap(jnp.add, dv, dw)
    hw, hx = vjp(a)
    dw = _tmap(lambda di, hi: di - lr * hi, dw, hw)
    dv = _tmap(lambda ai: mu * ai, a)
    return (w, v, dw, dv, dx - lr * hx), None

  carry = (w_t, v_t, dw, _tmap(jnp.zeros_like, dw), jnp.zeros_like(x_poison))
  carry = jax.lax.scan(back, carry, None, length=config.inner_steps)[0]
  return value, carry[-1]


def value_and_grad(x_poison, params0, prob: Problem, *,
                   config: BackGradientConfig):
  """(A(x_p), dA/dx_p) by `config.method`."""
  fn = (reverse_value_and_grad if config.method == "reverse"
        else checkpoint_value_and_grad)
  return fn(x_poison, params0, prob, config=config)


@functools.partial(jax.jit, static_argnames="config")
def outer_step(x_poison, params0, prob: Problem, *,
               config: BackGradientConfig):
  """One normalised-gradient ascent step on the poisons.

  Returns:
    (A(x_p) before the step, x_p' = clip(x_p + outer_lr g / |g|, 0, 1)),
    with g = dA/dx_p over all the poisons' pixels (unchanged if g = 0).
  """
  value, g = value_and_grad(x_poison, params0, prob, config=config)
  norm = jnp.sqrt(jnp.sum(g ** 2))
  direction = jnp.where(norm > 0, g / jnp.where(norm > 0, norm, 1), 0)
  return value, jnp.clip(x_poison + config.outer_lr * direction, 0, 1)


@functools.partial(jax.jit, static_argnames=("config", "steps"))
def train_jit(params0, x_poison, prob: Problem, *,
              config: BackGradientConfig, steps: int):
  return train(params0, x_poison, prob, config, steps)


objective_jit = jax.jit(objective, static_argnames="config")

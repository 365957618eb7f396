"""The public functions: hypergradients, greedy poisoning, inner training.

Poisons are added one at a time, as in the paper (Algorithm 1 and the
authors' `testAttack*.m`): point j starts from a keyed random validation
point with its label flipped (`config.label_policy`), then takes
`outer_steps` normalised-gradient ascent steps of the outer objective,
the inner model being trained from scratch (fixed initialisation from
`key`) on the training set plus the poisons already added; its pixels are
then quantised to uint8 and it joins the training set of the next points.

The training set is padded to its final size with zero-weight slots, so
that one compiled step serves every point of a run.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Tuple

import jax
from jax.experimental import enable_x64
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms.back_gradient import _inner
from ntga_tfds.transforms.back_gradient import _models
from ntga_tfds.transforms.back_gradient.config import BackGradientConfig
from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.common import training

# ---------------------------------------------------------------------------
# Checks and conversions.


def _nhwc(name: str, x, model: str) -> np.ndarray:
  x = checks.nhwc(name, x)
  checks.image_size(name, x, _models.min_image_size(model),
                    f"the {model!r} model")
  return x


def _float(x: np.ndarray, config) -> jax.Array:
  """Checked images as `config.dtype` in [0, 1] (uint8 / 255)."""
  dtype = training.float_dtype(config.dtype)
  if x.dtype == np.uint8:
    return jnp.asarray(x.astype(np.float64) / 255, dtype)
  return jnp.asarray(x, dtype)


def _quantize(x) -> np.ndarray:
  return np.rint(np.clip(np.asarray(x, np.float64), 0, 1) * 255).astype(
      np.uint8)


def _check_classes(config, num_classes):
  for source, target in config.target_map:
    if max(source, target) >= num_classes:
      raise ValueError(
          f"target_map pair {(source, target)} names a class >= "
          f"num_classes={num_classes}.")


def _checked(config, key, x_train, y_train, x_val, y_val, num_classes,
             extra=()):
  """Common checks; returns (config, key, x_train, y_train, x_val, y_val,
  num_classes, checked extras [(x, y), ...])."""
  config = checks.instance(config, BackGradientConfig)
  key = checks.key(key)
  x_train = _nhwc("x_train", x_train, config.model)
  x_val = _nhwc("x_val", x_val, config.model)
  checks.same_trailing_shape("x_val", x_val, "x_train", x_train)
  extra_x = []
  for x_name, x, _, _ in extra:
    if x is not None:
      x = _nhwc(x_name, x, config.model)
      checks.same_trailing_shape(x_name, x, "x_train", x_train)
    extra_x.append(x)
  num_classes = checks.num_classes(
      num_classes, y_train, y_val,
      *[y for (_, x, _, y) in extra if x is not None])
  _check_classes(config, num_classes)
  kw = dict(num_classes=num_classes)
  y_train = checks.labels("y_train", y_train, num_examples=x_train.shape[0],
                          images_name="x_train", **kw)
  y_val = checks.labels("y_val", y_val, num_examples=x_val.shape[0],
                        images_name="x_val", **kw)
  out = []
  for (x_name, _, y_name, y), x in zip(extra, extra_x):
    if x is None:
      if y is not None and np.asarray(y).size:
        raise ValueError(f"{y_name} is given but {x_name} is not.")
      out.append((None, None))
      continue
    out.append((x, checks.labels(y_name, y, num_examples=x.shape[0],
                                 images_name=x_name, **kw)))
  return config, key, x_train, y_train, x_val, y_val, num_classes, out


def _problem(config, x_train, y_train, a_train, y_poison, x_val, y_val):
  return _inner.Problem(
      x_train=_float(x_train, config) if isinstance(x_train, np.ndarray)
      else x_train,
      y_train=jnp.asarray(y_train, jnp.int32),
      a_train=jnp.asarray(a_train, training.float_dtype(config.dtype)),
      y_poison=jnp.asarray(y_poison, jnp.int32),
      x_val=_float(x_val, config),
      y_val=_inner.outer_labels(jnp.asarray(y_val, jnp.int32), config))


def _init(config, key, image_shape, num_classes):
  return _models.init(config.model, key, image_shape, num_classes,
                      training.float_dtype(config.dtype))


# ---------------------------------------------------------------------------
# Hypergradients.


def _hypergradient(fn, x_poison, y_poison, x_train, y_train, x_val, y_val,
                   key, config, num_classes):
  config, key, x_train, y_train, x_val, y_val, num_classes, extra = _checked(
      config, key, x_train, y_train, x_val, y_val, num_classes,
      extra=[("x_poison", x_poison, "y_poison", y_poison)])
  (x_poison, y_poison), = extra
  if x_poison is None:
    raise ValueError("x_poison must be given.")
  with training.precision(config.dtype):
    prob = _problem(config, x_train, y_train, np.ones(len(y_train)),
                    y_poison, x_val, y_val)
    params0 = _init(config, key, x_train.shape[1:], num_classes)
    value, grad = fn(_float(x_poison, config), params0, prob, config=config)
    return float(value), np.asarray(grad)


def hypergradient(x_poison, y_poison, *, x_train, y_train, x_val, y_val, key,
                  config: BackGradientConfig,
                  num_classes: Optional[int] = None
                  ) -> Tuple[float, np.ndarray]:
  """The outer objective and its gradient w.r.t. the poisons' pixels.

  The inner model starts from `_models.init(config.model, key, ...)` and is
  trained for `config.inner_steps` full-batch steps on `x_train` plus the
  poisons; the objective is measured on the validation set (see `_inner`).
  The derivative goes back through the whole run by `config.method`:
  "checkpoint" (exact; ceil(T / k) + k stored states, O(sqrt(T)) by
  default) or "reverse" (the paper's back-gradient; O(1) states,
  approximate). `stored_states(config)` gives the count.

  Args:
    x_poison: poisons `(p, H, W, C)`, uint8 or float in [0, 1].
    y_poison: their labels `(p,)`.
    x_train: clean training images `(n, H, W, C)`, uint8 or float [0, 1].
    y_train: labels `(n,)`.
    x_val: validation images `(m, H, W, C)`.
    y_val: labels `(m,)`.
    key: JAX PRNG key of the inner model's initialisation.
    config: `BackGradientConfig`.
    num_classes: default 1 + the largest label seen (at least 2).

  Returns:
    (value, gradient): the outer objective A (float) and dA/dx_poison,
    `(p, H, W, C)` in `config.dtype`, per unit of pixel in [0, 1].
  """
  config = checks.instance(config, BackGradientConfig)
  fn = (_inner.reverse_value_and_grad if config.method == "reverse"
        else _inner.checkpoint_value_and_grad)
  return _hypergradient(fn, x_poison, y_poison, x_train, y_train, x_val,
                        y_val, key, config, num_classes)


def unrolled_hypergradient(x_poison, y_poison, *, x_train, y_train, x_val,
                           y_val, key, config: BackGradientConfig,
                           num_classes: Optional[int] = None
                           ) -> Tuple[float, np.ndarray]:
  """`hypergradient` by plain unrolled autodiff (T stored states).

  The reference the checkpointed and reversed versions are tested
  against; same arguments and result as `hypergradient` (`config.method`
  and `checkpoint_every` are ignored).
  """
  return _hypergradient(_inner.unrolled_value_and_grad, x_poison, y_poison,
                        x_train, y_train, x_val, y_val, key, config,
                        num_classes)


def objective(x_poison, y_poison, *, x_train, y_train, x_val, y_val, key,
              config: BackGradientConfig,
              num_classes: Optional[int] = None) -> float:
  """The outer objective A alone (forward only); as `hypergradient`.

  `x_poison` may have 0 rows (`np.zeros((0, H, W, C))`): the clean value.
  """
  clean = x_poison is not None and np.asarray(x_poison).shape[:1] == (0,)
  if clean:
    shape = np.asarray(x_train).shape[1:]
    x_poison, y_poison = None, None
  config, key, x_train, y_train, x_val, y_val, num_classes, extra = _checked(
      config, key, x_train, y_train, x_val, y_val, num_classes,
      extra=[("x_poison", x_poison, "y_poison", y_poison)])
  (x_poison, y_poison), = extra
  if x_poison is None:
    if not clean:
      raise ValueError("x_poison must be given.")
    x_poison, y_poison = np.zeros((0,) + shape, np.float32), np.zeros(0, int)
  with training.precision(config.dtype):
    prob = _problem(config, x_train, y_train, np.ones(len(y_train)),
                    y_poison, x_val, y_val)
    params0 = _init(config, key, x_train.shape[1:], num_classes)
    return float(_inner.objective_jit(_float(x_poison, config), params0,
                                      prob, config=config))


# ---------------------------------------------------------------------------
# Greedy poisoning.


def _pick(key, index, y_val, config, num_classes):
  """(validation index, poison label) of poison number `index` (global)."""
  k_point, k_label = jax.random.split(jax.random.fold_in(key, 1 + index))
  if config.attack == "specific":
    sources = [s for s, _ in config.target_map]
    candidates = np.flatnonzero(np.isin(y_val, sources))
    if candidates.size == 0:
      raise ValueError(
          f"attack='specific': y_val has no example of a source class "
          f"{sources} of target_map, to start the poisons from.")
  else:
    candidates = np.arange(len(y_val))
  i = int(candidates[int(jax.random.randint(k_point, (), 0,
                                            candidates.size))])
  y = int(y_val[i])
  if config.attack == "specific":
    label = dict(config.target_map)[y]
  elif num_classes == 2:
    label = 1 - y
  else:
    label = (y + int(jax.random.randint(k_label, (), 1, num_classes))) % (
        num_classes)
  return i, label


def add_poisons(x_train, y_train, *, x_val, y_val, x_added, y_added,
                count: int, key, config: BackGradientConfig,
                num_classes: Optional[int] = None,
                on_step: Optional[Callable[[int, int, float], None]] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Adds `count` poison points, one at a time (the paper's greedy scheme).

  Point j (0-based within this call; `len(x_added) + j` overall) starts
  from the validation point that `fold_in(key, 1 + len(x_added) + j)`
  picks (for attack="specific", one of a source class of `target_map`),
  labelled by `config.label_policy` (see `BackGradientConfig`); it then
  takes `config.outer_steps` steps `x <- clip(x + outer_lr g / |g|, 0, 1)`,
  g the hypergradient with the inner model trained from the
  initialisation of `key` on `x_train`, `x_added` and the points 0..j-1 of
  this call. The last iterate is kept (as the authors' code), quantised
  to uint8, and joins the training set of the next points. Calling this
  repeatedly, passing the points returned so far as `x_added`, picks the
  same points as one call.

  Args:
    x_train: clean training images `(n, H, W, C)`, uint8 or float [0, 1].
    y_train: labels `(n,)`.
    x_val: validation images `(m, H, W, C)` (the attacker's objective).
    y_val: labels `(m,)`.
    x_added: poisons already added `(q, H, W, C)`, or None / 0 rows.
    y_added: their labels `(q,)`, or None.
    count: number of new points, >= 1.
    key: JAX PRNG key (inner initialisation and the points' starts).
    config: `BackGradientConfig`.
    num_classes: default 1 + the largest label seen (at least 2).
    on_step: called as `on_step(j, i, value)` before outer step i of point
      j, with the outer objective of the current point.

  Returns:
    (x_new uint8 `(count, H, W, C)`, y_new int64 `(count,)`).
  """
  checks.positive_int(count, "count")
  if x_added is not None and np.asarray(x_added).shape[:1] == (0,):
    x_added, y_added = None, None
  config, key, x_train, y_train, x_val, y_val, num_classes, extra = _checked(
      config, key, x_train, y_train, x_val, y_val, num_classes,
      extra=[("x_added", x_added, "y_added", y_added)])
  (x_added, y_added), = extra
  if x_added is None:
    x_added = np.zeros((0,) + x_train.shape[1:], np.uint8)
    y_added = np.zeros(0, np.int32)
  prior = len(x_added)
  with training.precision(config.dtype):
    dtype = training.float_dtype(config.dtype)
    x_fixed = jnp.concatenate([
        _float(x_train, config), _float(x_added, config),
        jnp.zeros((count - 1,) + x_train.shape[1:], dtype)])
    y_fixed = np.concatenate([y_train, y_added, np.zeros(count - 1, int)])
    weights = np.concatenate([np.ones(len(y_train) + prior),
                              np.zeros(count - 1)])
    params0 = _init(config, key, x_train.shape[1:], num_classes)
    x_new, y_new = [], []
    for j in range(count):
      i, label = _pick(key, prior + j, y_val, config, num_classes)
      x_p = _float(x_val[i:i + 1], config)
      if config.label_policy == "worst":
        label = _worst_label(x_p, int(y_val[i]), x_fixed, y_fixed, weights,
                             x_val, y_val, params0, config, num_classes)
      prob = _problem(config, x_fixed, y_fixed, weights, [label], x_val,
                      y_val)
      for step in range(config.outer_steps):
        value, x_p = _inner.outer_step(x_p, params0, prob, config=config)
        if on_step is not None:
          on_step(j, step, float(value))
      q = _quantize(x_p)[0]
      x_new.append(q)
      y_new.append(label)
      slot = len(y_train) + prior + j
      if j + 1 < count:
        x_fixed = x_fixed.at[slot].set(jnp.asarray(q, dtype) / 255)
        y_fixed[slot], weights[slot] = label, 1.0
  return np.stack(x_new), np.asarray(y_new, np.int64)


def _worst_label(x_p, y_point, x_fixed, y_fixed, weights, x_val, y_val,
                 params0, config, num_classes):
  """The wrong label whose poison gives the highest outer objective."""
  best, best_value = None, -np.inf
  for c in range(num_classes):
    if c == y_point:
      continue
    prob = _problem(config, x_fixed, y_fixed, weights, [c], x_val, y_val)
    value = float(_inner.objective_jit(x_p, params0, prob, config=config))
    if value > best_value:
      best, best_value = c, value
  return best


def poison(x_train, y_train, *, x_val, y_val, num_poisons: int, key,
           config: BackGradientConfig, num_classes: Optional[int] = None,
           on_step: Optional[Callable[[int, int, float], None]] = None
           ) -> Tuple[np.ndarray, np.ndarray]:
  """`num_poisons` poison points for a clean training set.

  `add_poisons` with nothing added yet; returns (x_poison uint8
  `(num_poisons, H, W, C)`, y_poison `(num_poisons,)`), to be appended to
  the training set.
  """
  return add_poisons(x_train, y_train, x_val=x_val, y_val=y_val,
                     x_added=None, y_added=None, count=num_poisons, key=key,
                     config=config, num_classes=num_classes, on_step=on_step)


# ---------------------------------------------------------------------------
# The inner models, for evaluation.


def train(x, y, *, key, config: BackGradientConfig,
          num_classes: Optional[int] = None,
          steps: Optional[int] = None) -> Dict[str, jax.Array]:
  """Trains the inner model of `config` on `(x, y)` (full batch).

  With the same `key` and data (training set plus poisons) this is the
  model the attack differentiates through.

  Args:
    x: images `(n, H, W, C)`, uint8 or float in [0, 1].
    y: labels `(n,)`.
    key: JAX PRNG key of the initialisation.
    config: `BackGradientConfig` (model, inner_lr, momentum, weight_decay,
      inner_steps, dtype).
    num_classes: default 1 + the largest label (at least 2).
    steps: training steps; default `config.inner_steps`.

  Returns:
    The parameter dict (`_models`), for `accuracy`.
  """
  config = checks.instance(config, BackGradientConfig)
  key = checks.key(key)
  if steps is not None:
    checks.positive_int(steps, "steps")
  x = _nhwc("x", x, config.model)
  num_classes = checks.num_classes(num_classes, y)
  y = checks.labels("y", y, num_examples=x.shape[0], images_name="x",
                    num_classes=num_classes)
  with training.precision(config.dtype):
    prob = _problem(config, x, y, np.ones(len(y)), np.zeros(0, int),
                    x[:1], y[:1])
    params0 = _init(config, key, x.shape[1:], num_classes)
    empty = jnp.zeros((0,) + x.shape[1:],
                      training.float_dtype(config.dtype))
    return _inner.train_jit(params0, empty, prob, config=config,
                            steps=steps or config.inner_steps)


def accuracy(params, x, y) -> float:
  """Fraction of `(x, y)` that the model `params` (from `train`) gets right.

  Args:
    params: parameter dict from `train`.
    x: images `(n, H, W, C)`, uint8 or float in [0, 1].
    y: labels `(n,)`.
  """
  _models.model_of(params)
  x = checks.images("x", x)
  y = np.asarray(y)
  if y.shape != (x.shape[0],):
    raise ValueError(
        f"y must have shape ({x.shape[0]},) to match x, got {y.shape}.")
  x64 = any(leaf.dtype == jnp.float64
            for leaf in jax.tree_util.tree_leaves(params))
  with enable_x64() if x64 else contextlib.nullcontext():
    logits = _models.apply(params, jnp.asarray(x, next(iter(
        jax.tree_util.tree_leaves(params))).dtype))
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y))

"""Gradient matching (Geiping et al., ICLR 2021), after forest's
`witchcoven/witch_base.py` and `witch_matching.py`.

The poisons `x_p + delta` (true labels `y_p`) are perturbed so that the
gradient, over all surrogate parameters, of the training loss on them points
the way of the gradient of the targets' loss under the adversarial label:

  loss(delta) = 1 - <grad_p, grad_t> / (|grad_p| |grad_t|)
  grad_p = d/dtheta CE(f(aug(x_p + delta)), y_p)        (mean over a batch)
  grad_t = d/dtheta sum_k CE(f(x_target_k), y_adv_k)     (fixed)

with the surrogates in evaluation mode (BatchNorm running statistics). The
perturbation lives in normalised units (divided by the training set's
per-channel std, as in forest) and is optimised by signed Adam (the sign of
the gradient fed to Adam, step `lr / ensemble`, x0.1 at 3/8, 5/8 and 7/8 of
the steps), projected after each step onto the eps ball and onto [0, 1].
Each of `restarts` runs starts from `randn * eps` (clipped); the run with
the lowest target adversarial loss after the check (`validation_steps`) is
kept. An ensemble averages the loss over its members.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.common import pgd
from ntga_tfds.transforms.common import poisons
from ntga_tfds.transforms.common import training
from ntga_tfds.transforms.witches_brew import _common
from ntga_tfds.transforms.witches_brew import _models
from ntga_tfds.transforms.witches_brew import _train
from ntga_tfds.transforms.witches_brew.config import WitchesBrewConfig

_TINY = 1e-30


# ---------------------------------------------------------------------------
# The objective.


def matching_loss(poison_grad, target_grad):
  """`1 - cos(poison_grad, target_grad)` over all leaves of two pytrees.

  Args:
    poison_grad, target_grad: pytrees of the same structure (gradients
      with respect to the surrogate's parameters).

  Returns:
    Scalar in [0, 2]; 0 when the gradients point the same way.
  """
  p = jax.tree_util.tree_leaves(poison_grad)
  t = jax.tree_util.tree_leaves(target_grad)
  if len(p) != len(t):
    raise ValueError("poison_grad and target_grad have different structures.")
  dot = sum(jnp.vdot(a, b) for a, b in zip(p, t))
  p_norm = jnp.sqrt(sum(jnp.vdot(a, a) for a in p))
  t_norm = jnp.sqrt(sum(jnp.vdot(b, b) for b in t))
  return 1 - dot / jnp.maximum(p_norm * t_norm, _TINY)


def _with_params(variables, params):
  return {**variables, "params": params}


def target_gradient(module, variables, x_target, y_adversarial, mean, std):
  """d/dparams of sum_k CE(f(x_target_k), y_adversarial_k) (eval mode)."""
  def loss(params):
    logits = _common.apply(module, _with_params(variables, params),
                           x_target, mean, std)
    return training.cross_entropy(logits, y_adversarial) * x_target.shape[0]
  return jax.grad(loss)(variables["params"])


def poison_gradient(module, variables, x, y, weights, mean, std):
  """d/dparams of the (weighted) mean CE of the poison batch (eval mode)."""
  def loss(params):
    logits = _common.apply(module, _with_params(variables, params), x, mean,
                           std)
    return training.cross_entropy(logits, y, weights)
  return jax.grad(loss)(variables["params"])


def _batch_loss(module, *, augment: bool, flip: bool):
  """`(delta, x, y, w, key, variables, target_grads, mean, std) -> loss`."""

  def loss(delta, x, y, w, key, variables, target_grads, mean, std):
    xp = x + delta * std
    if augment:
      xp = _common.augment(key, xp, flip=flip)

    size = jax.tree_util.tree_leaves(variables)[0].shape[0]
    return sum(
        matching_loss(poison_gradient(module, training.index(variables, i),
                                      xp, y, w, mean, std),
                      training.index(target_grads, i))
        for i in range(size)) / size
  return loss


def objective(x_poison, y_poison, x_target, adversarial_label, *, shared,
              config: WitchesBrewConfig, key=None):
  """The gradient-matching loss of poisons `x_poison`; pure and traceable.

  `jax.grad` of it with respect to `x_poison` is what crafting follows. Runs
  in the caller's precision (call it under `jax.experimental.enable_x64()`
  with float64 inputs for float64).

  Args:
    x_poison: `(m, H, W, C)` poisoned images, floats in [0, 1].
    y_poison: `(m,)` their (true) labels.
    x_target: `(k, H, W, C)` target images, floats in [0, 1].
    adversarial_label: int, or `(k,)` ints: the class each target should
      get.
    shared: the dict returned by `train_surrogate`.
    config: the config (surrogate, augment, flip).
    key: PRNG key for the random augmentation (`config.augment`); None: no
      augmentation.

  Returns:
    Scalar: `1 - cos(grad_p, grad_t)`, averaged over the ensemble.
  """
  s = _common.from_flat(shared, config)
  x_poison = jnp.asarray(x_poison)
  dtype = x_poison.dtype
  module = s.module()
  variables = training.cast(s.variables, dtype)
  mean, std = jnp.asarray(s.mean, dtype), jnp.asarray(s.std, dtype)
  x_target = jnp.asarray(x_target, dtype)
  y_adv = jnp.broadcast_to(jnp.asarray(adversarial_label, jnp.int32),
                           (x_target.shape[0],))
  target_grads = _common.ensemble_map(
      lambda v: target_gradient(module, v, x_target, y_adv, mean, std),
      variables)
  loss = _batch_loss(module, augment=key is not None and config.augment,
                     flip=config.flip)
  return loss(jnp.zeros_like(x_poison), x_poison,
              jnp.asarray(y_poison, jnp.int32),
              jnp.ones(x_poison.shape[0], dtype), key, variables,
              target_grads, mean, std)


# ---------------------------------------------------------------------------
# Crafting.


def _project(delta, x, std, bound, mask):
  """Onto |delta| <= bound (normalised eps) and x + delta * std in [0, 1]."""
  delta = jnp.clip(delta, -bound, bound)
  delta = jnp.clip(delta, -x / std, (1 - x) / std)
  return delta * mask


def _make_step(module, tx, *, augment: bool, flip: bool):
  loss = _batch_loss(module, augment=augment, flip=flip)
  grad = jax.value_and_grad(loss)

  @jax.jit
  def step(delta, opt_state, x, y, w, key, variables, target_grads, mean,
           std, bound):
    """One signed-Adam step over all poison batches; loss before it.

    The batches (`delta.shape[0]`, few) are unrolled: on XLA:CPU a
    `lax.map` / `lax.scan` runs convolutions ~15x slower.
    """
    keys = jax.random.split(key, x.shape[0])
    results = [grad(delta[b], x[b], y[b], w[b], keys[b], variables,
                    target_grads, mean, std) for b in range(x.shape[0])]
    losses = jnp.stack([r[0] for r in results])
    grads = jnp.stack([r[1] for r in results])
    updates, opt_state = tx.update(jnp.sign(grads), opt_state)
    mask = w[..., None, None, None]
    delta = _project(delta + updates, x, std, bound, mask)
    return delta, opt_state, jnp.mean(losses)

  return step


def _make_check(module, config: WitchesBrewConfig):
  """The restart check: target adversarial loss after a short fine-tune.

  `check(x_poison, y_poison, batches, variables, x_target, y_adv, mean,
  std)`: every member of the ensemble takes one SGD step per batch of
  `batches` (poison indices, clean images and labels, key), BatchNorm
  statistics frozen; returns the mean over members of the summed target
  adversarial cross-entropy afterwards.
  """
  tx = _train.sgd(config, config.learning_rate / 10)

  @jax.jit
  def sgd_step(params, opt_state, v, x_poison, y_poison, pidx, xc, yc, k,
               mean, std):
    xb = jnp.concatenate([x_poison[pidx], xc])
    yb = jnp.concatenate([y_poison[pidx], yc])
    if config.augment:
      xb = _common.augment(k, xb, flip=config.flip, integer=True)

    def loss(p):
      return training.cross_entropy(
          _common.apply(module, _with_params(v, p), xb, mean, std), yb)
    return training.apply_gradients(tx, jax.grad(loss)(params), opt_state,
                                    params)

  @jax.jit
  def target_loss(v, x_target, y_adv, mean, std):
    logits = _common.apply(module, v, x_target, mean, std)
    return training.cross_entropy(logits, y_adv) * x_target.shape[0]

  def check(x_poison, y_poison, batches, variables, x_target, y_adv, mean,
            std):
    size = jax.tree_util.tree_leaves(variables)[0].shape[0]
    total = 0.0
    for i in range(size):
      v = training.index(variables, i)
      params, opt_state = v["params"], tx.init(v["params"])
      for pidx, xc, yc, k in zip(*batches):
        params, opt_state = sgd_step(params, opt_state, v, x_poison,
                                     y_poison, pidx, xc, yc, k, mean, std)
      total += float(target_loss(_with_params(v, params), x_target, y_adv,
                                 mean, std))
    return total / size

  return check


@functools.lru_cache(maxsize=16)
def _crafting_fns(config: WitchesBrewConfig, num_classes: int):
  """Module, signed-Adam optimiser, jitted step and check of a config."""
  module = _models.make(config.surrogate, num_classes, config.width)
  tx = optax.adam(training.multistep_schedule(config.lr / config.ensemble,
                                              config.steps))
  step = _make_step(module, tx, augment=config.augment, flip=config.flip)
  check = (_make_check(module, config)
           if config.validation_steps and config.restarts > 1 else None)
  return module, tx, step, check


def _adversarial(label, k: int, num_classes: int) -> np.ndarray:
  arr = np.asarray(label)
  if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != k):
    raise ValueError(
        f"adversarial_label must be an int or have shape ({k},) (one per "
        f"target), got shape {arr.shape}.")
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
        f"adversarial_label must be an integer class id, got {label!r}.")
  arr = np.broadcast_to(arr, (k,)).astype(np.int32)
  if arr.min() < 0 or arr.max() >= num_classes:
    raise ValueError(f"adversarial_label must lie in [0, num_classes="
                     f"{num_classes}), got {label!r}.")
  return arr


def craft(x_train, y_train, *, poison_indices, x_target, y_target=None,
          adversarial_label, key, shared, config: WitchesBrewConfig,
          num_classes: Optional[int] = None,
          on_step: Optional[Callable[[int, float], None]] = None
          ) -> np.ndarray:
  """Crafts the poisons `x_train[poison_indices]` by gradient matching.

  Args:
    x_train: `(n, H, W, C)` uint8 images, or floats in [0, 1] (snapped to
      the 8-bit grid; the eps ball is centred on the snapped images).
    y_train: `(n,)` integer labels; the poisons keep theirs.
    poison_indices: `(P,)` distinct indices into `x_train`.
    x_target: `(k, H, W, C)` (or one `(H, W, C)`) target images; their
      losses are summed.
    y_target: optional `(k,)` true labels of the targets (checked only:
      forest's default objective does not use them).
    adversarial_label: int, or `(k,)` ints: the class each target should be
      given by a model trained on the poisoned set.
    key: JAX PRNG key (restart initialisations, augmentation, the check).
    shared: the dict returned by `train_surrogate` (same config.surrogate).
    config: `WitchesBrewConfig`.
    num_classes: default: the surrogates' number of classes.
    on_step: called as `on_step(i, loss)` after each crafting step, `i`
      counting across restarts (`0 .. restarts * steps - 1`), `loss` the
      gradient-matching loss before the step.

  Returns:
    uint8 `(P, H, W, C)`: the poisoned images, in the order of
    `poison_indices`, each pixel within `floor(255 * eps)` levels of the
    clean one.
  """
  config = checks.instance(config, WitchesBrewConfig)
  key = checks.key(key)
  x = checks.nhwc("x_train", x_train)
  s = _common.from_flat(shared, config)
  y, num_classes = checks.trained_labels(
      x, y_train, num_classes, trained_classes=s.num_classes,
      image_shape=s.image_shape, networks="surrogates")
  idx = checks.poison_indices(poison_indices, x.shape[0])
  xt = checks.target_images(x_target, x)
  k = xt.shape[0]
  y_adv = _adversarial(adversarial_label, k, num_classes)
  if y_target is not None:
    checks.labels("y_target", y_target, num_examples=k,
                  images_name="x_target", num_classes=num_classes)
  checks.callable_or_none(on_step, "on_step")

  xp_f, xp_u8 = pgd.snap(x[idx])
  xt_f = checks.to_unit(xt)
  with training.precision(config.dtype):
    delta = _craft(xp_f, y[idx], x_all=x, y_all=y, x_target=xt_f,
                   y_adv=y_adv, key=key, s=s, config=config, on_step=on_step)
  x_adv = xp_f.astype(np.float64) + delta * s.std
  return pgd.quantize(x_adv, xp_u8, eps=config.eps, norm="linf")


def _craft(xp, yp, *, x_all, y_all, x_target, y_adv, key, s, config,
           on_step):
  """The restarts; the chosen perturbation in normalised units `(P, ...)`."""
  dtype = training.float_dtype(config.dtype)
  module, tx, step, check = _crafting_fns(config, s.num_classes)
  variables = training.cast(s.variables, dtype)
  mean, std = jnp.asarray(s.mean, dtype), jnp.asarray(s.std, dtype)
  bound = jnp.asarray(config.eps / s.std, dtype)
  xt = jnp.asarray(x_target, dtype)
  y_adv = jnp.asarray(y_adv)
  target_grads = jax.jit(lambda v: _common.ensemble_map(
      lambda m: target_gradient(module, m, xt, y_adv, mean, std), v))(
          variables)

  # Equal batches of at most poison_batch_size; padding masked out.
  num = xp.shape[0]
  nb = math.ceil(num / config.poison_batch_size)
  bs = math.ceil(num / nb)
  pad = nb * bs - num
  shape = (nb, bs) + xp.shape[1:]
  xb = jnp.asarray(np.concatenate([xp, np.zeros((pad,) + xp.shape[1:],
                                                xp.dtype)]), dtype)
  xb = xb.reshape(shape)
  yb = jnp.asarray(np.concatenate([yp, np.zeros(pad, yp.dtype)]))
  yb = yb.reshape(nb, bs)
  wb = jnp.asarray(np.arange(nb * bs) < num, dtype).reshape(nb, bs)
  mask = wb[..., None, None, None]

  k_restarts, k_check = jax.random.split(key)
  check_args = (_check_inputs(k_check, num, x_all, y_all, config)
                if check is not None else None)

  best, best_score = None, math.inf
  for r, k_r in enumerate(jax.random.split(k_restarts, config.restarts)):
    k_init, k_steps = jax.random.split(k_r)
    delta = jax.random.normal(k_init, shape, dtype) * bound
    delta = _project(delta, xb, std, bound, mask)
    opt_state = tx.init(delta)
    loss = None
    for i in range(config.steps):
      delta, opt_state, loss = step(delta, opt_state, xb, yb, wb,
                                    jax.random.fold_in(k_steps, i),
                                    variables, target_grads, mean, std,
                                    bound)
      if on_step is not None:
        on_step(r * config.steps + i, float(loss))
    if check is not None:
      x_poison = (xb + delta * std).reshape((nb * bs,) + xp.shape[1:])[:num]
      score = check(x_poison, jnp.asarray(yp), check_args, variables, xt,
                    y_adv, mean, std)
    else:
      score = float(loss)
    if score < best_score or best is None:
      best, best_score = delta, score
  best = np.asarray(best, np.float64).reshape((nb * bs,) + xp.shape[1:])
  return best[:num]


def _check_inputs(key, num: int, x_all, y_all, config):
  """Batches of the check: poison indices and clean images, per step."""
  dtype = training.float_dtype(config.dtype)
  steps = config.validation_steps
  m = min(num, config.surrogate_batch_size)
  k_p, k_c, k_a = jax.random.split(key, 3)
  poison_idx = jax.vmap(lambda k: jax.random.permutation(k, num)[:m])(
      jax.random.split(k_p, steps))
  clean_idx = np.asarray(jax.vmap(
      lambda k: jax.random.choice(k, x_all.shape[0], (m,), replace=False))(
          jax.random.split(k_c, steps)))
  x_clean, _ = pgd.snap(x_all[clean_idx.ravel()])
  x_clean = jnp.asarray(x_clean, dtype).reshape((steps, m) + x_all.shape[1:])
  y_clean = jnp.asarray(y_all[clean_idx])
  return (poison_idx, x_clean, y_clean, jax.random.split(k_a, steps))


def poison(x_train, y_train, *, x_target, adversarial_label, key,
           config: WitchesBrewConfig, num_classes: Optional[int] = None,
           on_step: Optional[Callable[[int, float], None]] = None):
  """Trains the surrogate(s), picks the poisons, crafts them.

  The poisons are `round(budget * n)` images of the adversarial class,
  drawn without replacement (deterministic from `key`).

  Args:
    x_train: `(n, H, W, C)` uint8 images or floats in [0, 1].
    y_train: `(n,)` integer labels (unchanged by the attack).
    x_target: `(k, H, W, C)` (or `(H, W, C)`) target images.
    adversarial_label: the class (int) the targets should be given; one
      class for all targets, as the poisons are drawn from it.
    key: JAX PRNG key; split into (training, selection, crafting).
    config: `WitchesBrewConfig`.
    num_classes: default 1 + the largest label of `y_train`.
    on_step: passed to `craft`.

  Returns:
    `(images, poison_indices)`: the whole training set as uint8
    `(n, H, W, C)` with the poisons in place, and the sorted `(P,)` indices
    of the poisons.
  """
  config = checks.instance(config, WitchesBrewConfig)
  key = checks.key(key)
  x, y, num_classes = checks.labelled_nhwc(x_train, y_train, num_classes)
  xt = checks.target_images(x_target, x)
  y_adv = _adversarial(adversarial_label, xt.shape[0], num_classes)
  if np.unique(y_adv).size != 1:
    raise ValueError(
        "adversarial_label must be one class for all targets in poison() "
        "(the poisons are drawn from it); use craft() for several.")
  adv = int(y_adv[0])
  num = int(math.floor(config.budget * x.shape[0] + 0.5))
  pool = np.flatnonzero(y == adv)
  if num < 1:
    raise ValueError(f"budget={config.budget} of {x.shape[0]} images gives "
                     f"no poisons; raise budget.")
  if num > pool.size:
    raise ValueError(
        f"budget={config.budget} asks for {num} poisons but class {adv} has "
        f"only {pool.size} images in y_train.")
  k_train, k_select, k_craft = jax.random.split(key, 3)
  idx = poisons.draw(k_select, pool, num)
  shared = _train.train_surrogate(x, y, key=k_train, config=config,
                                  num_classes=num_classes)
  crafted = craft(x, y, poison_indices=idx, x_target=xt,
                  adversarial_label=adv, key=k_craft, shared=shared,
                  config=config, num_classes=num_classes, on_step=on_step)
  return poisons.in_place(x, idx, crafted), idx

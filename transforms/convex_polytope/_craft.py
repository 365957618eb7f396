"""Crafting (Zhu et al., ICML 2019), after the reference's `trainer.py`
(`make_convex_polytope_poisons`, `get_CP_loss`, `get_CP_loss_end2end`).

The poisons `x_j = base_j + delta_j` (images of the adversarial class,
labels unchanged) are perturbed so that, for every substitute network n
(`substitutes x dropout`) and target k, the target's features lie close to
the convex hull of the poisons' features:

  loss(delta) = sum_n sum_k sum_l || phi_nl(t_k) - sum_j c_nlkj
                phi_nl(x_j) ||^2 / || phi_nl(t_k) ||^2

over the feature layers l (the penultimate one; two with `end_to_end`).
Each iteration (one jitted step)

  (a) computes the poisons' features (dropout active, fresh masks, with
      `dropout_while_crafting`), and solves the coefficients c on the
      probability simplex for those features (`_polytope`, warm-started);
  (b) takes one Adam step on delta along the gradient of the loss with c
      fixed (by the envelope theorem, the gradient at the optimal c), and
      projects delta onto the eps ball around the base images and onto
      [0, 1].

delta lives in normalised units (divided by the training set's per-channel
std), as the reference optimises normalised images: `lr` is in those
units. The targets' features are computed once (one dropout realisation,
as the reference: "empirically one realization is enough").
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntga_tfds.transforms.common import checks
from ntga_tfds.transforms.common import pgd
from ntga_tfds.transforms.common import poisons
from ntga_tfds.transforms.common import training
from ntga_tfds.transforms.convex_polytope import _common
from ntga_tfds.transforms.convex_polytope import _models
from ntga_tfds.transforms.convex_polytope import _polytope
from ntga_tfds.transforms.convex_polytope import _train
from ntga_tfds.transforms.convex_polytope.config import ConvexPolytopeConfig

simplex_projection = _polytope.simplex_projection


def _layers(config: ConvexPolytopeConfig):
  """Indices (into `_models`' feature lists) of the layers the loss uses."""
  if config.end_to_end:
    return tuple(range(_models.NUM_FEATURE_LAYERS))
  return (_models.NUM_FEATURE_LAYERS - 1,)


def _ensemble_features(substitutes, num_classes, params, xn, rates, key, *,
                       layers):
  """`{arch: [(R, n, d_l) for l in layers]}`; arch a draws its dropout masks
  from `fold_in(key, a)`.

  Dropout is always drawn, at `rates`: deterministic networks are rates of
  0, whose masks keep everything (the same values, bit for bit), so that
  one compiled function serves both.
  """
  out = {}
  for a, arch in enumerate(substitutes):
    feats = _common.features(
        _models.make(arch, num_classes), params[arch], xn, rates,
        jax.random.fold_in(key, a), dropout=True,
        use_vmap=_common.VMAP[arch])
    out[arch] = [feats[l] for l in layers]
  return out


def _solve_all(poison_feats, target_feats, coeffs, config):
  """New coefficients `{arch: (L, R, K, P)}` for the given features."""
  return {
      arch: jnp.stack([
          _polytope.solve_coefficients(
              pf, tf, coeffs[arch][l], tol=config.coeff_tol,
              max_steps=config.coeff_steps)
          for l, (pf, tf) in enumerate(zip(poison_feats[arch],
                                           target_feats[arch]))])
      for arch in poison_feats}


def _loss_all(poison_feats, target_feats, coeffs):
  return sum(
      _polytope.polytope_loss(pf, tf, coeffs[arch][l])
      for arch in poison_feats
      for l, (pf, tf) in enumerate(zip(poison_feats[arch],
                                       target_feats[arch])))


def _uniform_coeffs(s, config, num_targets: int, num_poisons: int, dtype):
  shape = (len(_layers(config)), len(s.dropout), num_targets, num_poisons)
  return {arch: jnp.full(shape, 1.0 / num_poisons, dtype)
          for arch in s.substitutes}


# ---------------------------------------------------------------------------
# The objective.


def objective(x_poison, x_target, *, shared, config: ConvexPolytopeConfig,
              key=None, coefficients: Optional[Dict[str, jax.Array]] = None,
              return_coefficients: bool = False):
  """The convex polytope loss of poisons `x_poison`; pure and traceable.

  `jax.grad` of it with respect to `x_poison` (coefficients held fixed;
  at the optimal coefficients this is the gradient of the minimum) is what
  crafting follows, up to the change of units. Runs in the caller's
  precision (call it under `jax.experimental.enable_x64()` for float64).

  Args:
    x_poison: `(P, H, W, C)` poisons: floats in [0, 1] (NumPy or JAX,
      unchecked) or uint8.
    x_target: `(K, H, W, C)` targets (floats in [0, 1] or uint8).
    shared: the dict returned by `train_substitutes`.
    config: `ConvexPolytopeConfig` (substitutes, dropout, end_to_end,
      dropout_while_crafting, coeff_tol, coeff_steps).
    key: None: deterministic networks (no dropout). A PRNG key, with
      `dropout_while_crafting`: one dropout realisation, the targets' masks
      from `split(key)[0]`, the poisons' from `split(key)[1]`.
    coefficients: `{architecture: (L, R, K, P)}` (L layers of the loss, R
      dropout rates), e.g. from `return_coefficients`; default: solved for
      these features from uniform coefficients (to `coeff_tol`).
    return_coefficients: also return the coefficients used.

  Returns:
    Scalar loss (sum over networks, layers and targets), or `(loss,
    coefficients)`.
  """
  config = checks.instance(config, ConvexPolytopeConfig)
  s = _common.from_flat(shared, config)

  def floats(x):
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
      return jnp.asarray(x, training.float_dtype(config.dtype)) / 255
    return jnp.asarray(x)

  xp, xt = floats(x_poison), floats(x_target)
  if xp.ndim != 4 or xt.ndim != 4:
    raise ValueError(f"x_poison and x_target must have shape (n, H, W, C), "
                     f"got {xp.shape} and {xt.shape}.")
  dtype = xp.dtype
  dropout = key is not None and config.dropout_while_crafting
  key = checks.key(jax.random.PRNGKey(0) if key is None else key)
  if coefficients is not None:
    coefficients = {a: jnp.asarray(c, dtype)
                    for a, c in coefficients.items()}
  fn = _objective_fn(s.substitutes, s.num_classes, _step_key(config))
  loss, coefficients = fn(
      training.cast(s.params, dtype), xp, xt.astype(dtype),
      _rates(s, dtype, dropout), jnp.asarray(s.mean, dtype),
      jnp.asarray(s.std, dtype), key, coefficients)
  return (loss, coefficients) if return_coefficients else loss


def _rates(s, dtype, dropout: bool):
  """The networks' dropout rates `(R,)`; zeros for deterministic ones."""
  rates = jnp.asarray(s.dropout, dtype)
  return rates if dropout else jnp.zeros_like(rates)


@functools.lru_cache(maxsize=16)
def _objective_fn(substitutes, num_classes: int,
                  config: ConvexPolytopeConfig):
  """The jitted core of `objective` (cached; inlined under a trace)."""
  layers = _layers(config)

  @jax.jit
  def fn(params, xp, xt, rates, mean, std, key, coefficients):
    k_t, k_p = jax.random.split(key)
    tf = _ensemble_features(substitutes, num_classes, params,
                            _models.normalize(xt, mean, std), rates, k_t,
                            layers=layers)
    pf = _ensemble_features(substitutes, num_classes, params,
                            _models.normalize(xp, mean, std), rates, k_p,
                            layers=layers)
    if coefficients is None:
      shape = (len(layers), rates.shape[0], xt.shape[0], xp.shape[0])
      init = {a: jnp.full(shape, 1.0 / xp.shape[0], xp.dtype)
              for a in substitutes}
      coefficients = _solve_all(pf, tf, init, config)
    coefficients = jax.lax.stop_gradient(coefficients)
    return _loss_all(pf, tf, coefficients), coefficients

  return fn


# ---------------------------------------------------------------------------
# Crafting.


def _project(delta, x, std, bound):
  """Onto |delta| <= bound (normalised eps) and x + delta * std in [0, 1]."""
  delta = jnp.clip(delta, -bound, bound)
  return jnp.clip(delta, -x / std, (1 - x) / std)


@functools.lru_cache(maxsize=16)
def _make_step(substitutes, num_classes: int, config: ConvexPolytopeConfig):
  """The jitted crafting step (cached: repeated crafts compile once)."""
  layers = _layers(config)
  tx = _adam(config)

  @jax.jit
  def step(delta, opt_state, coeffs, x_base, params, target_feats, rates,
           mean, std, bound, key):
    """One iteration: coefficients, then an Adam step; loss before it."""

    def poison_feats(d):
      xn = _models.normalize(x_base + d * std, mean, std)
      return _ensemble_features(substitutes, num_classes, params, xn, rates,
                                key, layers=layers)

    feats, pullback = jax.vjp(poison_feats, delta)
    coeffs = _solve_all(feats, target_feats, coeffs, config)
    loss, feats_grad = jax.value_and_grad(_loss_all)(feats, target_feats,
                                                     coeffs)
    (grad,) = pullback(feats_grad)
    updates, opt_state = tx.update(grad, opt_state, delta)
    delta = _project(delta + updates, x_base, std, bound)
    return delta, opt_state, coeffs, loss

  @jax.jit
  def targets(params, x, rates, mean, std, key):
    return _ensemble_features(substitutes, num_classes, params,
                              _models.normalize(x, mean, std), rates, key,
                              layers=layers)

  return step, targets


def _adam(config: ConvexPolytopeConfig):
  """The reference's optimiser on the poisons: Adam, betas (0.9, 0.999)."""
  return optax.adam(config.lr, b1=0.9, b2=0.999, eps=1e-8)


def _step_key(config: ConvexPolytopeConfig) -> ConvexPolytopeConfig:
  """`config` with the fields the step does not read set to defaults (so
  that configs differing in, e.g., `steps` share a compiled step)."""
  return ConvexPolytopeConfig(
      lr=config.lr, coeff_tol=config.coeff_tol,
      coeff_steps=config.coeff_steps, end_to_end=config.end_to_end)


def _adversarial(label, num_classes: int) -> int:
  arr = np.asarray(label)
  if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
        f"adversarial_label must be one integer class id (the poisons' "
        f"class), got {label!r}.")
  value = int(arr)
  if not 0 <= value < num_classes:
    raise ValueError(f"adversarial_label must lie in [0, num_classes="
                     f"{num_classes}), got {value}.")
  return value


def _check_targets_labels(y_target, k: int, num_classes: int, adv: int):
  if y_target is None:
    return
  yt = checks.labels("y_target", y_target, num_examples=k,
                     images_name="x_target", num_classes=num_classes)
  if np.any(yt == adv):
    raise ValueError(
        f"y_target holds the adversarial_label {adv}: a target of the "
        f"poisons' own class leaves nothing to attack.")


def craft(x_train, y_train, *, poison_indices, x_target, y_target=None,
          adversarial_label, key, shared, config: ConvexPolytopeConfig,
          num_classes: Optional[int] = None,
          on_step: Optional[Callable[[int, float], None]] = None
          ) -> np.ndarray:
  """Crafts the poisons `x_train[poison_indices]` (convex polytope).

  Args:
    x_train: `(n, H, W, C)` uint8 images, or floats in [0, 1] (snapped to
      the 8-bit grid; the eps ball is centred on the snapped images).
    y_train: `(n,)` integer labels; the poisons keep theirs.
    poison_indices: `(P,)` distinct indices into `x_train`, all of class
      `adversarial_label` (the base images).
    x_target: `(K, H, W, C)` (or one `(H, W, C)`) target images; their
      objectives are summed (one coefficient vector per target, network and
      layer).
    y_target: optional `(K,)` true labels of the targets (checked: in
      range, and not `adversarial_label`).
    adversarial_label: int, the class the targets should be given (the
      poisons' class).
    key: JAX PRNG key (the targets' dropout realisation, each step's
      dropout masks).
    shared: the dict returned by `train_substitutes` (same substitutes and
      dropout as `config`).
    config: `ConvexPolytopeConfig`.
    num_classes: default: the substitutes' number of classes.
    on_step: called as `on_step(step, loss)` after each step, `loss` the
      polytope loss before the step (with that step's coefficients and
      dropout masks).

  Returns:
    uint8 `(P, H, W, C)`: the poisoned images, in the order of
    `poison_indices`, each pixel within `floor(255 * eps)` levels of the
    clean one.
  """
  config = checks.instance(config, ConvexPolytopeConfig)
  key = checks.key(key)
  x = checks.nhwc("x_train", x_train)
  s = _common.from_flat(shared, config)
  y, num_classes = checks.trained_labels(
      x, y_train, num_classes, trained_classes=s.num_classes,
      image_shape=s.image_shape, networks="substitutes")
  idx = checks.poison_indices(poison_indices, x.shape[0])
  xt = checks.target_images(x_target, x)
  adv = _adversarial(adversarial_label, num_classes)
  if np.any(y[idx] != adv):
    raise ValueError(
        f"poison_indices must pick images of the adversarial_label {adv} "
        f"(clean-label bases); got labels {sorted(set(y[idx].tolist()))}.")
  _check_targets_labels(y_target, xt.shape[0], num_classes, adv)
  checks.callable_or_none(on_step, "on_step")

  xp_f, xp_u8 = pgd.snap(x[idx])
  xt_f = checks.to_unit(xt)
  with training.precision(config.dtype):
    delta = _craft(xp_f, xt_f, key=key, s=s, config=config, on_step=on_step)
  x_adv = xp_f.astype(np.float64) + delta * s.std
  return pgd.quantize(x_adv, xp_u8, eps=config.eps, norm="linf")


def _stop_early(losses, config: ConvexPolytopeConfig) -> bool:
  """The `tol` test after a whole window (see `ConvexPolytopeConfig`)."""
  w = config.tol_window
  if config.tol is None or len(losses) < 2 * w or len(losses) % w:
    return False
  window = np.asarray(jax.device_get(losses[-2 * w:]), np.float64)
  before, now = window[:w].mean(), window[w:].mean()
  return before - now < config.tol * abs(before)


def _craft(xp, xt, *, key, s, config, on_step):
  """The crafting loop; the perturbation in normalised units `(P, ...)`."""
  dtype = training.float_dtype(config.dtype)
  params = training.cast(s.params, dtype)
  rates = _rates(s, dtype, config.dropout_while_crafting)
  mean, std = jnp.asarray(s.mean, dtype), jnp.asarray(s.std, dtype)
  bound = jnp.asarray(config.eps / s.std, dtype)
  x_base = jnp.asarray(xp, dtype)
  k_target, k_steps = jax.random.split(key)
  step, targets = _make_step(s.substitutes, s.num_classes, _step_key(config))
  target_feats = targets(params, jnp.asarray(xt, dtype), rates, mean, std,
                         k_target)
  tx = _adam(config)
  delta = jnp.zeros_like(x_base)
  opt_state = tx.init(delta)
  coeffs = _uniform_coeffs(s, config, xt.shape[0], xp.shape[0], dtype)
  losses = []
  for i in range(config.steps):
    delta, opt_state, coeffs, loss = step(
        delta, opt_state, coeffs, x_base, params, target_feats, rates, mean,
        std, bound, jax.random.fold_in(k_steps, i))
    losses.append(loss)
    if on_step is not None:
      on_step(i, float(loss))
    if _stop_early(losses, config):
      break
  return np.asarray(delta, np.float64)


def poison(x_train, y_train, *, x_target, adversarial_label, key,
           config: ConvexPolytopeConfig, y_target=None,
           num_classes: Optional[int] = None,
           on_step: Optional[Callable[[int, float], None]] = None,
           on_epoch: Optional[Callable[[int, float], None]] = None):
  """Trains the substitutes, picks the poisons, crafts them.

  The poisons are `config.num_poisons` images of the adversarial class,
  drawn without replacement (deterministic from `key`).

  Args:
    x_train: `(n, H, W, C)` uint8 images or floats in [0, 1].
    y_train: `(n,)` integer labels (unchanged by the attack).
    x_target: `(K, H, W, C)` (or `(H, W, C)`) target images.
    adversarial_label: int, the class the targets should be given.
    key: JAX PRNG key; split into (training, selection, crafting).
    config: `ConvexPolytopeConfig`.
    y_target: optional `(K,)` true labels of the targets (checked).
    num_classes: default 1 + the largest label of `y_train`.
    on_step: passed to `craft`.
    on_epoch: passed to `train_substitutes`.

  Returns:
    `(images, poison_indices)`: the whole training set as uint8
    `(n, H, W, C)` with the poisons in place, and the sorted `(P,)` indices
    of the poisons.
  """
  config = checks.instance(config, ConvexPolytopeConfig)
  key = checks.key(key)
  x, y, num_classes = checks.labelled_nhwc(x_train, y_train, num_classes)
  xt = checks.target_images(x_target, x)
  adv = _adversarial(adversarial_label, num_classes)
  _check_targets_labels(y_target, xt.shape[0], num_classes, adv)
  _common.check_image_size("x_train", x, config.substitutes)
  checks.callable_or_none(on_step, "on_step")
  checks.callable_or_none(on_epoch, "on_epoch")
  pool = np.flatnonzero(y == adv)
  if config.num_poisons > pool.size:
    raise ValueError(
        f"config.num_poisons={config.num_poisons} but class {adv} has only "
        f"{pool.size} images in y_train.")
  k_train, k_select, k_craft = jax.random.split(key, 3)
  idx = poisons.draw(k_select, pool, config.num_poisons)
  shared = _train.train_substitutes(x, y, key=k_train, config=config,
                                    num_classes=num_classes,
                                    on_epoch=on_epoch)
  crafted = craft(x, y, poison_indices=idx, x_target=xt, y_target=y_target,
                  adversarial_label=adv, key=k_craft, shared=shared,
                  config=config, num_classes=num_classes, on_step=on_step)
  return poisons.in_place(x, idx, crafted), idx


"""The three shapes of poisoning work, as `generation.Job`s.

1. `BlockJob`: every training image perturbed, block by block, each block
   against a validation set (NTGA, the random-noise control). Units: blocks.
2. `TargetedJob`: a chosen subset of the training set (a budget of images of
   one class) perturbed so that chosen target images (from the test split)
   are classified as an adversarial class (Witches' Brew, Convex Polytope).
   Units: target groups, each with its own poisons; an optional shared
   input (e.g. a trained surrogate) computed once. Adds a `target` split.
3. `AdditiveJob`: new points added to the training set (back-gradient).
   Units: batches of new points, each computed given the earlier ones.

Which examples each shape touches is a pure function of the sizes, labels
and the seed, through a keyed integer hash (`keyed_choice`), so the plan is
the same on every NumPy version and in every process.

Columns. Every split has `image` (uint8), `label`, `index` (the position of
the clean source example in its split, -1 for an added point) and `key`
(the TFDS example key). Targeted and additive jobs add `is_poison` (bool);
targeted jobs also `adversarial_label` (the class a target should be taken
for; -1 outside the `target` split). `COLUMNS` of each job class gives the
extra columns and their value for clean examples.

This module imports neither TensorFlow nor TFDS.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from ntga_tfds import generation

MAX_DEFAULT_VAL_SIZE = 10_000
_MASK64 = (1 << 64) - 1
_HELDOUT_STREAM = 1 << 40
_FOLD_STREAM = 1 << 41
_TARGET_STREAM = 1 << 42
_POISON_STREAM = 1 << 43
# 1 << 44 and 1 << 45: back_gradient's and convex_polytope's streams.
_SHARED_FOLD_STREAM = 1 << 46

Arrays = generation.Arrays


# ---------------------------------------------------------------------------
# Keyed choices.


def _splitmix64(x: np.ndarray) -> np.ndarray:
  x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
  x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9))
  x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB))
  return x ^ (x >> np.uint64(31))


def keyed_scores(seed: int, stream: int, indices: np.ndarray) -> np.ndarray:
  """Pseudo-random uint64 scores of `indices` for (seed, stream)."""
  with np.errstate(over="ignore"):
    base = _splitmix64(np.asarray([(seed * 0x100000001B3 + stream) & _MASK64],
                                  np.uint64))[0]
    return _splitmix64(np.asarray(indices, np.uint64) ^ base)


def keyed_choice(seed: int, stream: int, candidates: np.ndarray,
                 size: int) -> np.ndarray:
  """`size` of `candidates` (sorted), those with the smallest keyed scores."""
  candidates = np.asarray(candidates, np.int64)
  if size > candidates.shape[0]:
    raise ValueError(f"Cannot draw {size} examples from "
                     f"{candidates.shape[0]}.")
  scores = keyed_scores(seed, stream, candidates)
  order = np.lexsort((candidates, scores))
  return np.sort(candidates[order[:size]])


def columns(images, labels, index, key, **extra) -> Arrays:
  """A split as columns: `image` uint8, `label`, `index`, `key`, extras."""
  return {"image": np.asarray(images, np.uint8),
          "label": np.asarray(labels, np.int64),
          "index": np.asarray(index, np.int64),
          "key": np.asarray(key, np.int64), **extra}


def _check_uint8(out: np.ndarray, shape) -> Optional[str]:
  if out.dtype != np.uint8 or out.shape != tuple(shape):
    return (f"returned {out.dtype} {out.shape}, expected uint8 "
            f"{tuple(shape)}")
  return None


def _key(seed: int):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.random.PRNGKey(seed)


# ---------------------------------------------------------------------------
# 1. Every image perturbed, blockwise, against validation folds.


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPlan:
  """Which examples are poisoned, in which blocks, against which validation.

  Attributes:
    num_examples: size of the training set.
    block_size: effective examples per block.
    protocol: "all_train" (every example poisoned, each block against a
      validation fold drawn from the other examples), "shared_fold" (every
      example poisoned, every block against the same fold but for the
      block's own members: the `val_size` examples outside the block with
      the smallest keyed scores of one stream, so folds of any two blocks
      differ only where a block overlaps the other's fold) or "heldout"
      (`val_size` examples held out clean, every block against them).
    val_size: validation examples per block (0 if the attack needs none).
    seed: the seed.
    poison_indices: training indices poisoned, ascending.
    heldout_indices: the held-out validation indices ("heldout" only).
  """
  num_examples: int
  block_size: int
  protocol: str
  val_size: int
  seed: int
  poison_indices: np.ndarray
  heldout_indices: np.ndarray

  @property
  def num_blocks(self) -> int:
    return -(-self.poison_indices.shape[0] // self.block_size)

  def block_slice(self, b: int) -> slice:
    n = self.poison_indices.shape[0]
    return slice(b * self.block_size, min(n, (b + 1) * self.block_size))

  def block(self, b: int) -> np.ndarray:
    """Training indices of block `b`."""
    return self.poison_indices[self.block_slice(b)]

  def validation(self, b: int) -> np.ndarray:
    """Training indices of block `b`'s validation set (ascending)."""
    if self.val_size == 0:
      return np.zeros(0, np.int64)
    if self.protocol == "heldout":
      return self.heldout_indices
    mask = np.ones(self.num_examples, bool)
    mask[self.block(b)] = False
    stream = (_SHARED_FOLD_STREAM if self.protocol == "shared_fold"
              else _FOLD_STREAM + b)
    return keyed_choice(self.seed, stream, np.flatnonzero(mask),
                        self.val_size)

  def to_json(self) -> Dict[str, Any]:
    return {"num_examples": self.num_examples, "block_size": self.block_size,
            "num_blocks": self.num_blocks, "protocol": self.protocol,
            "val_size": self.val_size, "seed": self.seed,
            "num_poisoned": int(self.poison_indices.shape[0]),
            "num_heldout": int(self.heldout_indices.shape[0])}


BLOCK_PROTOCOLS = ("all_train", "shared_fold", "heldout")


def default_val_size(num_examples: int) -> int:
  """min(10,000, n // 5): the NTGA paper's 10,000 for MNIST and CIFAR-10."""
  return max(1, min(MAX_DEFAULT_VAL_SIZE, num_examples // 5))


def make_block_plan(num_examples: int, *, block_size: Optional[int],
                    protocol: str = "all_train",
                    val_size: Optional[int] = None, seed: int = 0,
                    uses_validation: bool = True) -> BlockPlan:
  """The blocks and validation sets of a training set.

  Block `b` holds consecutive examples (in the source's canonical order) and
  is attacked with the key `fold_in(PRNGKey(seed), b)`; the last, partial
  block is poisoned too. "all_train" / "shared_fold": a training set that
  fits in one block is split in two blocks so that a fold exists.
  "heldout": `val_size` examples, chosen by the keyed hash, are held out
  clean.
  """
  n = int(num_examples)
  if n < 1:
    raise ValueError("The training set is empty.")
  if protocol not in BLOCK_PROTOCOLS:
    raise ValueError(f"protocol must be one of {BLOCK_PROTOCOLS}, got "
                     f"{protocol!r}.")
  all_idx = np.arange(n, dtype=np.int64)
  bs = n if block_size is None else int(block_size)
  if not uses_validation:
    return BlockPlan(n, min(bs, n), protocol, 0, seed, all_idx,
                     np.zeros(0, np.int64))
  if val_size is None:
    val_size = default_val_size(n)
  val_size = int(val_size)
  if protocol == "heldout":
    if not 1 <= val_size < n:
      raise ValueError(f"val_size={val_size} held-out examples leave no "
                       f"training example of {n} to poison.")
    heldout = keyed_choice(seed, _HELDOUT_STREAM, all_idx, val_size)
    mask = np.ones(n, bool)
    mask[heldout] = False
    poison = np.flatnonzero(mask).astype(np.int64)
    return BlockPlan(n, min(bs, poison.shape[0]), protocol, val_size, seed,
                     poison, heldout)
  if n < 2:
    raise ValueError("Need at least 2 training examples: each block's "
                     "validation fold comes from the other examples.")
  if bs >= n:  # one block would leave no other example for its fold
    bs = -(-n // 2)
  if not 1 <= val_size <= n - bs:
    raise ValueError(
        f"val_size={val_size} cannot be drawn from the {n - bs} training "
        f"examples outside a block of {bs}; use val_size <= {n - bs}.")
  return BlockPlan(n, bs, protocol, val_size, seed, all_idx,
                   np.zeros(0, np.int64))


class BlockJob(generation.Job):
  """Shape 1: every training image perturbed, block by block.

  `poison_fn(x, y, *, x_val, y_val, key, num_classes, on_step) -> uint8`
  poisons one block (x, y) against its validation set (empty arrays when the
  attack uses none) and returns the block's images.
  """
  COLUMNS: Dict[str, Any] = {}
  unit_noun = "block"
  independent_units = True

  def __init__(self, x_train: np.ndarray, y_train: np.ndarray, *,
               family: str, config: Any, poison_fn: Callable[..., Any],
               num_classes: int, seed: int = 0,
               block_size: Optional[int] = None,
               protocol: str = "all_train", val_size: Optional[int] = None,
               uses_validation: bool = True, steps_per_block: int = 0):
    self.x_train = _uint8_images("x_train", x_train)
    self.y_train = _labels("y_train", y_train, self.x_train.shape[0])
    self.family = family
    self.config = config
    self.poison_fn = poison_fn
    self.num_classes = int(num_classes)
    self.seed = int(seed)
    self.plan = make_block_plan(self.x_train.shape[0], block_size=block_size,
                                protocol=protocol, val_size=val_size,
                                seed=seed, uses_validation=uses_validation)
    self.num_units = self.plan.num_blocks
    self.steps_per_unit = steps_per_block

  def payload(self):
    return {"config": generation.jsonable(self.config),
            "plan": self.plan.to_json(), "num_classes": self.num_classes}

  def _block_shape(self, b):
    return (self.plan.block(b).shape[0],) + self.x_train.shape[1:]

  def run_unit(self, u, previous, *, on_step):
    import jax  # pylint: disable=g-import-not-at-top
    del previous
    idx, val = self.plan.block(u), self.plan.validation(u)
    out = self.poison_fn(
        self.x_train[idx], self.y_train[idx], x_val=self.x_train[val],
        y_val=self.y_train[val], key=jax.random.fold_in(_key(self.seed), u),
        num_classes=self.num_classes, on_step=on_step)
    return {"images": np.asarray(out)}

  def check_unit(self, u, out):
    if "images" not in out:
      return "no images"
    return _check_uint8(out["images"], self._block_shape(u))

  def assemble(self, outputs):
    p = self.plan
    images = (np.concatenate([o["images"] for o in outputs])
              if outputs else self.x_train[:0])
    splits = {"train": columns(images, self.y_train[p.poison_indices],
                                p.poison_indices, p.poison_indices)}
    if p.heldout_indices.size:
      h = p.heldout_indices
      splits["validation"] = columns(self.x_train[h], self.y_train[h], h, h)
    return splits

  def stats(self, splits):
    t = splits["train"]
    return generation.perturbation_stats(self.x_train[t["index"]],
                                         t["image"])


# ---------------------------------------------------------------------------
# 2. A subset perturbed towards targets.


@dataclasses.dataclass(frozen=True, eq=False)
class TargetPlan:
  """Targets (test images), their adversarial class, and the poisons.

  Attributes:
    target_indices: `(groups, targets_per_group)` test indices.
    target_labels: their true labels, same shape.
    adversarial_labels: `(groups,)` the class each group's targets should be
      taken for (never a target's true label).
    poison_indices: `(groups, poisons_per_group)` training indices, all of
      the group's adversarial class, disjoint across groups.
    seed: the seed.
  """
  target_indices: np.ndarray
  target_labels: np.ndarray
  adversarial_labels: np.ndarray
  poison_indices: np.ndarray
  seed: int

  @property
  def num_groups(self) -> int:
    return int(self.target_indices.shape[0])

  def to_json(self) -> Dict[str, Any]:
    return {"seed": self.seed,
            "target_indices": self.target_indices.tolist(),
            "target_labels": self.target_labels.tolist(),
            "adversarial_labels": self.adversarial_labels.tolist(),
            "num_poisons": int(self.poison_indices.size),
            "poisons_per_group": int(self.poison_indices.shape[1]),
            "poison_indices_sha256": generation.sha256_json(
                self.poison_indices.tolist())}


def make_target_plan(y_train: np.ndarray, y_test: np.ndarray, *,
                     num_poisons: int, num_targets: int = 1,
                     num_groups: int = 1, seed: int = 0,
                     num_classes: Optional[int] = None,
                     target_class: Optional[int] = None,
                     adversarial_class: Optional[int] = None) -> TargetPlan:
  """Draws `num_groups` groups of targets and poisons from the seed.

  Each group: a target class and an adversarial class (distinct, drawn from
  the seed unless given, among the classes with enough test images to
  target and enough training images to poison), `num_targets` test images of
  the target class, and `num_poisons` training images of the adversarial
  class (disjoint from other groups' poisons).
  """
  y_train = np.asarray(y_train, np.int64)
  y_test = np.asarray(y_test, np.int64)
  if num_classes is None:
    num_classes = int(max(y_train.max(), y_test.max())) + 1
  for name, v in (("num_poisons", num_poisons), ("num_targets", num_targets),
                  ("num_groups", num_groups)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
  if num_classes < 2:
    raise ValueError("A targeted attack needs at least 2 classes.")
  targets, tlabels, adv, poisons = [], [], [], []
  used = np.zeros(y_train.shape[0], bool)
  for g in range(num_groups):
    stream = _TARGET_STREAM + 2 * g
    classes = np.arange(num_classes, dtype=np.int64)
    # Classes that can serve: enough test images to be targets, enough
    # unused training images to be poisons.
    can_target = np.asarray([np.sum(y_test == c) >= num_targets
                             for c in classes])
    can_poison = np.asarray([np.sum((y_train == c) & ~used) >= num_poisons
                             for c in classes])
    if target_class is not None:
      t_cls = int(target_class)
    else:
      ok = classes[can_target & (can_poison.sum() - can_poison > 0)]
      if not ok.size:
        raise ValueError(
            f"No class has {num_targets} test images to target while another "
            f"has {num_poisons} unused training images to poison; lower the "
            "budget or the number of targets.")
      t_cls = int(keyed_choice(seed, stream, ok, 1)[0])
    if adversarial_class is not None:
      a_cls = int(adversarial_class)
    else:
      ok = classes[can_poison & (classes != t_cls)]
      if not ok.size:
        raise ValueError(
            f"No class other than the target's ({t_cls}) has {num_poisons} "
            "unused training images; a budget of that many poisons cannot "
            "be drawn. Lower the budget.")
      a_cls = int(keyed_choice(seed, stream + 1, ok, 1)[0])
    if t_cls == a_cls:
      raise ValueError(f"The target class and the adversarial class are both "
                       f"{t_cls}; they must differ.")
    cand_t = np.flatnonzero(y_test == t_cls)
    if cand_t.shape[0] < num_targets:
      raise ValueError(f"The test split has {cand_t.shape[0]} images of class "
                       f"{t_cls}; {num_targets} targets were asked for.")
    # Order of the chosen targets: by keyed score (not index) so that the
    # first target of a larger draw is the target of a smaller one.
    t_idx = keyed_choice(seed, stream + 2 * num_groups, cand_t, num_targets)
    cand_p = np.flatnonzero((y_train == a_cls) & ~used)
    if cand_p.shape[0] < num_poisons:
      raise ValueError(
          f"The training split has {cand_p.shape[0]} unused images of the "
          f"adversarial class {a_cls}; a budget of {num_poisons} poisons "
          "was asked for. Lower the budget.")
    p_idx = keyed_choice(seed, _POISON_STREAM + g, cand_p, num_poisons)
    used[p_idx] = True
    targets.append(t_idx)
    tlabels.append(y_test[t_idx])
    adv.append(a_cls)
    poisons.append(p_idx)
  return TargetPlan(np.stack(targets), np.stack(tlabels),
                    np.asarray(adv, np.int64), np.stack(poisons), int(seed))


class TargetedJob(generation.Job):
  """Shape 2: a budget of training images perturbed towards targets.

  `prepare_fn(x_train, y_train, *, key, num_classes) -> Dict[str, array]`
  (optional) computes the input every group shares, e.g. a trained
  surrogate's parameters, with the key `PRNGKey(shared_seed)`; it is cached
  by `shared_payload` (what determines it; default: the job's config) with
  the data and code (`generation.SharedCache`), so a rebuild, or another
  config that trains the same surrogate, does not recompute it. `craft_fn(x_train, y_train, *,
  poison_indices, x_target, y_target, adversarial_label, key, shared,
  num_classes, on_step) -> uint8 (len(poison_indices), ...)` crafts one
  group's poisons.

  Splits: `train` (the whole training set with the poisons in place, each
  example's `is_poison`), `target` (the targets, with `adversarial_label`).
  """
  COLUMNS = {"is_poison": False, "adversarial_label": -1}
  unit_noun = "target group"
  independent_units = True

  def __init__(self, x_train, y_train, x_test, y_test, *, family: str,
               config: Any, craft_fn: Callable[..., Any], plan: TargetPlan,
               num_classes: int,
               prepare_fn: Optional[Callable[..., Dict[str, Any]]] = None,
               shared_name: str = "surrogate", shared_seed: int = 0,
               shared_payload: Optional[Dict[str, Any]] = None,
               steps_per_group: int = 0):
    self.x_train = _uint8_images("x_train", x_train)
    self.y_train = _labels("y_train", y_train, self.x_train.shape[0])
    self.x_test = _uint8_images("x_test", x_test)
    self.y_test = _labels("y_test", y_test, self.x_test.shape[0])
    self.craft_fn = craft_fn
    _set_common(self, family, config, prepare_fn, shared_name, shared_seed,
                shared_payload)
    self.plan = plan
    self.num_classes = int(num_classes)
    self.num_units = plan.num_groups
    self.steps_per_unit = steps_per_group
    self.shared = None

  def payload(self):
    return {"config": generation.jsonable(self.config),
            "plan": self.plan.to_json(), "num_classes": self.num_classes}

  def prepare(self, cache):
    self.shared = _prepare(self, cache)

  def run_unit(self, u, previous, *, on_step):
    import jax  # pylint: disable=g-import-not-at-top
    del previous
    p = self.plan
    t = p.target_indices[u]
    out = self.craft_fn(
        self.x_train, self.y_train, poison_indices=p.poison_indices[u],
        x_target=self.x_test[t], y_target=self.y_test[t],
        adversarial_label=int(p.adversarial_labels[u]),
        key=jax.random.fold_in(_key(p.seed), u), shared=self.shared,
        num_classes=self.num_classes, on_step=on_step)
    return {"images": np.asarray(out)}

  def check_unit(self, u, out):
    if "images" not in out:
      return "no images"
    shape = (self.plan.poison_indices.shape[1],) + self.x_train.shape[1:]
    return _check_uint8(out["images"], shape)

  def assemble(self, outputs):
    p = self.plan
    images = self.x_train.copy()
    is_poison = np.zeros(self.x_train.shape[0], bool)
    for u, o in enumerate(outputs):
      images[p.poison_indices[u]] = o["images"]
      is_poison[p.poison_indices[u]] = True
    n = self.x_train.shape[0]
    idx = np.arange(n, dtype=np.int64)
    t = p.target_indices.reshape(-1)
    adv = np.repeat(p.adversarial_labels, p.target_indices.shape[1])
    return {
        "train": columns(images, self.y_train, idx, idx,
                          is_poison=is_poison,
                          adversarial_label=np.full(n, -1, np.int64)),
        "target": columns(self.x_test[t], self.y_test[t], t,
                           np.arange(t.shape[0]),
                           is_poison=np.zeros(t.shape[0], bool),
                           adversarial_label=adv),
    }

  def stats(self, splits):
    tr = splits["train"]
    rows = np.flatnonzero(tr["is_poison"])
    return {**generation.perturbation_stats(
        self.x_train[tr["index"][rows]], tr["image"][rows]),
            "num_poisons": int(rows.shape[0]),
            "budget": rows.shape[0] / tr["index"].shape[0]}


# ---------------------------------------------------------------------------
# 3. New points added.


@dataclasses.dataclass(frozen=True, eq=False)
class AdditivePlan:
  """How many points are added, in which batches.

  Attributes:
    num_examples: size of the clean training set.
    num_poisons: points added.
    batch_size: points computed per unit (the last batch may be smaller).
    seed: the seed.
  """
  num_examples: int
  num_poisons: int
  batch_size: int
  seed: int

  @property
  def num_batches(self) -> int:
    return -(-self.num_poisons // self.batch_size)

  def batch(self, u: int) -> range:
    return range(u * self.batch_size,
                 min(self.num_poisons, (u + 1) * self.batch_size))

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self) | {"num_batches": self.num_batches}


class AdditiveJob(generation.Job):
  """Shape 3: new points added to the training set.

  `add_fn(x_train, y_train, *, x_added, y_added, count, key, shared,
  num_classes, on_step) -> (x_new uint8 (count, ...), y_new (count,))`
  computes the next `count` points given the ones added before (`x_added`,
  `y_added`). `prepare_fn` as for `TargetedJob`.

  Splits: `train` = the clean training set, then the added points (`index`
  -1, `is_poison` True); plus `extra_splits` as given (e.g. a `test` split
  restricted to a task's classes, which replaces the builder's).
  `source_index` is each clean example's index in its source split (default
  its position: the job was given the whole split).
  """
  COLUMNS = {"is_poison": False}
  unit_noun = "batch"

  def __init__(self, x_train, y_train, *, family: str, config: Any,
               add_fn: Callable[..., Any], num_poisons: int, num_classes: int,
               batch_size: int = 1, seed: int = 0,
               prepare_fn: Optional[Callable[..., Dict[str, Any]]] = None,
               shared_name: str = "shared", shared_seed: int = 0,
               shared_payload: Optional[Dict[str, Any]] = None,
               steps_per_batch: int = 0,
               source_index: Optional[np.ndarray] = None,
               extra_splits: Optional[Dict[str, Arrays]] = None):
    self.x_train = _uint8_images("x_train", x_train)
    self.y_train = _labels("y_train", y_train, self.x_train.shape[0])
    self.source_index = (np.arange(self.x_train.shape[0], dtype=np.int64)
                         if source_index is None
                         else np.asarray(source_index, np.int64))
    self.extra_splits = dict(extra_splits or {})
    for name, v in (("num_poisons", num_poisons), ("batch_size", batch_size)):
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
    self.add_fn = add_fn
    _set_common(self, family, config, prepare_fn, shared_name, shared_seed,
                shared_payload)
    self.num_classes = int(num_classes)
    self.plan = AdditivePlan(self.x_train.shape[0], int(num_poisons),
                             int(batch_size), int(seed))
    self.num_units = self.plan.num_batches
    self.steps_per_unit = steps_per_batch
    self.shared = None

  def payload(self):
    return {"config": generation.jsonable(self.config),
            "plan": self.plan.to_json(), "num_classes": self.num_classes,
            "source_index_sha256": generation.sha256_json(
                self.source_index.tolist())}

  def prepare(self, cache):
    self.shared = _prepare(self, cache)

  def _added(self, previous):
    shape = (0,) + self.x_train.shape[1:]
    if not previous:
      return np.zeros(shape, np.uint8), np.zeros(0, np.int64)
    return (np.concatenate([o["images"] for o in previous]),
            np.concatenate([o["labels"] for o in previous]))

  def run_unit(self, u, previous, *, on_step):
    import jax  # pylint: disable=g-import-not-at-top
    x_added, y_added = self._added(previous)
    x_new, y_new = self.add_fn(
        self.x_train, self.y_train, x_added=x_added, y_added=y_added,
        count=len(self.plan.batch(u)),
        key=jax.random.fold_in(_key(self.plan.seed), u), shared=self.shared,
        num_classes=self.num_classes, on_step=on_step)
    return {"images": np.asarray(x_new),
            "labels": np.asarray(y_new).astype(np.int64)}

  def check_unit(self, u, out):
    if "images" not in out or "labels" not in out:
      return "no images or labels"
    count = len(self.plan.batch(u))
    problem = _check_uint8(out["images"], (count,) + self.x_train.shape[1:])
    if problem:
      return problem
    y = out["labels"]
    if y.shape != (count,) or y.min(initial=0) < 0 or \
        y.max(initial=0) >= self.num_classes:
      return f"labels {y.shape} outside 0..{self.num_classes - 1}"
    return None

  def assemble(self, outputs):
    x_add, y_add = self._added(outputs)
    n, k = self.x_train.shape[0], x_add.shape[0]
    return {"train": columns(
        np.concatenate([self.x_train, x_add]),
        np.concatenate([self.y_train, y_add]),
        np.concatenate([self.source_index, np.full(k, -1)]),
        np.arange(n + k),
        is_poison=np.concatenate([np.zeros(n, bool), np.ones(k, bool)])),
            **self.extra_splits}

  def stats(self, splits):
    del splits
    return {"num_poisons": self.plan.num_poisons,
            "poison_fraction": self.plan.num_poisons / (
                self.plan.num_poisons + self.plan.num_examples)}


# ---------------------------------------------------------------------------


def _set_common(job, family, config, prepare_fn, shared_name, shared_seed,
                shared_payload):
  """The attributes every job with a shared input has."""
  job.family = family
  job.config = config
  job.prepare_fn = prepare_fn
  job.shared_name = shared_name
  job.shared_seed = int(shared_seed)
  job.shared_payload = shared_payload


def _prepare(job, cache):
  """The job's shared input through the cache (None without prepare_fn)."""
  if job.prepare_fn is None:
    return None
  payload = {"shared_seed": job.shared_seed, "num_classes": job.num_classes,
             "config": generation.jsonable(
                 job.shared_payload if job.shared_payload is not None
                 else job.config)}

  def compute():
    return job.prepare_fn(job.x_train, job.y_train,
                          key=_key(job.shared_seed),
                          num_classes=job.num_classes)

  return cache.get(job.shared_name, payload, compute)


def _uint8_images(name, x) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype != np.uint8 or x.ndim != 4:
    raise ValueError(f"{name} must be uint8 images (n, h, w, c), got "
                     f"{x.dtype} {x.shape}.")
  return x


def _labels(name, y, n) -> np.ndarray:
  y = np.asarray(y)
  if y.shape != (n,):
    raise ValueError(f"{name} has shape {y.shape}; expected ({n},).")
  return y.astype(np.int64)


__all__ = [
    "keyed_scores", "keyed_choice", "columns", "BlockPlan", "make_block_plan",
    "default_val_size", "BlockJob", "TargetPlan", "make_target_plan",
    "TargetedJob", "AdditivePlan", "AdditiveJob", "BLOCK_PROTOCOLS",
]

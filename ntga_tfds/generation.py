"""Where transforms meet data: blocks, validation folds, checkpoints, stats.

`generate` poisons a training set block by block with any attack of
`ntga_tfds.transforms` and is what every poisoned-dataset builder calls:

  >>> result = generation.generate(
  ...     x_train, y_train, attack=generation.ntga_attack(cfg),
  ...     num_classes=10, seed=0, checkpoint_dir="/tmp/ckpt")
  >>> result.images.shape == x_train.shape
  True

The plan (`make_plan`) is a pure function of the number of examples, the
block size, the protocol, the validation size and the seed:

* blocks: consecutive runs of `block_size` examples (in the source's
  canonical order); the last, partial block is poisoned too. Block `b` is
  attacked with the key `jax.random.fold_in(jax.random.PRNGKey(seed), b)`,
  as `ntga.poison` does.
* protocol "all_train" (default): every training example is poisoned. Block
  `b` is attacked against a validation fold of `val_size` examples drawn,
  with a keyed hash of (seed, b, index), from the *other* training examples:
  never from the block itself, never from the test split. A training set
  that fits in one block is split in two blocks so that a fold exists.
* protocol "paper": `val_size` examples (chosen by the same keyed hash) are
  held out clean; every block is attacked against all of them, and they are
  released as a `validation` split (the NTGA paper's protocol).

The selection uses a fixed integer hash rather than NumPy's generators, so
the plan is the same on every NumPy version.

Checkpoints. With `checkpoint_dir`, each finished block is written to
`<checkpoint_dir>/<fingerprint>/block_<b>.npy` atomically (temporary file,
then rename), and a later run with the same fingerprint reuses it, so a
killed build resumes where it stopped and gives byte-identical output (every
block is a deterministic function of its inputs). The fingerprint hashes
everything that determines the output: the data, the attack's full config,
the plan, the source code of `ntga_tfds.transforms`, and the versions of
ntga_tfds, JAX and neural-tangents and the JAX backend. A changed input gives
a new directory, so stale blocks are never reused.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Dict, Optional

import numpy as np

FORMAT_VERSION = 1
MAX_DEFAULT_VAL_SIZE = 10_000
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# Attacks as generation sees them.


@dataclasses.dataclass(frozen=True)
class Attack:
  """One transform and its config.

  Attributes:
    name: "ntga" or "random_noise".
    config: the transform's frozen config dataclass.
    uses_validation: whether blocks need a validation set.
    block_size: examples per block (None: the whole set is one block).
    steps_per_block: optimiser steps per block, for the progress bar.
    fn: `fn(x, y, *, x_val, y_val, key, num_classes, on_step) -> uint8`.
  """
  name: str
  config: Any
  uses_validation: bool
  block_size: Optional[int]
  steps_per_block: int
  fn: Callable[..., np.ndarray]

  def config_json(self) -> Dict[str, Any]:
    return _jsonable(dataclasses.asdict(self.config))


def ntga_attack(config) -> Attack:
  """NTGA (`ntga_tfds.transforms.ntga.poison_block`) as an `Attack`."""
  from ntga_tfds.transforms import ntga  # pylint: disable=g-import-not-at-top

  def fn(x, y, *, x_val, y_val, key, num_classes, on_step):
    return ntga.poison_block(x, y, x_val=x_val, y_val=y_val, key=key,
                             config=config, num_classes=num_classes,
                             on_step=on_step)

  steps = 1 if config.optimizer == "as_published" else config.nb_iter
  return Attack("ntga", config, True, config.block_size, steps, fn)


def random_noise_attack(config, block_size: Optional[int] = None) -> Attack:
  """The random-noise control (`random_noise.poison`) as an `Attack`."""
  from ntga_tfds.transforms import random_noise  # pylint: disable=g-import-not-at-top

  def fn(x, y, *, x_val, y_val, key, num_classes, on_step):
    del x_val, y_val, num_classes, on_step
    return random_noise.poison(x, y, key=key, config=config)

  return Attack("random_noise", config, False, block_size, 0, fn)


def make_attack(name: str, config) -> Attack:
  if name == "ntga":
    return ntga_attack(config)
  if name == "random_noise":
    return random_noise_attack(config)
  raise ValueError(f"Unknown attack {name!r}.")


# ---------------------------------------------------------------------------
# The plan.


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


_HELDOUT_STREAM = 1 << 40
_FOLD_STREAM = 1 << 41


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
  """Which examples are poisoned, in which blocks, against which validation.

  Attributes:
    num_examples: size of the training set.
    block_size: effective examples per block.
    protocol: "all_train" or "paper".
    val_size: validation examples per block (0 if the attack needs none).
    seed: the seed.
    poison_indices: training indices poisoned, ascending (every index for
      "all_train"; all but the held-out ones for "paper").
    heldout_indices: the paper protocol's held-out validation indices.
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
    if self.protocol == "paper":
      return self.heldout_indices
    mask = np.ones(self.num_examples, bool)
    mask[self.block(b)] = False
    return keyed_choice(self.seed, _FOLD_STREAM + b, np.flatnonzero(mask),
                        self.val_size)

  def to_json(self) -> Dict[str, Any]:
    return {"num_examples": self.num_examples, "block_size": self.block_size,
            "num_blocks": self.num_blocks, "protocol": self.protocol,
            "val_size": self.val_size, "seed": self.seed,
            "num_poisoned": int(self.poison_indices.shape[0]),
            "num_heldout": int(self.heldout_indices.shape[0])}


def default_val_size(num_examples: int) -> int:
  """min(10,000, n // 5): the paper's 10,000 for MNIST and CIFAR-10."""
  return max(1, min(MAX_DEFAULT_VAL_SIZE, num_examples // 5))


def make_plan(num_examples: int, *, block_size: Optional[int],
              protocol: str = "all_train", val_size: Optional[int] = None,
              seed: int = 0, uses_validation: bool = True) -> Plan:
  """The blocks and validation sets for a training set (see module doc)."""
  n = int(num_examples)
  if n < 1:
    raise ValueError("The training set is empty.")
  if protocol not in ("all_train", "paper"):
    raise ValueError(f"protocol must be 'all_train' or 'paper', got "
                     f"{protocol!r}.")
  all_idx = np.arange(n, dtype=np.int64)
  bs = n if block_size is None else int(block_size)
  if not uses_validation:
    return Plan(n, min(bs, n), protocol, 0, seed, all_idx,
                np.zeros(0, np.int64))
  if val_size is None:
    val_size = default_val_size(n)
  val_size = int(val_size)
  if protocol == "paper":
    if not 1 <= val_size < n:
      raise ValueError(f"val_size={val_size} held-out examples leave no "
                       f"training example of {n} to poison.")
    heldout = keyed_choice(seed, _HELDOUT_STREAM, all_idx, val_size)
    mask = np.ones(n, bool)
    mask[heldout] = False
    poison = np.flatnonzero(mask).astype(np.int64)
    return Plan(n, min(bs, poison.shape[0]), protocol, val_size, seed,
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
  return Plan(n, bs, protocol, val_size, seed, all_idx, np.zeros(0, np.int64))


# ---------------------------------------------------------------------------
# Fingerprints and checkpoints.


def _jsonable(value):
  if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
    return str(value)
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return _jsonable(value.item())
  return value


def package_versions() -> Dict[str, str]:
  """Versions of the packages a generation depends on."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {}
  for dist in ("ntga-tfds", "jax", "jaxlib", "neural-tangents", "numpy",
               "tensorflow", "tensorflow-datasets"):
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      out[dist] = "not installed"
  return out


def transforms_source_sha256() -> str:
  """Hash of the source files of `ntga_tfds.transforms`."""
  from ntga_tfds import transforms  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  root = pathlib.Path(transforms.__file__).parent
  for p in sorted(root.glob("*.py")):
    h.update(p.name.encode())
    h.update(p.read_bytes())
  return h.hexdigest()


def fingerprint_payload(*, attack: Attack, plan: Plan, data_sha256: str,
                        num_classes: int) -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  versions = package_versions()
  return {
      "format": FORMAT_VERSION,
      "attack": attack.name,
      "attack_config": attack.config_json(),
      "plan": plan.to_json(),
      "num_classes": int(num_classes),
      "data_sha256": data_sha256,
      "transforms_sha256": transforms_source_sha256(),
      "versions": {k: versions[k] for k in
                   ("ntga-tfds", "jax", "jaxlib", "neural-tangents")},
      "jax_backend": jax.default_backend(),
  }


def fingerprint(payload: Dict[str, Any]) -> str:
  text = json.dumps(_jsonable(payload), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


class CheckpointStore:
  """Finished blocks of one generation, under a fingerprinted directory."""

  def __init__(self, root, payload: Dict[str, Any]):
    self.fingerprint = fingerprint(payload)
    self.directory = pathlib.Path(os.fspath(root)) / self.fingerprint
    self.directory.mkdir(parents=True, exist_ok=True)
    manifest = self.directory / "manifest.json"
    if not manifest.exists():
      _atomic_write(manifest, json.dumps(_jsonable(payload), indent=2,
                                         sort_keys=True).encode())

  def path(self, b: int) -> pathlib.Path:
    return self.directory / f"block_{b:06d}.npy"

  def load(self, b: int, shape) -> Optional[np.ndarray]:
    """The finished block `b`, or None (missing or unreadable)."""
    p = self.path(b)
    if not p.exists():
      return None
    try:
      with open(p, "rb") as f:
        arr = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError):
      return None
    if arr.dtype != np.uint8 or arr.shape != tuple(shape):
      return None
    return arr

  def save(self, b: int, arr: np.ndarray) -> None:
    buf = _npy_bytes(np.ascontiguousarray(arr, np.uint8))
    _atomic_write(self.path(b), buf)

  def remove(self) -> None:
    if self.directory.exists():
      for p in self.directory.iterdir():
        p.unlink()
      self.directory.rmdir()


def _npy_bytes(arr: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  bio = io.BytesIO()
  np.save(bio, arr, allow_pickle=False)
  return bio.getvalue()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` so that `path` is either absent or complete."""
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Statistics.


def perturbation_stats(clean: np.ndarray, poisoned: np.ndarray,
                       chunk: int = 4096) -> Dict[str, Any]:
  """Size of the perturbation between two uint8 image arrays.

  Returns:
    linf_max_levels (int, of 255), linf_max (pixel units), l2_mean and
    l2_max (per-image L2 norm in pixel units, [0, 1] scale), psnr_db (over
    the whole split; None if nothing changed), changed_pixel_fraction.
  """
  if clean.shape != poisoned.shape:
    raise ValueError(f"shapes differ: {clean.shape} vs {poisoned.shape}")
  n = clean.shape[0]
  linf, l2_sum, l2_max, sq_sum, changed = 0, 0.0, 0.0, 0.0, 0
  for s in range(0, n, chunk):
    d = (poisoned[s:s + chunk].astype(np.int16)
         - clean[s:s + chunk].astype(np.int16)).reshape(
             min(chunk, n - s), -1)
    linf = max(linf, int(np.abs(d).max()) if d.size else 0)
    sq = np.sum(d.astype(np.float64) ** 2, axis=1) / 255.0**2
    l2 = np.sqrt(sq)
    l2_sum += float(l2.sum())
    l2_max = max(l2_max, float(l2.max()))
    sq_sum += float(sq.sum())
    changed += int(np.count_nonzero(d))
  total = clean.size
  mse = sq_sum / total
  return {
      "linf_max_levels": linf,
      "linf_max": linf / 255.0,
      "l2_mean": l2_sum / n,
      "l2_max": l2_max,
      "psnr_db": None if mse == 0 else 10.0 * math.log10(1.0 / mse),
      "changed_pixel_fraction": changed / total,
  }


# ---------------------------------------------------------------------------
# Generation.


@dataclasses.dataclass(frozen=True, eq=False)
class GenerationResult:
  """What `generate` produced.

  Attributes:
    images: uint8 poisoned images, aligned with `plan.poison_indices`.
    plan: the plan used.
    stats: `perturbation_stats` of the poisoned examples.
    seconds: wall time of this call.
    blocks_resumed: blocks read back from checkpoints.
    blocks_computed: blocks computed by this call.
    fingerprint: the checkpoint fingerprint.
    checkpoint_dir: where the blocks were checkpointed (None if not).
    generated_at: UTC ISO time when this call finished.
  """
  images: np.ndarray
  plan: Plan
  stats: Dict[str, Any]
  seconds: float
  blocks_resumed: int
  blocks_computed: int
  fingerprint: str
  checkpoint_dir: Optional[str]
  generated_at: str


def _progress(total, desc, enabled, **kwargs):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True,
              **kwargs)


def generate(x_train: np.ndarray, y_train: np.ndarray, *, attack: Attack,
             num_classes: int, seed: int = 0, protocol: str = "all_train",
             val_size: Optional[int] = None, checkpoint_dir=None,
             data_sha256: Optional[str] = None,
             progress: Optional[bool] = None,
             on_block: Optional[Callable[[int, int], None]] = None
             ) -> GenerationResult:
  """Poisons `x_train` block by block (see the module doc for the plan).

  Args:
    x_train: `(n, h, w, c)` uint8 clean training images.
    y_train: `(n,)` integer labels.
    attack: from `ntga_attack` / `random_noise_attack`.
    num_classes: number of classes.
    seed: PRNG seed (keys and validation folds).
    protocol: "all_train" or "paper".
    val_size: validation examples per block; default `default_val_size(n)`.
    checkpoint_dir: where finished blocks are kept (under a fingerprinted
      subdirectory); None: no checkpoints.
    data_sha256: hash of (x_train, y_train) if already known.
    progress: show tqdm bars for blocks and optimiser steps; default: yes
      unless the environment sets NTGA_TFDS_PROGRESS=0.
    on_block: called as `on_block(b, num_blocks)` after block `b` is
      finished (and checkpointed).

  Returns:
    `GenerationResult`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  start = time.time()
  if progress is None:
    progress = os.environ.get("NTGA_TFDS_PROGRESS", "1") != "0"
  x_train = np.asarray(x_train)
  y_train = np.asarray(y_train)
  if x_train.dtype != np.uint8:
    raise ValueError(f"x_train must be uint8, got {x_train.dtype}.")
  if y_train.shape != (x_train.shape[0],):
    raise ValueError(f"y_train has shape {y_train.shape}; expected "
                     f"({x_train.shape[0]},).")
  plan = make_plan(x_train.shape[0], block_size=attack.block_size,
                   protocol=protocol, val_size=val_size, seed=seed,
                   uses_validation=attack.uses_validation)
  if data_sha256 is None:
    from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
    data_sha256 = sources.content_sha256(x_train, y_train)
  payload = fingerprint_payload(attack=attack, plan=plan,
                                data_sha256=data_sha256,
                                num_classes=num_classes)
  store = (CheckpointStore(checkpoint_dir, payload)
           if checkpoint_dir is not None else None)
  fp = store.fingerprint if store else fingerprint(payload)
  out = np.empty((plan.poison_indices.shape[0],) + x_train.shape[1:],
                 np.uint8)
  key = jax.random.PRNGKey(seed)
  resumed = computed = 0
  blocks_bar = _progress(plan.num_blocks, f"{attack.name} blocks", progress,
                         unit="block")
  try:
    for b in range(plan.num_blocks):
      sl = plan.block_slice(b)
      idx = plan.block(b)
      done = store.load(b, (idx.shape[0],) + x_train.shape[1:]) if store \
          else None
      if done is not None:
        out[sl] = done
        resumed += 1
        blocks_bar.set_postfix(resumed=resumed)
        blocks_bar.update(1)
        continue
      val = plan.validation(b)
      steps_bar = _progress(attack.steps_per_block, f"block {b} steps",
                            progress and attack.steps_per_block > 0,
                            leave=False, unit="step")

      def on_step(step, loss, _bar=steps_bar):
        del step
        _bar.set_postfix(loss=f"{loss:.4f}")
        _bar.update(1)

      try:
        block = attack.fn(x_train[idx], y_train[idx], x_val=x_train[val],
                          y_val=y_train[val],
                          key=jax.random.fold_in(key, b),
                          num_classes=num_classes, on_step=on_step)
      finally:
        steps_bar.close()
      block = np.asarray(block)
      if block.dtype != np.uint8 or block.shape != (idx.shape[0],) + \
          x_train.shape[1:]:
        raise RuntimeError(
            f"{attack.name} returned {block.dtype} {block.shape} for a "
            f"block of shape {(idx.shape[0],) + x_train.shape[1:]}.")
      out[sl] = block
      computed += 1
      if store:
        store.save(b, block)
      blocks_bar.update(1)
      if on_block is not None:
        on_block(b, plan.num_blocks)
  finally:
    blocks_bar.close()
  stats = perturbation_stats(x_train[plan.poison_indices], out)
  return GenerationResult(
      images=out, plan=plan, stats=stats, seconds=time.time() - start,
      blocks_resumed=resumed, blocks_computed=computed, fingerprint=fp,
      checkpoint_dir=str(store.directory) if store else None,
      generated_at=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"))


__all__ = [
    "Attack", "ntga_attack", "random_noise_attack", "make_attack", "Plan",
    "make_plan", "default_val_size", "keyed_choice", "CheckpointStore",
    "fingerprint_payload", "fingerprint", "perturbation_stats",
    "package_versions", "transforms_source_sha256", "GenerationResult",
    "generate",
]

"""Runs a poisoning job in units of work, with checkpoints, resume and stats.

Every poisoned dataset is generated the same way, whatever the attack: its
family (`ntga_tfds.families`) turns a builder config and the clean data into
a `Job` (one of the shapes in `ntga_tfds.plans`), and `run` executes it:

  >>> job = plans.BlockJob(x_train, y_train, poison_fn=fn, block_size=512,
  ...                      seed=0, num_classes=10, ...)
  >>> result = generation.run(job, checkpoint_dir="/tmp/ckpt",
  ...                         data_sha256=sha)
  >>> result.splits["train"]["image"].shape
  (50000, 32, 32, 3)

A job is a list of units (NTGA: blocks; a targeted attack: target groups; an
attack that adds points: batches of new points), each a deterministic
function of the job's inputs, its shared inputs (`Job.prepare`, e.g. a
trained surrogate, computed once and cached) and the outputs of the units
before it. `run` computes the units in order and assembles the splits.

Checkpoints. With `checkpoint_dir`, each finished unit's arrays are written
to `<checkpoint_dir>/<fingerprint>/unit_<u>.npz` atomically (temporary file,
then rename), shared inputs to `shared_dir` (`SharedCache`, keyed by what
determines them), and a later run with the same fingerprint reuses them, so a killed build resumes where it stopped and
gives byte-identical output. The fingerprint hashes everything that
determines the output: the job's payload (family, attack config, plan), the
data, the source code of `ntga_tfds.transforms` (Python and native), which
implementation runs (`implementation`, e.g. native or pure-JAX kernels and
the switches that choose them), and the versions of ntga_tfds, JAX and
neural-tangents. A changed input gives a new directory, so stale units are
never reused.

This module imports neither TensorFlow nor TFDS.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

FORMAT_VERSION = 2

Arrays = Dict[str, np.ndarray]
Splits = Dict[str, Arrays]


def jsonable(value):
  """`value` with what JSON cannot hold made JSON-able, the one rule for
  configs, fingerprints and metadata: inf and nan as the strings "inf",
  "-inf", "nan"; NumPy scalars and arrays as Python values; tuples as lists;
  dict keys as strings; dataclasses as dicts."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = {f.name: getattr(value, f.name)
             for f in dataclasses.fields(value)}
  if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
    return str(value)
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, np.generic):
    return jsonable(value.item())
  return value


def sha256_json(payload: Any) -> str:
  text = json.dumps(jsonable(payload), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------
# Jobs.


class Job(abc.ABC):
  """A generation's work: units computed in order, then assembled.

  Subclasses (the shapes in `ntga_tfds.plans`) set `family`, `num_units`
  and `steps_per_unit` and implement the abstract methods. A unit's output
  is a dict of NumPy arrays (what is checkpointed); it must be a
  deterministic function of the job's inputs, its shared inputs and the
  outputs of earlier units.
  """

  family: str = ""
  num_units: int = 0
  steps_per_unit: int = 0   # optimiser steps per unit, for progress bars
  unit_noun: str = "unit"   # "block", "target group", ... for progress bars
  # Whether `run_unit` ignores `previous` (after `prepare`, every unit is a
  # function of the job's inputs and its shared inputs alone): then units
  # may be computed concurrently, elsewhere, in any order (`distribute`).
  independent_units: bool = False

  @abc.abstractmethod
  def payload(self) -> Dict[str, Any]:
    """JSON-able description of what defines the output (config, plan)."""

  def prepare(self, cache: "SharedCache") -> None:
    """Computes (or reads from `cache`) inputs shared by every unit."""
    del cache

  @abc.abstractmethod
  def run_unit(self, u: int, previous: Sequence[Arrays], *,
               on_step: Callable[[int, float], None]) -> Arrays:
    """Computes unit `u`; `previous` holds the outputs of units 0..u-1."""

  def check_unit(self, u: int, out: Arrays) -> Optional[str]:
    """Why `out` (computed or read back) is not a valid output of unit `u`,
    or None. A checkpoint that fails this check is recomputed."""
    del u, out
    return None

  @abc.abstractmethod
  def assemble(self, outputs: Sequence[Arrays]) -> Splits:
    """The generated splits: split -> columns (`image`, `label`, `index`,
    `key` and the family's extra columns), from every unit's output."""

  def plan_json(self) -> Dict[str, Any]:
    """The plan part of the metadata (which examples, which units)."""
    return self.payload().get("plan", {})

  def stats(self, splits: Splits) -> Dict[str, Any]:
    """Statistics of the result for the metadata (e.g. perturbation size)."""
    del splits
    return {}


# ---------------------------------------------------------------------------
# Fingerprints and checkpoints.


def package_versions() -> Dict[str, str]:
  """Versions of the packages a generation depends on."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {}
  for dist in ("ntga-tfds", "jax", "jaxlib", "neural-tangents", "flax",
               "optax", "numpy", "tensorflow", "tensorflow-datasets"):
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      out[dist] = "not installed"
  return out


def transforms_source_sha256() -> str:
  """Hash of every source file of `ntga_tfds.transforms`: its Python
  modules and its native sources (C++ and headers), in every subpackage."""
  from ntga_tfds import transforms  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  root = pathlib.Path(transforms.__file__).parent
  files = [p for p in root.rglob("*")
           if p.suffix in (".py", ".cc", ".h") and p.is_file()
           and "__pycache__" not in p.parts]
  for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
    h.update(p.relative_to(root).as_posix().encode())
    h.update(b"\0")
    h.update(p.read_bytes())
  return h.hexdigest()


def fingerprint_payload(job: Job, *, data_sha256: str,
                        implementation: Optional[Mapping[str, Any]] = None
                        ) -> Dict[str, Any]:
  """Everything that determines a job's output bytes."""
  import jax  # pylint: disable=g-import-not-at-top
  versions = package_versions()
  return {
      "format": FORMAT_VERSION,
      "family": job.family,
      "job": job.payload(),
      "data_sha256": data_sha256,
      "transforms_sha256": transforms_source_sha256(),
      "implementation": dict(implementation or {}),
      "versions": {k: versions[k] for k in
                   ("ntga-tfds", "jax", "jaxlib", "neural-tangents", "flax",
                    "optax")},
      "jax_backend": jax.default_backend(),
  }


def fingerprint(payload: Mapping[str, Any]) -> str:
  return sha256_json(payload)[:24]


def _npz_bytes(arrays: Arrays) -> bytes:
  bio = io.BytesIO()
  # np.asarray, not np.ascontiguousarray: the latter makes 0-d arrays 1-d.
  np.savez(bio, **{k: np.asarray(v) for k, v in arrays.items()})
  return bio.getvalue()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` so that `path` is either absent or complete."""
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_npz(path: pathlib.Path) -> Optional[Arrays]:
  if not path.exists():
    return None
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
    return None


class CheckpointStore:
  """Finished units and shared inputs of one job, in a fingerprinted folder."""

  def __init__(self, root, payload: Mapping[str, Any]):
    self.fingerprint = fingerprint(payload)
    self.directory = pathlib.Path(os.fspath(root)) / self.fingerprint
    self.directory.mkdir(parents=True, exist_ok=True)
    manifest = self.directory / "manifest.json"
    if not manifest.exists():
      _atomic_write(manifest, json.dumps(jsonable(payload), indent=2,
                                         sort_keys=True).encode())

  def path(self, u: int) -> pathlib.Path:
    return self.directory / f"unit_{u:06d}.npz"

  def load(self, u: int) -> Optional[Arrays]:
    """Unit `u`'s arrays, or None (missing or unreadable)."""
    return _read_npz(self.path(u))

  def save(self, u: int, arrays: Arrays) -> None:
    _atomic_write(self.path(u), _npz_bytes(arrays))

  def remove(self) -> None:
    if self.directory.exists():
      for p in self.directory.iterdir():
        p.unlink()
      self.directory.rmdir()


class SharedCache:
  """Shared inputs of jobs (e.g. a trained surrogate's parameters), computed
  once: `get(name, payload, compute)` returns the cached arrays or computes,
  stores and returns them.

  A shared input is keyed by its own `payload` (what determines it, e.g. the
  surrogate's settings and seed) plus the data, code, implementation and
  versions of the run, not by the whole job: several configs (other
  targets, other seeds) that train the same surrogate reuse it. It lives in
  `directory` (a builder passes one folder per dataset, kept after the build
  for the other configs), else in the job's checkpoint folder; without
  either it is only computed.
  """

  def __init__(self, directory, base: Mapping[str, Any]):
    self.directory = (pathlib.Path(os.fspath(directory))
                      if directory is not None else None)
    self._base = dict(base)
    self.computed: List[str] = []
    self.resumed: List[str] = []

  def path(self, name: str, payload: Mapping[str, Any]) -> Optional[
      pathlib.Path]:
    if self.directory is None:
      return None
    key = sha256_json({"name": name, "payload": payload,
                       "base": self._base})[:24]
    return self.directory / f"{name}-{key}.npz"

  def get(self, name: str, payload: Mapping[str, Any],
          compute: Callable[[], Arrays]) -> Arrays:
    path = self.path(name, payload)
    if path is not None:
      done = _read_npz(path)
      if done is not None:
        self.resumed.append(name)
        return done
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    if path is not None:
      path.parent.mkdir(parents=True, exist_ok=True)
      _atomic_write(path, _npz_bytes(arrays))
    self.computed.append(name)
    return arrays


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
  if n == 0:
    return {"linf_max_levels": 0, "linf_max": 0.0, "l2_mean": 0.0,
            "l2_max": 0.0, "psnr_db": None, "changed_pixel_fraction": 0.0}
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
# Running a job.


@dataclasses.dataclass(frozen=True, eq=False)
class Result:
  """What `run` produced.

  Attributes:
    splits: split -> columns (`image`, `label`, `index`, `key`, extras).
    outputs: every unit's arrays, in order.
    stats: `Job.stats` of the splits.
    seconds: wall time of this call.
    units_resumed: units read back from checkpoints.
    units_computed: units computed by this call.
    shared_resumed, shared_computed: names of shared inputs read back /
      computed.
    fingerprint: the checkpoint fingerprint.
    checkpoint_dir: where the units were checkpointed (None if not).
    generated_at: UTC ISO time when this call finished.
  """
  splits: Splits
  outputs: List[Arrays]
  stats: Dict[str, Any]
  seconds: float
  units_resumed: int
  units_computed: int
  shared_resumed: List[str]
  shared_computed: List[str]
  fingerprint: str
  checkpoint_dir: Optional[str]
  generated_at: str


def open_stores(job: Job, *, data_sha256: str, checkpoint_dir=None,
                shared_dir=None,
                implementation: Optional[Mapping[str, Any]] = None):
  """`(store, cache, fingerprint)` of a job: where its finished units
  (`CheckpointStore`, None without `checkpoint_dir`) and its shared inputs
  (`SharedCache`) live. What `run` uses; a worker that computes some of the
  units (`distribute`) opens the same ones from the same arguments."""
  payload = fingerprint_payload(job, data_sha256=data_sha256,
                                implementation=implementation)
  store = (CheckpointStore(checkpoint_dir, payload)
           if checkpoint_dir is not None else None)
  fp = store.fingerprint if store else fingerprint(payload)
  base = {k: v for k, v in payload.items() if k != "job"}
  cache = SharedCache(
      shared_dir if shared_dir is not None
      else (store.directory if store else None), base)
  return store, cache, fp


def compute_unit(job: Job, u: int, previous: Sequence[Arrays] = (), *,
                 store: Optional[CheckpointStore] = None,
                 on_step: Optional[Callable[[int, float], None]] = None
                 ) -> Arrays:
  """Runs unit `u`, checks it and checkpoints it (if `store`)."""
  out = job.run_unit(u, previous, on_step=on_step or (lambda *_: None))
  out = {k: np.asarray(v) for k, v in out.items()}
  problem = job.check_unit(u, out)
  if problem is not None:
    raise RuntimeError(f"{job.family} {job.unit_noun} {u}: {problem}")
  if store is not None:
    store.save(u, out)
  return out


def load_unit(job: Job, u: int,
              store: Optional[CheckpointStore]) -> Optional[Arrays]:
  """Unit `u`'s checkpoint if present and valid, else None."""
  done = store.load(u) if store else None
  if done is not None and job.check_unit(u, done) is None:
    return done
  return None


# `distribute(job, units, *, store, cache) -> {u: arrays} or None`:
# computes the given units of a prepared job with independent units
# somewhere else (other devices, Beam workers); units it does not return
# must be in `store` afterwards. None: it declined, and `run` computes them
# in order. See `ntga_tfds.parallel`.
Distribute = Callable[..., Mapping[int, Arrays]]


def _progress(total, desc, enabled, **kwargs):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True,
              **kwargs)


def run(job: Job, *, data_sha256: str, checkpoint_dir=None,
        shared_dir=None,
        implementation: Optional[Mapping[str, Any]] = None,
        progress: Optional[bool] = None,
        on_unit: Optional[Callable[[int, int], None]] = None,
        stop_after: Optional[int] = None,
        distribute: Optional[Distribute] = None) -> Result:
  """Computes (or resumes) every unit of `job` and assembles its splits.

  Args:
    job: the work (`ntga_tfds.plans`).
    data_sha256: hash of the clean data the job reads.
    checkpoint_dir: where finished units are kept (under a fingerprinted
      subdirectory); None: no checkpoints.
    shared_dir: where shared inputs are cached (`SharedCache`); default:
      the job's checkpoint folder.
    implementation: which code computes the attack (the family's
      `implementation()`), part of the fingerprint.
    progress: tqdm bars for units and optimiser steps; default: yes unless
      the environment sets NTGA_TFDS_PROGRESS=0.
    on_unit: called as `on_unit(u, num_units)` after unit `u` is finished
      (and checkpointed).
    stop_after: compute at most this many units, then raise `Interrupted`
      (to test resuming; the finished units stay checkpointed).
    distribute: for a job with `independent_units`, computes the units not
      yet checkpointed elsewhere (`ntga_tfds.parallel`: every local device,
      or Apache Beam workers) after `prepare` ran here once; the result is
      the same as computing them in order.

  Returns:
    `Result`.
  """
  start = time.time()
  if progress is None:
    progress = os.environ.get("NTGA_TFDS_PROGRESS", "1") != "0"
  store, cache, fp = open_stores(job, data_sha256=data_sha256,
                                 checkpoint_dir=checkpoint_dir,
                                 shared_dir=shared_dir,
                                 implementation=implementation)
  outputs: List[Arrays] = []
  resumed = computed = 0
  prepared = False
  ready: Dict[int, Arrays] = {}   # read back before the loop
  fresh: Dict[int, Arrays] = {}   # computed by `distribute`
  if distribute is not None and job.independent_units and stop_after is None:
    for u in range(job.num_units):
      done = load_unit(job, u, store)
      if done is not None:
        ready[u] = done
    pending = [u for u in range(job.num_units) if u not in ready]
    if pending:
      job.prepare(cache)  # shared inputs once, before any worker needs them
      prepared = True
      got = distribute(job, pending, store=store, cache=cache)
      if got is not None:  # None: declined (e.g. one device), run in order
        missing = []
        for u in pending:
          out = got[u] if u in got else load_unit(job, u, store)
          if out is None:
            missing.append(u)
          else:
            fresh[u] = out
        if missing:
          raise RuntimeError(
              f"{job.family}: {len(missing)} {job.unit_noun}s were not "
              f"computed by the distributed run (e.g. {missing[0]}).")
        computed = len(pending)
  bar = _progress(job.num_units, f"{job.family} {job.unit_noun}s", progress,
                  unit=job.unit_noun)
  try:
    for u in range(job.num_units):
      if u in fresh:
        outputs.append(fresh.pop(u))
        bar.update(1)
        continue
      done = ready.pop(u) if u in ready else load_unit(job, u, store)
      if done is not None:
        outputs.append(done)
        resumed += 1
        bar.set_postfix(resumed=resumed)
        bar.update(1)
        continue
      if stop_after is not None and computed >= stop_after:
        raise Interrupted(f"stopped after {computed} units (stop_after)")
      if not prepared:
        job.prepare(cache)
        prepared = True
      steps = _progress(job.steps_per_unit, f"{job.unit_noun} {u} steps",
                        progress and job.steps_per_unit > 0, leave=False,
                        unit="step")

      def on_step(step, loss, _bar=steps):
        del step
        _bar.set_postfix(loss=f"{loss:.4f}")
        _bar.update(1)

      try:
        out = compute_unit(job, u, outputs, store=store, on_step=on_step)
      finally:
        steps.close()
      outputs.append(out)
      computed += 1
      bar.update(1)
      if on_unit is not None:
        on_unit(u, job.num_units)
  finally:
    bar.close()
  splits = job.assemble(outputs)
  return Result(
      splits=splits, outputs=outputs, stats=job.stats(splits),
      seconds=time.time() - start, units_resumed=resumed,
      units_computed=computed, shared_resumed=list(cache.resumed),
      shared_computed=list(cache.computed), fingerprint=fp,
      checkpoint_dir=str(store.directory) if store else None,
      generated_at=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"))


class Interrupted(RuntimeError):
  """`run` stopped early on purpose (`stop_after`)."""


__all__ = [
    "Job", "run", "Result", "Interrupted", "CheckpointStore", "SharedCache",
    "fingerprint_payload", "fingerprint", "perturbation_stats",
    "open_stores", "compute_unit", "load_unit", "Distribute",
    "package_versions", "transforms_source_sha256", "jsonable",
    "sha256_json",
]

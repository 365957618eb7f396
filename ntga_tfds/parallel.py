"""Computing a generation's units elsewhere: every local device, or Beam.

A job whose units are independent (`generation.Job.independent_units`:
NTGA's blocks, a targeted attack's target groups) is prepared once by the
caller (shared inputs such as a trained surrogate are computed, and cached
as files) and its pending units are handed to a `distribute` function
(`generation.run(..., distribute=...)`):

* `local_devices()`: one thread per local JAX device, one process; each
  thread takes the next pending unit and computes it under
  `jax.default_device`. What an 8-GPU host uses without Beam.
* `beam(spec, options=...)`: an Apache Beam pipeline whose elements are the
  pending unit numbers; each worker rebuilds the job from `spec` (the
  dataset's name, builder config and directories: a `UnitSpec`), reads the
  shared inputs from the cache the driver filled, computes its units and
  writes each as an atomic checkpoint named by its number. The driver then
  assembles the splits from the checkpoints exactly as a single-process
  build does, so the dataset holds the same examples in the same order.

A unit computed twice (a retried bundle, a speculative worker) writes the
same bytes to the same file; a unit whose valid checkpoint exists is not
recomputed. So a runner's retries neither lose nor duplicate examples.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
from typing import Any, Mapping, Optional, Sequence

from ntga_tfds import generation

_LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Every local device, one process.


def local_devices(devices: Optional[Sequence[Any]] = None):
  """A `distribute` that spreads units over local JAX devices.

  Args:
    devices: the devices to use; default `jax.local_devices()`.

  Returns:
    `distribute(job, units, *, store, cache) -> {unit: arrays}`; with one
    device it declines (returns None: `generation.run` then runs the units
    in order itself).
  """

  def distribute(job, units, *, store, cache):
    del cache
    import jax  # pylint: disable=g-import-not-at-top
    devs = list(devices) if devices is not None else jax.local_devices()
    if len(devs) < 2:
      return None
    todo: "queue.Queue[int]" = queue.Queue()
    for u in units:
      todo.put(u)
    results, errors = {}, []
    lock = threading.Lock()

    def worker(device):
      with jax.default_device(device):
        while not errors:
          try:
            u = todo.get_nowait()
          except queue.Empty:
            return
          try:
            out = generation.compute_unit(job, u, store=store)
          except BaseException as e:  # noqa: BLE001 - re-raised below.
            with lock:
              errors.append(e)
            return
          with lock:
            results[u] = out

    threads = [threading.Thread(target=worker, args=(d,), daemon=True,
                                name=f"ntga_tfds-unit-{d}") for d in devs]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    if errors:
      raise errors[0]
    _LOG.info("%d %ss computed on %d devices", len(results), job.unit_noun,
              len(devs))
    return results

  return distribute


def devices_from_env() -> Optional[Sequence[Any]]:
  """The devices that `NTGA_TFDS_DEVICES` asks for, or None.

  "all": every local device; an integer n: the first n. Unset: every local
  device when there are several accelerators (GPU/TPU), else None (CPU
  devices share the same cores, so spreading over them gains nothing).
  """
  import jax  # pylint: disable=g-import-not-at-top
  want = os.environ.get("NTGA_TFDS_DEVICES", "").strip().lower()
  devs = jax.local_devices()
  if not want:
    if len(devs) > 1 and devs[0].platform != "cpu":
      return devs
    return None
  if want == "all":
    return devs
  try:
    n = int(want)
  except ValueError:
    raise ValueError(f"NTGA_TFDS_DEVICES must be 'all' or a number of "
                     f"devices, got {want!r}.") from None
  if not 1 <= n <= len(devs):
    raise ValueError(f"NTGA_TFDS_DEVICES={n}, but this process has "
                     f"{len(devs)} local JAX devices.")
  return devs[:n]


# ---------------------------------------------------------------------------
# Apache Beam.


@dataclasses.dataclass(frozen=True)
class UnitSpec:
  """What a Beam worker needs to rebuild a builder's job and stores.

  Attributes:
    dataset: the registered builder name (e.g. "mnist_ntga").
    config: its builder config (picklable; carries the attack config).
    data_dir: the TFDS data_dir root (workers must share its filesystem:
      the checkpoints and shared inputs live under it).
    manual_dir: where the source files are (the driver's resolved path).
    max_examples_per_split: the driver's download_config value.
    implementation: the driver's `Family.implementation(config)`; a worker
      whose own differs (another stack) refuses to compute, so that every
      unit comes from the same code.
  """
  dataset: str
  config: Any
  data_dir: str
  manual_dir: Optional[str]
  max_examples_per_split: Optional[int]
  implementation: Optional[Mapping[str, Any]]

  def open(self):
    """`(job, store, cache)` on this worker, the job prepared."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    import ntga_tfds  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    builder = tfds.builder_cls(self.dataset)(config=self.config,
                                             data_dir=self.data_dir)
    job, data_sha256, implementation, _, _ = builder.make_job(
        manual_dir=self.manual_dir,
        max_examples_per_split=self.max_examples_per_split)
    if generation.jsonable(implementation) != generation.jsonable(
        self.implementation):
      raise RuntimeError(
          f"{self.dataset}: this worker would compute with "
          f"{implementation}, the driver with {self.implementation}; "
          "install the same package and stack on every worker.")
    store, cache, _ = generation.open_stores(
        job, data_sha256=data_sha256,
        checkpoint_dir=builder.checkpoint_root(),
        shared_dir=builder.shared_root(), implementation=implementation)
    if store is None:
      raise RuntimeError(f"{self.dataset}: Beam workers need a data_dir on "
                         "a filesystem they share.")
    job.prepare(cache)
    return job, store, cache


def _unit_fn(spec: UnitSpec):
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  class ComputeUnit(beam.DoFn):
    """Computes one unit (unless its checkpoint exists); yields its number."""

    def __init__(self, spec):
      super().__init__()
      self._spec = spec
      self._opened = None

    def setup(self):
      self._opened = None  # opened lazily: a worker may get no element

    def process(self, u):
      if self._opened is None:
        self._opened = self._spec.open()
      job, store, _ = self._opened
      if generation.load_unit(job, u, store) is None:
        generation.compute_unit(job, u, store=store)
        beam.metrics.Metrics.counter("ntga_tfds", "units_computed").inc()
      yield u

  return ComputeUnit(spec)


def beam(spec: UnitSpec, *, options=None, runner=None):
  """A `distribute` that computes units on Apache Beam workers.

  Args:
    spec: how workers rebuild the job (`UnitSpec`).
    options: `apache_beam.options.pipeline_options.PipelineOptions` (what
      `tfds build --beam_pipeline_options=...` passes), or None.
    runner: a Beam runner (instance or name), or None (from `options`,
      default DirectRunner).

  Returns:
    `distribute(job, units, *, store, cache) -> {}`: the units end up in
    `store`, read back by `generation.run`.
  """

  def distribute(job, units, *, store, cache):
    del job, cache
    if store is None:
      raise ValueError("Beam generation needs checkpoints: a data_dir on a "
                       "filesystem the workers share.")
    import apache_beam as beam_lib  # pylint: disable=g-import-not-at-top
    with beam_lib.Pipeline(runner=runner, options=options) as p:
      _ = (p
           | "Units" >> beam_lib.Create(sorted(int(u) for u in units))
           | "Spread" >> beam_lib.Reshuffle()
           | "Attack" >> beam_lib.ParDo(_unit_fn(spec)))
    return {}

  return distribute


__all__ = ["local_devices", "devices_from_env", "UnitSpec", "beam"]

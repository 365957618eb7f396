"""Helpers shared by the benchmark scripts (run as `python bench/<script>`)."""

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms import ntga


def poison_block_seconds(x, y, x_val, y_val, *, config, num_classes=10):
  """Runs `ntga.poison_block` once: (seconds of each PGD step, total).

  The total is the whole call's wall time: input checks, validation
  chunks, the steps and the uint8 quantisation. On a first call the first
  step includes compilation.
  """
  start = time.perf_counter()
  times = poison_block_step_seconds(x, y, x_val, y_val, config=config,
                                    num_classes=num_classes)
  return times, time.perf_counter() - start


def poison_block_step_seconds(x, y, x_val, y_val, *, config,
                              num_classes=10):
  """Runs `ntga.poison_block` once; wall seconds of each PGD step.

  The first entry includes compilation.
  """
  times, last = [], [time.perf_counter()]

  def on_step(i, loss):
    del i, loss
    now = time.perf_counter()
    times.append(now - last[0])
    last[0] = now

  ntga.poison_block(x, y, x_val=x_val, y_val=y_val,
                    key=jax.random.PRNGKey(0), config=config,
                    num_classes=num_classes, on_step=on_step)
  return times


def device_peak_gib():
  """Peak memory of JAX's first device, where its backend reports it."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else round(peak / 2 ** 30, 2)


def report(result: dict, *, json_path=None, width: int = 45):
  """Prints `result` as aligned `key value` lines; also as JSON if asked."""
  for k, v in result.items():
    print(f"{k:{width}s} {v}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)


def matmul_gflops(n=None, repeats=5, precision="float32"):
  """GFLOP/s of a dense (n, n) float32 matmul, in full float32 precision as
  the attack runs its matmuls (on a GPU, "tensorfloat32" is XLA's default)."""
  if n is None:
    n = 4096 if jax.default_backend() == "cpu" else 16384
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  with jax.default_matmul_precision(precision):
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
      f(a).block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def peak_fma_gflops(repeats=3):
  """The CPU's float32 peak as measured now: bench/peak_fma.c, compiled
  with the system's C compiler for this CPU, on all cores (fused
  multiply-adds in registers, nothing else). None without a compiler."""
  cc = next((shutil.which(c) for c in (os.environ.get("CC"), "gcc", "cc")
             if c and shutil.which(c)), None)
  if cc is None:
    return None
  src = pathlib.Path(__file__).with_name("peak_fma.c")
  with tempfile.TemporaryDirectory() as tmp:
    exe = pathlib.Path(tmp) / "peak_fma"
    subprocess.run([cc, "-O2", "-march=native", "-ffp-contract=fast",
                    "-fopenmp", str(src), "-o", str(exe)], check=True)
    runs = [subprocess.run([str(exe)], check=True, capture_output=True,
                           text=True).stdout for _ in range(repeats)]
  # A peak: the best of the runs (this machine's rate varies by ~20% from
  # run to run).
  return max(float(out.split()[0]) for out in runs)


def load_offline(source: str, manual_dir=None):
  """`(train, test)` `SourceData` of a source, offline: the files in
  `manual_dir` (default ../shared/data/<source>); the digits need none."""
  from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
  manual = None
  if source != "digits":
    manual = manual_dir or (pathlib.Path(__file__).resolve().parents[2]
                            / "shared" / "data" / source)
  return tuple(sources.load_source(source, split, manual_dir=manual)
               for split in ("train", "test"))

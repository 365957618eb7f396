"""CNN-surrogate NTK: microseconds per kernel entry, nt vs fast, FLOP floor.

Run by hand (never a timed test):

  bash dev.sh bench bench_cnn_kernel.py --shape=mnist
  bash dev.sh bench bench_cnn_kernel.py --shape=cifar10 --ntga_step=False
  bash dev.sh bench bench_cnn_kernel.py --shape=mnist --nt=False --json=out.json

An NTGA PGD step on a block of `--block` images against `--val` validation
images evaluates the kernel between the block and itself and between the
validation set and the block, forward and backward (gradient w.r.t. the
block). This script times that unit of work on random images:

* `val kernel`: K(x_val_chunk (m), x_block (512)) forward, and forward +
  backward (value_and_grad w.r.t. the block of sum(K * G)), in microseconds
  per kernel entry (m * 512 entries), wall clock and process CPU time
  (CPU time counts all threads; it is the robust number on a shared
  machine), for neural-tangents' stax kernel (`impl="nt"`, on a smaller
  chunk: it is ~50x slower) and the fast kernel (`_cnn_ntk`).
* the FLOP floor: `_cnn_ntk.flops_per_entry` (this algorithm's arithmetic,
  backward without recomputation) divided by the peak float32 rate,
  measured in the same run (`bench/peak_fma.c`: fused multiply-adds in
  registers on all cores; `--peak_gflops` overrides it), and the measured
  time's ratio to it. The same at the rate of a dense float32 matmul (XLA)
  measured in the same run, and at `--nominal_gflops` (294 = 2 cores x 2.3
  GHz, this machine's nominal clock, x 64 FLOP/cycle: the figure of earlier
  notes; the cores run faster than nominal, ~3.2 GHz).
* extrapolated full-dataset NTGA time, labelled as such: blocks x steps x
  (entries per step x measured microseconds per entry), and, with
  `--ntga_step`, from one real `ntga.poison_block` step timed end to end
  (block 512, val 10,000; the first step, which compiles, is excluded).
"""

import json
import math
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import _timing
from ntga_tfds.transforms.ntga import _cnn_ntk
from ntga_tfds.transforms.ntga import kernels
from ntga_tfds.transforms.ntga import attack as ntga

SHAPES = {"mnist": ((28, 28, 1), 60000), "cifar10": ((32, 32, 3), 50000)}

flags.DEFINE_enum("shape", "mnist", list(SHAPES), "Image shape preset.")
flags.DEFINE_integer("block", 512, "Block size (x2 of the val kernel).")
flags.DEFINE_integer("chunk", None,
                     "Validation images per kernel call (default: the chunk "
                     "NTGA uses).")
flags.DEFINE_integer("nt_chunk", 16, "Validation images for the nt timing.")
flags.DEFINE_bool("nt", True, "Also time neural-tangents' kernel.")
flags.DEFINE_integer("val", 10000, "Validation images of an NTGA step.")
flags.DEFINE_integer("nb_iter", 10, "PGD steps per block, for the estimate.")
flags.DEFINE_bool("ntga_step", True, "Time real ntga.poison_block steps.")
flags.DEFINE_integer("ntga_steps", 2, "Steps to time (the first compiles).")
flags.DEFINE_float("peak_gflops", None,
                   "Peak float32 GFLOP/s of the host (default: measured).")
flags.DEFINE_float("nominal_gflops", 294.0,
                   "Nominal peak GFLOP/s, also reported against.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (minimum is kept).")
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def _time(f, *args):
  jax.block_until_ready(f(*args))
  wall, cpu = [], []
  for _ in range(FLAGS.repeats):
    c, t = time.process_time(), time.perf_counter()
    jax.block_until_ready(f(*args))
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return min(wall), min(cpu)


def _kernel_timings(kernel, m, shape, rng):
  xv = jnp.asarray(rng.uniform(size=(m,) + shape).astype(np.float32))
  xb = jnp.asarray(rng.uniform(size=(FLAGS.block,) + shape)
                   .astype(np.float32))
  g = jnp.asarray(rng.normal(size=(m, FLAGS.block)).astype(np.float32))
  fwd = jax.jit(kernel)
  vg = jax.jit(jax.value_and_grad(lambda b, v: jnp.sum(kernel(v, b) * g)))
  entries = m * FLAGS.block / 1e6
  (fw, fc), (bw, bc) = _time(fwd, xv, xb), _time(vg, xb, xv)
  return {"fwd_us_per_entry": fw / entries,
          "fwd_cpu_us_per_entry": fc / entries,
          "fwd_bwd_us_per_entry": bw / entries,
          "fwd_bwd_cpu_us_per_entry": bc / entries}


def _ntga_step_seconds(shape, rng):
  x = rng.uniform(size=(FLAGS.block,) + shape).astype(np.float32)
  xv = rng.uniform(size=(FLAGS.val,) + shape).astype(np.float32)
  y = rng.integers(0, 10, FLAGS.block)
  yv = rng.integers(0, 10, FLAGS.val)
  config = ntga.NTGAConfig(eps=8 / 255, t=64.0, surrogate="cnn",
                           nb_iter=FLAGS.ntga_steps)
  return _timing.poison_block_step_seconds(x, y, xv, yv, config=config)


def main(_):
  shape, full = SHAPES[FLAGS.shape]
  strides = 3 if max(shape[:2]) >= kernels.LARGE_IMAGE_SIDE else 2
  config = ntga.NTGAConfig(surrogate="cnn")
  chunk = FLAGS.chunk or ntga._chunk_size(config, FLAGS.block, shape)
  rng = np.random.default_rng(0)
  spec = _cnn_ntk.CNNSpec(image_shape=shape, strides=strides)
  flops = _cnn_ntk.flops_per_entry(spec)
  step_entries = FLAGS.block * (FLAGS.val + FLAGS.block)
  blocks = math.ceil(full / FLAGS.block)
  peak = FLAGS.peak_gflops or _timing.peak_fma_gflops()
  matmul = _timing.matmul_gflops()
  rates = {"peak": peak, "matmul": matmul, "nominal": FLAGS.nominal_gflops}
  result = {"shape": FLAGS.shape, "block": FLAGS.block, "val_chunk": chunk,
            "peak_fma_gflops (measured, same run)": peak,
            "matmul_gflops (XLA float32, same run)": matmul,
            "nominal_gflops": FLAGS.nominal_gflops,
            "flop_floor_per_entry_fwd": flops["forward"],
            "flop_floor_per_entry_fwd_bwd": flops["forward_backward"]}
  for name, rate in rates.items():
    if rate:
      result[f"floor_us_per_entry_fwd_bwd_at_{name}"] = (
          flops["forward_backward"] / (rate * 1e3))
  fast = kernels.kernel_fn("cnn", image_shape=shape, num_classes=10)
  result["fast"] = _kernel_timings(fast, chunk, shape, rng)
  if FLAGS.nt:
    ref = kernels.kernel_fn("cnn", image_shape=shape, num_classes=10,
                            impl="nt")
    result["nt"] = _kernel_timings(ref, FLAGS.nt_chunk, shape, rng)
  for name in ("fast", "nt"):
    if name not in result:
      continue
    r = result[name]
    us = r["fwd_bwd_us_per_entry"]
    for rate in rates:
      key = f"floor_us_per_entry_fwd_bwd_at_{rate}"
      if key in result:
        r[f"ratio_to_floor_at_{rate}"] = us / result[key]
    r["gflops_reached"] = flops["forward_backward"] / us / 1e3
    r[f"full_{full}_{FLAGS.nb_iter}_steps_hours (EXTRAPOLATED from kernel)"] = (
        blocks * FLAGS.nb_iter * step_entries * us / 1e6 / 3600)
  if FLAGS.ntga_step:
    times = _ntga_step_seconds(shape, rng)
    step_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
    result["ntga_first_step_s (compile+run)"] = times[0]
    result["ntga_step_s"] = step_s
    result["ntga_us_per_entry"] = step_s / step_entries * 1e6
    result[f"full_{full}_{FLAGS.nb_iter}_steps_hours (EXTRAPOLATED from "
           f"ntga step)"] = blocks * FLAGS.nb_iter * step_s / 3600
  for key, value in result.items():
    if isinstance(value, dict):
      for k2, v2 in value.items():
        print(f"{key + '.' + k2:70s} {v2:.4g}")
    elif isinstance(value, float):
      print(f"{key:70s} {value:.4g}")
    else:
      print(f"{key:70s} {value}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)

"""Seconds per NTGA PGD step, GFLOP/s reached, peak memory, full-set estimate.

Run by hand (never a timed test):

  bash dev.sh bench bench_ntga_step.py --surrogate=fnn --shape=cifar10
  bash dev.sh bench bench_ntga_step.py --surrogate=cnn --shape=mnist --val=10000

Prints, for one block of `--block` images against `--val` validation images:
the first step (compile + run) and the median of the following steps; the
FLOPs of one compiled step as counted by XLA's cost analysis, and the GFLOP/s
reached next to a dense float32 matmul measured in the same run; peak
resident memory; and the time for a full dataset of `--dataset_size` images,
extrapolated from the measured step and a second, warm block's overhead
(labelled as such: blocks x (steps x seconds per step + per-block overhead);
the last partial block counted as a full one).
"""

import math
import resource
import statistics

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import _timing
from ntga_tfds.transforms.ntga import kernels
from ntga_tfds.transforms.ntga import attack as ntga

SHAPES = {"mnist": ((28, 28, 1), 60000), "cifar10": ((32, 32, 3), 50000),
          "digits": ((8, 8, 1), 1437)}

flags.DEFINE_enum("surrogate", "fnn", ["fnn", "cnn"], "Surrogate.")
flags.DEFINE_enum("shape", "cifar10", list(SHAPES), "Image shape preset.")
flags.DEFINE_integer("block", 512, "Block size.")
flags.DEFINE_integer("val", 10000, "Validation images.")
flags.DEFINE_integer("steps", 4, "PGD steps to time (first includes compile).")
flags.DEFINE_integer("nb_iter", 10, "PGD steps per block, for the estimate.")
flags.DEFINE_integer("dataset_size", None, "Images in the full set.")
flags.DEFINE_integer("val_chunk_size", None, "Override the chunk size.")
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def step_flops(config, x, y, xv, yv):
  """XLA's count of the FLOPs in one compiled step."""
  programs = ntga._programs(ntga._math_key(config), 10, x.shape[1:])
  chunk = ntga._chunk_size(config, x.shape[0], x.shape[1:])
  val = ntga._chunk_validation(
      xv, yv, chunk,
      form=kernels.gram_form(config.surrogate))
  x = x / np.float32(255)
  y1h = jax.nn.one_hot(y, 10)
  lowered = programs.step.lower(x, x, y1h, val, jnp.float32(0.01),
                                jnp.float32(0.03))
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))), val.x.shape[1]


def fnn_matmul_flops(block, val, dim):
  """The FNN step's unavoidable matmuls: the Gram matrix against the
  validation set and its backward (2 x 2 b v d), and k_train_train with the
  backward to both arguments (3 x 2 b^2 d)."""
  return 4 * block * val * dim + 6 * block * block * dim


def main(_):
  shape, full = SHAPES[FLAGS.shape]
  full = FLAGS.dataset_size or full
  rng = np.random.default_rng(0)
  # uint8 images, as the builders pass them (no float snapping to the grid).
  x = rng.integers(0, 256, size=(FLAGS.block,) + shape, dtype=np.uint8)
  xv = rng.integers(0, 256, size=(FLAGS.val,) + shape, dtype=np.uint8)
  y = rng.integers(0, 10, FLAGS.block)
  yv = rng.integers(0, 10, FLAGS.val)
  config = ntga.NTGAConfig(eps=8 / 255, t=64.0, surrogate=FLAGS.surrogate,
                           nb_iter=FLAGS.steps,
                           val_chunk_size=FLAGS.val_chunk_size)
  accelerator = jax.default_backend() != "cpu"
  peak_gflops = _timing.matmul_gflops()
  # On a GPU, also the TF32 rate (XLA's default there; the attack uses
  # full float32).
  tf32_gflops = (round(_timing.matmul_gflops(precision="tensorfloat32"), 1)
                 if accelerator else None)
  flops, chunk = step_flops(config, x, y, xv, yv)

  times = _timing.poison_block_step_seconds(x, y, xv, yv, config=config)
  step_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
  # A second, warm block: what a block costs besides its steps (checks,
  # validation chunks, transfers, quantisation).
  _, warm_block_s = _timing.poison_block_seconds(x, y, xv, yv, config=config)
  per_block_s = max(0.0, warm_block_s - FLAGS.steps * step_s)
  blocks = math.ceil(full / FLAGS.block)
  result = {
      "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind}",
      "surrogate": FLAGS.surrogate, "shape": FLAGS.shape,
      "block": FLAGS.block, "val": FLAGS.val, "val_chunk_size": chunk,
      "first_step_s (compile+run)": round(times[0], 3),
      "step_s (median)": round(step_s, 3),
      "step_gflop (XLA count; a scan body counted once)": round(
          flops / 1e9, 2),
      "matmul_gflops_same_run": round(peak_gflops, 1),
      "kernel_entries_per_step": FLAGS.block * (FLAGS.val + FLAGS.block),
      "us_per_kernel_entry (fwd+bwd)": round(
          1e6 * step_s / (FLAGS.block * (FLAGS.val + FLAGS.block)), 4),
      "peak_rss_gib": round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
      "matmul_gflops_tf32_same_run (accelerator only)": tf32_gflops,
      "device_peak_gib (accelerator only)": (
          _timing.device_peak_gib() if accelerator else None),
      f"warm_block_s ({FLAGS.steps} steps, whole poison_block)": round(
          warm_block_s, 3),
      "per_block_overhead_s (warm block - steps x step_s)": round(
          per_block_s, 3),
      f"full_{full}_images_{FLAGS.nb_iter}_steps_s (EXTRAPOLATED)": round(
          blocks * (FLAGS.nb_iter * step_s + per_block_s), 1),
  }
  if FLAGS.surrogate == "fnn":
    mm = fnn_matmul_flops(FLAGS.block, FLAGS.val, int(np.prod(shape)))
    result.update({
        "step_matmul_gflop (analytic)": round(mm / 1e9, 2),
        "gflops_reached (matmul flops / step_s)": round(mm / 1e9 / step_s, 1),
        "fraction_of_matmul_peak": round(mm / 1e9 / step_s / peak_gflops, 3),
        f"floor_full_{full}_{FLAGS.nb_iter}_steps_s (matmuls at peak)": round(
            blocks * FLAGS.nb_iter * mm / 1e9 / peak_gflops, 1),
    })
  else:
    result["gflops_reached (XLA count / step_s)"] = round(
        flops / 1e9 / step_s, 1)
  _timing.report(result, json_path=FLAGS.json, width=45)


if __name__ == "__main__":
  app.run(main)

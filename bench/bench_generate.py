r"""Times a whole NTGA generation: every block of a training set, measured.

Run by hand (never a timed test):

  bash dev.sh bench bench_generate.py --source=mnist --surrogate=cnn
  bash dev.sh bench bench_generate.py --source=cifar10 --surrogate=fnn
  python bench/bench_generate.py --source=synthetic_cifar10 --surrogate=fnn

Runs `ntga_tfds.generation.run` on NTGA's blockwise job -- what the builders' generation step
runs, with the same plan (blocks of 512, a validation fold of 10,000 per
block, 10 PGD steps) -- on the full training split, and prints the wall time
of the whole generation (compilation included), blocks and seconds per
block, peak host memory (ru_maxrss) and, on an accelerator, the device's
peak memory. No TFDS and no TensorFlow: only the offline readers of
`ntga_tfds.sources` (real files from `--manual_dir`, default
../shared/data/<source>) and JAX, so it also runs on an accelerator host
that has JAX alone.

`--source=synthetic_mnist` / `synthetic_cifar10`: uniform random uint8
images and labels of that dataset's shape and size (for a machine without
the files; the attack's cost depends on shapes, not on pixel values).

`--max_blocks=N`: only the first N blocks are run (same plan) and the whole
is EXTRAPOLATED, labelled as such: the set-up before the first block, the
first block (with compilation), and (num_blocks - 1) x the mean of the
others; the statistics computed after the last block are not included, nor
is the compilation for the last, partial block's own shapes (e.g. 336 of
CIFAR-10's 50,000 images, 96 of MNIST's 60,000: about 25 s on a GPU).
"""

import os
import pathlib
import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np

import _timing
from ntga_tfds import generation
from ntga_tfds import plans
from ntga_tfds import sources
from ntga_tfds.transforms import ntga

REPO = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC = {"synthetic_mnist": ((28, 28, 1), 60000, 76),
             "synthetic_cifar10": ((32, 32, 3), 50000, 8)}
EPS_LEVELS = {"mnist": 76, "fashion_mnist": 76, "cifar10": 8, "digits": 76}

flags.DEFINE_enum("source", "mnist",
                  ["mnist", "cifar10", "digits"] + list(SYNTHETIC),
                  "Training set to poison.")
flags.DEFINE_string("manual_dir", None,
                    "Offline files (default ../shared/data/<source>).")
flags.DEFINE_enum("surrogate", "fnn", ["fnn", "cnn"], "Surrogate.")
flags.DEFINE_enum("optimizer", "pgd", ["pgd", "as_published"], "Optimiser.")
flags.DEFINE_integer("eps_levels", None,
                     "eps in 8-bit levels (default: 76 MNIST, 8 CIFAR-10).")
flags.DEFINE_float("t", 64.0, "Surrogate training time.")
flags.DEFINE_integer("nb_iter", 10, "PGD steps per block.")
flags.DEFINE_integer("block_size", 512, "Block size.")
flags.DEFINE_integer("max_blocks", None, "Run only N blocks; extrapolate.",
                     lower_bound=2)
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def _load():
  if FLAGS.source in SYNTHETIC:
    shape, n, eps = SYNTHETIC[FLAGS.source]
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
            rng.integers(0, 10, n), 10, eps)
  manual = FLAGS.manual_dir or REPO.parent / "shared" / "data" / FLAGS.source
  data = sources.load_source(FLAGS.source, "train",
                             manual_dir=None if FLAGS.source == "digits"
                             else manual)
  return (data.images, data.labels,
          sources.source_spec(FLAGS.source).num_classes,
          EPS_LEVELS[FLAGS.source])


def main(_):
  x, y, num_classes, eps = _load()
  config = ntga.NTGAConfig(
      eps=(FLAGS.eps_levels or eps) / 255, t=FLAGS.t,
      surrogate=FLAGS.surrogate, optimizer=FLAGS.optimizer,
      nb_iter=FLAGS.nb_iter, block_size=FLAGS.block_size)
  ends, calls = [], []

  def poison_fn(*args, **kwargs):
    calls.append(time.perf_counter())
    return ntga.poison_block(*args, config=config, **kwargs)

  # The NTGA family's job (`families.ntga`), with the block function timed.
  job = plans.BlockJob(x, y, family="ntga", config=config,
                       poison_fn=poison_fn, num_classes=num_classes,
                       block_size=config.block_size,
                       steps_per_block=config.nb_iter)

  def on_unit(b, num_blocks):
    ends.append((time.perf_counter(), num_blocks))

  start = time.perf_counter()
  data_sha256 = sources.content_sha256(x, y)
  try:
    result = generation.run(job, data_sha256=data_sha256, progress=False,
                            on_unit=on_unit, stop_after=FLAGS.max_blocks)
  except generation.Interrupted:
    result = None
  wall = time.perf_counter() - start
  num_blocks = ends[-1][1]
  # Before the first block: the data's hash and the plan; after the last:
  # the perturbation statistics.
  setup_s = calls[0] - start
  block_s = np.diff([calls[0]] + [t for t, _ in ends])
  out = {
      "source": FLAGS.source, "images": int(x.shape[0]),
      "image_shape": list(x.shape[1:]), "surrogate": FLAGS.surrogate,
      "optimizer": FLAGS.optimizer, "eps_levels": FLAGS.eps_levels or eps,
      "nb_iter": FLAGS.nb_iter, "block_size": FLAGS.block_size,
      "jax_backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "cpus": os.cpu_count(),
      "blocks_run": len(ends), "blocks_total": num_blocks,
      "setup_s (hash, plan: before the first block)": round(setup_s, 2),
      "first_block_s (with compile)": round(float(block_s[0]), 2),
      "median_block_s (after the first)": round(
          float(np.median(block_s[1:])), 3) if len(block_s) > 1 else None,
  }
  if result is not None:
    out["finish_s (statistics: after the last block)"] = round(
        start + wall - ends[-1][0], 2)
    out["generation_s (MEASURED, all blocks)"] = round(wall, 1)
    out["max_change_levels"] = result.stats["linf_max_levels"]
  else:
    out["generation_s (EXTRAPOLATED from the blocks run)"] = round(
        float(setup_s + block_s[0]
              + (num_blocks - 1) * np.mean(block_s[1:])), 1)
  out["peak_rss_gib"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
  if jax.default_backend() != "cpu":
    out["device_peak_gib"] = _timing.device_peak_gib()
  _timing.report(out, json_path=FLAGS.json, width=50)


if __name__ == "__main__":
  app.run(main)

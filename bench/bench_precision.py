r"""What float32 changes in the poisoned bytes, against a float64 run.

The attack runs in float32 by default. This benchmark poisons the same block
of real images twice, with `NTGAConfig(dtype="float32")` and
`dtype="float64"` (same key, same validation set), and prints the fraction
of identical output bytes, the largest and mean difference in 8-bit levels,
the surrogate's validation loss at both outputs (evaluated in float64), and
the seconds each took.

  bash dev.sh bench bench_precision.py --source=cifar10 --surrogate=fnn
  bash dev.sh bench bench_precision.py --source=mnist --surrogate=cnn \
      --block=128 --val=2000

Real data from ../shared/data (offline readers); nothing is downloaded.
"""

import pathlib
import time

from absl import app
from absl import flags
import jax
import numpy as np

import _timing
from ntga_tfds import sources
from ntga_tfds.transforms import ntga

REPO = pathlib.Path(__file__).resolve().parents[1]
MANUAL = {"mnist": REPO.parent / "shared" / "data" / "mnist",
          "cifar10": REPO.parent / "shared" / "data" / "cifar10"}
EPS = {"mnist": 76 / 255, "cifar10": 8 / 255}

flags.DEFINE_enum("source", "cifar10", list(MANUAL), "Real dataset.")
flags.DEFINE_enum("surrogate", "fnn", ["fnn", "cnn"], "Surrogate.")
flags.DEFINE_enum("optimizer", "pgd", ["pgd", "as_published"], "Optimiser.")
flags.DEFINE_integer("block", 512, "Block size.")
flags.DEFINE_integer("val", 10000, "Validation images.")
flags.DEFINE_integer("nb_iter", 10, "PGD steps.")
flags.DEFINE_float("t", 64.0, "Surrogate training time.")
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def main(_):
  data = sources.load_source(FLAGS.source, "train",
                             manual_dir=MANUAL[FLAGS.source],
                             max_examples=FLAGS.block + FLAGS.val)
  x, y = data.images[:FLAGS.block], data.labels[:FLAGS.block]
  xv, yv = data.images[FLAGS.block:], data.labels[FLAGS.block:]
  c32 = ntga.NTGAConfig(eps=EPS[FLAGS.source], t=FLAGS.t,
                        surrogate=FLAGS.surrogate, optimizer=FLAGS.optimizer,
                        nb_iter=FLAGS.nb_iter)
  c64 = c32.replace(dtype="float64")
  out, seconds = {}, {}
  for config in (c32, c64):
    start = time.perf_counter()
    out[config.dtype] = ntga.poison_block(
        x, y, x_val=xv, y_val=yv, key=jax.random.PRNGKey(0), config=config,
        num_classes=10)
    seconds[config.dtype] = time.perf_counter() - start
  a = out["float32"].astype(np.int32)
  b = out["float64"].astype(np.int32)
  diff = np.abs(a - b)
  loss = {dtype: ntga.surrogate_loss(img, y, x_val=xv, y_val=yv, config=c64,
                                     num_classes=10)
          for dtype, img in out.items()}
  result = {
      "source": FLAGS.source, "surrogate": FLAGS.surrogate,
      "optimizer": FLAGS.optimizer, "block": FLAGS.block, "val": FLAGS.val,
      "nb_iter": FLAGS.nb_iter, "eps_levels": int(round(c32.eps * 255)),
      "identical_bytes_fraction": float(np.mean(diff == 0)),
      "max_diff_levels": int(diff.max()),
      "mean_diff_levels": float(diff.mean()),
      "images_with_any_difference": int(np.sum(diff.reshape(len(a), -1)
                                               .max(1) > 0)),
      "surrogate_val_loss_float32_output (float64 eval)": loss["float32"],
      "surrogate_val_loss_float64_output (float64 eval)": loss["float64"],
      "seconds_float32 (incl. compile)": round(seconds["float32"], 2),
      "seconds_float64 (incl. compile)": round(seconds["float64"], 2),
  }
  _timing.report(result, json_path=FLAGS.json, width=50)


if __name__ == "__main__":
  app.run(main)

"""The paper's victim table (Yuan & Wu 2021, Table 1 rows), measured here.

For MNIST (eps 0.3 = 76/255) and CIFAR-10 (eps 8/255), poisons a training
subset with NTGA under the FNN and the CNN surrogate (the paper's best t:
MNIST 64 / 64, CIFAR-10 4096 / 8), each both reference-style
(`optimizer="as_published"`: one signed step of eps, what the released code
computes) and with true PGD; adds the random-noise control of the same eps;
then trains the `fnn_relu` and `cnn` victims on every training set and
reports peak clean-test accuracy next to the paper's numbers.

  bash dev.sh bench bench_victims_table.py                 # --scale=auto
  bash dev.sh bench bench_victims_table.py --scale=small   # CPU, < 15 min
  bash dev.sh bench bench_victims_table.py --scale=full    # GPU: paper scale

`--scale=auto` is `full` when TensorFlow or JAX sees a GPU, else `small`.
Scales (each flag below overrides its value):

  small: 1,024 training images, 256 attacker-validation images (other
         training images), 1,000 test images, blocks of 256, PGD 4 steps,
         10 epochs, 1 seed.
  full:  the reference protocol: 10,000 training images held out as the
         attacker's validation set, the rest poisoned (MNIST 50,000, CIFAR-10
         40,000), the full test set, blocks of 512, PGD 10 steps, the
         victims' default epochs (50), 3 seeds.

Subsets are the first images of `ntga_tfds.sources`' canonical order (a
fixed pseudo-random order). Poisoned sets are cached under
`--out/cache/`; results (JSON, markdown table, learning curves, example
grids) go to `--out/<scale>/`.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[1]

SCALES = {
    "small": dict(n_train=1024, n_val=256, n_test=1000, block_size=256,
                  nb_iter=4, epochs=10, seeds=1),
    "full": dict(n_train=None, n_val=10000, n_test=None, block_size=512,
                 nb_iter=10, epochs=None, seeds=3),
}
# eps in levels of 255 and the paper's best t per surrogate.
DATASETS = {
    "mnist": dict(eps=76, t={"fnn": 64.0, "cnn": 64.0}, manual="mnist"),
    "cifar10": dict(eps=8, t={"fnn": 4096.0, "cnn": 8.0},
                    manual="cifar10"),
}
# The paper's Table 1 (and the reference README): clean and NTGA(best)
# test accuracy, %.
PAPER = {
    ("mnist", "fnn_relu"): dict(clean=97.87, fnn=2.18, cnn=2.86),
    ("mnist", "cnn"): dict(clean=99.49, fnn=26.03, cnn=15.64),
    ("cifar10", "fnn_relu"): dict(clean=54.55, fnn=25.95, cnn=32.11),
    ("cifar10", "cnn"): dict(clean=78.12, fnn=36.05, cnn=40.52),
}
OPTIMIZERS = {"ref": "as_published", "pgd": "pgd"}

flags.DEFINE_enum("scale", "auto", ["auto", "small", "full"], "Scale.")
flags.DEFINE_list("datasets", list(DATASETS), "Datasets.")
flags.DEFINE_list("surrogates", ["fnn", "cnn"], "NTGA surrogates.")
flags.DEFINE_list("optimizers", list(OPTIMIZERS), "ref (as_published) "
                  "and/or pgd.")
flags.DEFINE_list("victims", ["fnn_relu", "cnn"], "Victims.")
for _name in ("n_train", "n_val", "n_test", "block_size", "nb_iter",
              "epochs", "seeds"):
  flags.DEFINE_integer(_name, None, f"Override the scale's {_name}.")
flags.DEFINE_string("data_root", str(_REPO.parent / "shared" / "data"),
                    "Folder holding mnist/ and cifar10/.")
flags.DEFINE_string("out", str(_REPO / "bench" / "results" /
                               "victims_table"), "Output folder.")
flags.DEFINE_bool("progress", False, "Per-epoch progress bars.")
FLAGS = flags.FLAGS


def _has_gpu() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return bool(tf.config.list_physical_devices("GPU")) or any(
      d.platform == "gpu" for d in jax.devices())


def _settings() -> dict:
  scale = FLAGS.scale
  if scale == "auto":
    scale = "full" if _has_gpu() else "small"
  s = dict(SCALES[scale], scale=scale)
  for k in SCALES["small"]:
    if getattr(FLAGS, k) is not None:
      s[k] = getattr(FLAGS, k)
  return s


def _load(name: str, s: dict):
  """(x_train, y_train), (x_val, y_val), (x_test, y_test): uint8, int64."""
  from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
  manual = os.path.join(FLAGS.data_root, DATASETS[name]["manual"])
  train = sources.load_source(name, "train", manual_dir=manual)
  test = sources.load_source(name, "test", manual_dir=manual)
  n_val = s["n_val"]
  n_train = s["n_train"] or len(train) - n_val
  if n_train + n_val > len(train):
    raise ValueError(f"{name}: n_train + n_val = {n_train + n_val} > "
                     f"{len(train)} training images.")
  x, y = train.images, train.labels
  tr = (x[:n_train], y[:n_train])
  val = (x[n_train:n_train + n_val], y[n_train:n_train + n_val])
  n_test = s["n_test"] or len(test)
  return tr, val, (test.images[:n_test], test.labels[:n_test])


def _poison(name, surrogate, opt, train, val, s, cache: pathlib.Path):
  """NTGA-poisoned training images (cached), and the seconds it took."""
  import jax  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms import ntga  # pylint: disable=g-import-not-at-top
  spec = DATASETS[name]
  cfg = ntga.NTGAConfig(eps=spec["eps"] / 255, t=spec["t"][surrogate],
                        surrogate=surrogate, optimizer=OPTIMIZERS[opt],
                        nb_iter=s["nb_iter"], block_size=s["block_size"])
  key = (f"{name}_{surrogate}_{opt}_n{len(train[0])}_v{len(val[0])}_"
         f"b{s['block_size']}_i{s['nb_iter']}.npz")
  path = cache / key
  if path.exists():
    return np.load(path)["x"], 0.0
  t0 = time.perf_counter()
  x = ntga.poison(*train, x_val=val[0], y_val=val[1],
                  key=jax.random.PRNGKey(0), config=cfg)
  seconds = time.perf_counter() - t0
  cache.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, x=x)
  return x, seconds


def _markdown(rows, s) -> str:
  cols = ["dataset", "victim", "clean", "noise"]
  sets = [f"ntga_{sur}_{opt}" for sur in FLAGS.surrogates
          for opt in FLAGS.optimizers]
  cols += [x.replace("ntga_", "NTGA ").replace("_", " ") for x in sets]
  cols += ["paper clean", "paper NTGA-FNN", "paper NTGA-CNN"]
  lines = ["| " + " | ".join(cols) + " |",
           "|" + "---|" * len(cols)]
  for r in rows:
    cells = [r["dataset"], r["victim"]]
    for key in ["clean", "random_noise"] + sets:
      v = r["peak"].get(key)
      cells.append("-" if v is None else
                   f"{100 * v['mean']:.2f}" + (
                       f" ± {100 * v['std']:.2f}" if s["seeds"] > 1 else ""))
    p = PAPER[(r["dataset"], r["victim"])]
    cells += [f"{p['clean']:.2f}", f"{p['fnn']:.2f}", f"{p['cnn']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  from ntga_tfds import evaluate  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms import random_noise  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  s = _settings()
  out = pathlib.Path(FLAGS.out)
  run_dir = out / s["scale"]
  logging.info("Settings: %s", s)
  print(f"scale: {s}")
  rows, timings = [], {}
  t_start = time.perf_counter()
  for name in FLAGS.datasets:
    if name not in DATASETS:
      raise app.UsageError(f"--datasets: unknown dataset {name!r}; choose "
                           f"from {', '.join(DATASETS)}.")
    train, val, test = _load(name, s)
    sets = {"clean": train}
    eps = DATASETS[name]["eps"] / 255
    sets["random_noise"] = (random_noise.poison(
        train[0], key=jax.random.PRNGKey(0),
        config=random_noise.RandomNoiseConfig(eps=eps)), train[1])
    for sur in FLAGS.surrogates:
      for opt in FLAGS.optimizers:
        x, sec = _poison(name, sur, opt, train, val, s, out / "cache")
        sets[f"ntga_{sur}_{opt}"] = (x, train[1])
        timings[f"{name}_{sur}_{opt}"] = round(sec, 1)
        print(f"{name}: NTGA {sur} {opt}: {sec:.1f} s"
              + (" (cached)" if sec == 0 else ""), flush=True)
    t0 = time.perf_counter()
    report = evaluate.evaluate_arrays(
        sets, test, victims=FLAGS.victims, seeds=s["seeds"],
        epochs=s["epochs"], output_dir=str(run_dir / name),
        metadata={"dataset": f"{name} ({s['scale']} scale)",
                  "bench_settings": s}, progress=FLAGS.progress)
    timings[f"{name}_training"] = round(time.perf_counter() - t0, 1)
    print(evaluate.format_table(report), flush=True)
    for victim in FLAGS.victims:
      by_set = report["results"][victim]["none"]
      rows.append({"dataset": name, "victim": victim,
                   "peak": {k: v["peak"] for k, v in by_set.items()},
                   "final": {k: v["final"] for k, v in by_set.items()}})
  table = _markdown(rows, s)
  timings["total"] = round(time.perf_counter() - t_start, 1)
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / "table.md").write_text(table + "\n")
  with open(run_dir / "table.json", "w") as f:
    json.dump({"settings": s, "rows": rows, "paper": {
        f"{d}/{v}": p for (d, v), p in PAPER.items()}, "seconds": timings},
              f, indent=1)
  print("\nPeak clean-test accuracy (%), measured vs the paper's "
        "(paper: full data, NTGA(best) over t):\n")
  print(table)
  print(f"\nseconds: {timings}\nwritten to {run_dir}")


if __name__ == "__main__":
  app.run(main)

r"""Witches' Brew, white box: does a surrogate retrained on the poisons move?

The most favourable check of the crafting: train the surrogate, craft the
poisons against one target, then retrain the surrogate's own architecture
with its own recipe from scratch (other keys) on the clean and on the
poisoned training set, and compare the target's adversarial-class
probability. Also reports the gradient-matching loss (first, lowest, last
step) and the poisons' cross-entropy under the surrogate before and after
crafting (how much "work" the poisons carry into training).

  python bench/bench_witches_brew_whitebox.py --source=mnist --eps_levels=16
  python bench/bench_witches_brew_whitebox.py --source=mnist --eps_levels=64

Targets: `--targets` seeds; seed s draws a test image and an adversarial
class with `numpy.random.default_rng(s)`, and the poisons from that class.
The surrogate is cached in `--cache` between runs.
"""

import json
import pathlib
import time

from absl import app
from absl import flags
import jax
import numpy as np

import _timing
from ntga_tfds.transforms import witches_brew as wb

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "mnist", ["digits", "mnist"], "Dataset.")
flags.DEFINE_string("manual_dir", None, "Default ../shared/data/<source>.")
flags.DEFINE_integer("eps_levels", 16, "eps in levels of 255.")
flags.DEFINE_float("budget", 0.01, "Fraction poisoned.")
flags.DEFINE_integer("steps", 200, "Crafting steps.")
flags.DEFINE_integer("restarts", 1, "Restarts.")
flags.DEFINE_integer("surrogate_epochs", 4, "Surrogate epochs.")
flags.DEFINE_integer("surrogate_width", 16, "Surrogate width.")
flags.DEFINE_list("targets", ["0"], "Target seeds.")
flags.DEFINE_integer("retrains", 1, "Retrainings per set (clean, poisoned).")
flags.DEFINE_string("cache", "/tmp/wb_whitebox", "Surrogate cache folder.")
flags.DEFINE_string("json", None, "Also write the rows here.")


def main(_):
  train, test = _timing.load_offline(FLAGS.source, FLAGS.manual_dir)
  x, y = train.images, train.labels
  cfg = wb.WitchesBrewConfig(
      eps=FLAGS.eps_levels / 255, budget=FLAGS.budget, steps=FLAGS.steps,
      restarts=FLAGS.restarts, flip=False, surrogate="cnn",
      surrogate_width=FLAGS.surrogate_width,
      surrogate_epochs=FLAGS.surrogate_epochs)
  cache = pathlib.Path(FLAGS.cache) / (
      f"{FLAGS.source}_{FLAGS.surrogate_epochs}_{FLAGS.surrogate_width}.npz")
  if cache.exists():
    shared = dict(np.load(cache))
  else:
    shared = wb.train_surrogate(x, y, key=jax.random.PRNGKey(0), config=cfg,
                                num_classes=10)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **shared)

  def probs(s, images):
    return wb.predict(images, shared=s, config=cfg)

  acc = float((probs(shared, test.images).argmax(1) == test.labels).mean())
  print(f"surrogate test accuracy {acc:.4f}", flush=True)
  rows = []
  for seed in map(int, FLAGS.targets):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(len(test.labels)))
    true = int(test.labels[t])
    adv = int(rng.choice([c for c in range(10) if c != true]))
    pool = np.flatnonzero(y == adv)
    idx = np.sort(rng.choice(pool, int(round(FLAGS.budget * len(y))),
                             replace=False))
    losses = []
    start = time.time()
    crafted = wb.craft(x, y, poison_indices=idx,
                       x_target=test.images[t:t + 1], adversarial_label=adv,
                       key=jax.random.PRNGKey(100 + seed), shared=shared,
                       config=cfg, on_step=lambda i, v: losses.append(v))
    row = {"target_seed": seed, "target": t, "true": true, "adversarial": adv,
           "craft_s": round(time.time() - start, 1),
           "matching_loss": [losses[0], min(losses), losses[-1]]}
    ce = lambda images: float(np.mean(-np.log(  # noqa: E731
        probs(shared, images)[np.arange(len(idx)), adv] + 1e-12)))
    row["poison_ce"] = [ce(x[idx]), ce(crafted)]
    row["surrogate_target_adv_p"] = float(
        probs(shared, test.images[t:t + 1])[0, adv])
    poisoned = x.copy()
    poisoned[idx] = crafted
    for name, data in (("clean", x), ("poisoned", poisoned)):
      for k in range(FLAGS.retrains):
        s = wb.train_surrogate(data, y, key=jax.random.PRNGKey(1000 + k),
                               config=cfg, num_classes=10)
        p = probs(s, test.images[t:t + 1])[0]
        row.setdefault(f"{name}_adv_p", []).append(float(p[adv]))
        row.setdefault(f"{name}_pred", []).append(int(p.argmax()))
    rows.append(row)
    print(json.dumps(row), flush=True)
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  app.run(main)

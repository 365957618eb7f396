r"""Times Witches' Brew: surrogate training and crafting, and extrapolates.

Run by hand (never a timed test):

  python bench/bench_witches_brew.py --source=digits --surrogate=cnn
  python bench/bench_witches_brew.py --source=mnist --surrogate=cnn \
      --manual_dir=../shared/data/mnist
  python bench/bench_witches_brew.py --source=cifar10 --surrogate=convnet \
      --manual_dir=../shared/data/cifar10

Loads the training split with `ntga_tfds.sources.load_source` (offline files
from `--manual_dir`, default ../shared/data/<source>; digits ship with
scikit-learn), then:

* trains the surrogate for `--epochs_run` epochs (on the first
  `--train_subset` images if given) and times each epoch;
* crafts `round(budget * n)` poisons of the adversarial class against one
  target (the first test image of another class) for `--steps_run` steps of
  one restart (with the restart check of `--validation_steps`), timing each
  step.

It prints seconds per epoch and per crafting step (medians of those after
the first, which includes compilation) and the EXTRAPOLATED totals of the
configured run: training = the first epoch's compilation +
surrogate_epochs x epoch (scaled to the whole set);
crafting = restarts x (steps x step + per-restart overhead), where the
overhead (the restart check, target gradient and quantisation, measured
around the steps, with their compilation) is counted once per restart.
Set JAX's threads with the usual XLA flags; the machine's load matters.
"""

import os
import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np

import _timing
from ntga_tfds.transforms import witches_brew as wb

EPS_LEVELS = {"digits": 16, "mnist": 16, "cifar10": 16}

flags.DEFINE_enum("source", "digits", ["digits", "mnist", "cifar10"],
                  "Training set to poison.")
flags.DEFINE_string("manual_dir", None,
                    "Offline files (default ../shared/data/<source>).")
flags.DEFINE_enum("surrogate", "cnn", list(wb.SURROGATES), "Surrogate.")
flags.DEFINE_integer("surrogate_width", None,
                     "Surrogate width (default: the architecture's).")
flags.DEFINE_integer("surrogate_epochs", 40, "Epochs of the full run.")
flags.DEFINE_integer("epochs_run", 2, "Epochs actually run and timed.",
                     lower_bound=1)
flags.DEFINE_integer("train_subset", None,
                     "Time training epochs on the first N images only and "
                     "scale the epoch time to the whole set (batches cost "
                     "the same); crafting still uses the whole set.")
flags.DEFINE_integer("surrogate_batch_size", 128, "Surrogate batch size.")
flags.DEFINE_float("surrogate_lr", None, "Surrogate learning rate.")
flags.DEFINE_integer("steps", 250, "Crafting steps of the full run.")
flags.DEFINE_integer("steps_run", 5, "Crafting steps actually run.",
                     lower_bound=2)
flags.DEFINE_integer("restarts", 8, "Restarts of the full run.")
flags.DEFINE_integer("validation_steps", 10, "Restart check steps.")
flags.DEFINE_integer("poison_batch_size", 512, "Poisons per batch.")
flags.DEFINE_integer("ensemble", 1, "Surrogates.")
flags.DEFINE_float("budget", 0.01, "Fraction of the training set poisoned.")
flags.DEFINE_integer("eps_levels", None, "eps in 8-bit levels (16).")
flags.DEFINE_integer("adversarial_label", 3, "Adversarial class.")
flags.DEFINE_bool("flip", None, "Flips (default: off for digits/mnist).")
flags.DEFINE_bool("augment", True, "Augmentation.")
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def _load():
  train, test = _timing.load_offline(FLAGS.source, FLAGS.manual_dir)
  return train.images, train.labels, test.images, test.labels


def _timer():
  times, last = [], [time.perf_counter()]

  def tick(*_):
    now = time.perf_counter()
    times.append(now - last[0])
    last[0] = now
  return times, tick, last


def main(_):
  x, y, x_test, y_test = _load()
  flip = FLAGS.flip if FLAGS.flip is not None else FLAGS.source == "cifar10"
  eps = (FLAGS.eps_levels or EPS_LEVELS[FLAGS.source]) / 255
  config = wb.WitchesBrewConfig(
      eps=eps, budget=FLAGS.budget, steps=FLAGS.steps,
      restarts=FLAGS.restarts, augment=FLAGS.augment, flip=flip,
      poison_batch_size=FLAGS.poison_batch_size, surrogate=FLAGS.surrogate,
      surrogate_width=FLAGS.surrogate_width,
      surrogate_epochs=FLAGS.surrogate_epochs,
      surrogate_batch_size=FLAGS.surrogate_batch_size,
      surrogate_lr=FLAGS.surrogate_lr, ensemble=FLAGS.ensemble,
      validation_steps=FLAGS.validation_steps)
  adv = FLAGS.adversarial_label
  num_classes = int(y.max()) + 1

  # Surrogate training: the first epochs of the configured run.
  epoch_s, tick, last = _timer()
  last[0] = start = time.perf_counter()
  m = FLAGS.train_subset or x.shape[0]
  shared = wb.train_surrogate(
      x[:m], y[:m], key=jax.random.PRNGKey(0), num_classes=num_classes,
      config=config.replace(surrogate_epochs=FLAGS.epochs_run),
      on_epoch=tick)
  train_wall = time.perf_counter() - start
  acc = float(np.mean(
      wb.predict(x_test, shared=shared, config=config).argmax(1) == y_test))
  run_epoch = (float(np.median(epoch_s[1:])) if len(epoch_s) > 1
               else float(epoch_s[0]))
  bs = FLAGS.surrogate_batch_size
  scale = (x.shape[0] // bs) / (m // bs)  # batches per epoch: full / run
  per_epoch = run_epoch * scale
  # The first epoch's compilation, then every epoch on the whole set.
  train_total = (epoch_s[0] - run_epoch) + FLAGS.surrogate_epochs * per_epoch
  del train_wall

  # Crafting: one restart of steps_run steps.
  num = int(np.floor(config.budget * x.shape[0] + 0.5))
  pool = np.flatnonzero(y == adv)
  idx = np.sort(pool[np.asarray(
      jax.random.permutation(jax.random.PRNGKey(1), pool.size))[:num]])
  target = x_test[np.flatnonzero(y_test != adv)[:1]]
  step_s, tick, last = _timer()
  start = time.perf_counter()
  last[0] = start
  craft_config = config.replace(steps=FLAGS.steps_run, restarts=1)
  poisons = wb.craft(x, y, poison_indices=idx, x_target=target,
                     adversarial_label=adv, key=jax.random.PRNGKey(2),
                     shared=shared, config=craft_config, on_step=tick)
  craft_wall = time.perf_counter() - start
  per_step = float(np.median(step_s[1:]))
  overhead = craft_wall - sum(step_s)  # before / after the steps
  craft_total = (step_s[0] - per_step) + FLAGS.restarts * (
      FLAGS.steps * per_step + overhead)

  out = {
      "source": FLAGS.source, "images": int(x.shape[0]),
      "image_shape": list(x.shape[1:]), "surrogate": FLAGS.surrogate,
      "surrogate_width": config.width,
      "train_images_timed": int(m),
      "poisons": int(num), "eps_levels": round(eps * 255),
      "flip": flip, "augment": FLAGS.augment,
      "jax_backend": jax.default_backend(), "cpus": os.cpu_count(),
      "load_avg_1min": round(os.getloadavg()[0], 2),
      "surrogate_epochs (full run)": FLAGS.surrogate_epochs,
      "epochs_run": FLAGS.epochs_run,
      "first_epoch_s (with compile)": round(epoch_s[0], 2),
      "epoch_s (median after the first, whole set)": round(per_epoch, 2),
      f"test_acc after {FLAGS.epochs_run} epochs on the images timed":
          round(acc, 4),
      "TRAIN_s (EXTRAPOLATED)": round(train_total, 1),
      "steps x restarts (full run)": f"{FLAGS.steps} x {FLAGS.restarts}",
      "validation_steps": FLAGS.validation_steps,
      "steps_run": FLAGS.steps_run,
      "first_step_s (with compile)": round(step_s[0], 2),
      "step_s (median after the first)": round(per_step, 3),
      "restart_overhead_s (check, target grad, quantise; with compile)":
          round(overhead, 2),
      "CRAFT_s (EXTRAPOLATED)": round(craft_total, 1),
      "TOTAL_min (EXTRAPOLATED)": round((train_total + craft_total) / 60, 1),
      "max_change_levels": int(np.max(np.abs(
          poisons.astype(np.int16) - x[idx].astype(np.int16)))),
      "peak_rss_gib": round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
  }
  _timing.report(out, json_path=FLAGS.json, width=66)


if __name__ == "__main__":
  app.run(main)

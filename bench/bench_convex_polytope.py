r"""Times the Convex Polytope attack: substitute training and crafting.

Run by hand (never a timed test):

  python bench/bench_convex_polytope.py --source=digits
  python bench/bench_convex_polytope.py --source=cifar10 \
      --manual_dir=../shared/data/cifar10 --train_examples=5000 \
      --substitutes=convnet,cnn,mlp --dropout=0.2 --epochs=4 --steps=500
  python bench/bench_convex_polytope.py --source=mnist \
      --manual_dir=../shared/data/mnist --substitutes=cnn,mlp

Loads a source with `ntga_tfds.sources.load_source` (digits offline from
scikit-learn; MNIST and CIFAR-10 from `--manual_dir`, default
../shared/data/<source>), trains the substitute ensemble
(`substitutes x dropout`) on the first `--train_examples` training images,
and crafts `--num_poisons` poisons of class `--adversarial_label` (the first
ones of that class) against one target: the `--target_index`-th test image
of class `--target_class` (the reference's defaults: target class 6, frog;
poisons of class 8, ship; index 1).

Prints the wall time of each network's training (its first epoch, with
compilation, and the median of the others), the substitutes' test accuracy
on `--eval_examples` test images, the first crafting step (compilation
included) and the median of the others, the polytope loss at the start and
the end, and an EXTRAPOLATION (labelled so) of crafting to `--full_steps`
steps (the reference's 4000) from the median step.
"""

import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

import _timing
from ntga_tfds import sources
from ntga_tfds.transforms import convex_polytope as cp
from ntga_tfds.transforms.common import pgd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_enum("source", "digits", ["digits", "mnist", "cifar10"],
                  "Training set to poison.")
flags.DEFINE_string("manual_dir", None,
                    "Offline files (default ../shared/data/<source>).")
flags.DEFINE_list("substitutes", ["convnet", "cnn", "mlp"],
                  "Substitute architectures.")
flags.DEFINE_list("dropout", ["0.2"], "Dropout rates (one network each).")
flags.DEFINE_integer("epochs", 2, "Substitute training epochs.")
flags.DEFINE_integer("batch_size", 128, "Substitute training batch.")
flags.DEFINE_float("substitute_lr", 0.05, "Substitute SGD learning rate.")
flags.DEFINE_integer("train_examples", 2000,
                     "Train the substitutes on the first N training images "
                     "(0: all).")
flags.DEFINE_integer("eval_examples", 1000, "Test images for the accuracy.")
flags.DEFINE_integer("steps", 20, "Crafting steps run.")
flags.DEFINE_integer("full_steps", 4000, "Crafting steps extrapolated to.")
flags.DEFINE_integer("num_poisons", 5, "Poisons.")
flags.DEFINE_integer("eps_levels", 25, "eps in 8-bit levels.")
flags.DEFINE_integer("target_class", 6, "The target's true class.")
flags.DEFINE_integer("target_index", 1, "Which test image of that class.")
flags.DEFINE_integer("adversarial_label", 8, "The poisons' class.")
flags.DEFINE_bool("end_to_end", False, "Polytope on two layers.")
flags.DEFINE_bool("dropout_while_crafting", True, "Dropout on in crafting.")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def _load(split):
  manual = None
  if FLAGS.source != "digits":
    manual = FLAGS.manual_dir or os.path.join(
        os.path.dirname(REPO), "shared", "data", FLAGS.source)
  data = sources.load_source(FLAGS.source, split, manual_dir=manual)
  return data.images, np.asarray(data.labels)


def main(_):
  x, y = _load("train")
  x_test, y_test = _load("test")
  num_classes = sources.source_spec(FLAGS.source).num_classes
  n = FLAGS.train_examples or x.shape[0]
  x_sub, y_sub = x[:n], y[:n]
  config = cp.ConvexPolytopeConfig(
      eps=FLAGS.eps_levels / 255, num_poisons=FLAGS.num_poisons,
      steps=FLAGS.steps, substitutes=tuple(FLAGS.substitutes),
      dropout=tuple(float(r) for r in FLAGS.dropout),
      substitute_epochs=FLAGS.epochs,
      substitute_batch_size=FLAGS.batch_size,
      substitute_lr=FLAGS.substitute_lr, end_to_end=FLAGS.end_to_end,
      dropout_while_crafting=FLAGS.dropout_while_crafting)
  key_train, key_craft = jax.random.split(jax.random.PRNGKey(FLAGS.seed))

  # Substitute training, timed per epoch.
  marks, losses = [time.perf_counter()], []

  def on_epoch(e, loss):
    marks.append(time.perf_counter())
    losses.append(loss)

  start = time.perf_counter()
  shared = cp.train_substitutes(x_sub, y_sub, key=key_train, config=config,
                                num_classes=num_classes, on_epoch=on_epoch)
  train_s = time.perf_counter() - start
  epoch_s = np.diff(marks).reshape(config.ensemble_size,
                                   config.substitute_epochs)
  losses = np.reshape(losses, epoch_s.shape)
  probs = cp.predict(x_test[:FLAGS.eval_examples], shared=shared,
                     config=config)
  acc = float(np.mean(probs.argmax(1) == y_test[:FLAGS.eval_examples]))

  # Crafting, timed per step.
  poison_idx = np.flatnonzero(y == FLAGS.adversarial_label)[
      :FLAGS.num_poisons]
  target = np.flatnonzero(y_test == FLAGS.target_class)[FLAGS.target_index]
  x_target = x_test[target:target + 1]
  steps, step_marks = [], [time.perf_counter()]

  def on_step(i, loss):
    step_marks.append(time.perf_counter())
    steps.append(loss)

  start = time.perf_counter()
  poisons = cp.craft(x, y, poison_indices=poison_idx, x_target=x_target,
                     y_target=y_test[target:target + 1],
                     adversarial_label=FLAGS.adversarial_label,
                     key=key_craft, shared=shared, config=config,
                     num_classes=num_classes, on_step=on_step)
  craft_s = time.perf_counter() - start
  step_s = np.diff(step_marks)
  median = float(np.median(step_s[1:])) if len(step_s) > 1 else None

  names = [f"{a}@{r}" for a in config.substitutes for r in config.dropout]
  out = {
      "source": FLAGS.source, "train_examples": int(n),
      "image_shape": list(x.shape[1:]),
      "substitutes x dropout": " ".join(names),
      "epochs": config.substitute_epochs,
      "batch_size": config.substitute_batch_size,
      "jax_backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "cpus": os.cpu_count(),
      "load_average_1min": round(os.getloadavg()[0], 2),
  }
  for name, e_s, l in zip(names, epoch_s, losses):
    out[f"train {name}: first epoch_s (compile)"] = round(float(e_s[0]), 2)
    if len(e_s) > 1:
      out[f"train {name}: median epoch_s"] = round(float(np.median(
          e_s[1:])), 2)
    out[f"train {name}: loss first/last epoch"] = (
        f"{l[0]:.3f} / {l[-1]:.3f}")
  out["train_s (MEASURED, all networks)"] = round(train_s, 1)
  out["substitute ensemble test accuracy"] = round(acc, 4)
  out["craft steps run"] = len(steps)
  out["craft first step_s (with compile)"] = round(float(step_s[0]), 2)
  if median is not None:
    out["craft median step_s (after the first)"] = round(median, 4)
    out[f"craft_s for {FLAGS.full_steps} steps (EXTRAPOLATED)"] = round(
        float(step_s[0]) + (FLAGS.full_steps - 1) * median, 1)
  out["craft_s (MEASURED, steps run)"] = round(craft_s, 2)
  out["polytope loss first/last step"] = f"{steps[0]:.4f} / {steps[-1]:.4f}"
  out["max change (levels)"] = int(np.abs(
      poisons.astype(int) - x[poison_idx].astype(int)).max())
  out["eps levels"] = pgd.levels(config.eps)
  _timing.report(out, json_path=FLAGS.json, width=50)


if __name__ == "__main__":
  app.run(main)

r"""Times back-gradient poisoning (Munoz-Gonzalez et al., AISec 2017).

Run by hand (never a timed test):

  python bench/bench_back_gradient.py --source=mnist
  python bench/bench_back_gradient.py --source=digits --models=logreg,mlp
  python bench/bench_back_gradient.py --source=mnist --curve \
      --png=/tmp/back_gradient_mnist.png

The paper's setting: a binary problem (MNIST 1 vs 7 by default) with
`--num_train` = 100 training points and `--num_val` = 400 validation
points (drawn from the training split, disjoint), T = `--inner_steps`
(200) steps of full-batch training, `--outer_steps` (200) normalised
gradient steps per poison point. Images come from the offline readers of
`ntga_tfds.sources` (MNIST from `--manual_dir`, default
../shared/data/mnist; scikit-learn's digits always offline).

For each model in `--models` it prints the time of the first outer step
(compilation included), the median of the next `--timed_steps` outer steps
and the EXTRAPOLATED time per poison point (outer_steps x the median) and
per run of `--num_poisons` points; `--measure_poison` runs one whole
point instead and reports it MEASURED.

`--curve`: the paper's figure. Adds `--num_poisons` points (default 20:
0..20% of 100 training points) with the attack, then trains the inner
model (`--eval_steps`, default inner_steps) on the training set plus the
first k points for each k and measures its accuracy on the test split
(same classes); also for the random label-flip baseline (the attack's
starting points, unoptimised). Prints the table; `--png` draws it.
A full curve costs num_poisons x outer_steps x the median outer step per
model (see the printed extrapolation before it starts).
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
from ntga_tfds import sources
from ntga_tfds.transforms import back_gradient as bg
from ntga_tfds.transforms.back_gradient import _attack

REPO = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_enum("source", "mnist", ["mnist", "digits"], "Dataset.")
flags.DEFINE_string("manual_dir", None,
                    "Offline MNIST files (default ../shared/data/mnist).")
flags.DEFINE_list("models", ["logreg", "mlp", "cnn"], "Inner models.")
flags.DEFINE_list("classes", ["1", "7"],
                  "Classes kept (two: the paper's binary problem), "
                  "relabelled 0..c-1.")
flags.DEFINE_integer("num_train", 100, "Training points.")
flags.DEFINE_integer("num_val", 400, "Validation points.")
flags.DEFINE_integer("inner_steps", 200, "T, inner training steps.")
flags.DEFINE_float("inner_lr", 0.1, "Inner learning rate.")
flags.DEFINE_float("momentum", 0.0, "Inner momentum.")
flags.DEFINE_integer("outer_steps", 200, "Outer steps per poison point.")
flags.DEFINE_enum("method", "checkpoint", ["checkpoint", "reverse"],
                  "Hypergradient.")
flags.DEFINE_integer("checkpoint_every", None, "Segment length k.")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Precision.")
flags.DEFINE_integer("timed_steps", 5, "Outer steps timed after the first.",
                     lower_bound=1)
flags.DEFINE_integer("num_poisons", 20, "Poison points of a run / curve.")
flags.DEFINE_bool("measure_poison", False,
                  "Also run one whole poison point (outer_steps steps).")
flags.DEFINE_bool("curve", False, "Accuracy vs poisoning fraction.")
flags.DEFINE_integer("eval_steps", None,
                     "Training steps of the evaluated models (curve).")
flags.DEFINE_list("transfer_to", [],
                  "Curve: also train these inner models on each model's "
                  "poisons (transfer: crafted on one, evaluated on another).")
flags.DEFINE_list("keras_victims", [],
                  "Curve: also train these Keras victims (ntga_tfds.victims) "
                  "on the training set plus the first k points, at the "
                  "fractions of --victim_fractions.")
flags.DEFINE_list("victim_fractions", ["0", "0.05", "0.1", "0.2"],
                  "Poisoning fractions at which Keras victims are trained.")
flags.DEFINE_integer("victim_epochs", 50, "Keras victims' epochs.")
flags.DEFINE_integer("victim_seeds", 3, "Keras victims' seeds (mean).")
flags.DEFINE_string("poisons_dir", None,
                    "Curve: keep each model's crafted points here "
                    "(<model>-<hash of the settings>.npz) and reuse them "
                    "when present, so a rerun only evaluates.")
flags.DEFINE_string("png", None, "Draw the curve here (matplotlib).")
flags.DEFINE_string("json", None, "Also write the figures to this file.")
FLAGS = flags.FLAGS


def _load():
  classes = [int(c) for c in FLAGS.classes]
  manual = None
  if FLAGS.source != "digits":
    manual = FLAGS.manual_dir or REPO.parent / "shared" / "data" / "mnist"
  out = []
  for split in ("train", "test"):
    data = sources.load_source(FLAGS.source, split, manual_dir=manual)
    keep = np.isin(data.labels, classes)
    y = np.searchsorted(classes, data.labels[keep]) if sorted(
        classes) == classes else np.array(
            [classes.index(c) for c in data.labels[keep]])
    out.append((data.images[keep], y.astype(np.int64)))
  (x, y), (x_test, y_test) = out
  n, m = FLAGS.num_train, FLAGS.num_val
  if n + m > len(y):
    raise ValueError(f"{FLAGS.source} has {len(y)} training images of "
                     f"classes {classes}; need {n + m}.")
  return (x[:n], y[:n], x[n:n + m], y[n:n + m], x_test, y_test,
          len(classes))


def _config(model, outer_steps):
  return bg.BackGradientConfig(
      model=model, inner_steps=FLAGS.inner_steps, inner_lr=FLAGS.inner_lr,
      momentum=FLAGS.momentum, outer_steps=outer_steps, method=FLAGS.method,
      checkpoint_every=FLAGS.checkpoint_every, dtype=FLAGS.dtype)


def _time_steps(data, config, num_classes):
  """Wall seconds of each outer step of one poison point."""
  x, y, xv, yv = data[:4]
  stamps = [time.perf_counter()]
  bg.add_poisons(x, y, x_val=xv, y_val=yv, x_added=None, y_added=None,
                 count=1, key=jax.random.PRNGKey(0), config=config,
                 num_classes=num_classes,
                 on_step=lambda j, i, v: stamps.append(time.perf_counter()))
  stamps.append(time.perf_counter())
  # on_step runs after each step's value is ready: stamps[i + 1] ends
  # step i; the last interval is the final quantisation.
  return np.diff(stamps[:-1]), stamps[-1] - stamps[0]


def _craft(data, model, num_classes):
  """The points crafted against `model` (and the attack's seconds, or None
  when read back from --poisons_dir)."""
  x, y, xv, yv = data[:4]
  config = _config(model, FLAGS.outer_steps)
  path = None
  if FLAGS.poisons_dir:
    # Named by everything that decides the points, so that another setting
    # (e.g. fewer outer steps) is never read back by mistake.
    from ntga_tfds import generation  # pylint: disable=g-import-not-at-top
    key = generation.sha256_json({
        "config": generation.jsonable(config), "source": FLAGS.source,
        "classes": FLAGS.classes, "num_train": FLAGS.num_train,
        "num_val": FLAGS.num_val})[:12]
    path = os.path.join(FLAGS.poisons_dir, f"{model}-{key}.npz")
  if path and os.path.exists(path):
    got = np.load(path)
    if len(got["y"]) >= FLAGS.num_poisons:
      return got["x"][:FLAGS.num_poisons], got["y"][:FLAGS.num_poisons], None
  start = time.perf_counter()
  xp, yp = bg.poison(x, y, x_val=xv, y_val=yv, num_poisons=FLAGS.num_poisons,
                     key=jax.random.PRNGKey(0), config=config,
                     num_classes=num_classes)
  attack_s = time.perf_counter() - start
  if path:
    os.makedirs(FLAGS.poisons_dir, exist_ok=True)
    np.savez(path, x=xp, y=yp, attack_s=attack_s)
  return xp, yp, attack_s


def _inner_accuracy(data, model, xp, yp, k, num_classes):
  """Test accuracy of inner model `model` trained with the first k points."""
  x, y, _, _, xt, yt = data
  key = jax.random.PRNGKey(0)
  config = _config(model, FLAGS.outer_steps)
  params = bg.train(np.concatenate([x, xp[:k]]), np.concatenate([y, yp[:k]]),
                    key=key, config=config, num_classes=num_classes,
                    steps=FLAGS.eval_steps)
  return bg.accuracy(params, xt, yt)


def _curve(data, model, num_classes):
  x, y, xv, yv = data[:4]
  key = jax.random.PRNGKey(0)
  config = _config(model, FLAGS.outer_steps)
  xp, yp, attack_s = _craft(data, model, num_classes)
  flips = [_attack._pick(key, j, yv, config, num_classes)
           for j in range(FLAGS.num_poisons)]
  xf = xv[[i for i, _ in flips]]
  yf = np.array([label for _, label in flips])
  rows = []
  for k in range(FLAGS.num_poisons + 1):
    rows.append((k / len(y),
                 *(_inner_accuracy(data, model, px, py, k, num_classes)
                   for px, py in ((xp, yp), (xf, yf)))))
  transfer = {
      other: [(k / len(y), _inner_accuracy(data, other, xp, yp, k,
                                           num_classes))
              for k in range(FLAGS.num_poisons + 1)]
      for other in FLAGS.transfer_to if other != model}
  victims = {name: _keras_curve(data, name, xp, yp, xf, yf, num_classes)
             for name in FLAGS.keras_victims}
  return rows, attack_s, transfer, victims


def _keras_curve(data, name, xp, yp, xf, yf, num_classes):
  """Mean test accuracy of Keras victim `name` over --victim_seeds seeds, at
  each of --victim_fractions: (fraction, with the attack's points, with the
  label flips)."""
  from ntga_tfds import victims  # pylint: disable=g-import-not-at-top
  x, y, _, _, xt, yt = data
  rows = []
  for fraction in map(float, FLAGS.victim_fractions):
    k = int(round(fraction * len(y)))
    if k > len(yp):
      continue
    accs = []
    for px, py in ((xp, yp), (xf, yf)):
      runs = [victims.train(
          name, (np.concatenate([x, px[:k]]), np.concatenate([y, py[:k]])),
          test=(xt, yt), num_classes=num_classes,
          epochs=FLAGS.victim_epochs, seed=seed, progress=False)
              for seed in range(FLAGS.victim_seeds)]
      accs.append(float(np.mean([r.history.final_test_accuracy
                                 for r in runs])))
    rows.append((k / len(y), *accs))
  return rows


def _draw(curves, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for model, rows in curves.items():
    frac = [100 * r[0] for r in rows]
    line, = ax.plot(frac, [100 * (1 - r[1]) for r in rows], "o-", ms=3,
                    label=f"{model}: back-gradient")
    ax.plot(frac, [100 * (1 - r[2]) for r in rows], "--",
            color=line.get_color(), label=f"{model}: random flips")
  ax.set_xlabel("poisoning fraction (%)")
  ax.set_ylabel("test error (%)")
  ax.set_title(f"{FLAGS.source} {'/'.join(FLAGS.classes)}, "
               f"T={FLAGS.inner_steps}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(_):
  data = _load()
  num_classes = data[-1]
  data = data[:-1]
  out = {"source": FLAGS.source, "classes": FLAGS.classes,
         "num_train": FLAGS.num_train, "num_val": FLAGS.num_val,
         "image_shape": list(data[0].shape[1:]),
         "inner_steps": FLAGS.inner_steps, "outer_steps": FLAGS.outer_steps,
         "method": FLAGS.method, "dtype": FLAGS.dtype,
         "jax_backend": jax.default_backend(),
         "device": str(jax.devices()[0].device_kind),
         "cpus": os.cpu_count()}
  curves = {}
  for model in FLAGS.models:
    config = _config(model, 1 + FLAGS.timed_steps)
    out[f"{model}: stored states"] = bg.stored_states(config)
    steps, _ = _time_steps(data, config, num_classes)
    median = float(np.median(steps[1:]))
    out[f"{model}: first outer step s (with compile)"] = round(
        float(steps[0]), 3)
    out[f"{model}: outer step s (median)"] = round(median, 4)
    out[f"{model}: per poison s (EXTRAPOLATED)"] = round(
        FLAGS.outer_steps * median, 3)
    out[f"{model}: {FLAGS.num_poisons} poisons s (EXTRAPOLATED)"] = round(
        FLAGS.num_poisons * FLAGS.outer_steps * median, 3)
    if FLAGS.measure_poison:
      _, total = _time_steps(data, _config(model, FLAGS.outer_steps),
                             num_classes)
      out[f"{model}: per poison s (MEASURED, with compile)"] = round(total, 1)
    if FLAGS.curve:
      print(f"{model}: curve, about "
            f"{FLAGS.num_poisons * FLAGS.outer_steps * median:.0f} s of "
            f"attack ...", flush=True)
      rows, attack_s, transfer, keras = _curve(data, model, num_classes)
      curves[model] = rows
      if attack_s is not None:
        out[f"{model}: attack s (MEASURED, curve)"] = round(attack_s, 1)
      out[f"{model}: test acc (fraction, attack, flips)"] = [
          [round(v, 4) for v in r] for r in rows]
      for other, got in transfer.items():
        out[f"{model} -> {other}: test acc (fraction, attack)"] = [
            [round(v, 4) for v in r] for r in got]
      for name, got in keras.items():
        out[f"{model} -> keras {name}: final test acc, mean of "
            f"{FLAGS.victim_seeds} (fraction, attack, flips)"] = [
                [round(v, 4) for v in r] for r in got]
  out["peak_rss_gib"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
  _timing.report(out, json_path=FLAGS.json, width=48)
  if FLAGS.png and curves:
    _draw(curves, FLAGS.png)
    print(f"wrote {FLAGS.png}")


if __name__ == "__main__":
  app.run(main)

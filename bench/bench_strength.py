r"""NTGA strength: victims trained on each attack setting, one table.

For one source and a list of NTGA settings, builds every variant through
its TFDS builder (`<source>_ntga`, from a config name plus optional
overrides; datasets built from a config object are stored under their
hashed names and reused), trains the victims on each with `--seeds` seeds
and reports peak and final accuracy on the official (clean) test split,
mean and spread over the seeds, next to the clean training set and the
random-noise control of the same eps. Each (row, victim, defence, seed) is
saved to `--json` as soon as it is done, so an interrupted run resumes
where it stopped (a row whose inputs changed is not noticed: use a fresh
JSON after changing the code).

A setting is a config name, optionally followed by `key=value` overrides
of `NTGAConfig` / the builder config, separated by spaces:

  python bench/bench_strength.py --source=mnist \
      --manual_dir=../shared/data/mnist \
      --setting="eps76_t64" \
      --setting="eps76_t64_paper" \
      --setting="eps76_t64_folds_pgd" \
      --setting="eps76_t64_pgd nb_iter=20 eps_iter=0.0235" \
      --victims=cnn,fnn_relu --seeds=3 --epochs=10 \
      --defenses=none,augment --json=bench/results/strength_mnist.json

`eps76_t64_paper` (one signed step of the full eps, the default schedule,
against 10,000 held-out validation images) is the reference algorithm;
`eps76_t64_folds_pgd` the package's default before the builders' 1.1.0.
Values parse as Python literals (`t=inf` and `rand_init=True` work).
`--defenses` takes `none` (the recipe) and `augment` (random crop + flip
while the victim trains, how practitioners train).

The table (markdown) is printed at the end and written next to the JSON.
"""

from __future__ import annotations

import ast
import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "mnist", ["digits", "mnist", "cifar10"],
                  "Source dataset.")
flags.DEFINE_multi_string("setting", [], "Config name [key=value ...].")
flags.DEFINE_list("victims", ["cnn"], "Keras victims.")
flags.DEFINE_integer("seeds", 3, "Victim seeds (0..n-1).")
flags.DEFINE_integer("epochs", None, "Victim epochs (default: recipe).")
flags.DEFINE_list("defenses", ["none"], "none and/or augment.")
flags.DEFINE_bool("control", True, "Add the random-noise control row.")
flags.DEFINE_bool("clean", True, "Train victims on the clean row too (off: "
                  "spend the time on the settings; the table still shows "
                  "what the JSON has for it).")
flags.DEFINE_bool("table_only", False, "Print the table of what the JSON "
                  "holds for these settings; build and train nothing.")
flags.DEFINE_string("manual_dir", None, "Offline source files.")
flags.DEFINE_string("data_dir", None, "TFDS data dir.")
flags.DEFINE_string("json", None, "Results (and resume state).")

CLEAN = "clean"


def parse_setting(text: str):
  """`"eps8_t64 nb_iter=20 t=inf"` -> ("eps8_t64", {"nb_iter": 20, ...})."""
  name, *pairs = text.split()
  overrides = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise ValueError(f"--setting {text!r}: {pair!r} is not key=value.")
    if value in ("inf", "math.inf"):
      overrides[key] = math.inf
      continue
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return name, overrides


def _build(source, text, state, save):
  """Builds a setting's dataset; returns its loadable `name/config`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ntga_tfds import families  # pylint: disable=g-import-not-at-top
  name, overrides = parse_setting(text)
  cfg = families.get("ntga").config(name, **overrides)
  dataset = f"{source}_ntga"
  builder = tfds.builder_cls(dataset)(config=cfg, data_dir=FLAGS.data_dir)
  entry = state["builds"].setdefault(text, {})
  entry["config"] = cfg.name
  if not builder.is_prepared():
    start = time.time()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=FLAGS.manual_dir))
    entry["build_seconds"] = round(time.time() - start, 1)
    entry["generation_seconds"] = builder.info.metadata.get(
        "generation_seconds")
    save()
  return f"{dataset}/{cfg.name}"


def _cell(values) -> str:
  """Mean in %, with the sample std over seeds when there are several."""
  from ntga_tfds import evaluate  # pylint: disable=g-import-not-at-top
  s = evaluate._stats(values)  # pylint: disable=protected-access
  spread = f" ± {100 * s['std']:.2f}" if len(values) > 1 else ""
  return f"{100 * s['mean']:.2f}{spread}"


def table(state, rows, victims, defenses) -> str:
  """Markdown: one line per (victim, defence, row); accuracies in %, the
  spread the sample standard deviation over seeds (as `evaluate` reports)."""
  lines = ["| victim | defence | training set | peak % (mean ± std) | "
           "final % (mean ± std) | seeds |", "| --- | --- | --- | --- | --- "
           "| --- |"]
  for victim in victims:
    for defense in defenses:
      for row in rows:
        runs = [v for k, v in state["runs"].items()
                if k.startswith(f"{row}|{victim}|{defense}|")]
        if not runs:
          continue
        lines.append(
            f"| {victim} | {defense} | {row} | "
            f"{_cell([r['peak'] for r in runs])} | "
            f"{_cell([r['final'] for r in runs])} | {len(runs)} |")
  return "\n".join(lines)


def main(_):
  import ntga_tfds  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ntga_tfds import evaluate  # pylint: disable=g-import-not-at-top
  from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
  from ntga_tfds import victims as victims_lib  # pylint: disable=g-import-not-at-top

  if not FLAGS.setting:
    raise app.UsageError("Give at least one --setting.")
  for d in FLAGS.defenses:
    if d not in ("none", "augment"):
      raise app.UsageError(f"--defenses: {d!r} is not none or augment.")
  state = {"builds": {}, "runs": {}}
  if FLAGS.json and os.path.exists(FLAGS.json):
    with open(FLAGS.json) as f:
      state.update(json.load(f))

  def save():
    if FLAGS.json:
      os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
      tmp = FLAGS.json + ".tmp"
      with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
      os.replace(tmp, FLAGS.json)

  if FLAGS.table_only:
    if not FLAGS.json or not os.path.exists(FLAGS.json):
      raise app.UsageError("--table_only needs an existing --json.")
    rows = [CLEAN] + sorted({k.split("|")[0] for k in state["runs"]}
                            - {CLEAN} - set(FLAGS.setting)) + list(
                                FLAGS.setting)
    print(table(state, rows, FLAGS.victims, FLAGS.defenses))
    return

  manual = FLAGS.manual_dir
  train = sources.load_source(FLAGS.source, "train", data_dir=FLAGS.data_dir,
                              manual_dir=manual)
  test = sources.load_source(FLAGS.source, "test", data_dir=FLAGS.data_dir,
                             manual_dir=manual)
  from ntga_tfds import families  # pylint: disable=g-import-not-at-top
  fam = families.get("ntga")
  sets = {CLEAN: lambda: (train.images, train.labels)}
  datasets = {text: _build(FLAGS.source, text, state, save)
              for text in FLAGS.setting}
  if FLAGS.control and fam.control:
    name, overrides = parse_setting(FLAGS.setting[0])
    control = fam.control_config(fam.config(name, **overrides))
    if control:
      datasets[f"{fam.control}/{control}"] = (
          f"{FLAGS.source}_{fam.control}/{control}")
  for row, dataset in datasets.items():
    sets[row] = lambda dataset=dataset: evaluate.load_named(
        dataset, data_dir=FLAGS.data_dir, manual_dir=manual,
        control=False)[0][evaluate.POISONED]
  rows = [CLEAN] + [r for r in datasets if r not in FLAGS.setting] + list(
      FLAGS.setting)

  loaded = {}
  for row in rows:
    for victim in FLAGS.victims:
      for defense in FLAGS.defenses:
        for seed in range(FLAGS.seeds):
          key = f"{row}|{victim}|{defense}|{seed}"
          if key in state["runs"] or (row == CLEAN and not FLAGS.clean):
            continue
          if row not in loaded:
            loaded.clear()  # one training set in memory at a time
            loaded[row] = sets[row]()
          run = victims_lib.train(
              victim, loaded[row], test=(test.images, test.labels),
              epochs=FLAGS.epochs, seed=seed, augment=defense == "augment",
              progress=False, desc=key)
          h = run.history
          state["runs"][key] = {
              "peak": h.peak_test_accuracy, "final": h.final_test_accuracy,
              "test_accuracy": [float(a) for a in h.test_accuracy]}
          save()
          print(key, f"peak {h.peak_test_accuracy:.4f} final "
                f"{h.final_test_accuracy:.4f}", flush=True)
  out = table(state, rows, FLAGS.victims, FLAGS.defenses)
  print(out)
  if FLAGS.json:
    with open(os.path.splitext(FLAGS.json)[0] + ".md", "w") as f:
      f.write(out + "\n")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)

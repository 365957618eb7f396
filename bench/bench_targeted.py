r"""Attack success of a targeted family over several targets, with build times.

Builds each config (one target each: the seed picks it) through its TFDS
builder, then retrains Keras victims from scratch `--retrains` times on each
poisoned train split and counts how often the target is classified as its
adversarial label. The clean baseline (the same victims trained on the clean
training set) is trained once per victim and seed and shared by every
target. Writes a JSON and prints a table; resumes (finished builds are
reused by TFDS, finished rows are kept in the JSON).

  python bench/bench_targeted.py --family=witches_brew --source=mnist \
      --configs=cnn16_eps16_budget1_seed{0..4}_fast \
      --victims=small_cnn,cnn --retrains=2 --epochs=5 \
      --manual_dir=../shared/data/mnist --json=bench/results/wb_mnist.json
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("family", "witches_brew", "Targeted attack family.")
flags.DEFINE_string("source", "mnist", "Source dataset.")
flags.DEFINE_list("configs", [], "Config names (one target each).")
flags.DEFINE_list("victims", ["small_cnn"], "Keras victims.")
flags.DEFINE_integer("retrains", 2, "Victim retrainings (seeds) per target.")
flags.DEFINE_integer("epochs", None, "Victim epochs (default: recipe).")
flags.DEFINE_string("manual_dir", None, "Offline source files.")
flags.DEFINE_string("data_dir", None, "TFDS data dir.")
flags.DEFINE_string("json", None, "Where the results go (and resume from).")
flags.DEFINE_integer("finetune_epochs", 60, "Fine-tuning epochs (families "
                     "with a pretrain split: Convex Polytope). The reference "
                     "recipe (evaluate._finetune): Adam, batch 64, lr x0.1 "
                     "at epochs 30 and 45 of 60, scaled to other values.")
flags.DEFINE_float("finetune_lr", None, "Fine-tuning initial learning rate "
                   "(default: the reference's, 0.1 transfer / 1e-4 e2e).")
flags.DEFINE_float("finetune_weight_decay", None, "Fine-tuning L2 weight "
                   "decay, PyTorch-style (default: the reference's, 0 "
                   "transfer / 5e-4 e2e).")


def _expand(names):
  """`a_seed{0..4}_b` -> a_seed0_b ... a_seed4_b."""
  import re  # pylint: disable=g-import-not-at-top
  out = []
  for name in names:
    m = re.search(r"\{(\d+)\.\.(\d+)\}", name)
    if not m:
      out.append(name)
      continue
    for i in range(int(m[1]), int(m[2]) + 1):
      out.append(name[:m.start()] + str(i) + name[m.end():])
  return out


def main(_):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import ntga_tfds  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ntga_tfds import evaluate  # pylint: disable=g-import-not-at-top
  from ntga_tfds import victims as victims_lib  # pylint: disable=g-import-not-at-top

  state = {"builds": {}, "clean": {}, "poisoned": {}}
  if FLAGS.json and os.path.exists(FLAGS.json):
    with open(FLAGS.json) as f:
      state.update(json.load(f))

  def save():
    if FLAGS.json:
      os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)),
                  exist_ok=True)
      with open(FLAGS.json, "w") as f:
        json.dump(state, f, indent=1)

  name = f"{FLAGS.source}_{FLAGS.family}"
  loaded = {}
  for config in _expand(FLAGS.configs):
    builder = tfds.builder(f"{name}/{config}", data_dir=FLAGS.data_dir)
    if not builder.is_prepared():
      start = time.time()
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              manual_dir=FLAGS.manual_dir))
      meta = builder.info.metadata
      state["builds"][config] = {
          "build_seconds": round(time.time() - start, 1),
          "generation_seconds": meta["generation_seconds"],
          "shared_resumed": meta["shared_resumed"],
          "stats": meta["stats"], "plan": meta["plan"]}
      save()
      print(config, state["builds"][config], flush=True)
    loaded[config] = evaluate.load_targeted(
        f"{name}/{config}", data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir, build=False)

  if evaluate._has_split(f"{name}/x", "pretrain"):  # pylint: disable=protected-access
    _finetune(name, evaluate, state, save)
    return
  first = next(iter(loaded.values()))
  _, (x_clean, y_clean), _, (x_test, y_test), _, _ = first
  for victim in FLAGS.victims:
    for seed in range(FLAGS.retrains):
      key = f"{victim}/seed{seed}"
      clean_model = None
      for config, (train, _, targets, _, _, _) in loaded.items():
        row = f"{key}/{config}"
        if row in state["poisoned"] and key in state["clean"] and \
            config in state["clean"][key]["predictions"]:
          continue
        if clean_model is None:
          clean_run = victims_lib.train(
              victim, (x_clean, y_clean), test=(x_test, y_test),
              epochs=FLAGS.epochs, seed=seed, desc=f"{key}/clean")
          clean_model = clean_run.model
          state["clean"].setdefault(key, {
              "final_test_accuracy": clean_run.history.final_test_accuracy,
              "predictions": {}})
        x_t, y_t, adv = targets
        p_clean = np.argmax(clean_model.predict(
            victims_lib.as_float(x_t), verbose=0), -1)
        state["clean"][key]["predictions"][config] = p_clean.tolist()
        run = victims_lib.train(victim, train, test=(x_test, y_test),
                                epochs=FLAGS.epochs, seed=seed,
                                desc=f"{row}")
        pred = np.argmax(run.model.predict(victims_lib.as_float(x_t),
                                           verbose=0), -1)
        state["poisoned"][row] = {
            "target_label": y_t.tolist(), "adversarial_label": adv.tolist(),
            "prediction": pred.tolist(),
            "success": bool((pred == adv).all()),
            "final_test_accuracy": run.history.final_test_accuracy}
        save()
        print(row, state["poisoned"][row], flush=True)

  print("\nvictim     | success (poisoned) | success (clean) | final acc "
        "poisoned / clean")
  for victim in FLAGS.victims:
    rows = [v for k, v in state["poisoned"].items()
            if k.startswith(victim + "/")]
    base = [(np.asarray(p) == np.asarray(
        state["poisoned"][f"{k}/{c}"]["adversarial_label"])).all()
            for k, v in state["clean"].items() if k.startswith(victim + "/")
            for c, p in v["predictions"].items()
            if f"{k}/{c}" in state["poisoned"]]
    accs = [v["final_test_accuracy"] for k, v in state["clean"].items()
            if k.startswith(victim + "/")]
    if rows:
      print(f"{victim:10s} | {np.mean([r['success'] for r in rows]):.0%} "
            f"of {len(rows)} | {np.mean(base):.0%} of {len(base)} | "
            f"{np.mean([r['final_test_accuracy'] for r in rows]):.4f} / "
            f"{np.mean(accs):.4f}")


def _finetune(name, evaluate, state, save):
  """Convex Polytope: victims pretrained once per seed on `pretrain` (for
  every setting), then fine-tuned per target in the setting its poisons
  were crafted for."""
  by_setting, finetunes = {}, {}
  for config in _expand(FLAGS.configs):
    pre, ft, test, setting, _ = evaluate.load_finetune(
        f"{name}/{config}", data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir, build=False)
    by_setting.setdefault(setting, []).append(config)
    finetunes[config] = ft
  report = evaluate.evaluate_finetune_arrays(
      pre, finetunes, test, victims=FLAGS.victims, seeds=FLAGS.retrains,
      settings=tuple(sorted(by_setting)), pretrain_epochs=FLAGS.epochs,
      finetune_epochs=FLAGS.finetune_epochs, finetune_lr=FLAGS.finetune_lr,
      finetune_weight_decay=FLAGS.finetune_weight_decay,
      settings_of={c: (s,) for s, cs in by_setting.items() for c in cs})
  state["finetune"] = report
  save()
  print(evaluate.format_finetune_table(report))
  for victim in FLAGS.victims:
    res = report["results"][victim]
    for setting, configs in sorted(by_setting.items()):
      for set_name in ("poisoned", "clean"):
        hits = [h for c in configs
                for h in res[setting][c][set_name]["success"]["values"]]
        print(f"{victim} {setting} ({set_name}): success "
              f"{np.mean(hits):.0%} over {len(configs)} targets x "
              f"{FLAGS.retrains} seeds; test accuracy after fine-tuning "
              f"{np.mean([res[setting][c][set_name]['test_accuracy']['mean'] for c in configs]):.4f}")
    print(f"{victim}: pretrained test accuracy {res['pretrained']}")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)  # progress and results, not logs
  app.run(main)

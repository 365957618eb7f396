r"""Does a poisoned dataset stop a model from learning? Clean vs poisoned.

Trains Keras victims on the poisoned train split, on the matching clean
examples, and on the random-noise control of the same size, evaluates all on
the clean test split, and reports peak and final test accuracy (mean and
spread over seeds) and the drop from clean, optionally under defences. Writes
`results.json`, prints a table and draws PNGs (learning curves, examples).

  python -m ntga_tfds.evaluate --dataset=cifar10_ntga/eps8_t64 \
      --victims=cnn,resnet18 --seeds=3 --defenses=none,jpeg10,pgd8

Targeted datasets (a family with a `target` split: Witches' Brew, Convex
Polytope) are evaluated by attack success instead: each victim is retrained
from scratch per seed on the poisoned train split and on its clean
originals, and the report gives how often each target is classified as its
adversarial label, next to the clean test accuracy (`evaluate_targeted_arrays`;
PNGs of the targets and of a few poisons with their perturbations).

The core, `evaluate_arrays`, works on numpy arrays; `evaluate` loads a TFDS
name (poisoned train, clean train matched by `index`, clean test, and the
control its family names) and calls it; `run_cli` / `main` wrap `evaluate`
with absl flags.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from ntga_tfds import defenses as defenses_lib
from ntga_tfds import plots
from ntga_tfds import victims as victims_lib

CLEAN, POISONED, NOISE = "clean", "poisoned", "random_noise"
Arrays = tuple  # (images uint8 (N, H, W, C), labels int (N,))


# ------------------------------------------------------------------ core ---


def mix(poisoned: np.ndarray, clean: np.ndarray, *, ratio: float,
        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Keeps a fixed-seed random fraction `ratio` poisoned, the rest clean.

  Args:
    poisoned: `(N, H, W, C)` poisoned images.
    clean: `(N, H, W, C)` their clean originals, same order.
    ratio: fraction in [0, 1] kept poisoned (rounded to whole examples).
    seed: seeds the choice.

  Returns:
    `(images (N, H, W, C), mask (N,) bool)`: mask is True where poisoned.
  """
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"poison_ratio must be in [0, 1], got {ratio}.")
  if poisoned.shape != clean.shape:
    raise ValueError(f"poisoned {poisoned.shape} and clean {clean.shape} "
                     "images differ in shape.")
  n = len(poisoned)
  mask = np.zeros(n, bool)
  mask[np.random.default_rng(seed).permutation(n)[:int(round(ratio * n))]] = 1
  return np.where(mask[:, None, None, None], poisoned, clean), mask


def _stats(values: Sequence[float]) -> dict:
  v = np.asarray(values, float)
  return {"mean": float(v.mean()),
          "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max()),
          "values": [float(x) for x in v]}


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
  if isinstance(seeds, (int, np.integer)):
    if seeds < 1:
      raise ValueError(f"seeds must be >= 1, got {seeds}.")
    return list(range(int(seeds)))
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("seeds must name at least one seed.")
  return seeds


def evaluate_arrays(train_sets: Mapping[str, Arrays], test: Arrays, *,
                    victims: Sequence[str] = ("cnn",),
                    seeds: int | Sequence[int] = 1,
                    epochs: int | None = None, batch_size: int | None = None,
                    learning_rate: float | None = None,
                    defenses: Sequence[str] = ("none",),
                    poison_ratio: float = 1.0, num_classes: int | None = None,
                    output_dir: str | None = None,
                    examples_per_class: int = 2,
                    class_names: Sequence[str] | None = None,
                    metadata: Mapping | None = None,
                    progress: bool = True) -> dict:
  """Trains every victim on every training set; evaluates on clean test.

  Args:
    train_sets: name -> `(x (N, H, W, C) uint8, y (N,) int)`. Must contain
      "clean"; every other set (e.g. "poisoned", "random_noise") must be the
      same N examples in the same order, with the same labels.
    test: clean `(x (M, H, W, C) uint8, y (M,))`.
    victims: names from `victims.VICTIMS`.
    seeds: a count n (seeds 0..n-1) or explicit seeds.
    epochs, batch_size, learning_rate: override the victims' recipes.
    defenses: specs from `defenses.parse` ("none", "augment", "jpeg10",
      "grayscale", "pgd8"); every defence is reported next to the others.
    poison_ratio: fraction of each non-clean set kept perturbed (the same
      fixed-seed examples in every set); the rest are the clean originals.
    num_classes: default `1 + max label`.
    output_dir: if given, writes results.json and PNGs there.
    examples_per_class: columns per class in the examples PNG.
    class_names: names of the labels (for the examples PNG).
    metadata: extra JSON-able fields stored at the top of the report.
    progress: tqdm bars while training.

  Returns:
    The report (also written as results.json): `results[victim][defense]
    [set]` holds `peak` and `final` statistics (fractions in [0, 1]),
    per-seed `train_accuracy` / `test_accuracy` curves `(S, E)` and, except
    for "clean", `drop` = clean mean - set mean for peak and final.
  """
  victims = list(victims)
  for name in victims:
    victims_lib.get(name)
  parsed = [defenses_lib.parse(d) for d in defenses]
  seed_values = _seed_list(seeds)
  if CLEAN not in train_sets:
    raise ValueError(f"train_sets must contain {CLEAN!r}, got "
                     f"{sorted(train_sets)}.")
  x_clean, y_clean = (np.asarray(a) for a in train_sets[CLEAN])
  x_test, y_test = (np.asarray(a) for a in test)
  for name, (x, y) in train_sets.items():
    if np.shape(x) != x_clean.shape or not np.array_equal(y, y_clean):
      raise ValueError(f"train set {name!r} must match the clean set's "
                       f"shape {x_clean.shape} and labels.")
  if x_test.shape[1:] != x_clean.shape[1:]:
    raise ValueError(f"test images {x_test.shape[1:]} and train images "
                     f"{x_clean.shape[1:]} differ in shape.")
  if num_classes is None:
    num_classes = int(max(y_clean.max(), y_test.max())) + 1

  mixed, mask = {}, np.ones(len(x_clean), bool)
  for name, (x, _) in train_sets.items():
    mixed[name] = np.asarray(x)
    if name != CLEAN and poison_ratio < 1.0:
      mixed[name], mask = mix(mixed[name], x_clean, ratio=poison_ratio)

  report = {
      **(metadata or {}),
      "victims": victims, "defenses": [d.name for d in parsed],
      "train_sets": list(train_sets), "seeds": seed_values,
      "poison_ratio": float(poison_ratio), "num_poisoned": int(mask.sum()),
      "num_train": int(len(x_clean)), "num_test": int(len(x_test)),
      "image_shape": list(x_clean.shape[1:]), "num_classes": num_classes,
      "settings": {}, "results": {}, "files": [],
  }
  for defense in parsed:
    sets = {n: defenses_lib.transform_train(defense, x)
            for n, x in mixed.items()}
    x_test_d = defenses_lib.transform_test(defense, x_test)
    for victim in victims:
      per_set = report["results"].setdefault(victim, {})[defense.name] = {}
      for name, x in sets.items():
        runs = [victims_lib.train(
            victim, (x, y_clean), test=(x_test_d, y_test),
            num_classes=num_classes, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed,
            augment=True if defense.augment else None,
            wrap=defenses_lib.wrapper(defense), progress=progress,
            desc=f"{victim}/{defense.name}/{name}/seed{seed}")
                for seed in seed_values]
        report["settings"][victim] = {"epochs": runs[0].epochs,
                                      "batch_size": runs[0].batch_size,
                                      "learning_rate": runs[0].learning_rate}
        hist = [r.history for r in runs]
        per_set[name] = {
            "peak": _stats([h.peak_test_accuracy for h in hist]),
            "final": _stats([h.final_test_accuracy for h in hist]),
            "train_accuracy": [h.train_accuracy for h in hist],
            "test_accuracy": [h.test_accuracy for h in hist],
        }
        logging.info("%s/%s/%s: peak %.4f final %.4f", victim, defense.name,
                     name, per_set[name]["peak"]["mean"],
                     per_set[name]["final"]["mean"])
      for name, r in per_set.items():
        if name != CLEAN:
          r["drop"] = {k: per_set[CLEAN][k]["mean"] - r[k]["mean"]
                       for k in ("peak", "final")}
  if output_dir:
    write_outputs(report, output_dir, train_sets=train_sets,
                  examples_per_class=examples_per_class,
                  class_names=class_names)
  return report


# --------------------------------------------------------------- outputs ---


def _table(rows) -> str:
  """Rows of strings (the first the header) as aligned text columns."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def format_table(report: Mapping) -> str:
  """A plain-text table: one row per victim, defence and training set."""
  head = ("victim", "defense", "train set", "peak acc %", "final acc %",
          "drop peak", "drop final")
  rows = [head]
  for victim, by_defense in report["results"].items():
    for defense, by_set in by_defense.items():
      for name, r in by_set.items():
        drop = r.get("drop")
        rows.append((
            victim, defense, name,
            f"{100 * r['peak']['mean']:.2f} ± {100 * r['peak']['std']:.2f}",
            f"{100 * r['final']['mean']:.2f} ± {100 * r['final']['std']:.2f}",
            f"{100 * drop['peak']:.2f}" if drop else "-",
            f"{100 * drop['final']:.2f}" if drop else "-"))
  return _table(rows)


def write_outputs(report: dict, output_dir: str, *,
                  train_sets: Mapping[str, Arrays],
                  examples_per_class: int = 2,
                  class_names: Sequence[str] | None = None) -> list[str]:
  """Writes learning-curve PNGs, the examples PNG and results.json.

  Returns:
    The paths written (also stored in `report["files"]`).
  """
  os.makedirs(output_dir, exist_ok=True)
  files = []
  for victim, by_defense in report["results"].items():
    for defense, by_set in by_defense.items():
      files.append(plots.plot_learning_curves(
          by_set, path=os.path.join(output_dir,
                                    f"curves_{victim}_{defense}.png"),
          title=f"{report.get('dataset', '')} {victim} ({defense})".strip()))
  x_clean, y = train_sets[CLEAN]
  others = {n: np.asarray(x) for n, (x, _) in train_sets.items() if n != CLEAN}
  if others and examples_per_class > 0:
    idx = plots.pick_examples(np.asarray(y), per_class=examples_per_class)
    files.append(plots.plot_examples(
        np.asarray(x_clean)[idx], {n: x[idx] for n, x in others.items()},
        np.asarray(y)[idx], path=os.path.join(output_dir, "examples.png"),
        class_names=class_names, title=report.get("dataset", "")))
  json_path = os.path.join(output_dir, "results.json")
  report["files"] = [os.path.basename(f) for f in files + [json_path]]
  with open(json_path, "w") as f:
    json.dump(report, f, indent=1)
  return files + [json_path]


# ------------------------------------------------------ TFDS name layer ---


def _registered() -> list[str]:
  """The poisoned datasets of every registered family."""
  import ntga_tfds  # pylint: disable=g-import-not-at-top
  return sorted(ntga_tfds.BUILDERS)


def load_builder(dataset: str, *, data_dir: str | None = None,
                 manual_dir: str | None = None, build: bool = True):
  """The prepared TFDS builder for "name/config", building it if allowed.

  Raises:
    ValueError: unknown dataset or config, or a dataset that is not built
      and cannot be built (or `build=False`).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, _, config = dataset.partition("/")
  try:
    cls = tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"--dataset: unknown dataset {name!r}; poisoned "
                     f"datasets: {', '.join(_registered())}.") from None
  kwargs = {"config": config} if config else {}
  try:
    builder = cls(data_dir=data_dir, **kwargs)
  except ValueError as e:
    raise ValueError(f"--dataset: unknown config {config!r} of {name!r}: "
                     f"{e}") from None
  if not builder.is_prepared():
    if not build:
      raise ValueError(f"--dataset {dataset!r} is not built in "
                       f"{builder.data_dir}; build it (`tfds build`) or "
                       "pass --build.")
    logging.info("Building %s in %s", dataset, builder.data_dir)
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as e:  # noqa: BLE001 - re-raised with the dataset name.
      raise ValueError(f"--dataset {dataset!r} is not built and could not "
                       f"be built: {type(e).__name__}: {e}") from e
  return builder


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  parts = list(tfds.as_numpy(builder.as_dataset(split=split).batch(4096)))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _align(index: np.ndarray, other_index: np.ndarray, what: str):
  pos = {int(i): j for j, i in enumerate(other_index)}
  missing = [int(i) for i in index if int(i) not in pos]
  if missing:
    raise ValueError(f"{what} lacks {len(missing)} source examples, e.g. "
                     f"index {missing[0]}.")
  return np.asarray([pos[int(i)] for i in index])


def _eps_of(builder) -> float | None:
  """The builder config's L-inf budget in [0, 1] pixel units, if it has one."""
  attack = getattr(builder.builder_config, "attack", None)
  eps = getattr(attack, "eps", None)
  return float(eps) if eps is not None else None


def _family_of(builder):
  """The attack family of a poisoned-dataset builder (the registry's)."""
  from ntga_tfds import families  # pylint: disable=g-import-not-at-top
  name = getattr(builder, "FAMILY", None)
  if name:
    return families.get(name)
  return families.split_builder_name(builder.name)[1]


def _source_of(builder) -> str:
  source = getattr(builder, "SOURCE", None)
  if source:
    return source
  from ntga_tfds import families  # pylint: disable=g-import-not-at-top
  return families.split_builder_name(builder.name)[0]


def load_named(dataset: str, *, data_dir: str | None = None,
               manual_dir: str | None = None, build: bool = True,
               control: bool = True):
  """Loads the training sets and test split of a TFDS poisoned dataset.

  The clean twin is the source's `index`ed training examples (labels
  checked). The control is what the dataset's family names as its control
  (`Family.control`, `Family.control_config`: for NTGA,
  `<source>_random_noise/eps{k}`), matched by `index`; it is skipped, with
  a warning, when the family has none or it cannot be built.

  Returns:
    `(train_sets, test, info)`: train_sets name -> (x, y) with "clean",
    "poisoned" and (if `control`) "random_noise"; test (x, y); info a dict
    for the report.
  """
  from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
  builder = load_builder(dataset, data_dir=data_dir, manual_dir=manual_dir,
                         build=build)
  poisoned = _read_split(builder, "train")
  test = _read_split(builder, "test")
  source = _source_of(builder)
  src = sources.load_source(source, "train", data_dir=data_dir,
                            manual_dir=manual_dir)
  index = poisoned["index"].astype(np.int64)
  if index.size and (index.min() < 0 or index.max() >= len(src)):
    raise ValueError(f"{dataset}: `index` exceeds the {len(src)} training "
                     f"examples of source {source!r}.")
  x_clean, y_clean = src.images[index], src.labels[index]
  if not np.array_equal(y_clean, poisoned["label"]):
    raise ValueError(f"{dataset}: labels at `index` differ from the source "
                     f"{source!r} training labels.")
  train_sets = {CLEAN: (x_clean, y_clean),
                POISONED: (poisoned["image"], y_clean)}
  eps = _eps_of(builder)
  info = {"dataset": dataset, "source": source, "eps": eps,
          "class_names": builder.info.features["label"].names
                         if hasattr(builder.info.features["label"], "names")
                         else None}
  fam = _family_of(builder)
  control_name = None
  if control and fam.control:
    cfg_name = fam.control_config(builder.builder_config)
    if cfg_name:
      control_name = f"{source}_{fam.control}/{cfg_name}"
  if control_name:
    got = _control(control_name, index, y_clean, data_dir=data_dir,
                   manual_dir=manual_dir, build=build)
    if got is not None:
      train_sets[NOISE], info["control"] = got, control_name
  return train_sets, (test["image"], test["label"]), info


def _control(name, index, y_clean, **kwargs):
  """The control dataset's training images matched to `index`, or None."""
  try:
    noise = _read_split(load_builder(name, **kwargs), "train")
    rows = _align(index, noise["index"], name)
  except ValueError as e:
    logging.warning("Control %s unavailable (%s); evaluating without it.",
                    name, e)
    return None
  return (noise["image"][rows], y_clean)


# ------------------------------------------------------ targeted attacks ---


def evaluate_targeted_arrays(train: Arrays, clean_train: Arrays,
                             targets: tuple, test: Arrays, *,
                             victims: Sequence[str] = ("cnn",),
                             seeds: int | Sequence[int] = 2,
                             epochs: int | None = None,
                             batch_size: int | None = None,
                             learning_rate: float | None = None,
                             num_classes: int | None = None,
                             metadata: Mapping | None = None,
                             progress: bool = True) -> dict:
  """Attack success of a targeted poisoned set, against clean training.

  Every victim is trained from scratch once per seed on the poisoned set and
  on its clean originals; each run classifies the targets.

  Args:
    train: poisoned `(x (N, H, W, C) uint8, y (N,))`.
    clean_train: the same examples, clean.
    targets: `(x (K, H, W, C), y (K,) true labels, adversarial (K,))`.
    test: clean `(x, y)`.
    victims, seeds, epochs, batch_size, learning_rate, num_classes, progress:
      as `evaluate_arrays`.
    metadata: extra fields stored at the top of the report.

  Returns:
    The report: `results[victim][set]` for set "poisoned" and "clean":
    `success` (fraction of (target, seed) runs where the target is
    classified as its adversarial label; mean/std over seeds), per-seed
    `target_predictions (S, K)`, `test_accuracy` peak and final statistics.
  """
  for name in victims:
    victims_lib.get(name)
  seed_values = _seed_list(seeds)
  x_t, y_t, adv = (np.asarray(a) for a in targets)
  x_test, y_test = (np.asarray(a) for a in test)
  if num_classes is None:
    num_classes = int(max(np.max(train[1]), np.max(y_test))) + 1
  report = {**(metadata or {}), "mode": "targeted", "victims": list(victims),
            "seeds": seed_values, "num_targets": int(len(x_t)),
            "target_labels": y_t.tolist(),
            "adversarial_labels": adv.tolist(), "results": {},
            "settings": {}}
  for victim in victims:
    per_set = report["results"][victim] = {}
    for name, (x, y) in (("poisoned", train), ("clean", clean_train)):
      preds, runs = [], []
      for seed in seed_values:
        run = victims_lib.train(
            victim, (np.asarray(x), np.asarray(y)), test=(x_test, y_test),
            num_classes=num_classes, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, progress=progress,
            desc=f"{victim}/{name}/seed{seed}")
        logits = run.model.predict(victims_lib.as_float(x_t), verbose=0)
        preds.append(np.argmax(logits, -1).astype(int).tolist())
        runs.append(run)
        report["settings"][victim] = {"epochs": run.epochs,
                                      "batch_size": run.batch_size,
                                      "learning_rate": run.learning_rate}
      hits = (np.asarray(preds) == adv[None, :]).mean(axis=1)
      hist = [r.history for r in runs]
      per_set[name] = {
          "success": _stats(hits),
          "target_predictions": preds,
          "peak": _stats([h.peak_test_accuracy for h in hist]),
          "final": _stats([h.final_test_accuracy for h in hist]),
      }
      logging.info("%s/%s: success %.3f, final test accuracy %.4f", victim,
                   name, per_set[name]["success"]["mean"],
                   per_set[name]["final"]["mean"])
  return report


def format_targeted_table(report: Mapping) -> str:
  head = ("victim", "train set", "attack success %", "final acc %",
          "peak acc %")
  rows = [head]
  for victim, by_set in report["results"].items():
    for name, r in by_set.items():
      rows.append((victim, name,
                   f"{100 * r['success']['mean']:.1f} ± "
                   f"{100 * r['success']['std']:.1f}",
                   f"{100 * r['final']['mean']:.2f} ± "
                   f"{100 * r['final']['std']:.2f}",
                   f"{100 * r['peak']['mean']:.2f}"))
  return _table(rows)


def load_targeted(dataset: str, *, data_dir: str | None = None,
                  manual_dir: str | None = None, build: bool = True):
  """The poisoned train split, its clean originals, targets and test split
  of a targeted dataset (one with a `target` split)."""
  builder = load_builder(dataset, data_dir=data_dir, manual_dir=manual_dir,
                         build=build)
  return _targeted_from(builder, dataset, data_dir=data_dir,
                        manual_dir=manual_dir)


def _targeted_from(builder, dataset, *, data_dir, manual_dir):
  from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
  train = _read_split(builder, "train")
  target = _read_split(builder, "target")
  test = _read_split(builder, "test")
  source = _source_of(builder)
  src = sources.load_source(source, "train", data_dir=data_dir,
                            manual_dir=manual_dir)
  index = train["index"].astype(np.int64)
  x_clean, y_clean = src.images[index], src.labels[index]
  if not np.array_equal(y_clean, train["label"]):
    raise ValueError(f"{dataset}: labels at `index` differ from the source "
                     f"{source!r} training labels.")
  poison = train["is_poison"].astype(bool)
  info = {"dataset": dataset, "source": source,
          "eps": _eps_of(builder), "num_poisons": int(poison.sum()),
          "poison_index": index[poison].tolist(),
          "target_index": target["index"].tolist()}
  return ((train["image"], y_clean), (x_clean, y_clean),
          (target["image"], target["label"], target["adversarial_label"]),
          (test["image"], test["label"]), poison, info)


def write_targeted_outputs(report: dict, output_dir: str, *, targets,
                           clean_poisons, poisons, poison_labels) -> list:
  """results.json and targets.png (targets, then poisons and their
  perturbations)."""
  os.makedirs(output_dir, exist_ok=True)
  files = []
  x_t, y_t, adv = targets
  k = min(8, len(poisons))
  files.append(plots.plot_examples(
      np.asarray(clean_poisons[:k]), {"poison": np.asarray(poisons[:k])},
      np.asarray(poison_labels[:k]),
      path=os.path.join(output_dir, "poisons.png"),
      title=f"{report.get('dataset', '')}: poisons (class "
            f"{int(adv[0])})"))
  files.append(plots.plot_examples(
      np.asarray(x_t), {}, np.asarray(y_t),
      path=os.path.join(output_dir, "targets.png"),
      title="targets (true class above; adversarial: "
            + ", ".join(str(int(a)) for a in adv) + ")"))
  json_path = os.path.join(output_dir, "results.json")
  report["files"] = [os.path.basename(f) for f in files + [json_path]]
  with open(json_path, "w") as f:
    json.dump(report, f, indent=1)
  return files + [json_path]


# ------------------------------------------------- transfer learning -----


# The reference's retraining of the victim on the poisoned fine-tuning set
# (github.com/zhuchen03/ConvexPolytopePosioning, `train_network_with_poison`
# in trainer.py, with the defaults of craft_poisons_transfer.py and the flags
# of launch/attack-transfer.sh and launch/attack-end2end.sh): Adam, 60
# epochs, the learning rate x0.1 at the start of epochs 30 and 45, batch 64,
# the network in eval mode throughout (`net.eval()`: BatchNorm on its running
# statistics, no dropout; the victim has no test-time dropout).
FINETUNE_LR = {"transfer": 0.1, "e2e": 1e-4}
FINETUNE_WEIGHT_DECAY = {"transfer": 0.0, "e2e": 5e-4}
FINETUNE_EPOCHS = 60
FINETUNE_DECAY_EPOCHS = (30, 45)  # of FINETUNE_EPOCHS; scaled to others.
FINETUNE_DECAY = 0.1
FINETUNE_BATCH_SIZE = 64


def finetune_decay_epochs(epochs: int) -> tuple[int, ...]:
  """The epochs (0-based) at whose start the learning rate drops x0.1.

  The reference's 30 and 45 of 60, scaled to `epochs` (half and three
  quarters of the run, rounded down, at least 1): (5, 7) for 10 epochs,
  (1, 1) for 2 (both drops at once).
  """
  return tuple(max(1, e * int(epochs) // FINETUNE_EPOCHS)
               for e in FINETUNE_DECAY_EPOCHS)


def finetune_schedule(learning_rate: float, *, epochs: int,
                      num_examples: int, batch_size: int):
  """The reference's step schedule as a Keras learning-rate schedule.

  Args:
    learning_rate: the initial learning rate.
    epochs: fine-tuning epochs (the drops are at `finetune_decay_epochs`).
    num_examples: size of the fine-tuning set.
    batch_size: its batch size (the last batch of an epoch may be short, as
      the reference's DataLoader, so an epoch is ceil(num_examples /
      batch_size) steps).

  Returns:
    A `keras.optimizers.schedules.PiecewiseConstantDecay` that gives
    `learning_rate` for the first `d1 * steps_per_epoch` updates, then x0.1,
    then x0.01 from the start of epoch `d2`. (Keras evaluates it at the
    optimizer's iteration count before the update, and keeps the first value
    while `step <= boundary`, hence the boundaries one step early.)
  """
  import keras  # pylint: disable=g-import-not-at-top
  per_epoch = -(-int(num_examples) // int(batch_size))
  epochs_at = finetune_decay_epochs(epochs)
  return keras.optimizers.schedules.PiecewiseConstantDecay(
      [e * per_epoch - 1 for e in epochs_at],
      [float(learning_rate) * FINETUNE_DECAY ** i
       for i in range(len(epochs_at) + 1)])


def _inference_mode(inner, weight_decay: float = 0.0):
  """`inner` wrapped to run in inference mode while it trains, as a PyTorch
  network trained after `net.eval()`, with an L2 penalty `weight_decay / 2 *
  sum ||w||^2` over its trainable weights (gradient `weight_decay * w`, as
  PyTorch's `weight_decay`). Training the wrapper trains `inner`'s
  weights."""
  import keras  # pylint: disable=g-import-not-at-top

  class InferenceMode(keras.Model):

    def __init__(self):
      super().__init__(name=f"{inner.name}_inference_mode")
      self.inner = inner

    def call(self, x, training=None):  # pylint: disable=unused-argument
      out = self.inner(x, training=False)
      if weight_decay:
        self.add_loss(0.5 * weight_decay * sum(
            keras.ops.sum(keras.ops.square(w))
            for w in self.inner.trainable_weights))
      return out

  return InferenceMode()


def _finetune(model, train, *, num_classes, setting,
              epochs=FINETUNE_EPOCHS, batch_size=FINETUNE_BATCH_SIZE,
              seed=0, learning_rate=None, weight_decay=None):
  """A copy of `model` fine-tuned on `train` with the reference's recipe.

  "transfer" (the reference's default): every layer but the last frozen;
  the penultimate features of `train` computed once in inference mode (the
  reference's `FeatureSet`), and the last (Dense) layer retrained on them
  with Adam, lr 0.1, no weight decay. "e2e" (launch/attack-end2end.sh):
  every layer trained, Adam lr 1e-4 with L2 weight decay 5e-4 coupled into
  the gradient (PyTorch Adam's `weight_decay`, not AdamW), the network run
  in inference mode as the reference's `net.eval()` (BatchNorm normalises
  with, and does not update, its moving statistics, though its scale and
  offset train; dropout off). Both: `epochs` (60), batch `batch_size` (64),
  shuffled every epoch, learning rate x0.1 at `finetune_decay_epochs`
  (30 and 45 of 60), cross-entropy, Adam's epsilon 1e-8 (PyTorch's).

  Args:
    model: the pretrained Keras model (functional, ending in a Dense layer);
      left unchanged.
    train: `(x, y)` images (uint8 or float [0, 1]) and integer labels.
    num_classes: one-hot depth.
    setting: "transfer" or "e2e".
    epochs: fine-tuning epochs.
    batch_size: fine-tuning batch size.
    seed: seeds the copy's shuffling.
    learning_rate: the initial learning rate; default `FINETUNE_LR[setting]`.
    weight_decay: L2 coefficient; default `FINETUNE_WEIGHT_DECAY[setting]`.

  Returns:
    The fine-tuned copy.
  """
  import keras  # pylint: disable=g-import-not-at-top
  if setting not in FINETUNE_LR:
    raise ValueError(f"setting must be 'transfer' or 'e2e', got {setting!r}.")
  lr = FINETUNE_LR[setting] if learning_rate is None else learning_rate
  wd = (FINETUNE_WEIGHT_DECAY[setting] if weight_decay is None
        else weight_decay)
  keras.utils.set_random_seed(seed)
  tuned = keras.models.clone_model(model)
  tuned.set_weights(model.get_weights())
  x, y = np.asarray(train[0]), np.asarray(train[1])
  head = tuned.layers[-1]
  if setting == "transfer":
    if not isinstance(head, keras.layers.Dense):
      raise ValueError(f"transfer fine-tuning retrains a last Dense layer; "
                       f"{tuned.name}'s last layer is {type(head).__name__}.")
    for layer in tuned.layers[:-1]:
      layer.trainable = False
    body = keras.Model(tuned.inputs, head.input)
    x = body.predict(victims_lib.as_float(x), verbose=0, batch_size=1024)
    inputs = keras.Input(x.shape[1:])
    trained = _inference_mode(keras.Model(inputs, head(inputs)), wd)
  else:
    trained = _inference_mode(tuned, wd)
  schedule = finetune_schedule(lr, epochs=epochs, num_examples=len(x),
                               batch_size=batch_size)
  trained.compile(optimizer=keras.optimizers.Adam(schedule, epsilon=1e-8),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
  trained.fit(victims_lib.make_dataset(x, y, num_classes=num_classes,
                                       batch_size=batch_size,
                                       shuffle_seed=seed),
              epochs=epochs, verbose=0,
              shuffle=False)  # The dataset shuffles itself.
  return tuned


def _accuracy(model, x, y) -> float:
  pred = np.argmax(model.predict(victims_lib.as_float(x), verbose=0,
                                 batch_size=1024), -1)
  return float(np.mean(pred == np.asarray(y)))


def _check_finetune_options(*, finetune_epochs, batch_size, finetune_lr,
                            finetune_weight_decay) -> None:
  for what, value in (("finetune_epochs", finetune_epochs),
                      ("batch_size", batch_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{what} must be an integer >= 1, got {value!r}.")
  if finetune_lr is not None and not finetune_lr > 0:
    raise ValueError(f"finetune_lr must be > 0, got {finetune_lr!r}.")
  if finetune_weight_decay is not None and not finetune_weight_decay >= 0:
    raise ValueError(f"finetune_weight_decay must be >= 0, got "
                     f"{finetune_weight_decay!r}.")


def evaluate_finetune_arrays(pretrain: Arrays, finetunes: Mapping[str, dict],
                             test: Arrays, *,
                             victims: Sequence[str] = ("small_cnn",),
                             seeds: int | Sequence[int] = 1,
                             settings: Sequence[str] = ("transfer",),
                             pretrain_epochs: int | None = None,
                             finetune_epochs: int = FINETUNE_EPOCHS,
                             finetune_lr: float | None = None,
                             finetune_weight_decay: float | None = None,
                             settings_of: Mapping[str, Sequence[str]]
                             | None = None,
                             batch_size: int = FINETUNE_BATCH_SIZE,
                             num_classes: int | None = None,
                             metadata: Mapping | None = None,
                             progress: bool = True) -> dict:
  """Attack success in the transfer-learning setting (Convex Polytope).

  Each victim is pretrained once per seed on the clean `pretrain` set, then,
  for every fine-tuning set (one per target), fine-tuned on it, poisoned and
  clean, in each `settings` ("transfer": last layer; "e2e": every layer),
  and asked to classify the targets.

  Args:
    pretrain: clean `(x, y)` the victims are pretrained on.
    finetunes: name -> {"train": poisoned (x, y), "clean": the clean
      originals (x, y), "targets": (x, y, adversarial)}.
    test: clean `(x, y)`.
    victims, seeds, progress: as `evaluate_arrays`.
    settings: fine-tuning settings to evaluate.
    pretrain_epochs: default the victim's recipe.
    finetune_epochs, batch_size: of the fine-tuning; default the
      reference's 60 epochs and batch 64 (the learning rate drops x0.1 at
      epochs 30 and 45, scaled to other `finetune_epochs`; see `_finetune`
      for the whole recipe and its source).
    finetune_lr: Adam's initial learning rate; default the reference's 0.1
      for "transfer" (the last layer, on frozen inference-mode features),
      1e-4 for "e2e" (every layer, in inference mode).
    finetune_weight_decay: L2 coefficient (PyTorch-style, in the gradient);
      default the reference's 0 for "transfer", 5e-4 for "e2e".
    settings_of: name -> the settings that fine-tuning set is evaluated in
      (e.g. only the one its poisons were crafted for); default every one
      of `settings`.
    num_classes: default `1 + max label`.
    metadata: extra fields stored at the top of the report.

  Returns:
    The report: `results[victim][setting][name][set]` for set "poisoned" and
    "clean": `success` statistics over seeds, per-seed `predictions`, and
    the test accuracy after fine-tuning; `results[victim]["pretrained"]`:
    the pretrained victims' test accuracy; `summary[victim][setting]`: the
    success rate over every target and seed.
  """
  for name in victims:
    victims_lib.get(name)
  for setting in settings:
    if setting not in ("transfer", "e2e"):
      raise ValueError(f"settings must be 'transfer' or 'e2e', got "
                       f"{setting!r}.")
  _check_finetune_options(finetune_epochs=finetune_epochs,
                          batch_size=batch_size, finetune_lr=finetune_lr,
                          finetune_weight_decay=finetune_weight_decay)
  seed_values = _seed_list(seeds)
  x_test, y_test = (np.asarray(a) for a in test)
  if num_classes is None:
    num_classes = int(max(np.max(pretrain[1]), y_test.max())) + 1
  report = {**(metadata or {}), "mode": "finetune", "victims": list(victims),
            "seeds": seed_values, "settings": list(settings),
            "targets": list(finetunes), "results": {}, "summary": {}}
  for victim in victims:
    res = report["results"][victim] = {"pretrained": []}
    runs = {}
    for seed in seed_values:
      run = victims_lib.train(
          victim, (np.asarray(pretrain[0]), np.asarray(pretrain[1])),
          test=(x_test, y_test), num_classes=num_classes,
          epochs=pretrain_epochs, seed=seed, progress=progress,
          desc=f"{victim}/pretrain/seed{seed}")
      runs[seed] = run.model
      res["pretrained"].append(run.history.final_test_accuracy)
    for setting in settings:
      by_name = res[setting] = {}
      hits_all = []
      for name, ft in finetunes.items():
        if settings_of is not None and setting not in settings_of.get(
            name, settings):
          continue
        x_t, _, adv = (np.asarray(a) for a in ft["targets"])
        by_name[name] = {}
        for set_name in ("poisoned", "clean"):
          data = ft["train"] if set_name == "poisoned" else ft["clean"]
          preds, accs = [], []
          for seed in seed_values:
            tuned = _finetune(runs[seed], data, num_classes=num_classes,
                              setting=setting, epochs=finetune_epochs,
                              batch_size=batch_size, seed=seed,
                              learning_rate=finetune_lr,
                              weight_decay=finetune_weight_decay)
            preds.append(np.argmax(tuned.predict(
                victims_lib.as_float(x_t), verbose=0), -1).tolist())
            accs.append(_accuracy(tuned, x_test, y_test))
          hits = (np.asarray(preds) == adv[None, :]).mean(axis=1)
          if set_name == "poisoned":
            hits_all.extend(hits.tolist())
          by_name[name][set_name] = {"success": _stats(hits),
                                     "predictions": preds,
                                     "test_accuracy": _stats(accs)}
      report["summary"].setdefault(victim, {})[setting] = {
          "success": _stats(hits_all) if hits_all else None}
  return report


def format_finetune_table(report: Mapping) -> str:
  head = ("victim", "setting", "target", "success % poisoned",
          "success % clean", "acc % poisoned")
  rows = [head]
  for victim, res in report["results"].items():
    for setting in report["settings"]:
      for name, r in res[setting].items():
        rows.append((victim, setting, name,
                     f"{100 * r['poisoned']['success']['mean']:.0f}",
                     f"{100 * r['clean']['success']['mean']:.0f}",
                     f"{100 * r['poisoned']['test_accuracy']['mean']:.2f}"))
  return _table(rows)


def load_finetune(dataset: str, *, data_dir: str | None = None,
                  manual_dir: str | None = None, build: bool = True):
  """(pretrain (x, y), fine-tuning dict, test (x, y), setting, info) of a
  dataset with a `pretrain` split."""
  builder = load_builder(dataset, data_dir=data_dir, manual_dir=manual_dir,
                         build=build)
  pre = _read_split(builder, "pretrain")
  train, clean, targets, test, poison, info = _targeted_from(
      builder, dataset, data_dir=data_dir, manual_dir=manual_dir)
  attack = builder.builder_config.attack
  setting = "e2e" if getattr(attack, "end_to_end", False) else "transfer"
  return ((pre["image"], pre["label"]),
          {"train": train, "clean": clean, "targets": targets}, test,
          setting, {**info, "num_poisons": int(poison.sum())})


def _has_split(dataset: str, split: str) -> bool:
  fam = _family_of_name(dataset)
  return bool(fam and split in fam.splits)


# -------------------------------------------------------- added points ---


def evaluate_additive_arrays(train: Arrays, is_poison: np.ndarray,
                             test: Arrays, *,
                             victims: Sequence[str] = ("cnn",),
                             seeds: int | Sequence[int] = 1,
                             epochs: int | None = None,
                             batch_size: int | None = None,
                             learning_rate: float | None = None,
                             num_classes: int | None = None,
                             metadata: Mapping | None = None,
                             progress: bool = True) -> dict:
  """Victims trained on the clean points alone and with the added poisons.

  Args:
    train: `(x (N, H, W, C) uint8, y (N,))`, clean points and poisons.
    is_poison: `(N,)` bool, True for the added points.
    test: clean `(x, y)`.
    Others: as `evaluate_arrays`.

  Returns:
    The report: `results[victim][set]` for "clean" (without the poisons)
    and "poisoned" (with them): peak and final test accuracy statistics and,
    for "poisoned", the `drop` from clean.
  """
  x, y = (np.asarray(a) for a in train)
  is_poison = np.asarray(is_poison, bool)
  sets = {CLEAN: (x[~is_poison], y[~is_poison]), POISONED: (x, y)}
  x_test, y_test = (np.asarray(a) for a in test)
  if num_classes is None:
    num_classes = int(max(y.max(), y_test.max())) + 1
  report = {**(metadata or {}), "mode": "additive", "victims": list(victims),
            "seeds": _seed_list(seeds), "num_poisons": int(is_poison.sum()),
            "num_clean": int((~is_poison).sum()), "results": {},
            "settings": {}}
  for victim in victims:
    per_set = report["results"][victim] = {"none": {}}
    for name, (xs, ys) in sets.items():
      runs = [victims_lib.train(
          victim, (xs, ys), test=(x_test, y_test), num_classes=num_classes,
          epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
          seed=seed, progress=progress, desc=f"{victim}/{name}/seed{seed}")
              for seed in report["seeds"]]
      hist = [r.history for r in runs]
      report["settings"][victim] = {"epochs": runs[0].epochs,
                                    "batch_size": runs[0].batch_size,
                                    "learning_rate": runs[0].learning_rate}
      per_set["none"][name] = {
          "peak": _stats([h.peak_test_accuracy for h in hist]),
          "final": _stats([h.final_test_accuracy for h in hist])}
    c, p_ = per_set["none"][CLEAN], per_set["none"][POISONED]
    p_["drop"] = {k: c[k]["mean"] - p_[k]["mean"] for k in ("peak", "final")}
  return report


def _family_of_name(dataset: str):
  """The family of "<source>_<family>/<config>", or None."""
  from ntga_tfds import families  # pylint: disable=g-import-not-at-top
  try:
    return families.split_builder_name(dataset.partition("/")[0])[1]
  except ValueError:
    return None


def _is_additive(dataset: str) -> bool:
  fam = _family_of_name(dataset)
  return bool(fam and "is_poison" in fam.columns
              and "target" not in fam.splits)


def _write_json(report: dict, output_dir: str) -> None:
  os.makedirs(output_dir, exist_ok=True)
  report["files"] = ["results.json"]
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(report, f, indent=1)


def evaluate(dataset: str, *, victims: Sequence[str] = ("cnn",),
             seeds: int | Sequence[int] = 1, epochs: int | None = None,
             batch_size: int | None = None,
             learning_rate: float | None = None,
             defenses: Sequence[str] = ("none",), poison_ratio: float = 1.0,
             control: bool = True, data_dir: str | None = None,
             manual_dir: str | None = None, build: bool = True,
             output_dir: str | None = None, examples_per_class: int = 2,
             finetune_epochs: int = FINETUNE_EPOCHS,
             finetune_lr: float | None = None,
             finetune_weight_decay: float | None = None,
             progress: bool = True) -> dict:
  """Clean vs poisoned (vs noise) evaluation of a TFDS dataset by name.

  Args:
    dataset: "<source>_<attack>/<config>", e.g. "cifar10_ntga/eps8_t64".
    control: also evaluate the family's control of the same budget (for
      NTGA `<source>_random_noise/eps{k}`).
    data_dir: TFDS data directory (default: TFDS's).
    manual_dir: where sources that need manual files find them.
    build: build the dataset if it is not built yet.
    epochs: the victims' training epochs (for datasets with a `pretrain`
      split, the pretraining's); default the victim's recipe.
    batch_size, learning_rate: of the victims' training; for datasets with
      a `pretrain` split, `batch_size` is the fine-tuning's and
      `learning_rate` is refused (use `finetune_lr`).
    finetune_epochs, finetune_lr, finetune_weight_decay: the fine-tuning of
      datasets with a `pretrain` split (Convex Polytope); default the
      reference's recipe (`evaluate_finetune_arrays`).
    Others: as `evaluate_arrays`.

  Returns:
    The report of `evaluate_arrays`, with the dataset's name, source, eps
    and control.
  """
  for name in victims:  # Fail before loading anything.
    victims_lib.get(name)
  for d in defenses:
    defenses_lib.parse(d)
  if _is_additive(dataset):
    builder = load_builder(dataset, data_dir=data_dir,
                           manual_dir=manual_dir, build=build)
    train, test = _read_split(builder, "train"), _read_split(builder, "test")
    report = evaluate_additive_arrays(
        (train["image"], train["label"]), train["is_poison"],
        (test["image"], test["label"]), victims=victims, seeds=seeds,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        num_classes=builder.info.features["label"].num_classes,
        metadata={"dataset": dataset, "source": _source_of(builder)},
        progress=progress)
    if output_dir:
      _write_json(report, output_dir)
    return report
  if _has_split(dataset, "pretrain"):
    if learning_rate is not None:
      raise ValueError(
          f"{dataset!r} is evaluated by fine-tuning pretrained victims: give "
          "the fine-tuning's learning rate as finetune_lr "
          "(--finetune_learning_rate), not learning_rate.")
    batch_size = batch_size or FINETUNE_BATCH_SIZE
    _check_finetune_options(finetune_epochs=finetune_epochs,
                            batch_size=batch_size, finetune_lr=finetune_lr,
                            finetune_weight_decay=finetune_weight_decay)
    pre, ft, test, setting, info = load_finetune(
        dataset, data_dir=data_dir, manual_dir=manual_dir, build=build)
    report = evaluate_finetune_arrays(
        pre, {dataset: ft}, test, victims=victims, seeds=seeds,
        settings=(setting,), pretrain_epochs=epochs,
        finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
        finetune_weight_decay=finetune_weight_decay,
        batch_size=batch_size, metadata=info, progress=progress)
    if output_dir:
      _write_json(report, output_dir)
    return report
  if _has_split(dataset, "target"):
    train, clean, targets, test, poison, info = load_targeted(
        dataset, data_dir=data_dir, manual_dir=manual_dir, build=build)
    report = evaluate_targeted_arrays(
        train, clean, targets, test, victims=victims, seeds=seeds,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        metadata=info, progress=progress)
    if output_dir:
      write_targeted_outputs(report, output_dir, targets=targets,
                             clean_poisons=clean[0][poison],
                             poisons=train[0][poison],
                             poison_labels=train[1][poison])
    return report
  train_sets, test, info = load_named(
      dataset, data_dir=data_dir, manual_dir=manual_dir, build=build,
      control=control)
  class_names = info.pop("class_names")
  return evaluate_arrays(
      train_sets, test, victims=victims, seeds=seeds, epochs=epochs,
      batch_size=batch_size, learning_rate=learning_rate, defenses=defenses,
      poison_ratio=poison_ratio, output_dir=output_dir,
      examples_per_class=examples_per_class, class_names=class_names,
      metadata=info, progress=progress)


# ------------------------------------------------------------------- CLI ---


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this CLI's flags on `fv`."""
  flags.DEFINE_string("dataset", None, "Poisoned TFDS dataset, e.g. "
                      "cifar10_ntga/eps8_t64.", flag_values=fv)
  flags.DEFINE_list("victims", ["cnn"], "Victims: "
                    + ", ".join(victims_lib.VICTIMS) + ".", flag_values=fv)
  flags.DEFINE_integer("seeds", 1, "Number of seeds per run.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("first_seed", 0, "First seed.", flag_values=fv)
  flags.DEFINE_integer("epochs", None, "Epochs (default: the victim's "
                       "recipe).", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("batch_size", None, "Batch size (default: the "
                       "recipe's).", lower_bound=1, flag_values=fv)
  flags.DEFINE_float("learning_rate", None, "Learning rate (default: the "
                     "recipe's).", flag_values=fv)
  flags.DEFINE_list("defenses", ["none"], "none, augment, jpeg[Q], "
                    "grayscale, pgd[EPS/255].", flag_values=fv)
  flags.DEFINE_float("poison_ratio", 1.0, "Fraction of examples kept "
                     "poisoned.", lower_bound=0.0, upper_bound=1.0,
                     flag_values=fv)
  flags.DEFINE_bool("control", True, "Also evaluate random noise of the "
                    "same eps.", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data dir.", flag_values=fv)
  flags.DEFINE_string("manual_dir", None, "Manual dir for sources.",
                      flag_values=fv)
  flags.DEFINE_bool("build", True, "Build the dataset if not built.",
                    flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where results.json and PNGs go "
                      "(default out/evaluate/<dataset>).", flag_values=fv)
  flags.DEFINE_integer("examples_per_class", 2, "Examples per class in "
                       "examples.png.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("finetune_epochs", FINETUNE_EPOCHS, "Fine-tuning "
                       "epochs (datasets with a pretrain split: Convex "
                       "Polytope).", lower_bound=1, flag_values=fv)
  flags.DEFINE_float("finetune_learning_rate", None, "Fine-tuning Adam "
                     "learning rate (default: the reference's, "
                     f"{FINETUNE_LR['transfer']} transfer / "
                     f"{FINETUNE_LR['e2e']} e2e).", flag_values=fv)
  flags.DEFINE_float("finetune_weight_decay", None, "Fine-tuning L2 "
                     "coefficient (default: the reference's, "
                     f"{FINETUNE_WEIGHT_DECAY['transfer']} transfer / "
                     f"{FINETUNE_WEIGHT_DECAY['e2e']} e2e).",
                     lower_bound=0.0, flag_values=fv)
  flags.DEFINE_bool("progress", True, "Progress bars.", flag_values=fv)


def _from_flags(fv: flags.FlagValues) -> dict:
  if not fv.dataset:
    raise ValueError("--dataset is required, e.g. "
                     "--dataset=digits_ntga/<config>.")
  output_dir = fv.output_dir or os.path.join(
      "out", "evaluate", fv.dataset.replace("/", "_"))
  report = evaluate(
      fv.dataset, victims=fv.victims,
      seeds=list(range(fv.first_seed, fv.first_seed + fv.seeds)),
      epochs=fv.epochs, batch_size=fv.batch_size,
      learning_rate=fv.learning_rate, defenses=fv.defenses,
      poison_ratio=fv.poison_ratio, control=fv.control,
      data_dir=fv.data_dir, manual_dir=fv.manual_dir, build=fv.build,
      output_dir=output_dir, examples_per_class=fv.examples_per_class,
      finetune_epochs=fv.finetune_epochs,
      finetune_lr=fv.finetune_learning_rate,
      finetune_weight_decay=fv.finetune_weight_decay, progress=fv.progress)
  formats = {"targeted": format_targeted_table,
             "finetune": format_finetune_table}
  print(formats.get(report.get("mode"), format_table)(report))
  print(f"\nWrote {', '.join(report['files'])} to {output_dir}")
  return report


def run_cli(argv: Sequence[str]) -> dict:
  """Parses `argv` (argv[0] is the program) with fresh flags and runs it.

  Returns:
    The report. Raises ValueError for bad arguments.
  """
  fv = flags.FlagValues()
  define_flags(fv)
  fv(list(argv))
  return _from_flags(fv)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    _from_flags(flags.FLAGS)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  # Progress and results, not library logs: WARNING unless --verbosity is
  # given (app.run raises an unset verbosity to INFO).
  logging.set_verbosity(logging.WARNING)
  app.run(main)

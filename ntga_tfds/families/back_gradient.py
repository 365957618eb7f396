"""Back-gradient datasets: `<source>_back_gradient/{model}_{attack}_p{pct}[_all]`.

Poison points added to a training set, each optimised by differentiating
the validation loss of a model trained on the poisoned set through its
whole training run (Munoz-Gonzalez et al., AISec 2017;
`ntga_tfds.transforms.back_gradient`). The work is a `plans.AdditiveJob`:
points are added one at a time, each given the ones before (one unit per
point, so an interrupted build resumes at the next point).

The authors' setup, which the configs follow: a small training set and a
validation set drawn from the source's training split (MNIST binary 1 vs 7:
100 training and 400 validation points; multiclass: 1,000 and 1,000), each
poison initialised from a validation point with its label flipped, 200
normalised-gradient steps of size 0.2 through 200 training iterations,
pixels clipped to [0, 1].

Name grammar:
  {model}     the inner learner: `logreg`, `mlp`, `cnn`.
  {attack}    `generic` (raise the validation error) or `specific` (make
              digits 7 be classified as 1; multiclass only).
  p{pct}      poisons as a percentage of the clean training points
              (`p5` = 5%, `p0p5` = 0.5%).
  _all        the multiclass task (all 10 classes); without it, 1 vs 7.

Label policy (recorded in the metadata as the attack's `label_policy`):
"flip": for 1 vs 7 the other class; multiclass generic a keyed random other
class; specific the target class of the map.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Dict, Optional

import numpy as np

from ntga_tfds import configs
from ntga_tfds import families
from ntga_tfds import plans
from ntga_tfds.transforms.back_gradient import config as bg_config

_NAME = re.compile(
    r"^(?P<model>logreg|mlp|cnn)_(?P<attack>generic|specific)"
    r"_p(?P<pct>[0-9]+(?:p[0-9]+)?)(?P<all>_all)?$")
BINARY = (1, 7)
SPECIFIC_MAP = ((7, 1),)
_SUBSET_STREAM = 1 << 44
# (train, validation) points per task and source: the authors' MNIST sizes;
# the 8x8 digits have ~145 training images a class.
SIZES = {"binary": {"mnist": (100, 400), "digits": (100, 150)},
         "all": {"mnist": (1000, 1000), "digits": (500, 400)}}


@dataclasses.dataclass(eq=False)
class BackGradientBuilderConfig(configs.PoisonConfig):
  """A back-gradient dataset's config.

  Attributes:
    attack: the `back_gradient.BackGradientConfig`.
    fraction: poisons as a fraction of the clean training points.
    task: "binary" (1 vs 7) or "all" (every class).
    num_train, num_val: clean training / validation points drawn from the
      source's training split; default from `SIZES`.
  """
  fraction: float = 0.05
  task: str = "binary"
  num_train: Optional[int] = None
  num_val: Optional[int] = None

  FAMILY: ClassVar[str] = "back_gradient"
  ATTACK_CLASS: ClassVar[type] = bg_config.BackGradientConfig

  def validate(self):
    if isinstance(self.fraction, bool) or not isinstance(
        self.fraction, (int, float)) or not 0 < self.fraction <= 1:
      raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}.")
    if self.task not in ("binary", "all"):
      raise ValueError(f"task must be 'binary' or 'all', got {self.task!r}.")
    if self.task == "binary" and self.attack.attack == "specific":
      raise ValueError("The error-specific attack needs the multiclass task "
                       "(task='all', `_all` in the name).")
    for f in ("num_train", "num_val"):
      v = getattr(self, f)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                            or v < 2):
        raise ValueError(f"{f} must be None or an integer >= 2, got {v!r}.")


def _percent(text: str) -> float:
  return float(text.replace("p", ".")) / 100


def _format_percent(fraction: float) -> str:
  pct = round(fraction * 100, 6)
  return str(int(pct)) if pct == int(pct) else repr(pct).replace(".", "p")


class BackGradient(families.Family):
  """Back-gradient poisoning (Munoz-Gonzalez et al., AISec 2017)."""

  name = "back_gradient"
  title = "back-gradient poisoning"
  config_class = BackGradientBuilderConfig
  columns = plans.AdditiveJob.COLUMNS
  control = None
  homepage = ("https://github.com/lmunoz-gonzalez/"
              "Poisoning-Attacks-with-Back-gradient-Optimization")
  citation = """@inproceedings{munozgonzalez2017towards,
  title = {Towards Poisoning of Deep Learning Algorithms with Back-gradient Optimization},
  author = {Mu{\\~n}oz-Gonz{\\'a}lez, Luis and Biggio, Battista and Demontis, Ambra and Paudice, Andrea and Wongrassamee, Vasin and Lupu, Emil C. and Roli, Fabio},
  booktitle = {Proceedings of the 10th ACM Workshop on Artificial Intelligence and Security},
  pages = {27--38},
  year = {2017}
}"""
  attack_line = ("back-gradient poisoning (Munoz-Gonzalez et al., AISec "
                 "2017): new points added")
  effect = ("A small clean training set gets extra, optimised points "
            "(`is_poison`) that raise the error of a model trained on it.")
  train_split_doc = ("the task's clean training points, then the added "
                     "poisons (`index` -1, `is_poison` True)")
  unit_doc = "one per poison point, each given the ones before"
  citation_line = "the back-gradient paper"
  splits = {}
  grid = {
      "digits": tuple(
          (f"{m}_generic_p{p}", f"{m}, 1 vs 7, {p}% poisons")
          for m in ("logreg", "mlp") for p in (5, 10)),
      "mnist": tuple(
          (f"{m}_generic_p{p}", f"{m}, 1 vs 7 (100 train / 400 validation), "
           f"{p}% poisons") for m in ("logreg", "mlp") for p in (5, 10, 20))
      + (("logreg_specific_p2_all", "logreg, all classes, 7 -> 1, 2% "
          "poisons"),),
  }
  card_template = """
## How it was made

`ntga_tfds.transforms.back_gradient` adds the poisons one at a time. Each \
starts from a validation point with its label flipped (binary: the other \
class; multiclass generic: a keyed random other class; specific: the \
target class), and takes normalised-gradient steps on its pixels (clipped \
to [0, 1]) that raise the validation loss (generic) or make the mapped \
classes be predicted as their targets (specific) of the inner model after \
it is trained, by full-batch gradient descent from a fixed initialisation, \
on the training set plus the poisons so far. The gradient goes back \
through the whole training run by checkpointed autodiff (O(sqrt(T)) stored \
states, exact).

* The seed draws the clean training and validation points (disjoint, from \
the source's training split; for 1 vs 7 only those two classes) by a keyed \
hash (`ntga_tfds.plans`).
* The `test` split is the source's test split, restricted to 1 and 7 for \
the binary task.

## Configs

`{model}_{attack}_p{pct}[_all]`: inner model `logreg`, `mlp` or `cnn`; \
attack `generic` or `specific` (7 -> 1, multiclass only); `p{pct}` poisons \
as a percentage of the clean training points; `_all` the multiclass task. \
Other settings (`BackGradientConfig` fields, `num_train`, `num_val`) are a \
config object:

```python
from ntga_tfds import families
cfg = families.get("back_gradient").config("${default_config}", outer_steps=100)
```

| config | setting |
|---|---|
$configs

## How to evaluate

Train a model on `train` and on its clean points only (`is_poison` False) \
and compare their accuracy on `test`:

```sh
python -m ntga_tfds.evaluate --dataset=$builder/$default_config --victims=fnn_relu --seeds=3
```

`bench/bench_back_gradient.py` draws test accuracy against the poisoning \
fraction for each inner model, as the paper's figures do.
"""

  def parse_name(self, name: str) -> Dict[str, Any]:
    m = _NAME.match(name or "")
    if not m:
      raise ValueError(
          f"{name!r} is not a back-gradient config name. Grammar: "
          "{model}_{attack}_p{pct}[_all], e.g. logreg_generic_p5, "
          "mlp_generic_p10, logreg_specific_p2_all (model: logreg, mlp, "
          "cnn; attack: generic, specific; pct: percent of the clean "
          "training points, decimals with p).")
    out = {"model": m["model"], "attack": m["attack"],
           "fraction": _percent(m["pct"]),
           "task": "all" if m["all"] else "binary"}
    if m["attack"] == "specific":
      out["target_map"] = SPECIFIC_MAP
    return out

  def format_name(self, settings) -> str:
    return (f"{settings['model']}_{settings['attack']}_p"
            f"{_format_percent(settings['fraction'])}"
            + ("_all" if settings["task"] == "all" else ""))

  def describe(self, settings) -> str:
    task = "1 vs 7" if settings["task"] == "binary" else "all classes"
    return (f"Back-gradient poisoning, {settings['model']} inner model, "
            f"{settings['attack']} attack, {task}, "
            f"{settings['fraction']:.1%} poisons.")

  def _sizes(self, cfg, source):
    table = SIZES[cfg.task].get(source, SIZES[cfg.task]["digits"])
    return (cfg.num_train or table[0], cfg.num_val or table[1])

  def job(self, cfg, train, test, spec):
    from ntga_tfds.transforms import back_gradient as bg  # pylint: disable=g-import-not-at-top
    config = cfg.attack
    num_train, num_val = self._sizes(cfg, spec.name)
    if cfg.task == "binary":
      pool = np.flatnonzero(np.isin(train.labels, BINARY))
      to_task = lambda y: (np.asarray(y) == BINARY[1]).astype(np.int64)  # pylint: disable=unnecessary-lambda-assignment
      from_task = lambda y: np.asarray(BINARY)[np.asarray(y)]  # pylint: disable=unnecessary-lambda-assignment
      num_task_classes = 2
      keep_test = np.flatnonzero(np.isin(test.labels, BINARY))
    else:
      pool = np.arange(len(train), dtype=np.int64)
      to_task = from_task = lambda y: np.asarray(y, np.int64)  # pylint: disable=unnecessary-lambda-assignment
      num_task_classes = spec.num_classes
      keep_test = np.arange(len(test), dtype=np.int64)
    if num_train + num_val > pool.size:
      raise ValueError(
          f"{num_train} training + {num_val} validation points do not fit "
          f"in the {pool.size} examples of the task; lower num_train / "
          "num_val.")
    chosen = plans.keyed_choice(cfg.seed, _SUBSET_STREAM, pool,
                                num_train + num_val)
    order = np.argsort(plans.keyed_scores(cfg.seed, _SUBSET_STREAM + 1,
                                          chosen), kind="stable")
    tr_idx = np.sort(chosen[order[:num_train]])
    va_idx = np.sort(chosen[order[num_train:]])
    x_val, y_val = train.images[va_idx], to_task(train.labels[va_idx])
    task_config = config
    if cfg.task == "binary" and config.target_map:
      task_config = dataclasses.replace(config, target_map=())

    def add_fn(x, y, *, x_added, y_added, count, key, shared, num_classes,
               on_step):
      del shared, num_classes
      x_new, y_new = bg.add_poisons(
          x, to_task(y), x_val=x_val, y_val=y_val, x_added=x_added,
          y_added=to_task(y_added) if len(y_added) else y_added,
          count=count, key=key, config=task_config,
          num_classes=num_task_classes,
          on_step=(lambda j, i, v: on_step(i, v)) if on_step else None)
      return x_new, from_task(y_new)

    num_poisons = max(1, int(round(cfg.fraction * num_train)))
    t = keep_test
    return plans.AdditiveJob(
        train.images[tr_idx], train.labels[tr_idx], family=self.name,
        config=config, add_fn=add_fn, num_poisons=num_poisons,
        num_classes=spec.num_classes, batch_size=1, seed=cfg.seed,
        steps_per_batch=config.outer_steps, source_index=tr_idx,
        extra_splits={"test": plans.columns(
            test.images[t], test.labels[t], t, t,
            is_poison=np.zeros(t.size, bool))})

  def expected_splits(self, cfg, y_train, y_test):
    del y_train
    num_train, _ = self._sizes(cfg, "digits")
    test = (np.isin(y_test, BINARY).sum() if cfg.task == "binary"
            else len(y_test))
    return {"train": num_train + max(1, int(round(cfg.fraction * num_train))),
            "test": int(test)}

  def test_configs(self, source, **settings):
    """A tiny version of the default config, for the builder tests."""
    n = 20 if source == "digits" else 2  # the dummy MNIST has five 1s/7s
    if source == "digits":
      settings = {}  # a digits subset has too few 1s and 7s; all are small
    return [self.config(self.grid[source][0][0], inner_steps=5,
                        outer_steps=2, num_train=n, num_val=n, **settings)]


FAMILY = families.register(BackGradient())
config = FAMILY.config

__all__ = ["BackGradient", "BackGradientBuilderConfig", "FAMILY", "config"]

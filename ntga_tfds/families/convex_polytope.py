"""Convex Polytope datasets: `<source>_convex_polytope/eps{k}_poisons{n}_{setting}_seed{s}[_fast]`.

Transferable targeted clean-label poisoning (Zhu et al., ICML 2019;
`ntga_tfds.transforms.convex_polytope`): a few correctly labelled images of
a base class, each within eps of its original, whose features surround a
target image's in an ensemble of substitute networks, so that a victim
fine-tuned on a set holding them classifies the target as the base class.

The paper's transfer-learning setting, as splits:
  pretrain  clean training images a victim (and the substitutes) are
            trained on first: every training image outside the fine-tuning
            set. Fixed for a source (not drawn from the seed), so victims
            pretrained once serve every target.
  train     the fine-tuning set (`finetune_per_class` images a class; 50 for
            CIFAR-10: 500 images), the poisons in place of clean base-class
            images (`is_poison`).
  target    the target test image, `adversarial_label` its base class.
  test      the clean test split.

Name grammar:
  eps{k}        L-inf radius k/255 (the paper's 0.1 is eps25).
  poisons{n}    poisons (the paper: 5, 1% of CIFAR-10's 500 fine-tuning
                images).
  transfer|e2e  the polytope on the penultimate features (transfer
                learning: the victim's last layer is retrained) or on
                several layers at once (end to end: the victim is fine-tuned
                whole).
  seed{s}       which target, base class and poisons.
  _fast         the reduced CPU setting (`FAST`); without it, the
                reference's (substitutes x 3 dropout rates, 20 epochs, 4,000
                steps).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Dict, Optional

import numpy as np

from ntga_tfds import configs
from ntga_tfds import families
from ntga_tfds import generation
from ntga_tfds import plans
from ntga_tfds.transforms.convex_polytope import config as cp_config

_NAME = re.compile(
    r"^eps(?P<eps>[1-9][0-9]*)_poisons(?P<n>[1-9][0-9]*)"
    r"_(?P<setting>transfer|e2e)_seed(?P<seed>0|[1-9][0-9]*)"
    r"(?P<fast>_fast)?$")
# The reduced CPU setting: one dropout rate, fewer epochs and steps.
FAST = {"dropout": (0.2,), "substitute_epochs": 5, "steps": 1000}
# Fine-tuning images a class (the paper: 50 for CIFAR-10).
FINETUNE_PER_CLASS = {"cifar10": 50, "mnist": 50, "fashion_mnist": 50,
                      "digits": 10}
_FINETUNE_STREAM = 1 << 45
_TEST = {"substitute_epochs": 1, "steps": 2, "dropout": (0.2,),
         "substitutes": ("cnn", "mlp")}


@dataclasses.dataclass(eq=False)
class ConvexPolytopeBuilderConfig(configs.PoisonConfig):
  """A Convex Polytope dataset's config.

  Attributes:
    attack: the `convex_polytope.ConvexPolytopeConfig`.
    finetune_per_class: images a class in the fine-tuning set; default
      `FINETUNE_PER_CLASS` of the source.
  """
  finetune_per_class: Optional[int] = None

  FAMILY: ClassVar[str] = "convex_polytope"
  ATTACK_CLASS: ClassVar[type] = cp_config.ConvexPolytopeConfig

  def validate(self):
    v = self.finetune_per_class
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                          or v < 1):
      raise ValueError(f"finetune_per_class must be None or an integer >= "
                       f"1, got {v!r}.")


def finetune_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
  """The fine-tuning set: `per_class` training indices of every class, by a
  keyed hash that does not depend on the dataset's seed (ascending)."""
  labels = np.asarray(labels)
  out = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if members.size < per_class:
      raise ValueError(f"Class {c} has {members.size} training images; the "
                       f"fine-tuning set needs {per_class} a class.")
    out.append(plans.keyed_choice(0, _FINETUNE_STREAM + int(c), members,
                                  per_class))
  return np.sort(np.concatenate(out))


class FineTuneJob(plans.TargetedJob):
  """A targeted job whose poisons sit in a fine-tuning set, with the rest of
  the training set released clean as `pretrain` (and the substitutes
  trained on it)."""

  def __init__(self, *args, finetune: np.ndarray, **kwargs):
    super().__init__(*args, **kwargs)
    self.finetune = np.asarray(finetune, np.int64)
    mask = np.ones(self.x_train.shape[0], bool)
    mask[self.finetune] = False
    self.pretrain = np.flatnonzero(mask)
    prepare = self.prepare_fn
    if prepare is not None:
      pre = self.pretrain

      def prepare_on_pretrain(x, y, **kw):
        return prepare(x[pre], y[pre], **kw)

      self.prepare_fn = prepare_on_pretrain

  def payload(self):
    return {**super().payload(), "finetune_sha256": generation.sha256_json(
        self.finetune.tolist())}

  def assemble(self, outputs):
    splits = super().assemble(outputs)
    tr = splits["train"]
    ft, pre = self.finetune, self.pretrain
    keep = lambda cols, idx: {k: v[idx] for k, v in cols.items()}  # pylint: disable=unnecessary-lambda-assignment
    splits["train"] = keep(tr, ft)
    splits["pretrain"] = keep(tr, pre)
    assert not splits["pretrain"]["is_poison"].any()
    return splits


class ConvexPolytope(families.Family):
  """Convex Polytope (Zhu et al., ICML 2019)."""

  name = "convex_polytope"
  title = "Convex Polytope"
  config_class = ConvexPolytopeBuilderConfig
  columns = plans.TargetedJob.COLUMNS
  splits = {
      "pretrain": "clean training images outside the fine-tuning set (what "
                  "a victim is pretrained on; the same for every config of "
                  "the source)",
      "target": "the target test image: `label` its class, "
                "`adversarial_label` the base class it should be taken for",
  }
  control = None
  fast = FAST
  homepage = "https://github.com/zhuchen03/ConvexPolytopePosioning"
  citation = """@inproceedings{zhu2019transferable,
  title = {Transferable Clean-Label Poisoning Attacks on Deep Neural Nets},
  author = {Zhu, Chen and Huang, W. Ronny and Li, Hengduo and Taylor, Gavin and Studer, Christoph and Goldstein, Tom},
  booktitle = {Proceedings of the 36th International Conference on Machine Learning},
  pages = {7614--7623},
  year = {2019}
}"""
  attack_line = ("Convex Polytope (Zhu et al., ICML 2019), a transferable "
                 "targeted clean-label attack")
  effect = ("A few correctly labelled images of a base class, each within "
            "eps of its original, surround a target image in the feature "
            "space of substitute networks, so that a victim fine-tuned on "
            "the set holding them classifies the target as the base class.")
  train_split_doc = ("the fine-tuning set (`finetune_per_class` images a "
                     "class), the poisons (`is_poison`) in place of clean "
                     "base-class images")
  unit_doc = "one per target, after the substitutes are trained once"
  citation_line = "the Convex Polytope paper"
  grid = {
      "digits": tuple(
          (f"eps25_poisons5_{s}_seed{i}_fast",
           f"{s}, target seed {i}, reduced setting")
          for s in ("transfer", "e2e") for i in range(5))
      # On 8x8 images eps 25 keeps the target outside the poisons' hull
      # even for the substitutes themselves (docs/benchmarks.md, Convex
      # Polytope white-box); eps 128 is the budget at which the attack
      # works offline.
      + tuple((f"eps128_poisons5_{s}_seed{i}_fast",
               f"{s}, target seed {i}, reduced setting, eps 128/255: the "
               "budget 8x8 images need")
              for s in ("transfer", "e2e") for i in range(5)),
      "cifar10": tuple(
          (f"eps25_poisons5_{s}_seed{i}_fast",
           f"{s}, target seed {i}, reduced CPU setting")
          for s in ("transfer", "e2e") for i in range(5))
      + tuple((f"eps25_poisons5_transfer_seed{i}",
               f"transfer, target seed {i}, the reference's setting")
              for i in range(5)),
  }
  card_template = """
## How it was made

`ntga_tfds.transforms.convex_polytope` trains an ensemble of substitute \
networks (`substitutes` x `dropout` rates) on the `pretrain` split, then \
crafts the poisons from clean base-class images of the fine-tuning set: for \
each substitute, the target's features are approximated by a convex \
combination of the poisons' features, alternating the coefficients \
(projected onto the probability simplex) and the poisons (Adam, then \
projected onto the L-inf ball of radius eps and [0, 1]), with dropout kept \
active while crafting. `e2e` configs apply the polytope to several layers' \
features at once. Outputs are quantised to uint8 within eps levels.

* The fine-tuning set is `finetune_per_class` images a class chosen by a \
keyed hash that does not depend on the config's seed, so `pretrain` is the \
same for every config of a source.
* The seed picks the target (a test image), its base class and the poisons \
(base-class images of the fine-tuning set).
* The substitutes are trained once per dataset and settings and cached \
under `<data_dir>/downloads/ntga_tfds_checkpoints/$builder/_shared/`.

## Configs

`eps{k}_poisons{n}_{transfer|e2e}_seed{s}[_fast]`; `_fast` is the reduced \
CPU setting: $fast. Other settings are a config object:

```python
from ntga_tfds import families
cfg = families.get("convex_polytope").config("${default_config}", finetune_per_class=20)
```

| config | setting |
|---|---|
$configs

## Threat model

Targeted, clean-label, black-box: the attacker perturbs a few training \
images of the base class within eps, cannot change labels, and does not know \
the victim (it attacks an ensemble of its own substitutes). A victim \
pretrained on clean data and fine-tuned on the set that holds the poisons \
(its last layer only, or end to end) should classify the target as the \
base class.

## How to evaluate

Pretrain a victim on `pretrain`, fine-tune it on `train` (last layer, or \
whole), and check whether the target is classified as its \
`adversarial_label`; compare with fine-tuning on the clean originals:

```sh
python -m ntga_tfds.evaluate --dataset=$builder/$default_config --victims=small_cnn --seeds=2
```
"""

  def parse_name(self, name: str) -> Dict[str, Any]:
    m = _NAME.match(name or "")
    if not m:
      raise ValueError(
          f"{name!r} is not a Convex Polytope config name. Grammar: "
          "eps{k}_poisons{n}_{transfer|e2e}_seed{s}[_fast], e.g. "
          "eps25_poisons5_transfer_seed0, eps25_poisons5_e2e_seed3_fast.")
    out = {"eps": configs.check_levels(int(m["eps"])) / 255,
           "num_poisons": int(m["n"]),
           "end_to_end": m["setting"] == "e2e", "seed": int(m["seed"])}
    if m["fast"]:
      out.update(FAST)
    return out

  def format_name(self, settings) -> str:
    fast = all(tuple(settings[k]) == tuple(v) if isinstance(v, tuple)
               else settings[k] == v for k, v in FAST.items())
    return (f"eps{configs.eps_levels(settings['eps'])}_poisons"
            f"{settings['num_poisons']}_"
            f"{'e2e' if settings['end_to_end'] else 'transfer'}_seed"
            f"{settings['seed']}{'_fast' if fast else ''}")

  def describe(self, settings) -> str:
    return (f"Convex Polytope, {settings['num_poisons']} poisons, L-inf eps="
            f"{configs.eps_levels(settings['eps'])}/255, "
            f"{'end to end' if settings['end_to_end'] else 'transfer'}, "
            f"target seed {settings['seed']}; substitutes "
            f"{'/'.join(settings['substitutes'])} x dropout "
            f"{settings['dropout']}, {settings['substitute_epochs']} epochs, "
            f"{settings['steps']} steps.")

  def _per_class(self, cfg, source):
    return cfg.finetune_per_class or FINETUNE_PER_CLASS.get(source, 50)

  def job(self, cfg, train, test, spec):
    from ntga_tfds.transforms import convex_polytope as cp  # pylint: disable=g-import-not-at-top
    config = cfg.attack
    ft = finetune_indices(train.labels, self._per_class(cfg, spec.name))
    sub = plans.make_target_plan(
        train.labels[ft], test.labels, num_poisons=config.num_poisons,
        seed=cfg.seed, num_classes=spec.num_classes)
    plan = dataclasses.replace(sub, poison_indices=ft[sub.poison_indices])

    prepare_fn, craft_fn = families.transform_fns(
        cp.train_substitutes, cp.craft, config)

    substitutes = {k: getattr(config, k) for k in (
        "substitutes", "dropout", "substitute_epochs",
        "substitute_batch_size", "substitute_lr", "weight_decay", "dtype")}
    substitutes["finetune_sha256"] = generation.sha256_json(ft.tolist())
    return FineTuneJob(
        train.images, train.labels, test.images, test.labels,
        family=self.name, config=config, craft_fn=craft_fn,
        prepare_fn=prepare_fn, shared_name="substitutes",
        shared_payload=substitutes, plan=plan, num_classes=spec.num_classes,
        steps_per_group=config.steps, finetune=ft)

  def expected_splits(self, cfg, y_train, y_test):
    ft = self._per_class(cfg, "") * len(np.unique(y_train))
    return {"pretrain": len(y_train) - ft, "train": ft, "target": 1,
            "test": len(y_test)}

  def test_configs(self, source, **settings):
    """A tiny version of the default config, for the builder tests."""
    del settings  # a digits subset would leave too few images a class
    per_class = 1 if source != "digits" else 10
    return [self.config(self.grid[source][0][0], finetune_per_class=per_class,
                        **{**_TEST, "num_poisons": 1})]


FAMILY = families.register(ConvexPolytope())
config = FAMILY.config

__all__ = ["ConvexPolytope", "ConvexPolytopeBuilderConfig", "FineTuneJob",
           "finetune_indices", "FAMILY", "config", "FAST"]

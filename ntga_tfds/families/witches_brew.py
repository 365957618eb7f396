"""Witches' Brew datasets: `<source>_witches_brew/[<net>_]eps{k}_budget{b}_seed{s}[_fast]`.

Targeted clean-label poisoning by gradient matching (Geiping et al., ICLR
2021; `ntga_tfds.transforms.witches_brew`): a budget of training images of
the adversarial class (labels unchanged, each within eps of its original) is
crafted so that a model trained from scratch on the set classifies the
target, a test image, as the adversarial class. The work is a
`plans.TargetedJob`: the surrogate is trained once (cached and shared by
every seed's config), then each target group's poisons are crafted.

Name grammar:
  <net>_      the surrogate: `resnet18` (default, forest's), `convnet`
              (forest's small CIFAR ConvNet) or `cnn` (a small CNN for MNIST
              and the digits); `convnet8`, `cnn16`: with that first-layer
              width (`surrogate_width`; default 32).
  eps{k}      L-inf radius k/255 (forest: 16).
  budget{b}   percent of the training set poisoned (`budget1` = 1%,
              `budget0p5` = 0.5%).
  seed{s}     picks the target (a test image), its adversarial class and the
              poisons, reproducibly.
  _fast       the reduced CPU setting (`FAST`): fewer surrogate epochs,
              crafting steps and restarts; without it, forest's (40 epochs,
              250 steps, 8 restarts: GPU work for CIFAR-10).

Other settings (`WitchesBrewConfig` fields; `num_targets`) go to `config`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Dict, Optional

from ntga_tfds import configs
from ntga_tfds import families
from ntga_tfds import plans
from ntga_tfds.transforms.witches_brew import config as wb_config

_NAME = re.compile(
    r"^(?:(?P<net>resnet18|convnet|cnn)(?P<width>(?<=t|n)[1-9][0-9]*)?_)?"
    r"eps(?P<eps>[1-9][0-9]*)"
    r"_budget(?P<budget>[0-9]+(?:p[0-9]+)?)_seed(?P<seed>0|[1-9][0-9]*)"
    r"(?P<fast>_fast)?$")

# The reduced CPU setting (`_fast`): what differs from forest's defaults.
# Chosen from bench/bench_witches_brew.py on the 2-core CPU so that full
# CIFAR-10 (`convnet8_`) builds in under an hour and MNIST (`cnn16_`) in
# under 20 minutes; see docs/benchmarks.md.
FAST = {"surrogate_epochs": 4, "steps": 200, "restarts": 1}
# What the builder tests build (tiny: dummy data, a few steps).
_TEST = {"surrogate_epochs": 1, "steps": 2, "restarts": 1,
         "validation_steps": 1, "surrogate": "cnn", "surrogate_width": 4}


@dataclasses.dataclass(eq=False)
class WitchesBrewBuilderConfig(configs.PoisonConfig):
  """A Witches' Brew dataset's config.

  Attributes:
    attack: the `witches_brew.WitchesBrewConfig`.
    num_targets: target images (of one class, all pushed towards one
      adversarial class by one set of poisons).
  """
  num_targets: int = 1

  FAMILY: ClassVar[str] = "witches_brew"
  ATTACK_CLASS: ClassVar[type] = wb_config.WitchesBrewConfig

  def validate(self):
    v = self.num_targets
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"num_targets must be an integer >= 1, got {v!r}.")


def _seeds(prefix: str, n: int = 5, note: str = ""):
  return tuple((f"{prefix}_seed{s}{'_fast' if 'fast' in note else ''}",
                f"{note}, target seed {s}") for s in range(n))


class WitchesBrew(families.Family):
  """Witches' Brew: gradient matching (Geiping et al., ICLR 2021)."""

  name = "witches_brew"
  title = "Witches' Brew"
  config_class = WitchesBrewBuilderConfig
  columns = plans.TargetedJob.COLUMNS
  splits = {"target": "the target test image(s): `label` the true class, "
                      "`adversarial_label` the class the poisons push it "
                      "to, `index` its position in the clean test split"}
  control = None
  fast = FAST
  homepage = "https://github.com/JonasGeiping/poisoning-gradient-matching"
  citation = """@inproceedings{geiping2021witches,
  title = {Witches' Brew: Industrial Scale Data Poisoning via Gradient Matching},
  author = {Geiping, Jonas and Fowl, Liam H. and Huang, W. Ronny and Czaja, Wojciech and Taylor, Gavin and Moeller, Michael and Goldstein, Tom},
  booktitle = {International Conference on Learning Representations},
  year = {2021}
}"""
  attack_line = ("Witches' Brew (gradient matching; Geiping et al., ICLR "
                 "2021), a targeted clean-label attack")
  effect = ("A small budget of training images of one class carries a "
            "bounded perturbation (labels unchanged) so that a model "
            "trained from scratch on the set classifies one chosen test "
            "image, the target, as that class, while its clean test "
            "accuracy stays normal.")
  train_split_doc = ("the whole training set; the poisons (`is_poison`) "
                     "replace their clean originals")
  unit_doc = "one per target group, after the surrogate is trained once"
  citation_line = "the Witches' Brew paper"
  grid = {
      "digits": _seeds("cnn_eps16_budget1", note="small CNN, fast"),
      "mnist": _seeds("cnn16_eps16_budget1",
                      note="the reduced CPU setting (CNN of width 16), fast"),
      "cifar10": (_seeds("convnet8_eps16_budget1",
                         note="the reduced CPU setting (ConvNet of width 8), "
                              "fast")
                  + _seeds("eps16_budget1",
                           note="forest's setting (ResNet-18; a GPU)")),
  }
  card_template = """
## How it was made

`ntga_tfds.transforms.witches_brew` trains a surrogate network on the clean \
training set (flax, optax; SGD with Nesterov momentum, weight decay, random \
crop and flip), then crafts the poisons: it minimises 1 - the cosine \
similarity between the surrogate's gradient of the training loss on the \
poisons (true labels, randomly shifted and flipped) and its gradient of the \
target's loss under the adversarial label, by signed Adam on the \
perturbations, projected to the L-inf ball of radius eps after every step, \
over several restarts, keeping the restart whose poisons most lower the \
target's adversarial loss after a short retraining check. Outputs are \
quantised to uint8 within eps levels of the clean pixels.

* The seed picks the target class, the target image(s) of the test split, \
the adversarial class and the poisons (`round(budget * n)` training images \
of the adversarial class), by a keyed hash (`ntga_tfds.plans`).
* The surrogate is trained once per dataset and settings and cached under \
`<data_dir>/downloads/ntga_tfds_checkpoints/$builder/_shared/`, so the other \
seeds' configs reuse it.

## Configs

Config names follow the grammar `[<net>_]eps{k}_budget{b}_seed{s}[_fast]`:

| part | meaning |
|---|---|
| `<net>_` | the surrogate: `resnet18` (default), `convnet` (small CIFAR ConvNet), `cnn` (small CNN for grey images); `convnet8`, `cnn16`: first-layer width 8, 16 (default 32) |
| `eps{k}` | L-inf budget k/255 (forest: 16) |
| `budget{b}` | percent of the training set poisoned (`budget1` = 1%, `budget0p5` = 0.5%) |
| `seed{s}` | which target, adversarial class and poisons |
| `_fast` | the reduced CPU setting: $fast |

Without `_fast`, forest's setting: 40 surrogate epochs, 250 crafting steps, \
8 restarts (GPU work on CIFAR-10). Other settings are a config object:

```python
from ntga_tfds import families
cfg = families.get("witches_brew").config("${default_config}", num_targets=2)
tfds.builder("$builder", config=cfg).download_and_prepare()
```

| config | setting |
|---|---|
$configs

## Threat model

Targeted, clean-label, gray-box: the attacker may perturb a small budget of \
training images of one class within eps (L-inf), cannot change labels, and \
knows the victim's kind of architecture and training but not its \
initialisation or data order (it attacks its own surrogate). Its goal is \
that a model trained from scratch on the released set classifies the target \
image as the adversarial class, while clean accuracy stays normal.

## How to evaluate

Retrain victims from scratch on `train` several times and count how often \
each target is classified as its `adversarial_label`, next to the same \
victims trained on the clean originals (matched by `index`):

```sh
python -m ntga_tfds.evaluate --dataset=$builder/$default_config --victims=cnn --seeds=2
```
"""

  def parse_name(self, name: str) -> Dict[str, Any]:
    m = _NAME.match(name or "")
    if not m:
      raise ValueError(
          f"{name!r} is not a Witches' Brew config name. Grammar: "
          "[<net>_]eps{k}_budget{b}_seed{s}[_fast], e.g. "
          "eps16_budget1_seed0, convnet_eps16_budget1_seed3_fast, "
          "cnn_eps16_budget0p5_seed0 (net: resnet18, convnet, cnn; k: "
          "levels out of 255; b: percent, decimals with p).")
    out = {"eps": configs.check_levels(int(m["eps"])) / 255,
           "budget": float(m["budget"].replace("p", ".")) / 100,
           "seed": int(m["seed"])}
    if m["net"]:
      out["surrogate"] = m["net"]
    if m["width"]:
      out["surrogate_width"] = int(m["width"])
    if m["fast"]:
      out.update(FAST)
    return out

  def format_name(self, settings) -> str:
    net = settings["surrogate"]
    width = settings["surrogate_width"]
    if width is not None and net != "resnet18":
      net += str(width)
    prefix = "" if net == "resnet18" else f"{net}_"
    percent = round(settings["budget"] * 100, 6)
    budget = (str(int(percent)) if percent == int(percent)
              else repr(percent).replace(".", "p"))
    fast = all(settings[k] == v for k, v in FAST.items())
    return (f"{prefix}eps{configs.eps_levels(settings['eps'])}_budget"
            f"{budget}_seed{settings['seed']}{'_fast' if fast else ''}")

  def describe(self, settings) -> str:
    return (f"Witches' Brew, {settings['surrogate']} surrogate, L-inf eps="
            f"{configs.eps_levels(settings['eps'])}/255, budget "
            f"{settings['budget']:.2%}, target seed {settings['seed']}, "
            f"{settings['surrogate_epochs']} surrogate epochs, "
            f"{settings['steps']} steps x {settings['restarts']} restarts.")

  def job(self, cfg, train, test, spec):
    from ntga_tfds.transforms import witches_brew as wb  # pylint: disable=g-import-not-at-top
    config = cfg.attack
    n = len(train)
    num_poisons = max(1, int(round(config.budget * n)))
    plan = plans.make_target_plan(
        train.labels, test.labels, num_poisons=num_poisons,
        num_targets=cfg.num_targets, seed=cfg.seed,
        num_classes=spec.num_classes)

    prepare_fn, craft_fn = families.transform_fns(
        wb.train_surrogate, wb.craft, config)

    # What the surrogate depends on: its own settings, not eps, budget,
    # crafting or the target seed (so every seed's config reuses it).
    surrogate = {k: getattr(config, k) for k in (
        "surrogate", "surrogate_width", "surrogate_epochs",
        "surrogate_batch_size", "surrogate_lr", "weight_decay", "ensemble",
        "augment", "flip", "dtype")}
    return plans.TargetedJob(
        train.images, train.labels, test.images, test.labels,
        family=self.name, config=config, craft_fn=craft_fn,
        prepare_fn=prepare_fn, shared_payload=surrogate, plan=plan,
        num_classes=spec.num_classes,
        steps_per_group=config.steps * config.restarts)

  def expected_splits(self, cfg, y_train, y_test):
    return {"train": len(y_train), "target": cfg.num_targets,
            "test": len(y_test)}

  def test_configs(self, source, **settings):
    """A tiny version of the default config, for the builder tests."""
    return [self.config(self.grid[source][0][0], **_TEST, **settings)]


FAMILY = families.register(WitchesBrew())
config = FAMILY.config

__all__ = ["WitchesBrew", "WitchesBrewBuilderConfig", "FAMILY", "config",
           "FAST"]

"""The random-noise control: `<source>_random_noise/eps{k}[_sign]`.

Every training image gets random noise of an attack's L-inf size
(`ntga_tfds.transforms.random_noise`), in one unit (`plans.BlockJob` without
validation). A model trained on it should learn almost as well as on clean
data: the comparison shows that an attack's effect comes from its
perturbation's direction, not its size.

Name grammar: `eps{k}` (uniform noise in [-k/255, k/255] per pixel) or
`eps{k}_sign` (exactly +-k/255).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Dict

from ntga_tfds import configs
from ntga_tfds import families
from ntga_tfds import plans
from ntga_tfds.families import ntga as ntga_family
from ntga_tfds.transforms import random_noise as noise_lib

_NAME = re.compile(r"^eps(?P<eps>[1-9][0-9]*)(?P<sign>_sign)?$")


@dataclasses.dataclass(eq=False)
class RandomNoiseBuilderConfig(configs.PoisonConfig):
  """A random-noise control's config (`attack`: a `RandomNoiseConfig`)."""
  FAMILY: ClassVar[str] = "random_noise"
  ATTACK_CLASS: ClassVar[type] = noise_lib.RandomNoiseConfig


class RandomNoise(families.Family):
  """The control: random noise of the same L-inf size."""

  name = "random_noise"
  title = "random noise (control)"
  config_class = RandomNoiseBuilderConfig
  columns = plans.BlockJob.COLUMNS
  control = None
  homepage = ntga_family.NTGA.homepage
  citation = ntga_family.NTGA.citation  # the control of its experiments

  attack_line = ("random noise of an attack's size (the control of the "
                 "NTGA paper's experiments)")
  effect = ("Each pixel gets independent noise bounded by eps; a model "
            "trained on it should learn almost as well as on clean data.")
  train_split_doc = "every training image with random noise"
  unit_doc = "one unit: the whole training set"
  citation_line = "the NTGA paper (whose control this is)"
  grid = {
      "digits": (("eps76", "uniform noise of NTGA's MNIST budget"),
                 ("eps8", "uniform noise of 8 levels")),
      "mnist": (("eps76", "uniform noise of NTGA's MNIST budget (0.3)"),),
      "fashion_mnist": (("eps76", "uniform noise of NTGA's MNIST budget"),),
      "cifar10": (("eps8", "uniform noise of NTGA's CIFAR-10 budget "
                           "(8/255)"),),
      "imagenet_bulbul_jellyfish": (
          ("eps25", "uniform noise of NTGA's ImageNet budget (0.1)"),),
  }
  card_template = """
## How it was made

Each pixel of each training image gets independent noise, uniform on \
[-eps, eps] (`eps{k}`) or exactly +-eps with a random sign (`eps{k}_sign`), \
clipped to [0, 1] and quantised to uint8 within k levels of the clean pixel \
(`ntga_tfds.transforms.random_noise`), with the key `fold_in(PRNGKey(seed), \
0)`.

## Configs

| config | setting |
|---|---|
$configs

Every `eps{k}[_sign]` name works with `tfds.load` (k in 1..254).

## How to evaluate

This dataset is the baseline of the attack datasets of the same budget \
(`${source}_ntga/eps{k}_...`): `python -m ntga_tfds.evaluate` trains on it \
next to the attacked and the clean training sets.
"""

  def parse_name(self, name: str) -> Dict[str, Any]:
    m = _NAME.match(name or "")
    if not m:
      raise ValueError(f"{name!r} is not a random-noise config name. "
                       "Grammar: eps{k}[_sign], e.g. eps8, eps76_sign.")
    return {"eps": configs.check_levels(int(m["eps"])) / 255,
            "distribution": "sign" if m["sign"] else "uniform"}

  def format_name(self, settings) -> str:
    return (f"eps{configs.eps_levels(settings['eps'])}"
            + ("_sign" if settings["distribution"] == "sign" else ""))

  def describe(self, settings) -> str:
    return (f"Control: {settings['distribution']} random noise of L-inf "
            f"size {configs.eps_levels(settings['eps'])}/255 on every "
            "training image.")

  def job(self, cfg, train, test, spec):
    del test
    config = cfg.attack

    def poison_fn(x, y, *, x_val, y_val, key, num_classes, on_step):
      del x_val, y_val, num_classes, on_step
      return noise_lib.poison(x, y, key=key, config=config)

    return plans.BlockJob(
        train.images, train.labels, family=self.name, config=config,
        poison_fn=poison_fn, num_classes=spec.num_classes, seed=cfg.seed,
        block_size=None, uses_validation=False)


FAMILY = families.register(RandomNoise())
config = FAMILY.config

__all__ = ["RandomNoise", "RandomNoiseBuilderConfig", "FAMILY", "config"]

"""NTGA datasets: `<source>_ntga/[cnn_]eps{k}_t{t}[_paper|_shared|_folds][_pgd|_1step|_mi]`.

Every training image is perturbed, block by block, each block against a
validation set (`plans.BlockJob`) by `ntga_tfds.transforms.ntga`.

Name grammar:
  cnn_     surrogate: the CNN NTK; without it, the FNN NTK (default).
  eps{k}   L-inf radius k/255, k an integer in 1..254 (pixels move by at
           most k of 255 levels). The paper's MNIST eps=0.3 is eps76
           (floor(0.3 * 255) = 76 levels), its ImageNet eps=0.1 is eps25.
  t{t}     surrogate training time: an integer, `inf` (the converged GP), or
           a decimal written with `p` (t0p5 = 0.5).
  _paper   the paper's protocol: `val_size` clean training images are held
           out and released as a `validation` split, every block is attacked
           against them.
  _shared  every training image is poisoned, and every block is attacked
           against one shared validation fold of training images (less the
           block's own images, replaced by the next in the fold's keyed
           order). The default protocol.
  _folds   every training image is poisoned, each block against a
           validation fold of its own, drawn from the other training images.
  _1step   the step schedule: one signed step of the full eps from the clean
           images (`optimizer="as_published"`, the reference code's). The
           default schedule.
  _pgd     true PGD (`optimizer="pgd"`: `nb_iter` steps of `eps_iter`).
  _mi      momentum PGD (`optimizer="momentum"`, MI-FGSM).
  A token that names the default is dropped from canonical names
  (`eps8_t64_shared_1step` is `eps8_t64`); `eps8_t64_paper` (=
  `eps8_t64_paper_1step`) is the reference algorithm, `eps8_t64_folds_pgd`
  this package's default before 1.1.0. The defaults are the strongest
  schedule and protocol measured against the paper's victims
  (docs/benchmarks.md, issue 22).

Any other setting (an `NTGAConfig` field: nb_iter, loss, norm, optimizer,
...; or `seed`, `val_size`, ...) is given to `config`:

  >>> cfg = families.get("ntga").config("eps8_t64", nb_iter=20, seed=1)
  >>> cfg.name
  'eps8_t64_x18d8c0d7'
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar, Dict, Optional

from ntga_tfds import configs
from ntga_tfds import families
from ntga_tfds import plans
from ntga_tfds.transforms.ntga import config as ntga_config

PROTOCOLS = ("all_train", "shared", "paper")
# The family's protocol -> `plans.BlockPlan`'s.
_BLOCK_PROTOCOL = {"all_train": "all_train", "shared": "shared_fold",
                   "paper": "heldout"}
# Name tokens of the protocols and of the step schedules (`optimizer`).
PROTOCOL_TOKENS = {"all_train": "folds", "shared": "shared",
                   "paper": "paper"}
SCHEDULE_TOKENS = {"pgd": "pgd", "as_published": "1step",
                   "momentum": "mi"}
_NAME = re.compile(
    r"^(?:(?P<cnn>cnn)_)?eps(?P<eps>[1-9][0-9]*)_t(?P<t>inf|[0-9]+(?:p[0-9]+)?)"
    r"(?:_(?P<protocol>paper|shared|folds))?"
    r"(?:_(?P<schedule>pgd|1step|mi))?$")


@dataclasses.dataclass(eq=False)
class NTGABuilderConfig(configs.PoisonConfig):
  """An NTGA dataset's config.

  Attributes:
    attack: the `ntga.NTGAConfig`.
    protocol: "shared" (default: every training image poisoned, every
      block against one shared fold less its own images), "all_train"
      (every training image poisoned, each block against a validation fold
      of other training images) or "paper" (`val_size` clean training
      images held out as a `validation` split).
    val_size: validation images per block; default min(10,000, n // 5).
  """
  protocol: str = "shared"
  val_size: Optional[int] = None

  FAMILY: ClassVar[str] = "ntga"
  ATTACK_CLASS: ClassVar[type] = ntga_config.NTGAConfig

  def validate(self):
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"protocol must be one of {PROTOCOLS}, got "
                       f"{self.protocol!r}.")
    v = self.val_size
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                          or v < 1):
      raise ValueError(f"val_size must be None or an integer >= 1, got "
                       f"{v!r}.")


_PAPER = "the paper's released setting"
DEFAULT_PROTOCOL = NTGABuilderConfig.protocol
DEFAULT_OPTIMIZER = ntga_config.NTGAConfig.optimizer


# What the card says of each protocol and schedule.
_PROTOCOL_DOC = {
    "shared": "**every training image is poisoned and released**; every "
              "block is attacked against the same validation fold: the "
              "`val_size` = min(10,000, n/5) training images outside the "
              "block that come first in one keyed order (so all blocks push "
              "towards the same validation images), never the test split.",
    "all_train": "**every training image is poisoned and released**; block "
                 "`b` is attacked against a validation fold of `val_size` = "
                 "min(10,000, n/5) images drawn (keyed hash of seed, b, "
                 "index) from the *other* training images, never from the "
                 "block itself, never from the test split.",
    "paper": "`val_size` training images (10,000 for MNIST and CIFAR-10) "
             "are held out clean; every block is attacked against all of "
             "them; they are released as the `validation` split.",
}
_PROTOCOL_ROW = {
    "shared": "every training image poisoned, every block against one "
              "shared validation fold (less the block's own images)",
    "all_train": "every training image poisoned, every block against a "
                 "validation fold of its own",
    "paper": "the paper's: clean training images held out as `validation`, "
             "every block against them",
}
_SCHEDULE_DOC = {
    "as_published": ("one signed step of the full eps from the clean "
                     "images, as the reference code computes",
                     "one signed step of the full eps from the clean "
                     "images, what the reference code computes "
                     "(with `_paper`: the reference algorithm)"),
    "pgd": ("10 PGD steps of size 2.5 eps/10",
            "true PGD, 10 steps of 2.5 eps/10"),
    "momentum": ("10 momentum PGD (MI-FGSM) steps of size eps/10",
                 "momentum PGD (MI-FGSM: 10 steps of eps/10 along a decayed "
                 "sum of L1-normalised gradients)"),
}


def _token_value(tokens, token, default):
  if not token:
    return default
  return next(k for k, v in tokens.items() if v == token)


class NTGA(families.Family):
  """Neural Tangent Generalization Attack (Yuan & Wu, ICML 2021)."""

  name = "ntga"
  title = "NTGA"
  config_class = NTGABuilderConfig
  columns = plans.BlockJob.COLUMNS
  splits = {"validation": "only with the paper protocol (`_paper`): the "
                          "clean held-out training images"}
  control = "random_noise"
  homepage = "https://github.com/lionelmessi6410/ntga"
  citation = """@inproceedings{yuan2021neural,
  title = {Neural Tangent Generalization Attacks},
  author = {Yuan, Chia-Hung and Wu, Shan-Hung},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning},
  series = {Proceedings of Machine Learning Research},
  volume = {139},
  year = {2021},
  publisher = {PMLR}
}"""
  attack_line = ("the Neural Tangent Generalization Attack (NTGA; Yuan & "
                 "Wu, ICML 2021)")
  effect = ("Each training image carries a small, bounded perturbation, "
            "labels are unchanged, and a model trained on it generalises "
            "poorly to clean data.")
  train_split_doc = "poisoned training images (all of them by default)"
  unit_doc = "blocks of `block_size` training images"
  citation_line = "the NTGA paper"
  version = "1.1.0"
  release_notes = {
      "1.0.0": "Initial release.",
      "1.1.0": "New defaults, chosen by measured transfer to the paper's "
               "victims: one signed step of the full eps (`_1step`) against "
               "one shared validation fold (`_shared`); 1.0.0's default "
               "(PGD, a fold per block) is `_folds_pgd`.",
  }
  grid = {
      "digits": (
          ("eps76_t64", "MNIST's setting (eps 0.3) on the 8x8 digits"),
          ("eps8_t64", "a small budget (8 levels)"),
          ("eps76_t1", "MNIST's t=1 setting"),
          ("cnn_eps76_t64", "CNN surrogate, MNIST's setting"),
      ),
      "mnist": (
          ("eps76_t64", f"{_PAPER} (FNN, eps 0.3 = 76 levels, t 64)"),
          ("cnn_eps76_t64", f"{_PAPER} (CNN, eps 0.3 = 76 levels, t 64)"),
          ("eps76_t1", f"{_PAPER} (FNN, eps 0.3 = 76 levels, t 1)"),
          ("cnn_eps76_t1", f"{_PAPER} (CNN, eps 0.3 = 76 levels, t 1)"),
      ),
      "fashion_mnist": (
          ("eps76_t64", "MNIST's paper setting (FNN, eps 0.3 = 76 levels, "
           "t 64)"),
          ("cnn_eps76_t64", "MNIST's paper setting (CNN, eps 0.3, t 64)"),
          ("eps76_t1", "MNIST's paper setting (FNN, eps 0.3, t 1)"),
          ("cnn_eps76_t1", "MNIST's paper setting (CNN, eps 0.3, t 1)"),
      ),
      "cifar10": (
          ("eps8_t64", "FNN, eps 8/255, t 64 (the card's example)"),
          ("eps8_t4096", f"{_PAPER} (FNN, eps 8/255, t 4096)"),
          ("cnn_eps8_t8", f"{_PAPER} (CNN, eps 8/255, t 8)"),
          ("eps8_t1", f"{_PAPER} (FNN, eps 8/255, t 1)"),
          ("cnn_eps8_t1", f"{_PAPER} (CNN, eps 8/255, t 1)"),
      ),
      "imagenet_bulbul_jellyfish": (
          ("eps25_t1", f"{_PAPER} (FNN, eps 0.1 = 25 levels, t 1)"),
          ("cnn_eps25_t1", f"{_PAPER} (CNN, eps 0.1 = 25 levels, t 1)"),
      ),
  }
  card_template = """
## How it was made

The attack (`ntga_tfds.transforms.ntga`) treats the NTK Gaussian process of \
an infinitely wide network (FNN or CNN) as the victim: its mean prediction \
on a validation set after training time `t` on the poisoned images has a \
closed form, so gradient ascent on the training images maximises the \
validation loss (cross-entropy) inside the L-inf ball of radius eps around \
each clean image (by default $default_schedule), and the result is \
quantised to uint8 within eps levels of the clean pixels. Large training \
sets are attacked in blocks of 512 images (B-NTGA).

* Blocks are consecutive runs of 512 training images in the canonical order \
(a fixed pseudo-random shuffle); the last, partial block is poisoned too. \
Block `b` uses the PRNG key `fold_in(PRNGKey(seed), b)`.
$protocol_bullets
* The defaults (schedule and protocol) are the ones measured strongest \
against the paper's victims on the official test split (the project's \
`docs/benchmarks.md`); every other setting stays reachable by name.

## Configs

Config names follow the grammar \
`[cnn_]eps{k}_t{t}[_paper|_shared|_folds][_pgd|_1step|_mi]`:

| part | meaning |
|---|---|
| `cnn_` | surrogate: the NTK of the paper's CNN; without it, of its 5-layer FNN (default) |
| `eps{k}` | L-inf budget k/255: every pixel moves by at most k of 255 levels (k in 1..254) |
| `t{t}` | surrogate training time: an integer, `inf` (the converged GP), or a decimal with `p` (`t0p5`) |
$token_rows

Every grammar name works with `tfds.load`/`tfds build`, named below or not \
(`tfds.load("$builder/eps16_t8")`). Any other setting (PGD steps, loss, \
norm, seed, validation size, ...) is a config object:

```python
from ntga_tfds import families
cfg = families.get("ntga").config("${default_config}", nb_iter=20, seed=1)   # name: ${default_config}_x<hash>
tfds.builder("$builder", config=cfg).download_and_prepare()
```

| config | setting |
|---|---|
$configs

## Threat model

A clean-label, black-box availability attack (a *generalization attack*): \
the attacker controls the training images before release, may change each \
pixel by at most eps (L-inf), cannot change labels, and knows neither the \
victim's architecture nor its training procedure -- it attacks an NTK \
surrogate instead. Its goal is that any model trained on the released data \
performs poorly on clean test data. It is not a backdoor: nothing happens at \
test time.

## How to evaluate

Train the same model on `train` and on the clean originals (matched by \
`index`), evaluate both on `test`, and compare with the random-noise control \
(`${source}_random_noise/eps{k}`). The project's CLI does exactly that:

```sh
python -m ntga_tfds.evaluate --dataset=$builder/$default_config --victims=cnn --seeds=3
```

The attacker's own view is `ntga_tfds.transforms.ntga.accuracy(x_train, \
y_train, x_test, y_test, config=...)`: the surrogate's test accuracy after \
training on the poisoned vs the clean images.
"""

  def card_values(self, source: str) -> Dict[str, str]:
    values = dict(super().card_values(source))
    values["default_schedule"] = _SCHEDULE_DOC[DEFAULT_OPTIMIZER][0]
    bullets, rows = [], []
    for protocol, token in PROTOCOL_TOKENS.items():
      default = protocol == DEFAULT_PROTOCOL
      text = _PROTOCOL_DOC[protocol]
      bullets.append(
          f"* {'Default protocol' if default else f'`_{token}` configs'}"
          f" ({protocol}{', `_' + token + '`' if default else ''}): {text}")
      rows.append(f"| `_{token}` | protocol: {_PROTOCOL_ROW[protocol]}"
                  + (" (the default; dropped from canonical names)"
                     if default else "") + " |")
    for optimizer, token in SCHEDULE_TOKENS.items():
      default = optimizer == DEFAULT_OPTIMIZER
      rows.append(f"| `_{token}` | step schedule: {_SCHEDULE_DOC[optimizer][1]}"
                  + (" (the default; dropped from canonical names)"
                     if default else "") + " |")
    values["protocol_bullets"] = "\n".join(bullets)
    values["token_rows"] = "\n".join(rows)
    return values

  def parse_name(self, name: str) -> Dict[str, Any]:
    m = _NAME.match(name or "")
    if not m:
      raise ValueError(
          f"{name!r} is not an NTGA config name. Grammar: "
          "[cnn_]eps{k}_t{t}[_paper|_shared|_folds][_pgd|_1step|_mi], e.g. "
          "eps8_t64, cnn_eps76_t1, eps8_tinf, eps8_t4096_paper, "
          "eps8_t64_paper_1step (k: levels out of 255; t: integer, inf or "
          "a decimal with p).")
    out = {"eps": configs.check_levels(int(m["eps"])) / 255,
           "t": configs.parse_t(m["t"]),
           "surrogate": "cnn" if m["cnn"] else "fnn",
           "protocol": _token_value(PROTOCOL_TOKENS, m["protocol"],
                                    DEFAULT_PROTOCOL)}
    if m["schedule"]:
      out["optimizer"] = _token_value(SCHEDULE_TOKENS, m["schedule"], None)
    return out

  def format_name(self, settings) -> str:
    prefix = "cnn_" if settings["surrogate"] == "cnn" else ""
    suffix = ""
    if settings["protocol"] != DEFAULT_PROTOCOL:
      suffix += "_" + PROTOCOL_TOKENS[settings["protocol"]]
    optimizer = settings.get("optimizer", DEFAULT_OPTIMIZER)
    if optimizer != DEFAULT_OPTIMIZER:
      suffix += "_" + SCHEDULE_TOKENS[optimizer]
    return (f"{prefix}eps{configs.eps_levels(settings['eps'])}_t"
            f"{configs.format_t(settings['t'])}{suffix}")

  def describe(self, settings) -> str:
    t = settings["t"]
    return (f"NTGA, {settings['surrogate'].upper()} surrogate, L-inf eps="
            f"{configs.eps_levels(settings['eps'])}/255, t="
            f"{'inf (converged GP)' if math.isinf(t) else f'{t:g}'}; "
            + {"paper": "paper protocol (held-out clean validation split)",
               "shared": "every training example poisoned, one shared "
                         "validation fold",
               "all_train": "every training example poisoned"}[
                   settings["protocol"]] + "; "
            + {"pgd": "PGD", "as_published": "one full-eps signed step",
               "momentum": "momentum PGD (MI-FGSM)"}[
                   settings.get("optimizer", DEFAULT_OPTIMIZER)]
            + ".")

  def job(self, cfg, train, test, spec):
    del test
    from ntga_tfds.transforms import ntga  # pylint: disable=g-import-not-at-top
    config = cfg.attack

    def poison_fn(x, y, *, x_val, y_val, key, num_classes, on_step):
      return ntga.poison_block(x, y, x_val=x_val, y_val=y_val, key=key,
                               config=config, num_classes=num_classes,
                               on_step=on_step)

    val_size = cfg.val_size
    if (val_size is None and cfg.protocol == "paper"
        and train.num_available == len(train)):
      val_size = PAPER_VAL_SIZE.get(spec.name)
    return plans.BlockJob(
        train.images, train.labels, family=self.name, config=config,
        poison_fn=poison_fn, num_classes=spec.num_classes, seed=cfg.seed,
        block_size=config.block_size,
        protocol=_BLOCK_PROTOCOL[cfg.protocol],
        val_size=val_size, uses_validation=True,
        steps_per_block=1 if config.optimizer == "as_published"
        else config.nb_iter)

  def expected_splits(self, cfg, y_train, y_test):
    n_train, n_test = len(y_train), len(y_test)
    if cfg.protocol != "paper":
      return {"train": n_train, "test": n_test}
    held = cfg.val_size or plans.default_val_size(n_train)
    return {"train": n_train - held, "validation": held, "test": n_test}

  def implementation(self, cfg):
    del cfg
    from ntga_tfds.transforms import ntga  # pylint: disable=g-import-not-at-top
    return ntga.implementation()

  def control_config(self, cfg) -> Optional[str]:
    try:
      return f"eps{configs.eps_levels(cfg.attack.eps)}"
    except ValueError:
      return None


# Held-out sizes of the paper protocol where the paper used one that the
# default rule (min(10,000, n // 5)) does not give. None so far.
PAPER_VAL_SIZE: Dict[str, int] = {}

FAMILY = families.register(NTGA())
config = FAMILY.config

__all__ = ["NTGA", "NTGABuilderConfig", "FAMILY", "config", "PROTOCOLS"]

"""Builder configs: an attack's settings, how it is applied, and their names.

Name grammar (the config part of `tfds.load("<dataset>/<config>")`):

  NTGA builders (`<source>_ntga`):
      [cnn_]eps{k}_t{t}[_paper]
    cnn_     surrogate: the CNN NTK; without it, the FNN NTK (default).
    eps{k}   L-inf radius k/255, k an integer in 1..254 (pixels move by at
             most k of 255 levels). The paper's MNIST eps=0.3 is eps76
             (floor(0.3 * 255) = 76 levels), its ImageNet eps=0.1 is eps25.
    t{t}     surrogate training time: an integer, `inf` (the converged GP),
             or a decimal written with `p` (t0p5 = 0.5).
    _paper   the paper's protocol: val_size clean training images are held
             out and released as a `validation` split, every block is
             attacked against them; without it, every training image is
             poisoned and each block is attacked against a validation fold
             drawn from the other training images.

  Random-noise control builders (`<source>_random_noise`):
      eps{k}[_sign]
    uniform noise in [-k/255, k/255] per pixel, or exactly +-k/255 (_sign).

Every name of the grammar is accepted by `tfds.builder`/`tfds.load`, named
configs or not. Any other setting (nb_iter, loss, norm, seed, val_size, ...)
is a config object:

  >>> cfg = configs.ntga_config("eps8_t64", nb_iter=20, seed=1)
  >>> cfg.name            # the grammar name plus a hash of the extra options
  'eps8_t64_x18d8c0d7'
  >>> tfds.builder("cifar10_ntga", config=cfg)

A config whose name is a grammar name must carry exactly that name's settings
(so two different datasets never share a directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence

import tensorflow_datasets as tfds

PROTOCOLS = ("all_train", "paper")
SURROGATES = ("fnn", "cnn")

_NTGA_NAME = re.compile(
    r"^(?:(?P<cnn>cnn)_)?eps(?P<eps>[1-9][0-9]*)_t(?P<t>inf|[0-9]+(?:p[0-9]+)?)"
    r"(?P<paper>_paper)?$")
_NOISE_NAME = re.compile(r"^eps(?P<eps>[1-9][0-9]*)(?P<sign>_sign)?$")
_TFDS_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


def format_t(t: float) -> str:
  t = float(t)
  if math.isinf(t):
    return "inf"
  if t <= 0 or math.isnan(t):
    raise ValueError(f"t must be > 0 or inf, got {t!r}.")
  if t == int(t):
    return str(int(t))
  text = repr(t)
  if "e" in text:
    raise ValueError(f"t={t!r} cannot be written in a config name; give the "
                     "config an explicit name.")
  return text.replace(".", "p")


def parse_t(text: str) -> float:
  return math.inf if text == "inf" else float(text.replace("p", "."))


def _check_levels(k) -> int:
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 254:
    raise ValueError(f"eps levels must be an integer in 1..254 (eps = "
                     f"k/255), got {k!r}.")
  return k


def format_ntga_name(*, eps_levels: int, t: float, surrogate: str = "fnn",
                     protocol: str = "all_train") -> str:
  """`[cnn_]eps{k}_t{t}[_paper]`."""
  _check_levels(eps_levels)
  if surrogate not in SURROGATES:
    raise ValueError(f"surrogate must be one of {SURROGATES}, got "
                     f"{surrogate!r}.")
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got "
                     f"{protocol!r}.")
  prefix = "cnn_" if surrogate == "cnn" else ""
  suffix = "_paper" if protocol == "paper" else ""
  return f"{prefix}eps{eps_levels}_t{format_t(t)}{suffix}"


def parse_ntga_name(name: str) -> Dict[str, Any]:
  """{'eps_levels', 't', 'surrogate', 'protocol'} of a grammar name."""
  m = _NTGA_NAME.match(name)
  if not m:
    raise ValueError(
        f"{name!r} is not an NTGA config name. Grammar: "
        "[cnn_]eps{k}_t{t}[_paper], e.g. eps8_t64, cnn_eps76_t1, "
        "eps8_tinf, eps8_t4096_paper (k: levels out of 255; t: integer, inf "
        "or a decimal with p).")
  return {"eps_levels": _check_levels(int(m["eps"])), "t": parse_t(m["t"]),
          "surrogate": "cnn" if m["cnn"] else "fnn",
          "protocol": "paper" if m["paper"] else "all_train"}


def format_noise_name(*, eps_levels: int,
                      distribution: str = "uniform") -> str:
  _check_levels(eps_levels)
  if distribution not in ("uniform", "sign"):
    raise ValueError(f"distribution must be 'uniform' or 'sign', got "
                     f"{distribution!r}.")
  return f"eps{eps_levels}" + ("_sign" if distribution == "sign" else "")


def parse_noise_name(name: str) -> Dict[str, Any]:
  m = _NOISE_NAME.match(name)
  if not m:
    raise ValueError(f"{name!r} is not a random-noise config name. Grammar: "
                     "eps{k}[_sign], e.g. eps8, eps76_sign.")
  return {"eps_levels": _check_levels(int(m["eps"])),
          "distribution": "sign" if m["sign"] else "uniform"}


def _jsonable(value):
  if isinstance(value, float) and math.isinf(value):
    return "inf" if value > 0 else "-inf"
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def short_hash(payload: Mapping[str, Any]) -> str:
  text = json.dumps(_jsonable(dict(payload)), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:8]


# The options of a builder config that are not attack settings.
_PLAN_DEFAULTS = {"seed": 0, "val_size": None, "max_train_examples": None,
                  "max_test_examples": None}


@dataclasses.dataclass(eq=False)
class PoisonConfig(tfds.core.BuilderConfig):
  """A builder config: one attack's settings and how they are applied.

  Attributes (beyond TFDS's name/description/...):
    attack_params: keyword arguments of the transform's config class (e.g.
      `ntga.NTGAConfig(**attack_params)`); what is not given takes the
      transform's default.
    seed: the PRNG seed: block b uses `fold_in(PRNGKey(seed), b)`, and the
      validation folds and held-out set are drawn from it.
    protocol: "all_train" (default: every training image poisoned, each
      block against a validation fold of other training images) or "paper"
      (val_size clean training images held out as a `validation` split).
    val_size: validation images per block; default
      `generation.default_val_size(n)` = min(10,000, n // 5) (for the paper
      protocol, the builder's PAPER_VAL_SIZE if it sets one).
    max_train_examples, max_test_examples: use only the first n examples of
      the source's canonical order. For tests and quick looks only.
  """
  attack_params: Optional[Mapping[str, Any]] = None
  seed: int = 0
  protocol: str = "all_train"
  val_size: Optional[int] = None
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = None

  ATTACK: ClassVar[str] = ""

  def __post_init__(self):
    self.attack_params = dict(self.attack_params or {})
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"protocol must be one of {PROTOCOLS}, got "
                       f"{self.protocol!r}.")
    for field in ("seed",):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{field} must be an integer >= 0, got {v!r}.")
    for field in ("val_size", "max_train_examples", "max_test_examples"):
      v = getattr(self, field)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                            or v < 1):
        raise ValueError(f"{field} must be None or an integer >= 1, got "
                         f"{v!r}.")
    if not self.name or not _TFDS_NAME.match(self.name):
      raise ValueError(f"Invalid config name {self.name!r}: use lower-case "
                       "letters, digits and underscores.")

  # -- to override --------------------------------------------------------
  def attack_config(self):
    """The transform's config object (validated by the transform)."""
    raise NotImplementedError

  # -- shared -------------------------------------------------------------
  def plan_options(self) -> Dict[str, Any]:
    return {"seed": self.seed, "protocol": self.protocol,
            "val_size": self.val_size,
            "max_train_examples": self.max_train_examples,
            "max_test_examples": self.max_test_examples}

  def to_json(self) -> Dict[str, Any]:
    """What defines the data: attack, its settings and the plan options."""
    return _jsonable({"name": self.name, "attack": self.ATTACK,
                      "attack_params": dict(self.attack_params),
                      **self.plan_options()})

  def _check_name(self, attack_params, protocol):
    """A grammar name must carry exactly the settings it denotes."""
    implied = _jsonable({"attack": self.ATTACK,
                         "attack_params": dict(attack_params),
                         "protocol": protocol, **_PLAN_DEFAULTS})
    mine = self.to_json()
    mine.pop("name")
    if mine != implied:
      raise ValueError(
          f"Config name {self.name!r} denotes {implied}, but this config "
          f"carries {mine}. Give it another name (or none: ntga_config() / "
          "random_noise_config() derive one).")

  def same_settings(self, other: "PoisonConfig") -> bool:
    a, b = self.to_json(), other.to_json()
    a.pop("name")
    b.pop("name")
    return type(self) is type(other) and a == b


@dataclasses.dataclass(eq=False)
class NTGABuilderConfig(PoisonConfig):
  """Config of an NTGA builder (see the module doc for its name grammar)."""
  ATTACK: ClassVar[str] = "ntga"

  def __post_init__(self):
    super().__post_init__()
    if _NTGA_NAME.match(self.name):
      parts = parse_ntga_name(self.name)
      self._check_name(_ntga_attack_params(parts), parts["protocol"])

  def attack_config(self):
    from ntga_tfds.transforms import ntga  # pylint: disable=g-import-not-at-top
    return ntga.NTGAConfig(**self.attack_params)


@dataclasses.dataclass(eq=False)
class RandomNoiseBuilderConfig(PoisonConfig):
  """Config of a random-noise control builder (`eps{k}[_sign]`)."""
  ATTACK: ClassVar[str] = "random_noise"

  def __post_init__(self):
    super().__post_init__()
    if self.protocol != "all_train":
      raise ValueError("The random-noise control has no validation set; "
                       "protocol must be 'all_train'.")
    if _NOISE_NAME.match(self.name):
      self._check_name(_noise_attack_params(parse_noise_name(self.name)),
                       "all_train")

  def attack_config(self):
    from ntga_tfds.transforms import random_noise  # pylint: disable=g-import-not-at-top,line-too-long
    return random_noise.RandomNoiseConfig(**self.attack_params)


def _ntga_attack_params(parts) -> Dict[str, Any]:
  return {"eps": parts["eps_levels"] / 255, "t": float(parts["t"]),
          "surrogate": parts["surrogate"]}


def _noise_attack_params(parts) -> Dict[str, Any]:
  return {"eps": parts["eps_levels"] / 255,
          "distribution": parts["distribution"]}


def _describe_t(t: float) -> str:
  return "inf (converged GP)" if math.isinf(t) else f"{t:g}"


def ntga_config(spec: Optional[str] = None, *, name: Optional[str] = None,
                eps_levels: Optional[int] = None, t: Optional[float] = None,
                surrogate: Optional[str] = None,
                protocol: Optional[str] = None, seed: int = 0,
                val_size: Optional[int] = None,
                max_train_examples: Optional[int] = None,
                max_test_examples: Optional[int] = None,
                description: Optional[str] = None,
                **attack_options) -> NTGABuilderConfig:
  """An NTGA builder config.

  Args:
    spec: a grammar name to start from ("cnn_eps8_t64"); keyword arguments
      override its parts.
    name: explicit config name; default: the grammar name, plus `_x<hash>`
      when options outside the grammar differ from their defaults.
    eps_levels: L-inf radius in levels (eps = eps_levels / 255).
    t: surrogate training time (float, `math.inf` allowed).
    surrogate: "fnn" or "cnn".
    protocol: "all_train" or "paper".
    seed, val_size, max_train_examples, max_test_examples: see
      `PoisonConfig`.
    description: one line for the catalog; default generated.
    **attack_options: other `ntga.NTGAConfig` fields (nb_iter, loss, norm,
      optimizer, eps_iter, rand_init, block_size, diag_reg, ...).
  """
  parts = parse_ntga_name(spec) if spec else {}
  for key, value in (("eps_levels", eps_levels), ("t", t),
                     ("surrogate", surrogate), ("protocol", protocol)):
    if value is not None:
      parts[key] = value
  if "eps_levels" not in parts or "t" not in parts:
    raise ValueError("ntga_config needs eps_levels and t (or a spec name).")
  parts.setdefault("surrogate", "fnn")
  parts.setdefault("protocol", "all_train")
  for k in ("eps", "t", "surrogate"):
    if k in attack_options:
      raise ValueError(f"Give {k} as a config name part, not as an attack "
                       "option.")
  grammar = format_ntga_name(**parts)
  params = {**_ntga_attack_params(parts), **attack_options}
  extra = {**attack_options}
  plan = {"seed": seed, "val_size": val_size,
          "max_train_examples": max_train_examples,
          "max_test_examples": max_test_examples}
  extra.update({k: v for k, v in plan.items() if v != _PLAN_DEFAULTS[k]})
  if name is None:
    name = grammar + (f"_x{short_hash(extra)}" if extra else "")
  if description is None:
    description = (
        f"NTGA, {parts['surrogate'].upper()} surrogate, L-inf eps="
        f"{parts['eps_levels']}/255, t={_describe_t(parts['t'])}; "
        + ("paper protocol (held-out clean validation split)"
           if parts["protocol"] == "paper" else
           "every training example poisoned")
        + (f"; options {json.dumps(_jsonable(extra), sort_keys=True)}"
           if extra else "") + ".")
  return NTGABuilderConfig(
      name=name, description=description, attack_params=params,
      protocol=parts["protocol"], **plan)


def random_noise_config(spec: Optional[str] = None, *,
                        name: Optional[str] = None,
                        eps_levels: Optional[int] = None,
                        distribution: Optional[str] = None, seed: int = 0,
                        max_train_examples: Optional[int] = None,
                        max_test_examples: Optional[int] = None,
                        description: Optional[str] = None
                        ) -> RandomNoiseBuilderConfig:
  """A random-noise control config (`eps{k}[_sign]`)."""
  parts = parse_noise_name(spec) if spec else {}
  if eps_levels is not None:
    parts["eps_levels"] = eps_levels
  if distribution is not None:
    parts["distribution"] = distribution
  if "eps_levels" not in parts:
    raise ValueError("random_noise_config needs eps_levels (or a spec).")
  parts.setdefault("distribution", "uniform")
  grammar = format_noise_name(**parts)
  plan = {"seed": seed, "max_train_examples": max_train_examples,
          "max_test_examples": max_test_examples}
  extra = {k: v for k, v in plan.items() if v != _PLAN_DEFAULTS[k]}
  if name is None:
    name = grammar + (f"_x{short_hash(extra)}" if extra else "")
  if description is None:
    description = (f"Control: {parts['distribution']} random noise of L-inf "
                   f"size {parts['eps_levels']}/255 on every training image"
                   + (f"; options {json.dumps(extra, sort_keys=True)}"
                      if extra else "") + ".")
  return RandomNoiseBuilderConfig(
      name=name, description=description,
      attack_params=_noise_attack_params(parts), **plan)


def config_from_name(attack: str, name: str) -> PoisonConfig:
  """Parses a grammar name into a config of the given attack."""
  if attack == "ntga":
    return ntga_config(name)
  if attack == "random_noise":
    return random_noise_config(name)
  raise ValueError(f"Unknown attack {attack!r}.")


# ---------------------------------------------------------------------------
# The named configs: the paper's released settings, per source.
# (name, note) pairs; the first is the builder's default.

_PAPER = "the paper's released setting"
NTGA_GRID: Dict[str, Sequence[tuple]] = {
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
    "imagenet2": (
        ("eps25_t1", f"{_PAPER} (FNN, eps 0.1 = 25 levels, t 1)"),
        ("cnn_eps25_t1", f"{_PAPER} (CNN, eps 0.1 = 25 levels, t 1)"),
    ),
}

NOISE_GRID: Dict[str, Sequence[str]] = {
    "digits": ("eps76", "eps8"),
    "mnist": ("eps76",),
    "fashion_mnist": ("eps76",),
    "cifar10": ("eps8",),
    "imagenet2": ("eps25",),
}


def named_ntga_configs(source: str) -> List[NTGABuilderConfig]:
  """The named NTGA configs of a source (first = default)."""
  out = []
  for name, note in NTGA_GRID[source]:
    cfg = ntga_config(name)
    cfg.description = cfg.description.rstrip(".") + f" -- {note}."
    out.append(cfg)
  return out


def named_random_noise_configs(source: str) -> List[RandomNoiseBuilderConfig]:
  return [random_noise_config(n) for n in NOISE_GRID[source]]


__all__ = [
    "PROTOCOLS", "PoisonConfig", "NTGABuilderConfig",
    "RandomNoiseBuilderConfig", "ntga_config", "random_noise_config",
    "config_from_name", "format_ntga_name", "parse_ntga_name",
    "format_noise_name", "parse_noise_name", "named_ntga_configs",
    "named_random_noise_configs", "NTGA_GRID",
    "NOISE_GRID",
]

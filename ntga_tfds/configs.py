"""Builder configs: one attack's typed settings and how they are applied.

Every poisoned dataset's config is a `PoisonConfig` subclass that its family
(`ntga_tfds.families`) defines. It carries:

* `attack`: the transform's own frozen config dataclass (e.g.
  `ntga.NTGAConfig`), the one source of truth for the attack's settings,
  validated by the transform when the builder config is made;
* the family's own typed fields about how the attack is applied (NTGA:
  `protocol`, `val_size`; targeted attacks: `num_targets`, ...);
* the fields every family shares: `seed`, `max_train_examples`,
  `max_test_examples`.

Names. Each family has a name grammar (`Family.parse_name` /
`format_name`, e.g. NTGA's `[cnn_]eps{k}_t{t}[_paper]`); every name of it is
accepted by `tfds.load`. A config made from settings is named by the grammar,
plus `_x<hash>` of the settings the grammar cannot say:

  >>> cfg = families.get("ntga").config("eps8_t64", nb_iter=20, seed=1)
  >>> cfg.name
  'eps8_t64_x18d8c0d7'

A config whose name is a grammar name must carry exactly that name's
settings (two different datasets never share a directory).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar, Dict, Optional

import tensorflow_datasets as tfds

from ntga_tfds import generation

TFDS_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
# Fields every family's builder config has, with their defaults.
SHARED_FIELDS = {"seed": 0, "max_train_examples": None,
                 "max_test_examples": None}


def format_t(t: float) -> str:
  """A float as a name part: 64 -> "64", inf -> "inf", 0.5 -> "0p5"."""
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


def check_levels(k) -> int:
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 254:
    raise ValueError(f"eps levels must be an integer in 1..254 (eps = "
                     f"k/255), got {k!r}.")
  return k


def eps_levels(eps: float) -> int:
  """k for eps = k/255, or ValueError if eps is not a whole number of levels
  (such a config needs an explicit name)."""
  k = round(float(eps) * 255)
  if not math.isclose(k / 255, float(eps), rel_tol=0, abs_tol=1e-9):
    raise ValueError(f"eps={eps!r} is not k/255 for an integer k, so it "
                     "cannot be written in a config name; give the config an "
                     "explicit name.")
  return check_levels(k)


def short_hash(payload) -> str:
  return generation.sha256_json(dict(payload))[:8]


@dataclasses.dataclass(eq=False)
class PoisonConfig(tfds.core.BuilderConfig):
  """A builder config: one attack's settings and how they are applied.

  Attributes (beyond TFDS's name/description/...):
    attack: the transform's frozen config (`ATTACK_CLASS`); a mapping of its
      fields is accepted and converted.
    seed: the PRNG seed: keys, validation folds, targets and poisons are
      drawn from it.
    max_train_examples, max_test_examples: use only the first n examples of
      the source's canonical order. For tests and quick looks only.
  """
  attack: Any = None
  seed: int = 0
  max_train_examples: Optional[int] = None
  max_test_examples: Optional[int] = None

  FAMILY: ClassVar[str] = ""
  ATTACK_CLASS: ClassVar[type] = object

  def __post_init__(self):
    if self.attack is None:
      self.attack = self.ATTACK_CLASS()
    elif isinstance(self.attack, dict):
      self.attack = self.ATTACK_CLASS(**self.attack)
    if not isinstance(self.attack, self.ATTACK_CLASS):
      raise ValueError(
          f"attack must be a {self.ATTACK_CLASS.__name__}, got "
          f"{type(self.attack).__name__}.")
    v = self.seed
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ValueError(f"seed must be an integer >= 0, got {v!r}.")
    for field in ("max_train_examples", "max_test_examples"):
      v = getattr(self, field)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                            or v < 1):
        raise ValueError(f"{field} must be None or an integer >= 1, got "
                         f"{v!r}.")
    self.validate()
    if not self.name or not TFDS_NAME.match(self.name):
      raise ValueError(f"Invalid config name {self.name!r}: use lower-case "
                       "letters, digits and underscores.")
    from ntga_tfds import families  # pylint: disable=g-import-not-at-top
    families.get(self.FAMILY).check_name(self)

  def validate(self) -> None:
    """Checks the family's own fields (override)."""

  @classmethod
  def builder_field_names(cls):
    """The fields beyond TFDS's and `attack`: shared and family fields."""
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.name not in base and f.name != "attack")

  def builder_fields(self) -> Dict[str, Any]:
    return {k: getattr(self, k) for k in self.builder_field_names()}

  def settings(self) -> Dict[str, Any]:
    """Attack fields and builder fields, flat (what names are made of)."""
    return {**{f.name: getattr(self.attack, f.name)
               for f in dataclasses.fields(self.attack)},
            **self.builder_fields()}

  def to_json(self) -> Dict[str, Any]:
    """What defines the data: family, attack settings and how applied."""
    return generation.jsonable({"name": self.name, "family": self.FAMILY,
                                "attack": self.attack,
                                **self.builder_fields()})

  def same_settings(self, other: "PoisonConfig") -> bool:
    a, b = self.to_json(), other.to_json()
    a.pop("name")
    b.pop("name")
    return type(self) is type(other) and a == b


__all__ = ["PoisonConfig", "format_t", "parse_t", "check_levels",
           "eps_levels", "short_hash", "SHARED_FIELDS", "TFDS_NAME"]

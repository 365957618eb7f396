"""Attack families: one module per attack, each registering itself.

A family says everything a poisoned dataset needs about its attack:

* its builder config class (`config_class`), which carries the transform's
  own frozen config (`attack`) and the family's typed options, validated
  when the config is made;
* its name grammar (`parse_name` / `format_name`) and named grid per source
  (`grid`);
* its work (`job`): one of the shapes in `ntga_tfds.plans`, and so its
  extra columns (`columns`) and splits;
* its card (`card`), citation, tags, and its control (`control`: the family
  whose dataset of the same budget is the baseline, e.g. random noise).

Modules in this package are discovered and imported on first lookup, so
adding an attack is adding `families/<attack>.py` (plus its transform and
builder folders): nothing shared lists the families. Code outside the
package can `register` a family too (tests do).

  >>> from ntga_tfds import families
  >>> ntga = families.get("ntga")
  >>> cfg = ntga.config("eps8_t64", nb_iter=20)
  >>> class Builder(families.builder("cifar10", "ntga")):   # a builder folder
  ...   pass
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import (Any, Callable, ClassVar, Dict, List, Mapping, Optional,
                    Sequence, Tuple)

from ntga_tfds import configs
from ntga_tfds import generation

_REGISTRY: Dict[str, "Family"] = {}
_DISCOVERED = False


class Family:
  """Base of every attack family (subclass, then `register` an instance).

  Class attributes to set:
    name: the family's name, the builder suffix (`<source>_<name>`).
    title: a human name ("NTGA").
    config_class: its `configs.PoisonConfig` subclass.
    columns: extra per-example columns and their value for clean examples
      (the shape's `COLUMNS`).
    splits: the splits its datasets have besides `train` and `test`, with
      a one-line description each.
    control: the family whose dataset of the same eps is the baseline
      (`control_config`), or None.
    homepage, citation (BibTeX).
    grid: source -> ((config name, note), ...); the first is the default.
    card_template: the family's part of the dataset card (`cards.render`),
      a `string.Template` with $source, $source_title, $builder,
      $default_config, $configs (the named configs' table rows),
      $num_classes.
    attack_line, effect, train_split_doc, unit_doc, citation_line: phrases
      the card's shared parts use.
    version, release_notes: the builders' TFDS version (bump it when what a
      config name builds changes, so old builds are not read as new) and
      its notes, version -> text.
  """

  name: ClassVar[str] = ""
  title: ClassVar[str] = ""
  config_class: ClassVar[type] = configs.PoisonConfig
  columns: ClassVar[Mapping[str, Any]] = {}
  splits: ClassVar[Mapping[str, str]] = {}
  control: ClassVar[Optional[str]] = None
  homepage: ClassVar[str] = ""
  citation: ClassVar[str] = ""
  grid: ClassVar[Mapping[str, Sequence[Tuple[str, str]]]] = {}
  card_template: ClassVar[str] = ""
  attack_line: ClassVar[str] = ""
  effect: ClassVar[str] = ""
  train_split_doc: ClassVar[str] = "the training set with the attack applied"
  unit_doc: ClassVar[str] = "units of work"
  citation_line: ClassVar[str] = "the attack's paper"
  version: ClassVar[str] = "1.0.0"
  release_notes: ClassVar[Mapping[str, str]] = {"1.0.0": "Initial release."}

  # -- to implement ---------------------------------------------------------

  def parse_name(self, name: str) -> Dict[str, Any]:
    """The settings a grammar name denotes (attack and builder fields);
    ValueError (saying the grammar) if `name` is not of the grammar."""
    raise NotImplementedError

  def format_name(self, settings: Mapping[str, Any]) -> str:
    """The grammar name of the closest named setting to `settings` (every
    attack and builder field, flat); what it cannot say goes in a hash."""
    raise NotImplementedError

  def describe(self, settings: Mapping[str, Any]) -> str:
    """One line for the catalog."""
    return f"{self.title}."

  def job(self, cfg, train, test, spec) -> generation.Job:
    """The work for `cfg` on the clean `train` / `test` (`sources.SourceData`
    with `spec` their `sources.SourceSpec`)."""
    raise NotImplementedError

  def implementation(self, cfg) -> Dict[str, Any]:
    """Which code computes the attack here (part of the fingerprint)."""
    del cfg
    return {}

  def expected_splits(self, cfg, y_train, y_test) -> Dict[str, int]:
    """Split sizes of `cfg` built on clean splits with these labels (what
    the builder tests expect)."""
    del cfg
    return {"train": len(y_train), "test": len(y_test)}

  def control_config(self, cfg) -> Optional[str]:
    """The config name of `cfg`'s control in the `control` family."""
    del cfg
    return None

  # -- shared ---------------------------------------------------------------

  @property
  def attack_class(self) -> type:
    return self.config_class.ATTACK_CLASS

  def _attack_fields(self) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(self.attack_class))

  def _builder_defaults(self) -> Dict[str, Any]:
    by_name = {f.name: f for f in dataclasses.fields(self.config_class)}
    return {k: by_name[k].default
            for k in self.config_class.builder_field_names()}

  def _split(self, settings: Mapping[str, Any]):
    attack_fields = self._attack_fields()
    builder = self._builder_defaults()
    unknown = sorted(set(settings) - set(attack_fields) - set(builder))
    if unknown:
      raise ValueError(
          f"Unknown {self.name} settings {unknown}. Attack settings "
          f"({self.attack_class.__name__}): {', '.join(attack_fields)}; "
          f"dataset settings: {', '.join(builder)}.")
    attack = self.attack_class(**{k: v for k, v in settings.items()
                                  if k in attack_fields})
    builder.update({k: v for k, v in settings.items() if k in builder})
    return attack, builder

  def _flat(self, attack, builder) -> Dict[str, Any]:
    return {**{k: getattr(attack, k) for k in self._attack_fields()},
            **builder}

  def implied(self, name: str) -> Dict[str, Any]:
    """Every setting (flat) of a grammar name, defaults filled in."""
    return self._flat(*self._split(self.parse_name(name)))

  def config(self, spec: Optional[str] = None, *, name: Optional[str] = None,
             description: Optional[str] = None, **settings):
    """A builder config of this family.

    Args:
      spec: a grammar name to start from; keyword settings override it.
      name: explicit config name; default: the grammar name, plus
        `_x<hash>` of the settings the grammar does not say.
      description: one line for the catalog; default generated.
      **settings: fields of the transform's config class and of the
        family's builder config (seed, max_train_examples, ...).

    Raises:
      ValueError: unknown or invalid settings (naming them).
    """
    given = dict(self.parse_name(spec)) if spec else {}
    given.update(settings)
    attack, builder = self._split(given)
    flat = self._flat(attack, builder)
    grammar = self.format_name(flat)
    implied = self.implied(grammar)
    extra = {k: v for k, v in flat.items()
             if generation.jsonable(implied.get(k)) != generation.jsonable(v)}
    if name is None:
      name = grammar + (f"_x{configs.short_hash(extra)}" if extra else "")
    if description is None:
      description = self.describe(flat)
      if extra:
        import json  # pylint: disable=g-import-not-at-top
        description = (description.rstrip(".") + "; options " + json.dumps(
            generation.jsonable(extra), sort_keys=True) + ".")
    return self.config_class(name=name, description=description,
                             attack=attack, **builder)

  def check_name(self, cfg) -> None:
    """A grammar-named config must carry exactly the name's settings."""
    try:
      implied = self.implied(cfg.name)
    except ValueError:
      return  # not a grammar name: free
    mine = generation.jsonable(cfg.settings())
    if mine != generation.jsonable(implied):
      diff = {k: (mine.get(k), v) for k, v in
              generation.jsonable(implied).items() if mine.get(k) != v}
      raise ValueError(
          f"Config name {cfg.name!r} denotes other settings than this "
          f"config's (setting: (this config, the name's)): {diff}. Give it "
          f"another name, or none: families.get({self.name!r}).config() "
          "derives one.")

  def named_configs(self, source: str) -> List[configs.PoisonConfig]:
    """The named configs of a source (first = default)."""
    out = []
    for name, note in self.grid.get(source, ()):
      cfg = self.config(name)
      cfg.description = cfg.description.rstrip(".") + f" -- {note}."
      out.append(cfg)
    return out

  def config_from_name(self, name: str):
    return self.config(name)

  def config_from_json(self, data: Mapping[str, Any]):
    """The config a `PoisonConfig.to_json()` describes (as stored in a
    built dataset's metadata): how a dataset built from a config object is
    found again by its name."""
    def back(value):  # what `generation.jsonable` changed
      if isinstance(value, list):
        return tuple(back(v) for v in value)
      if value in ("inf", "-inf", "nan"):
        return float(value)
      return value
    if data.get("family") != self.name:
      raise ValueError(f"{data.get('name')!r} is a {data.get('family')} "
                       f"config, not {self.name}.")
    attack = {k: back(v) for k, v in data["attack"].items()}
    fields = {k: back(data[k]) for k in self.config_class.builder_field_names()
              if k in data}
    return self.config_class(name=data["name"], description=self.describe(
        {**attack, **fields}), attack=attack, **fields)

  def sources(self) -> Tuple[str, ...]:
    return tuple(self.grid)

  def builder_name(self, source: str) -> str:
    return f"{source}_{self.name}"

  # Settings a `_fast` name suffix implies (the reduced CPU setting), if
  # the family has one; the card lists them as $fast.
  fast: ClassVar[Mapping[str, Any]] = {}

  def card_values(self, source: str) -> Dict[str, str]:
    """Extra `$names` for `card_template` (override to add more)."""
    del source
    return {"fast": ", ".join(f"`{k}={v}`" for k, v in self.fast.items())}

  def card(self, source: str) -> dict:
    """The card files of `<source>_<family>` (README.md, CITATIONS.bib,
    TAGS.txt), from `card_template` filled per source (`cards.render`)."""
    from ntga_tfds import cards  # pylint: disable=g-import-not-at-top
    return cards.render(self, source)


def transform_fns(prepare: Callable[..., Any], craft: Callable[..., Any],
                  config) -> Tuple[Callable[..., Any], Callable[..., Any]]:
  """`plans.TargetedJob`'s `prepare_fn` and `craft_fn` from a targeted
  transform: `prepare(x, y, *, key, config, num_classes)` trains its shared
  networks, `craft(x, y, *, poison_indices, x_target, ..., config)` crafts;
  both get `config`."""

  def prepare_fn(x, y, *, key, num_classes):
    return prepare(x, y, key=key, config=config, num_classes=num_classes)

  def craft_fn(x, y, **kwargs):
    return craft(x, y, config=config, **kwargs)

  return prepare_fn, craft_fn


def register(family: Family) -> Family:
  """Adds `family` to the registry (its name must be new)."""
  if not family.name or family.name in _REGISTRY and \
      _REGISTRY[family.name] is not family:
    raise ValueError(f"A family named {family.name!r} is already "
                     "registered (or the name is empty).")
  _REGISTRY[family.name] = family
  return family


def _discover() -> None:
  global _DISCOVERED
  if _DISCOVERED:
    return
  _DISCOVERED = True
  for m in pkgutil.iter_modules(__path__):
    if not m.name.startswith("_"):
      importlib.import_module(f"{__name__}.{m.name}")


def get(name: str) -> Family:
  """The family named `name`."""
  if name not in _REGISTRY:
    _discover()
  if name not in _REGISTRY:
    raise ValueError(f"Unknown attack family {name!r}; known: "
                     f"{', '.join(names())}.")
  return _REGISTRY[name]


def names(*, packaged_only: bool = False) -> Tuple[str, ...]:
  """Registered family names; `packaged_only`: only this package's own
  (`ntga_tfds/families/*.py`), not families registered by other code."""
  _discover()
  return tuple(sorted(
      n for n, f in _REGISTRY.items()
      if not packaged_only or type(f).__module__.startswith(__name__ + ".")))


def split_builder_name(builder_name: str) -> Tuple[str, Family]:
  """`"cifar10_ntga"` -> ("cifar10", the ntga family)."""
  _discover()
  for fam in sorted(_REGISTRY, key=len, reverse=True):
    suffix = "_" + fam
    if builder_name.endswith(suffix) and len(builder_name) > len(suffix):
      return builder_name[:-len(suffix)], _REGISTRY[fam]
  raise ValueError(f"{builder_name!r} is not <source>_<family> for a known "
                   f"family ({', '.join(names())}).")


@functools.lru_cache(maxsize=None)
def builder(source: str, family: str) -> type:
  """The base class of `builders/<source>_<family>/`'s `Builder`."""
  from ntga_tfds import dataset_builder  # pylint: disable=g-import-not-at-top
  fam = get(family)
  cls_name = "".join(p.title() for p in f"{source}_{family}".split("_"))
  return type(cls_name + "Base", (dataset_builder.PoisonedBuilder,), {
      "SOURCE": source, "FAMILY": family,
      "VERSION": dataset_builder.tfds.core.Version(fam.version),
      "RELEASE_NOTES": dict(fam.release_notes),
      "BUILDER_CONFIGS": fam.named_configs(source),
      "__module__": __name__,
      "__doc__": f"{source}, training set poisoned by {fam.title}.",
  }, skip_registration=True)


__all__ = ["Family", "register", "get", "names", "builder",
           "split_builder_name", "transform_fns"]

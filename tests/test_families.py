"""Attack families: adding one is local, and all three shapes of work behave.

The toy families here are the worked example of adding an attack: each is
a transform config, a builder config, a `Family` and a builder class, all in
this file, registered without editing any shared module; their builders load
through `tfds.load`. They cover the three shapes of `ntga_tfds.plans`:

* `toy_pattern`: every image perturbed (a fixed +-eps checkerboard whose
  sign flips with the label), blockwise, no validation set;
* `toy_targeted`: a budget of images of the adversarial class moved towards
  the target, with a shared input (class means) computed once;
* `toy_additive`: new points added one batch at a time, each batch
  depending on the earlier ones.
"""

import dataclasses
import re
from typing import ClassVar

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ntga_tfds import configs
from ntga_tfds import evaluate
from ntga_tfds import families
from ntga_tfds import generation
from ntga_tfds import plans
from ntga_tfds import sources

_EPS = re.compile(r"^eps(?P<k>[1-9][0-9]*)$")


# ------------------------------------------------ 1. toy_pattern (shape 1)


@dataclasses.dataclass(frozen=True)
class PatternConfig:
  """The toy transform's config: the pattern's size."""
  eps: float = 8 / 255

  def __post_init__(self):
    if not 0 < self.eps < 1:
      raise ValueError(f"eps must be in (0, 1), got {self.eps!r}.")


def pattern_poison(x, y, *, config):
  """x (n, h, w, c) uint8 + eps * checkerboard * (+1 even labels, -1 odd)."""
  h, w = x.shape[1:3]
  board = (np.indices((h, w)).sum(0) % 2 * 2 - 1)[None, :, :, None]
  sign = np.where(np.asarray(y) % 2 == 0, 1, -1)[:, None, None, None]
  k = configs.eps_levels(config.eps)
  return np.clip(x.astype(int) + k * board * sign, 0, 255).astype(np.uint8)


@dataclasses.dataclass(eq=False)
class PatternBuilderConfig(configs.PoisonConfig):
  FAMILY: ClassVar[str] = "toy_pattern"
  ATTACK_CLASS: ClassVar[type] = PatternConfig


class ToyPattern(families.Family):
  name = "toy_pattern"
  title = "a toy sign pattern"
  config_class = PatternBuilderConfig
  control = "random_noise"
  grid = {"digits": (("eps8", "8 levels"),)}

  def parse_name(self, name):
    m = _EPS.match(name or "")
    if not m:
      raise ValueError(f"{name!r}: grammar eps{{k}}.")
    return {"eps": configs.check_levels(int(m["k"])) / 255}

  def format_name(self, settings):
    return f"eps{configs.eps_levels(settings['eps'])}"

  def job(self, cfg, train, test, spec):
    def poison_fn(x, y, *, x_val, y_val, key, num_classes, on_step):
      del x_val, y_val, key, num_classes, on_step
      return pattern_poison(x, y, config=cfg.attack)
    return plans.BlockJob(train.images, train.labels, family=self.name,
                          config=cfg.attack, poison_fn=poison_fn,
                          num_classes=spec.num_classes, seed=cfg.seed,
                          block_size=100, uses_validation=False)

  def control_config(self, cfg):
    return f"eps{configs.eps_levels(cfg.attack.eps)}"


families.register(ToyPattern())


class DigitsToyPattern(families.builder("digits", "toy_pattern")):
  """The digits with the toy pattern (registered as digits_toy_pattern)."""


# ---------------------------------------------- 2. toy_targeted (shape 2)


@dataclasses.dataclass(frozen=True)
class TargetedConfig:
  eps: float = 16 / 255
  budget: float = 0.02

  def __post_init__(self):
    if not 0 < self.budget <= 1:
      raise ValueError(f"budget must be in (0, 1], got {self.budget!r}.")


@dataclasses.dataclass(eq=False)
class TargetedBuilderConfig(configs.PoisonConfig):
  num_targets: int = 2
  num_groups: int = 2
  FAMILY: ClassVar[str] = "toy_targeted"
  ATTACK_CLASS: ClassVar[type] = TargetedConfig


CALLS = {"prepare": 0}


class ToyTargeted(families.Family):
  name = "toy_targeted"
  title = "a toy targeted attack"
  config_class = TargetedBuilderConfig
  columns = plans.TargetedJob.COLUMNS
  splits = {"target": "the target images"}
  grid = {"digits": (("eps16", "16 levels"),)}

  def parse_name(self, name):
    m = _EPS.match(name or "")
    if not m:
      raise ValueError(f"{name!r}: grammar eps{{k}}.")
    return {"eps": configs.check_levels(int(m["k"])) / 255}

  def format_name(self, settings):
    return f"eps{configs.eps_levels(settings['eps'])}"

  def job(self, cfg, train, test, spec):
    k = configs.eps_levels(cfg.attack.eps)

    def prepare_fn(x, y, *, key, num_classes):
      del key
      CALLS["prepare"] += 1
      means = np.stack([x[y == c].mean(0) for c in range(num_classes)])
      return {"means": means.astype(np.float32)}

    def craft_fn(x, y, *, poison_indices, x_target, y_target,
                 adversarial_label, key, shared, num_classes, on_step):
      del y, y_target, key, num_classes, adversarial_label
      assert shared["means"].shape[0] == 10
      on_step(0, 0.0)
      step = np.clip(x_target.mean(0).astype(int)
                     - x[poison_indices].astype(int), -k, k)
      return (x[poison_indices].astype(int) + step).astype(np.uint8)

    plan = plans.make_target_plan(
        train.labels, test.labels, num_poisons=max(
            1, round(cfg.attack.budget * len(train))),
        num_targets=cfg.num_targets, num_groups=cfg.num_groups,
        seed=cfg.seed,
        num_classes=spec.num_classes)
    return plans.TargetedJob(train.images, train.labels, test.images,
                             test.labels, family=self.name, config=cfg.attack,
                             craft_fn=craft_fn, prepare_fn=prepare_fn,
                             plan=plan, num_classes=spec.num_classes,
                             steps_per_group=1)

  def expected_splits(self, cfg, y_train, y_test):
    return {"train": len(y_train), "target": cfg.num_targets * cfg.num_groups,
            "test": len(y_test)}


families.register(ToyTargeted())


class DigitsToyTargeted(families.builder("digits", "toy_targeted")):
  """The digits with the toy targeted attack."""


# ---------------------------------------------- 3. toy_additive (shape 3)


@dataclasses.dataclass(frozen=True)
class AdditiveConfig:
  num_poisons: int = 6


@dataclasses.dataclass(eq=False)
class AdditiveBuilderConfig(configs.PoisonConfig):
  FAMILY: ClassVar[str] = "toy_additive"
  ATTACK_CLASS: ClassVar[type] = AdditiveConfig


class ToyAdditive(families.Family):
  name = "toy_additive"
  title = "a toy additive attack"
  config_class = AdditiveBuilderConfig
  columns = plans.AdditiveJob.COLUMNS
  grid = {"digits": (("n6", "6 points"),)}

  def parse_name(self, name):
    m = re.match(r"^n(?P<n>[1-9][0-9]*)$", name or "")
    if not m:
      raise ValueError(f"{name!r}: grammar n{{count}}.")
    return {"num_poisons": int(m["n"])}

  def format_name(self, settings):
    return f"n{settings['num_poisons']}"

  def job(self, cfg, train, test, spec):
    def add_fn(x, y, *, x_added, y_added, count, key, shared, num_classes,
               on_step):
      del key, shared, on_step
      # Each new point depends on the ones before: their mean, brightened.
      base = (x_added.mean(0) if len(x_added) else x.mean(0))
      new = np.clip(base + 10, 0, 255).astype(np.uint8)
      return (np.repeat(new[None], count, 0),
              (np.arange(count) + len(y_added) + 1) % num_classes)
    return plans.AdditiveJob(train.images, train.labels, family=self.name,
                             config=cfg.attack, add_fn=add_fn,
                             num_poisons=cfg.attack.num_poisons,
                             batch_size=2, num_classes=spec.num_classes,
                             seed=cfg.seed)

  def expected_splits(self, cfg, y_train, y_test):
    return {"train": len(y_train) + cfg.attack.num_poisons,
            "test": len(y_test)}


families.register(ToyAdditive())


class DigitsToyAdditive(families.builder("digits", "toy_additive")):
  """The digits with the toy additive attack."""


# ------------------------------------------------------------------ tests

_SUBSET = dict(max_train_examples=200, max_test_examples=50)


@pytest.fixture(scope="module")
def digits():
  return (sources.load_source("digits", "train", max_examples=200),
          sources.load_source("digits", "test", max_examples=50))


def test_a_family_registers_without_editing_shared_code(tmp_path):
  assert {"ntga", "random_noise", "toy_pattern"} <= set(families.names())
  ds = tfds.load("digits_toy_pattern/eps8", split="train", data_dir=tmp_path)
  first = next(iter(tfds.as_numpy(ds)))
  assert set(first) == {"image", "label", "index"}
  fam, = [f for f in [families.get("toy_pattern")]]
  assert families.split_builder_name("digits_toy_pattern") == (
      "digits", fam)
  # The grammar and its errors come from the family.
  with pytest.raises(ValueError, match=r"grammar eps\{k\}"):
    tfds.builder("digits_toy_pattern/bogus", data_dir=tmp_path)
  # Settings outside the grammar get a hashed name.
  assert fam.config("eps8", seed=3).name.startswith("eps8_x")


def test_toy_pattern_builds_the_transform_on_every_image(tmp_path, digits):
  train, _ = digits
  cfg = families.get("toy_pattern").config("eps8", **_SUBSET)
  builder = DigitsToyPattern(config=cfg, data_dir=tmp_path)
  builder.download_and_prepare()
  got = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
  order = np.argsort(got["index"])
  want = pattern_poison(train.images, train.labels, config=cfg.attack)
  np.testing.assert_array_equal(got["image"][order], want)
  meta = builder.info.metadata
  assert meta["family"] == "toy_pattern"
  assert meta["attack_config"] == {"eps": 8 / 255}
  assert meta["stats"]["linf_max_levels"] == 8
  assert meta["plan"]["num_blocks"] == 2


def test_evaluate_learns_the_control_from_the_registry(tmp_path):
  sets, _, info = evaluate.load_named(
      "digits_toy_pattern/eps8", data_dir=str(tmp_path))
  assert info["control"] == "digits_random_noise/eps8"
  assert set(sets) == {"clean", "poisoned", "random_noise"}
  # A family without a control evaluates without one.
  sets, _, info = evaluate.load_named("digits_random_noise/eps8",
                                      data_dir=str(tmp_path))
  assert "control" not in info and set(sets) == {"clean", "poisoned"}


def _run(job, **kw):
  return generation.run(job, data_sha256="digits-subset", progress=False,
                        **kw)


def _job(family, digits, **settings):
  train, test = digits
  fam = families.get(family)
  name = fam.grid["digits"][0][0]
  return fam.job(fam.config(name, **settings), train, test,
                 sources.source_spec("digits"))


@pytest.mark.parametrize("family", ["toy_pattern", "toy_targeted",
                                    "toy_additive"])
def test_every_shape_resumes_to_identical_bytes(family, digits, tmp_path):
  reference = _run(_job(family, digits))
  job = _job(family, digits)
  with pytest.raises(generation.Interrupted):
    _run(job, checkpoint_dir=tmp_path, stop_after=1)
  CALLS["prepare"] = 0
  resumed = _run(_job(family, digits), checkpoint_dir=tmp_path)
  assert resumed.units_resumed == 1
  assert resumed.units_computed == job.num_units - 1
  assert set(resumed.splits) == set(reference.splits)
  for split, columns in reference.splits.items():
    for name, value in columns.items():
      assert resumed.splits[split][name].tobytes() == value.tobytes(), (
          split, name)
  if family == "toy_targeted":
    # The shared input was computed before the interruption: read back.
    assert CALLS["prepare"] == 0 and resumed.shared_resumed == ["surrogate"]


def test_targeted_shape_touches_only_the_budget(digits):
  train, test = digits
  job = _job("toy_targeted", digits, num_targets=2)
  result = _run(job)
  tr = result.splits["train"]
  p = job.plan
  assert p.poison_indices.shape == (2, 4)  # 2 groups, 2% of 200 each
  # Poisons are of their group's adversarial class, and only they changed.
  for g in range(2):
    assert set(train.labels[p.poison_indices[g]]) == {
        p.adversarial_labels[g]}
  changed = np.flatnonzero((tr["image"] != train.images).reshape(200, -1)
                           .any(1))
  assert set(changed) <= set(p.poison_indices.ravel())
  np.testing.assert_array_equal(np.flatnonzero(tr["is_poison"]),
                                np.sort(p.poison_indices.ravel()))
  np.testing.assert_array_equal(tr["label"], train.labels)
  assert np.abs(tr["image"].astype(int) - train.images).max() <= 16
  tg = result.splits["target"]
  assert len(tg["index"]) == 4
  np.testing.assert_array_equal(tg["image"], test.images[tg["index"]])
  assert (tg["label"] != tg["adversarial_label"]).all()
  assert result.stats["num_poisons"] == 8


def test_target_plans_are_keyed_by_the_seed_and_checked():
  y_train = np.arange(1000) % 10
  y_test = np.arange(200) % 10
  a = plans.make_target_plan(y_train, y_test, num_poisons=10, seed=0)
  b = plans.make_target_plan(y_train, y_test, num_poisons=10, seed=0)
  c = plans.make_target_plan(y_train, y_test, num_poisons=10, seed=1)
  assert a.to_json() == b.to_json() and a.to_json() != c.to_json()
  assert a.target_labels[0, 0] != a.adversarial_labels[0]
  two = plans.make_target_plan(y_train, y_test, num_poisons=10,
                               num_groups=2, seed=0)
  assert not set(two.poison_indices[0]) & set(two.poison_indices[1])
  with pytest.raises(ValueError, match="budget"):
    plans.make_target_plan(y_train, y_test, num_poisons=101)
  with pytest.raises(ValueError, match="differ"):
    plans.make_target_plan(y_train, y_test, num_poisons=1, target_class=3,
                           adversarial_class=3)


def test_targeted_and_additive_builders_load_with_their_columns(tmp_path):
  fam = families.get("toy_targeted")
  cfg = fam.config("eps16", **_SUBSET)
  builder = DigitsToyTargeted(config=cfg, data_dir=tmp_path)
  builder.download_and_prepare()
  assert set(builder.info.splits) == {"train", "target", "test"}
  train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
  assert train["is_poison"].sum() == 8
  assert (train["adversarial_label"] == -1).all()
  target = tfds.as_numpy(builder.as_dataset(split="target", batch_size=-1))
  assert (target["adversarial_label"] >= 0).all()
  test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
  assert not test["is_poison"].any()
  assert builder.info.metadata["plan"]["num_poisons"] == 8

  add = families.get("toy_additive").config("n6", **_SUBSET)
  builder = DigitsToyAdditive(config=add, data_dir=tmp_path)
  builder.download_and_prepare()
  train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
  assert len(train["index"]) == 206 and train["is_poison"].sum() == 6
  assert (train["index"][train["is_poison"]] == -1).all()
  assert builder.info.metadata["units_computed"] == 3


def test_every_registered_family_is_complete():
  for name in ("ntga", "random_noise"):
    fam = families.get(name)
    assert fam.grid and fam.citation and fam.card_template
    for source in fam.grid:
      cfgs = fam.named_configs(source)
      assert cfgs and len({c.name for c in cfgs}) == len(cfgs)
      for c in cfgs:
        assert fam.parse_name(c.name)  # named configs are grammar names


def test_evaluate_reports_attack_success_for_targeted_datasets(tmp_path):
  out = tmp_path / "out"
  report = evaluate.evaluate(
      "digits_toy_targeted/eps16", victims=["fnn_relu"], seeds=1, epochs=1,
      data_dir=str(tmp_path), output_dir=str(out), progress=False)
  assert report["mode"] == "targeted" and report["num_targets"] == 4
  for name in ("poisoned", "clean"):
    r = report["results"]["fnn_relu"][name]
    assert 0.0 <= r["success"]["mean"] <= 1.0
    assert len(r["target_predictions"]) == 1
    assert len(r["target_predictions"][0]) == 4
    assert r["final"]["mean"] > 0.3  # the victim learned the digits
  assert report["num_poisons"] == 2 * round(0.02 * 1442)  # 2 groups
  assert {"targets.png", "poisons.png", "results.json"} <= {
      p.name for p in out.iterdir()}
  assert "attack success" in evaluate.format_targeted_table(report)


def test_evaluate_compares_with_and_without_added_points(tmp_path):
  report = evaluate.evaluate(
      "digits_toy_additive/n6", victims=["fnn_relu"], seeds=1, epochs=1,
      data_dir=str(tmp_path), progress=False)
  assert report["mode"] == "additive"
  assert (report["num_poisons"], report["num_clean"]) == (6, 1442)
  by_set = report["results"]["fnn_relu"]["none"]
  assert set(by_set) == {"clean", "poisoned"}
  assert "drop" in by_set["poisoned"]
  assert "poisoned" in evaluate.format_table(report)

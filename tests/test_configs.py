"""Builder configs: the name grammar, the named grids, TFDS config lookup."""

import math

import pytest
import tensorflow_datasets as tfds

import ntga_tfds
from ntga_tfds import families
from ntga_tfds.families import ntga as ntga_family
from ntga_tfds.families import random_noise as noise_family
from ntga_tfds.transforms import ntga
from ntga_tfds.transforms.common import pgd
from ntga_tfds.transforms import random_noise

NTGA = families.get("ntga")
NOISE = families.get("random_noise")


@pytest.mark.parametrize("name, parts", [
    ("eps8_t64", dict(eps=8 / 255, t=64.0, surrogate="fnn",
                      protocol="shared")),
    ("cnn_eps76_t1", dict(eps=76 / 255, t=1.0, surrogate="cnn",
                          protocol="shared")),
    ("eps8_tinf", dict(eps=8 / 255, t=math.inf, surrogate="fnn",
                       protocol="shared")),
    ("eps4_t0p5", dict(eps=4 / 255, t=0.5, surrogate="fnn",
                       protocol="shared")),
    ("cnn_eps8_t4096_paper", dict(eps=8 / 255, t=4096.0, surrogate="cnn",
                                  protocol="paper")),
    ("eps76_t64_folds", dict(eps=76 / 255, t=64.0, surrogate="fnn",
                             protocol="all_train")),
    ("eps8_t64_folds_pgd", dict(eps=8 / 255, t=64.0, surrogate="fnn",
                                protocol="all_train", optimizer="pgd")),
    ("cnn_eps76_t1_mi", dict(eps=76 / 255, t=1.0, surrogate="cnn",
                             protocol="shared", optimizer="momentum")),
])
def test_ntga_name_grammar_round_trips(name, parts):
  assert NTGA.parse_name(name) == parts
  assert NTGA.format_name(parts) == name
  assert NTGA.config(name).name == name


@pytest.mark.parametrize("bad", [
    "eps8", "fnn_eps8_t64", "eps0_t64", "eps8_t", "eps8_t-1",
    "EPS8_t64", "eps8_t64_paper_x", "eps08_t64", "eps8_t64_extra",
    "eps8_t64_paper_shared", "eps8_t64_shared_paper", "eps8_t64_1step_paper",
    "eps8_t64_pgd_mi", "eps8_t64_adam", "eps8_t64_folds_paper"])
def test_bad_ntga_names_are_rejected_with_the_grammar(bad):
  with pytest.raises(ValueError, match=r"\[cnn_\]eps\{k\}_t\{t\}"):
    NTGA.parse_name(bad)


def test_schedule_and_protocol_tokens_name_the_settings_they_set():
  # Tokens that name the defaults are dropped from the canonical name, so
  # every spelling of one dataset finds the same directory.
  default = NTGA.config("eps8_t64")
  assert (default.protocol, default.attack.optimizer) == (
      ntga_family.DEFAULT_PROTOCOL, ntga_family.DEFAULT_OPTIMIZER)
  for protocol, p_token in ntga_family.PROTOCOL_TOKENS.items():
    for optimizer, s_token in ntga_family.SCHEDULE_TOKENS.items():
      cfg = NTGA.config(f"eps8_t64_{p_token}_{s_token}")
      assert (cfg.protocol, cfg.attack.optimizer) == (protocol, optimizer)
      # The same dataset as the config object, and no hash suffix.
      same = NTGA.config("eps8_t64", protocol=protocol, optimizer=optimizer)
      assert same.name == cfg.name and "_x" not in cfg.name
      assert (p_token in cfg.name) == (
          protocol != ntga_family.DEFAULT_PROTOCOL)
      assert (s_token in cfg.name) == (
          optimizer != ntga_family.DEFAULT_OPTIMIZER)
  # The reference algorithm by name.
  ref = NTGA.config("eps8_t64_paper_1step")
  assert ref.attack.optimizer == "as_published" and ref.protocol == "paper"
  assert "one full-eps signed step" in ref.description


def test_named_configs_and_config_objects_default_to_the_measured_setting():
  """Issue 22: one full-eps signed step against one shared validation fold
  measured strongest against the paper's victims (docs/benchmarks.md); the
  defaults of every named config without tokens, of config objects and of
  the transform are that setting, and 1.0.0's default stays reachable."""
  assert ntga.NTGAConfig().optimizer == "as_published"
  assert ntga_family.NTGABuilderConfig(
      name="x", attack=ntga.NTGAConfig()).protocol == "shared"
  for source in ("mnist", "cifar10", "digits", "fashion_mnist",
                 "imagenet_bulbul_jellyfish"):
    for cfg in NTGA.named_configs(source):
      assert (cfg.protocol, cfg.attack.optimizer) == ("shared",
                                                      "as_published")
      assert "one full-eps signed step" in cfg.description
  first = {s: NTGA.named_configs(s)[0].name for s in ("mnist", "cifar10")}
  assert first == {"mnist": "eps76_t64", "cifar10": "eps8_t64"}
  assert NTGA.config("eps8_t64", nb_iter=20).attack.optimizer == (
      "as_published")
  before = NTGA.config("eps8_t64_folds_pgd")
  assert (before.protocol, before.attack.optimizer,
          before.attack.nb_iter) == ("all_train", "pgd", 10)
  assert tfds.builder_cls("cifar10_ntga").VERSION == "1.1.0"
  assert "1.1.0" in tfds.builder_cls("cifar10_ntga").RELEASE_NOTES


@pytest.mark.parametrize("dataset", ["digits_ntga/eps76_t64_folds_pgd",
                                     "mnist_ntga/cnn_eps76_t1_folds_pgd"])
def test_the_old_default_builds_its_recorded_bytes_by_name(dataset, tmp_path):
  """1.0.0's defaults, now `_folds_pgd`, build the bytes recorded before."""
  from ntga_tfds import testing  # pylint: disable=g-import-not-at-top
  builder_name, name = dataset.split("/")
  source = builder_name[:-len("_ntga")]
  subset = source not in testing.DUMMY_SIZES
  cfg = NTGA.config(name, **(testing.SUBSET if subset else {}))
  builder = tfds.builder(builder_name, config=cfg, data_dir=tmp_path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=None if subset else str(testing.dummy_data_dir(source))))
  want = testing.golden(f"{builder_name}/{cfg.name}")
  assert want is not None, cfg.name
  assert {s: list(testing.split_sha256(builder, s))
          for s in builder.info.splits} == want


def test_eps_levels_must_leave_room_below_255():
  with pytest.raises(ValueError, match="1..254"):
    NTGA.parse_name("eps255_t64")


def test_noise_name_grammar():
  assert NOISE.parse_name("eps8") == dict(eps=8 / 255,
                                          distribution="uniform")
  assert NOISE.parse_name("eps76_sign") == dict(eps=76 / 255,
                                                distribution="sign")
  assert NOISE.format_name(dict(eps=25 / 255,
                                distribution="uniform")) == "eps25"
  with pytest.raises(ValueError, match="eps"):
    NOISE.parse_name("eps8_t64")


def test_grammar_config_builds_the_transform_config_it_names():
  cfg = NTGA.config("cnn_eps76_t1")
  attack = cfg.attack
  assert isinstance(attack, ntga.NTGAConfig)
  assert attack.surrogate == "cnn" and attack.t == 1.0
  assert pgd.levels(attack.eps) == 76
  # The defaults of everything else are the transform's own.
  assert attack.nb_iter == ntga.NTGAConfig().nb_iter
  assert attack.block_size == ntga.NTGAConfig().block_size
  noise = NOISE.config("eps8_sign").attack
  assert isinstance(noise, random_noise.RandomNoiseConfig)
  assert pgd.levels(noise.eps) == 8 and noise.distribution == "sign"


def test_paper_eps_values_map_to_the_named_levels():
  # MNIST's eps=0.3 and ImageNet's eps=0.1 allow exactly as many uint8
  # levels as the configs eps76 and eps25.
  assert pgd.levels(0.3) == 76 == pgd.levels(76 / 255)
  assert pgd.levels(0.1) == 25 == pgd.levels(25 / 255)
  assert pgd.levels(8 / 255) == 8


def test_named_grids_cover_the_papers_released_settings():
  names = {src: [c.name for c in NTGA.named_configs(src)]
           for src in NTGA.grid}
  assert {"eps76_t64", "cnn_eps76_t64", "eps76_t1",
          "cnn_eps76_t1"} <= set(names["mnist"])
  assert {"eps8_t64", "eps8_t4096", "cnn_eps8_t8", "eps8_t1",
          "cnn_eps8_t1"} <= set(names["cifar10"])
  assert {"eps25_t1"} <= set(names["imagenet_bulbul_jellyfish"])
  for src, cfgs in names.items():
    for name in cfgs:  # every named config is a grammar name ...
      NTGA.parse_name(name)
    assert len(set(cfgs)) == len(cfgs)
  paper = [c for c in NTGA.named_configs("mnist")
           if c.name == "eps76_t64"][0]
  assert "0.3" in paper.description and "paper" in paper.description


def test_options_outside_the_grammar_get_a_distinct_name():
  base = NTGA.config("eps8_t64")
  more = NTGA.config("eps8_t64", nb_iter=20)
  seeded = NTGA.config("eps8_t64", seed=1)
  assert base.name == "eps8_t64"
  assert more.name.startswith("eps8_t64_x") and seeded.name.startswith(
      "eps8_t64_x")
  assert len({base.name, more.name, seeded.name}) == 3
  assert more.attack.nb_iter == 20
  # Deterministic: the same options give the same name.
  assert NTGA.config("eps8_t64", nb_iter=20).name == more.name


def test_a_grammar_name_must_carry_its_settings():
  with pytest.raises(ValueError, match="denotes"):
    ntga_family.NTGABuilderConfig(
        name="eps8_t64",
        attack=dict(eps=8 / 255, t=64.0, surrogate="fnn", nb_iter=3))
  with pytest.raises(ValueError, match="denotes"):
    NTGA.config("eps8_t64", name="eps8_t64", seed=3)
  with pytest.raises(ValueError, match="denotes"):
    noise_family.RandomNoiseBuilderConfig(
        name="eps8", attack=dict(eps=4 / 255, distribution="uniform"))
  # A non-grammar name can carry anything.
  custom = NTGA.config("eps8_t64", name="my_run", nb_iter=3)
  assert custom.name == "my_run"


@pytest.mark.parametrize("kwargs, match", [
    (dict(protocol="holdout"), "protocol"),
    (dict(seed=-1), "seed"),
    (dict(val_size=0), "val_size"),
    (dict(max_train_examples=1.5), "max_train_examples"),
])
def test_invalid_options_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ntga_family.NTGABuilderConfig(name="custom", **kwargs)


def test_invalid_attack_settings_are_rejected_when_the_config_is_made():
  with pytest.raises(ValueError, match="loss"):
    NTGA.config("eps8_t64", loss="hinge")
  with pytest.raises(ValueError, match="nb_iter"):
    ntga_family.NTGABuilderConfig(name="custom", attack=dict(nb_iter=0))
  with pytest.raises(ValueError, match="NTGAConfig"):
    ntga_family.NTGABuilderConfig(
        name="custom", attack=random_noise.RandomNoiseConfig())


def test_unknown_settings_are_named_with_the_allowed_ones():
  with pytest.raises(ValueError, match=r"Unknown ntga settings \['nb_iters'\]"
                     ".*nb_iter"):
    NTGA.config("eps8_t64", nb_iters=20)
  with pytest.raises(ValueError, match="protocol"):
    NOISE.config("eps8", protocol="paper")  # the control has no protocol


def test_every_builder_registers_and_resolves_configs(tmp_path):
  listed = tfds.list_builders(with_community_datasets=False)
  for name in ntga_tfds.BUILDERS:
    assert name in listed
    builder = tfds.builder(name, data_dir=tmp_path)
    assert builder.builder_config is builder.BUILDER_CONFIGS[0]
    assert builder.info.description  # the card
    assert builder.info.citation
    assert builder.pkg_dir_path.name == name


def test_card_example_config_exists_for_cifar10(tmp_path):
  builder = tfds.builder("cifar10_ntga/eps8_t64", data_dir=tmp_path)
  assert builder.builder_config.name == "eps8_t64"
  assert set(builder.info.features) == {"image", "label", "index"}
  assert builder.info.homepage == NTGA.homepage
  assert builder.info.features["image"].shape == (32, 32, 3)


def test_any_grammar_name_resolves_without_being_named(tmp_path):
  builder = tfds.builder("mnist_ntga/cnn_eps16_tinf_paper",
                         data_dir=tmp_path)
  cfg = builder.builder_config
  assert cfg.protocol == "paper"
  assert cfg.attack.surrogate == "cnn"
  assert math.isinf(cfg.attack.t)
  assert builder.data_dir.endswith("cnn_eps16_tinf_paper/1.1.0")
  noise = tfds.builder("cifar10_random_noise/eps4_sign", data_dir=tmp_path)
  assert noise.builder_config.attack.distribution == "sign"
  # A spelled-out default token is the same dataset as its canonical name.
  spelled = tfds.builder("mnist_ntga/eps76_t64_shared_1step",
                         data_dir=tmp_path)
  assert spelled.builder_config.name == "eps76_t64"
  assert spelled.data_dir.endswith("mnist_ntga/eps76_t64/1.1.0")
  old = tfds.builder("mnist_ntga/eps76_t64_folds_pgd", data_dir=tmp_path)
  assert old.builder_config.attack.optimizer == "pgd"
  assert old.data_dir.endswith("eps76_t64_folds_pgd/1.1.0")


def test_unknown_config_name_explains_the_grammar(tmp_path):
  with pytest.raises(ValueError, match="Grammar"):
    tfds.builder("mnist_ntga/eps8", data_dir=tmp_path)


def test_config_objects(tmp_path):
  cfg = NTGA.config("eps8_t64", nb_iter=3, seed=2)
  builder = tfds.builder("cifar10_ntga", config=cfg, data_dir=tmp_path)
  assert builder.builder_config is cfg
  # An equal copy of a named config resolves to the named one.
  copy = NTGA.config("eps8_t4096")
  assert tfds.builder("cifar10_ntga", config=copy,
                      data_dir=tmp_path).builder_config.name == "eps8_t4096"
  with pytest.raises(ValueError, match="RandomNoiseBuilderConfig"):
    tfds.builder("cifar10_random_noise", config=cfg, data_dir=tmp_path)


def test_old_names_still_load(tmp_path):
  builder = tfds.builder("imagenet2_ntga/eps25_t1", data_dir=tmp_path)
  assert builder.name == "imagenet_bulbul_jellyfish_ntga"
  from ntga_tfds import sources
  assert sources.source_spec("imagenet2").name == "imagenet_bulbul_jellyfish"


def test_hashed_names_are_stable():
  # Recorded at commit decf222 (before the families refactor): the same
  # settings keep the same dataset directory.
  assert NTGA.config("eps76_t64", max_train_examples=60,
                     max_test_examples=20).name == "eps76_t64_x27d97c3f"
  assert NOISE.config("eps8", max_train_examples=60,
                      max_test_examples=20).name == "eps8_x27d97c3f"
  assert NTGA.config("eps8_t64", nb_iter=20, seed=1).name == \
      "eps8_t64_x18d8c0d7"


def test_importing_the_package_is_light_and_transforms_import_alone():
  import subprocess
  import sys
  code = ("import sys, ntga_tfds, tensorflow_datasets as tfds; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow'; "
          "assert 'jax' not in sys.modules, 'jax'; "
          "assert tfds.builder_cls('cifar10_ntga').name == 'cifar10_ntga'")
  subprocess.run([sys.executable, "-c", code], check=True)
  code = ("from ntga_tfds.transforms import ntga; "
          "ntga.NTGAConfig(eps=8 / 255)")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_a_config_round_trips_through_its_stored_json():
  import math as _math
  cfg = NTGA.config("cnn_eps8_tinf_paper", nb_iter=3, val_size=40)
  back = NTGA.config_from_json(cfg.to_json())
  assert back.name == cfg.name and back.same_settings(cfg)
  assert _math.isinf(back.attack.t)


def test_a_dataset_built_from_a_config_object_loads_by_its_name(tmp_path):
  cfg = NOISE.config("eps8", max_train_examples=30, max_test_examples=10)
  assert cfg.name.startswith("eps8_x")
  tfds.builder("digits_random_noise", config=cfg,
               data_dir=tmp_path).download_and_prepare()
  assert tfds.builder(f"digits_random_noise/{cfg.name}",
                      data_dir=tmp_path).is_prepared()
  again = tfds.builder_cls("digits_random_noise")(config=cfg.name,
                                                  data_dir=tmp_path)
  assert again.is_prepared() and again.builder_config.same_settings(cfg)
  with pytest.raises(ValueError, match="Grammar"):
    tfds.builder_cls("digits_random_noise")(config="eps8_xdeadbeef",
                                            data_dir=tmp_path)

"""The Witches' Brew and back-gradient datasets, end to end on the digits.

Small settings (a few steps) keep them CI-sized; the attacks' maths is
tested in test_witches_brew.py and test_back_gradient.py.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import ntga_tfds  # noqa: F401  (registers the builders)
from ntga_tfds import families
from ntga_tfds import generation
from ntga_tfds import sources

WB = families.get("witches_brew")
BG = families.get("back_gradient")
_WB_SMALL = dict(surrogate_epochs=2, steps=4, restarts=1, surrogate_width=8)


@pytest.fixture(scope="module")
def digits():
  return (sources.load_source("digits", "train"),
          sources.load_source("digits", "test"))


def _read(builder, split):
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                          shuffle_files=False))


@pytest.mark.parametrize("name, want", [
    ("eps16_budget1_seed0", dict(surrogate="resnet18", steps=250,
                                 restarts=8, surrogate_epochs=40)),
    ("convnet8_eps16_budget1_seed3_fast", dict(
        surrogate="convnet", surrogate_width=8, steps=200, restarts=1,
        surrogate_epochs=4)),
    ("cnn_eps8_budget0p5_seed2", dict(surrogate="cnn", budget=0.005)),
])
def test_witches_brew_names_say_their_settings(name, want):
  cfg = WB.config(name)
  assert cfg.name == name
  for k, v in want.items():
    assert getattr(cfg.attack, k) == v, k
  assert WB.config(name, num_targets=2).name.startswith(name + "_x")
  with pytest.raises(ValueError, match="Grammar"):
    WB.config("eps16_budget1")
  with pytest.raises(ValueError, match="budget"):
    WB.config("eps16_budget0_seed0")


def test_witches_brew_dataset_poisons_only_the_budget(tmp_path, digits):
  train, test = digits
  cfg = WB.config("cnn_eps16_budget1_seed0", **_WB_SMALL)
  builder = tfds.builder("digits_witches_brew", config=cfg, data_dir=tmp_path)
  builder.download_and_prepare()
  tr = _read(builder, "train")
  order = np.argsort(tr["index"])
  x, y, poison = tr["image"][order], tr["label"][order], tr["is_poison"][order]
  np.testing.assert_array_equal(y, train.labels)   # labels unchanged
  assert poison.sum() == round(0.01 * len(train))  # 14 of 1,442
  changed = (x != train.images).reshape(len(x), -1).any(1)
  assert not changed[~poison].any() and changed[poison].any()
  assert np.abs(x.astype(int) - train.images).max() <= 16
  target = _read(builder, "target")
  adv = int(target["adversarial_label"][0])
  assert set(y[poison]) == {adv} and target["label"][0] != adv
  np.testing.assert_array_equal(target["image"][0],
                                test.images[target["index"][0]])
  meta = builder.info.metadata
  assert meta["family"] == "witches_brew"
  assert meta["stats"]["num_poisons"] == 14
  assert meta["stats"]["linf_max_levels"] <= 16


def test_witches_brew_is_deterministic_and_shares_its_surrogate(
    tmp_path, digits):
  train, test = digits
  spec = sources.source_spec("digits")
  shared = tmp_path / "shared"

  def run(seed, **kw):
    cfg = WB.config(f"cnn_eps16_budget1_seed{seed}", **_WB_SMALL)
    return generation.run(WB.job(cfg, train, test, spec), data_sha256="d",
                          progress=False, shared_dir=shared, **kw)

  a = run(0)
  assert a.shared_computed == ["surrogate"]
  b = run(0, checkpoint_dir=tmp_path / "ckpt")
  assert b.shared_resumed == ["surrogate"]  # cached by its own settings
  assert a.splits["train"]["image"].tobytes() == \
      b.splits["train"]["image"].tobytes()
  other = run(1)  # another target seed trains no new surrogate
  assert other.shared_resumed == ["surrogate"]
  assert other.splits["target"]["index"].tolist() != \
      a.splits["target"]["index"].tolist() or \
      other.splits["target"]["adversarial_label"].tolist() != \
      a.splits["target"]["adversarial_label"].tolist()


def test_keras_twins_match_the_surrogates_layers():
  import jax
  import keras
  from ntga_tfds import victims
  from ntga_tfds.transforms.witches_brew import _models
  for name, keras_name, shape in (("cnn", "small_cnn", (28, 28, 1)),
                                  ("convnet", "convnet", (32, 32, 3))):
    model = _models.make(name, 10)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1,) + shape))
    flax_count = sum(np.size(v) for v in
                     jax.tree_util.tree_leaves(variables["params"]))
    twin = victims.build(keras_name, input_shape=shape, num_classes=10)
    assert twin.count_params() == flax_count, name


@pytest.mark.parametrize("name, want", [
    ("logreg_generic_p5", dict(model="logreg", attack="generic")),
    ("mlp_specific_p2_all", dict(model="mlp", attack="specific",
                                 target_map=((7, 1),))),
])
def test_back_gradient_names_say_their_settings(name, want):
  cfg = BG.config(name)
  assert cfg.name == name
  for k, v in want.items():
    assert getattr(cfg.attack, k) == v, k
  with pytest.raises(ValueError, match="multiclass"):
    BG.config("logreg_specific_p5")
  with pytest.raises(ValueError, match="Grammar"):
    BG.config("logreg_p5")


def test_back_gradient_dataset_adds_points_and_resumes(tmp_path, digits):
  train, test = digits
  cfg = BG.config("logreg_generic_p10", inner_steps=20, outer_steps=5,
                  num_train=30, num_val=40)
  spec = sources.source_spec("digits")
  whole = generation.run(BG.job(cfg, train, test, spec), data_sha256="d",
                         progress=False)
  tr = whole.splits["train"]
  assert len(tr["index"]) == 33 and tr["is_poison"].sum() == 3
  assert set(tr["label"]) <= {1, 7}
  np.testing.assert_array_equal(tr["image"][:30], train.images[tr["index"][:30]])
  assert (tr["index"][30:] == -1).all()
  assert set(whole.splits["test"]["label"]) == {1, 7}
  with pytest.raises(generation.Interrupted):
    generation.run(BG.job(cfg, train, test, spec), data_sha256="d",
                   progress=False, checkpoint_dir=tmp_path, stop_after=1)
  resumed = generation.run(BG.job(cfg, train, test, spec), data_sha256="d",
                           progress=False, checkpoint_dir=tmp_path)
  assert (resumed.units_resumed, resumed.units_computed) == (1, 2)
  assert resumed.splits["train"]["image"].tobytes() == tr["image"].tobytes()
  assert resumed.splits["train"]["label"].tobytes() == tr["label"].tobytes()


CP = families.get("convex_polytope")


def test_convex_polytope_names_say_their_settings():
  cfg = CP.config("eps25_poisons5_e2e_seed3_fast")
  assert cfg.name == "eps25_poisons5_e2e_seed3_fast"
  a = cfg.attack
  assert (a.num_poisons, a.end_to_end, a.dropout, a.steps) == (
      5, True, (0.2,), 1000)
  assert cfg.seed == 3
  assert CP.config("eps25_poisons5_transfer_seed0").attack.steps == 4000
  with pytest.raises(ValueError, match="Grammar"):
    CP.config("eps25_poisons5_seed0")


def test_convex_polytope_dataset_and_its_transfer_evaluation(tmp_path,
                                                             digits):
  from ntga_tfds import evaluate
  train_src, _ = digits
  cfg = CP.config("eps25_poisons5_transfer_seed0_fast", substitute_epochs=1,
                  steps=5, substitutes=("cnn", "mlp"))
  builder = tfds.builder("digits_convex_polytope", config=cfg,
                         data_dir=tmp_path)
  builder.download_and_prepare()
  pre, tr = _read(builder, "pretrain"), _read(builder, "train")
  assert len(tr["index"]) == 100 and len(pre["index"]) == 1342
  assert not set(pre["index"]) & set(tr["index"])
  assert not pre["is_poison"].any() and tr["is_poison"].sum() == 5
  np.testing.assert_array_equal(pre["image"],
                                train_src.images[pre["index"]])
  target = _read(builder, "target")
  base = int(target["adversarial_label"][0])
  assert set(tr["label"][tr["is_poison"]]) == {base}
  delta = tr["image"].astype(int) - train_src.images[tr["index"]]
  assert np.abs(delta).max() <= 25
  assert not delta[~tr["is_poison"]].any()
  # The same pretrain split for every target seed.
  other = tfds.builder("digits_convex_polytope", data_dir=tmp_path,
                       config=CP.config("eps25_poisons5_transfer_seed1_fast",
                                        substitute_epochs=1, steps=5,
                                        substitutes=("cnn", "mlp")))
  other.download_and_prepare()
  assert other.info.metadata["shared_resumed"] == ["substitutes"]
  np.testing.assert_array_equal(np.sort(_read(other, "pretrain")["index"]),
                                np.sort(pre["index"]))
  report = evaluate.evaluate(
      f"digits_convex_polytope/{cfg.name}", victims=["small_cnn"], seeds=1,
      epochs=2, finetune_epochs=10, data_dir=str(tmp_path), progress=False)
  assert report["mode"] == "finetune" and report["settings"] == ["transfer"]
  r = report["results"]["small_cnn"]
  assert r["pretrained"][0] > 0.5
  row = r["transfer"][f"digits_convex_polytope/{cfg.name}"]
  assert 0 <= row["poisoned"]["success"]["mean"] <= 1
  assert row["clean"]["test_accuracy"]["mean"] > 0.5
  assert "transfer" in evaluate.format_finetune_table(report)

"""The clean-vs-poisoned evaluation, end to end on the digits builders.

The module's fixture runs the real CLI (`python -m ntga_tfds.evaluate`) on
`digits_ntga/eps76_t64` in a fresh TFDS data_dir: it builds the NTGA dataset
(the lead's attack on all 1,442 training digits) and its random-noise
control, trains `fnn_relu` on clean, poisoned and noise with two seeds, and
writes results.json and PNGs. The other tests reuse that data_dir.
"""

import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NTGA_TFDS_PROGRESS", "0")

from absl import flags  # pylint: disable=g-import-not-at-top
import matplotlib.image
import numpy as np
import pytest

from ntga_tfds import evaluate
from ntga_tfds import plots
from ntga_tfds import sources

DATASET = "digits_ntga/eps76_t64"
EPOCHS, SEEDS = 5, 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  """(report read from results.json, output dir, data_dir, stdout)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  out = tmp_path_factory.mktemp("eval")
  proc = subprocess.run(
      [sys.executable, "-m", "ntga_tfds.evaluate", f"--dataset={DATASET}",
       f"--data_dir={data_dir}", f"--output_dir={out}", "--victims=fnn_relu",
       f"--epochs={EPOCHS}", f"--seeds={SEEDS}", "--noprogress"],
      capture_output=True, text=True, timeout=600,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "NTGA_TFDS_PROGRESS": "0"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "results.json").read_text())
  return report, out, data_dir, proc.stdout


def _cli(*args):
  return evaluate.run_cli(["evaluate", *args, "--noprogress"])


# ------------------------------------------------------ end to end (CLI) ---


def test_cli_report_has_the_documented_keys_and_shapes(cli_run):
  report, _, _, _ = cli_run
  assert report["dataset"] == DATASET and report["source"] == "digits"
  assert report["eps"] == pytest.approx(76 / 255)
  assert report["control"] == "digits_random_noise/eps76"
  assert report["victims"] == ["fnn_relu"] and report["defenses"] == ["none"]
  assert report["train_sets"] == ["clean", "poisoned", "random_noise"]
  assert report["seeds"] == [0, 1]
  assert (report["num_train"], report["num_test"]) == (1442, 355)
  assert report["num_poisoned"] == 1442 and report["poison_ratio"] == 1.0
  assert report["image_shape"] == [8, 8, 1] and report["num_classes"] == 10
  assert report["settings"]["fnn_relu"] == {
      "epochs": EPOCHS, "batch_size": 64, "learning_rate": 1e-3}
  by_set = report["results"]["fnn_relu"]["none"]
  assert set(by_set) == {"clean", "poisoned", "random_noise"}
  for name, r in by_set.items():
    for key in ("peak", "final"):
      assert set(r[key]) == {"mean", "std", "min", "max", "values"}
      assert len(r[key]["values"]) == SEEDS
      assert r[key]["mean"] == pytest.approx(np.mean(r[key]["values"]))
      assert r[key]["std"] == pytest.approx(np.std(r[key]["values"], ddof=1))
    assert np.shape(r["train_accuracy"]) == np.shape(r["test_accuracy"]) == (
        SEEDS, EPOCHS)
    assert r["peak"]["values"] == [max(c) for c in r["test_accuracy"]]
    assert r["final"]["values"] == [c[-1] for c in r["test_accuracy"]]
    if name == "clean":
      assert "drop" not in r
    else:
      for key in ("peak", "final"):
        assert r["drop"][key] == pytest.approx(
            by_set["clean"][key]["mean"] - r[key]["mean"])


def test_ntga_stops_learning_but_noise_of_equal_size_does_not(cli_run):
  by_set = cli_run[0]["results"]["fnn_relu"]["none"]
  clean = by_set["clean"]["peak"]["mean"]
  assert clean > 0.9
  # Fixed seeds: poisoned peak accuracy far below clean (measured ~0.1 vs
  # ~0.97); the noise control of the same eps learns about as well as clean.
  assert by_set["poisoned"]["peak"]["mean"] < clean - 0.5
  assert by_set["poisoned"]["drop"]["final"] > 0.5
  assert by_set["random_noise"]["peak"]["mean"] > clean - 0.1
  # Poisoned training data is still fitted: the model learns the shortcut.
  assert np.mean([c[-1] for c in by_set["poisoned"]["train_accuracy"]]) > 0.9


def test_cli_writes_pngs_and_prints_the_table(cli_run):
  report, out, _, stdout = cli_run
  assert sorted(report["files"]) == [
      "curves_fnn_relu_none.png", "examples.png", "results.json"]
  for name in ("curves_fnn_relu_none.png", "examples.png"):
    path = out / name
    assert path.read_bytes()[:8] == PNG_MAGIC
    h, w = matplotlib.image.imread(path).shape[:2]
    assert h > 100 and w > 300
  assert "victim" in stdout and "drop peak" in stdout
  rows = [l.split() for l in stdout.splitlines() if l.startswith("fnn_relu")]
  assert [r[2] for r in rows] == ["clean", "poisoned", "random_noise"]


def test_clean_examples_are_matched_by_index(cli_run):
  data_dir = cli_run[2]
  sets, (x_test, y_test), info = evaluate.load_named(DATASET,
                                                     data_dir=str(data_dir))
  src = sources.load_source("digits", "train")
  test = sources.load_source("digits", "test")
  x_clean, y = sets["clean"]
  x_poison, y_poison = sets["poisoned"]
  np.testing.assert_array_equal(y, y_poison)
  assert sorted(map(bytes, x_clean)) == sorted(map(bytes, src.images))
  for name in ("poisoned", "random_noise"):
    delta = np.abs(sets[name][0].astype(int) - x_clean)
    assert 0 < delta.max() <= 76  # within eps of its own clean original
  assert len(x_test) == len(test) and sorted(y_test) == sorted(test.labels)
  assert info["control"] == "digits_random_noise/eps76"


def test_cli_poison_ratio_and_defenses(cli_run, tmp_path):
  data_dir = cli_run[2]
  report = _cli(f"--dataset={DATASET}", f"--data_dir={data_dir}",
                f"--output_dir={tmp_path}", "--victims=fnn_relu",
                "--epochs=2", "--poison_ratio=0.5", "--nocontrol",
                "--defenses=none,jpeg10", "--examples_per_class=1")
  assert report["num_poisoned"] == 721 and report["poison_ratio"] == 0.5
  assert report["train_sets"] == ["clean", "poisoned"]
  assert set(report["results"]["fnn_relu"]) == {"none", "jpeg10"}
  for by_set in report["results"]["fnn_relu"].values():
    assert set(by_set) == {"clean", "poisoned"}
  assert (tmp_path / "curves_fnn_relu_jpeg10.png").read_bytes()[:8] == (
      PNG_MAGIC)
  assert json.loads((tmp_path / "results.json").read_text()) == report


# ------------------------------------------------------------- errors ---


@pytest.mark.parametrize("args,match", [
    (["--victims=vgg"], r"Unknown victim 'vgg'; choose from"),
    (["--defenses=blur"], r"Unknown defense 'blur'"),
    (["--dataset=nosuch_ntga/eps8_t64"], r"unknown dataset 'nosuch_ntga'"),
    (["--dataset=digits_ntga/bogus"], r"unknown config 'bogus'"),
])
def test_clear_errors_for_unknown_names(args, match, tmp_path):
  base = {"--dataset": DATASET}
  argv = [f"--data_dir={tmp_path}"] + args
  if not any(a.startswith("--dataset") for a in args):
    argv.append(f"--dataset={base['--dataset']}")
  with pytest.raises(ValueError, match=match):
    _cli(*argv)
  assert not any(tmp_path.iterdir())  # failed before building anything


def test_clear_error_for_a_dataset_that_is_not_built(tmp_path):
  with pytest.raises(ValueError, match=r"is not built in .*--build"):
    _cli(f"--dataset={DATASET}", f"--data_dir={tmp_path}", "--nobuild")


def test_clear_error_for_a_dataset_that_cannot_be_built(tmp_path):
  with pytest.raises(ValueError,
                     match=r"'mnist_ntga/eps76_t64' is not built and could "
                           r"not be built: .*manual_dir"):
    _cli("--dataset=mnist_ntga/eps76_t64", f"--data_dir={tmp_path}",
         f"--manual_dir={tmp_path / 'missing'}")


def test_bad_flag_values_are_rejected(tmp_path):
  with pytest.raises(flags.IllegalFlagValueError):
    _cli(f"--dataset={DATASET}", "--poison_ratio=1.5")
  with pytest.raises(ValueError, match="--dataset is required"):
    _cli(f"--data_dir={tmp_path}")


def test_cli_exits_with_the_error_message():
  proc = subprocess.run(
      [sys.executable, "-m", "ntga_tfds.evaluate", f"--dataset={DATASET}",
       "--victims=vgg"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "error: Unknown victim 'vgg'" in proc.stderr


# ------------------------------------------------- core and pictures ---


def test_mix_keeps_a_fixed_fraction_poisoned():
  clean = np.zeros((10, 2, 2, 1), np.uint8)
  poisoned = np.ones_like(clean)
  x, mask = evaluate.mix(poisoned, clean, ratio=0.3, seed=1)
  assert mask.sum() == 3
  np.testing.assert_array_equal(x[mask], poisoned[mask])
  np.testing.assert_array_equal(x[~mask], clean[~mask])
  np.testing.assert_array_equal(
      evaluate.mix(poisoned, clean, ratio=0.3, seed=1)[1], mask)
  assert evaluate.mix(poisoned, clean, ratio=0.0)[1].sum() == 0
  with pytest.raises(ValueError, match="poison_ratio"):
    evaluate.mix(poisoned, clean, ratio=1.1)


def test_evaluate_arrays_checks_its_sets(digits):
  x, y = digits
  with pytest.raises(ValueError, match="must contain 'clean'"):
    evaluate.evaluate_arrays({"poisoned": (x, y)}, (x, y))
  with pytest.raises(ValueError, match="'poisoned' must match"):
    evaluate.evaluate_arrays({"clean": (x, y), "poisoned": (x, y[::-1])},
                             (x, y))
  with pytest.raises(ValueError, match="seeds"):
    evaluate.evaluate_arrays({"clean": (x, y)}, (x, y), seeds=0)


def test_format_table_lists_every_run():
  stats = {"mean": 0.5, "std": 0.1}
  report = {"results": {"cnn": {"none": {
      "clean": {"peak": stats, "final": stats},
      "poisoned": {"peak": stats, "final": stats,
                   "drop": {"peak": 0.25, "final": 0.125}}}}}}
  lines = evaluate.format_table(report).splitlines()
  assert lines[0].split()[:3] == ["victim", "defense", "train"]
  assert "50.00 ± 10.00" in lines[2] and lines[2].rstrip().endswith("-")
  assert lines[3].split()[-2:] == ["25.00", "12.50"]


def test_plots_write_pngs(tmp_path):
  curves = {"clean": {"train_accuracy": [[0.5, 0.9]] * 2,
                      "test_accuracy": [[0.4, 0.8], [0.5, 0.7]]},
            "poisoned": {"train_accuracy": [0.5, 0.99],
                         "test_accuracy": [0.3, 0.1]}}
  p = plots.plot_learning_curves(curves, path=str(tmp_path / "a" / "c.png"))
  assert pathlib.Path(p).read_bytes()[:8] == PNG_MAGIC
  clean = np.full((4, 8, 8, 3), 100, np.uint8)
  noisy = clean + np.uint8(8)
  labels = np.array([0, 0, 1, 1])
  p = plots.plot_examples(clean, {"ntga": noisy}, labels,
                          path=str(tmp_path / "e.png"),
                          class_names=["cat", "dog"])
  img = matplotlib.image.imread(p)
  assert img.shape[0] > 200  # three rows of images
  with pytest.raises(ValueError, match="shape"):
    plots.plot_examples(clean, {"ntga": noisy[:2]}, labels,
                        path=str(tmp_path / "x.png"))
  idx = plots.pick_examples(np.array([0, 1, 0, 1, 2, 2, 0]), per_class=2)
  assert len(idx) == 6 and sorted(np.array([0, 1, 0, 1, 2, 2, 0])[idx]) == [
      0, 0, 1, 1, 2, 2]


# ------------------------------------------- Convex Polytope fine-tuning -----


def _tiny_victim():
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4, 4, 1))
  x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.Dropout(0.5)(keras.layers.ReLU()(x))
  x = keras.layers.Dense(3)(keras.layers.Flatten()(x))
  return keras.Model(inputs, x)


def _tiny_data(n=20):
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8),
          rng.integers(0, 3, n))


def test_finetune_schedule_drops_at_the_reference_epochs():
  assert evaluate.finetune_decay_epochs(60) == (30, 45)
  assert evaluate.finetune_decay_epochs(10) == (5, 7)
  assert evaluate.finetune_decay_epochs(1) == (1, 1)
  # 100 examples in batches of 64: 2 steps an epoch; drops before the
  # updates of steps 60 (epoch 30) and 90 (epoch 45), counting from 0.
  sched = evaluate.finetune_schedule(0.1, epochs=60, num_examples=100,
                                     batch_size=64)
  lr = {s: float(sched(s)) for s in (0, 59, 60, 89, 90, 119)}
  np.testing.assert_allclose([lr[0], lr[59], lr[60], lr[89], lr[90],
                              lr[119]],
                             [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3], rtol=1e-6)
  sched = evaluate.finetune_schedule(1e-4, epochs=4, num_examples=20,
                                     batch_size=8)  # 3 steps an epoch
  np.testing.assert_allclose([float(sched(s)) for s in range(12)],
                             [1e-4] * 6 + [1e-5] * 3 + [1e-6] * 3,
                             rtol=1e-6)


def _recording_adam(monkeypatch):
  import keras  # pylint: disable=g-import-not-at-top
  made = []

  class Recording(keras.optimizers.Adam):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self)

  monkeypatch.setattr(keras.optimizers, "Adam", Recording)
  return made


def test_finetune_transfer_retrains_only_the_last_layer(monkeypatch):
  made = _recording_adam(monkeypatch)
  model = _tiny_victim()
  before = [w.copy() for w in model.get_weights()]
  tuned = evaluate._finetune(model, _tiny_data(), num_classes=3,
                             setting="transfer", epochs=4, batch_size=8)
  for a, b in zip(before, model.get_weights()):  # the original is untouched
    np.testing.assert_array_equal(a, b)
  # Every weight of the body, BatchNorm's moving statistics included, is the
  # pretrained one; the last Dense layer moved.
  for layer, orig in zip(tuned.layers[:-1], model.layers[:-1]):
    for a, b in zip(layer.get_weights(), orig.get_weights()):
      np.testing.assert_array_equal(a, b)
  assert not np.allclose(tuned.layers[-1].get_weights()[0],
                         model.layers[-1].get_weights()[0])
  (opt,) = made
  assert int(opt.iterations) == 4 * 3  # ceil(20 / 8) steps an epoch
  # The reference's 0.1, x0.1 at epoch 2 of 4 and again at epoch 3.
  np.testing.assert_allclose(float(opt.learning_rate), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(
      [float(opt._learning_rate(s)) for s in range(12)],  # pylint: disable=protected-access
      [0.1] * 6 + [0.01] * 3 + [1e-3] * 3, rtol=1e-6)
  # Deterministic: the same seed, the same copy.
  again = evaluate._finetune(model, _tiny_data(), num_classes=3,
                             setting="transfer", epochs=4, batch_size=8)
  np.testing.assert_allclose(again.layers[-1].get_weights()[0],
                             tuned.layers[-1].get_weights()[0], rtol=1e-5)


def test_finetune_e2e_trains_every_layer_in_inference_mode(monkeypatch):
  made = _recording_adam(monkeypatch)
  model = _tiny_victim()
  bn = next(i for i, l in enumerate(model.layers)
            if l.__class__.__name__ == "BatchNormalization")
  tuned = evaluate._finetune(model, _tiny_data(), num_classes=3,
                             setting="e2e", epochs=4, batch_size=8,
                             learning_rate=1e-2)
  gamma, beta, mean, var = model.layers[bn].get_weights()
  t_gamma, t_beta, t_mean, t_var = tuned.layers[bn].get_weights()
  # As `net.eval()`: the moving statistics are used, not updated ...
  np.testing.assert_array_equal(t_mean, mean)
  np.testing.assert_array_equal(t_var, var)
  # ... while every trainable weight, BatchNorm's scale included, trains.
  assert not np.allclose(t_gamma, gamma)
  assert not np.allclose(tuned.layers[1].get_weights()[0],
                         model.layers[1].get_weights()[0])
  assert not np.allclose(tuned.layers[-1].get_weights()[0],
                         model.layers[-1].get_weights()[0])
  (opt,) = made  # the override is the initial rate; the schedule stays
  np.testing.assert_allclose(float(opt._learning_rate(0)), 1e-2, rtol=1e-6)  # pylint: disable=protected-access
  np.testing.assert_allclose(float(opt.learning_rate), 1e-4, rtol=1e-6)
  with pytest.raises(ValueError, match="transfer"):
    evaluate._finetune(model, _tiny_data(), num_classes=3, setting="x")


def test_inference_mode_wrapper_adds_pytorch_style_weight_decay():
  model = _tiny_victim()
  x = np.ones((2, 4, 4, 1), np.float32)
  wrapped = evaluate._inference_mode(model, 5e-4)
  out = wrapped(x)
  # Inference mode: dropout off, so the wrapper is deterministic and equals
  # the model's own inference output.
  np.testing.assert_allclose(out, model(x, training=False), rtol=1e-6)
  np.testing.assert_allclose(wrapped(x), out, rtol=1e-6)
  penalty = 0.5 * 5e-4 * sum(float(np.sum(np.square(w)))
                             for w in model.trainable_weights)
  np.testing.assert_allclose(float(sum(wrapped.losses)), penalty, rtol=1e-5)
  plain = evaluate._inference_mode(model)
  plain(x)
  assert not plain.losses


CP_DATASET = "digits_convex_polytope/eps25_poisons5_transfer_seed0_fast"


def test_cli_passes_the_finetuning_recipe_through(monkeypatch, tmp_path):
  x, y = _tiny_data(40)
  fake = ((x, y), {"train": (x[:20], y[:20]), "clean": (x[:20], y[:20]),
                   "targets": (x[:1], y[:1], (y[:1] + 1) % 3)},
          (x[20:], y[20:]), "transfer", {"dataset": CP_DATASET})
  monkeypatch.setattr(evaluate, "load_finetune", lambda *a, **k: fake)
  calls = []
  real = evaluate._finetune  # pylint: disable=protected-access

  def recording(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **kwargs)

  monkeypatch.setattr(evaluate, "_finetune", recording)
  report = _cli(f"--dataset={CP_DATASET}", "--victims=fnn_relu",
                "--epochs=1", "--finetune_epochs=2",
                "--finetune_learning_rate=0.05",
                "--finetune_weight_decay=0.001", "--batch_size=16",
                f"--output_dir={tmp_path / 'out'}")
  assert report["mode"] == "finetune"
  assert len(calls) == 2  # poisoned and clean fine-tuning sets, one seed
  for kw in calls:
    assert (kw["epochs"], kw["learning_rate"], kw["weight_decay"],
            kw["batch_size"], kw["setting"]) == (2, 0.05, 0.001, 16,
                                                 "transfer")
  # Without the flags: the reference's recipe.
  calls.clear()
  _cli(f"--dataset={CP_DATASET}", "--victims=fnn_relu", "--epochs=1",
       "--finetune_epochs=1", f"--output_dir={tmp_path / 'out2'}")
  assert [(kw["learning_rate"], kw["weight_decay"], kw["batch_size"])
          for kw in calls] == [(None, None, evaluate.FINETUNE_BATCH_SIZE)] * 2


@pytest.mark.parametrize("args,match", [
    (["--learning_rate=0.01"], r"finetune_lr \(--finetune_learning_rate\)"),
    (["--finetune_learning_rate=0"], r"finetune_lr must be > 0"),
])
def test_clear_errors_for_bad_finetuning_options(args, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    _cli(f"--dataset={CP_DATASET}", f"--data_dir={tmp_path}", *args)
  assert not any(tmp_path.iterdir())  # failed before building anything

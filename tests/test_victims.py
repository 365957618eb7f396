"""Keras victims, their recipes and the defences, on scikit-learn's digits."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest
import tensorflow as tf

from ntga_tfds import defenses
from ntga_tfds import victims

PAPER_VICTIMS = {"fnn", "fnn_relu", "cnn", "resnet18", "densenet121"}
# Keras twins of the Witches' Brew surrogates (same layers).
SURROGATE_VICTIMS = {"small_cnn", "convnet"}


@pytest.fixture(scope="module")
def split(digits):
  """Fixed-seed 1200 / 597 train / test split of the digits."""
  x, y = digits
  p = np.random.default_rng(0).permutation(len(x))
  return (x[p[:1200]], y[p[:1200]]), (x[p[1200:]], y[p[1200:]])


def _convs(model):
  return [l for l in model._flatten_layers() if isinstance(l, keras.layers.Conv2D)]  # pylint: disable=protected-access


# ----------------------------------------------------------- registry ---


def test_registry_holds_the_papers_victims():
  assert set(victims.VICTIMS) == PAPER_VICTIMS | SURROGATE_VICTIMS
  r = {n: victims.get(n).recipe for n in PAPER_VICTIMS}
  assert (r["fnn"].loss, r["fnn"].optimizer, r["fnn"].learning_rate) == (
      "mse", "sgd", 1e-3)
  for n in ("fnn_relu", "cnn"):
    assert (r[n].loss, r[n].optimizer, r[n].augment) == (
        "crossentropy", "adam", False)
  for n in ("resnet18", "densenet121"):
    assert (r[n].optimizer, r[n].augment, r[n].standardize,
            r[n].learning_rate) == ("sgd_cosine", True, True, 0.1)


def test_unknown_victim_is_a_value_error_naming_the_choices():
  with pytest.raises(ValueError, match=r"Unknown victim 'vgg'.*cnn.*resnet18"):
    victims.get("vgg")
  with pytest.raises(ValueError, match="Unknown victim"):
    victims.build("vgg", input_shape=(8, 8, 1), num_classes=10)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("name", sorted(PAPER_VICTIMS | SURROGATE_VICTIMS))
def test_every_victim_builds_for_every_input_shape(name, shape):
  if name == "convnet" and shape[0] < 9:
    with pytest.raises(ValueError, match="at least 9x9"):
      victims.build(name, input_shape=shape, num_classes=7, seed=0)
    return
  model = victims.build(name, input_shape=shape, num_classes=7, seed=0)
  assert model.input_shape == (None,) + shape
  out = model(np.random.default_rng(0).random((2,) + shape, np.float32))
  assert out.shape == (2, 7)
  assert np.all(np.isfinite(out))


def test_architectures_follow_the_paper():
  cnn = victims.build("cnn", input_shape=(32, 32, 3), num_classes=10)
  assert [(c.filters, c.kernel_size) for c in _convs(cnn)] == [(64, (5, 5))] * 2
  dense = [l.units for l in cnn.layers if isinstance(l, keras.layers.Dense)]
  assert dense == [384, 192, 10]
  assert any(isinstance(l, keras.layers.Dropout) and l.rate == 0.5
             for l in cnn.layers)
  fnn = victims.build("fnn", input_shape=(8, 8, 1), num_classes=10)
  assert [l.units for l in fnn.layers
          if isinstance(l, keras.layers.Dense)] == [512] * 4 + [10]
  x = tf.constant(np.linspace(-2, 2, 64, dtype=np.float32).reshape(1, 8, 8, 1))
  h = keras.Model(fnn.input, fnn.layers[2].output)(x)  # first hidden layer
  assert np.all(np.abs(h) < 1)  # erf's range
  # ResNet-18: 3x3/1 stem on small inputs, 7x7/2 on ImageNet-sized ones;
  # 1 stem + 16 block convs + 3 projection shortcuts.
  small = _convs(victims.build("resnet18", input_shape=(32, 32, 3),
                               num_classes=10))
  large = _convs(victims.build("resnet18", input_shape=(224, 224, 3),
                               num_classes=2))
  assert len(small) == len(large) == 20
  assert (small[0].kernel_size, small[0].strides) == ((3, 3), (1, 1))
  assert (large[0].kernel_size, large[0].strides) == ((7, 7), (2, 2))
  # DenseNet-121: 2 convs per dense layer (6 + 12 + 24 + 16) + 3 transitions
  # + stem = 120 convolutions, plus the classifier.
  assert len(_convs(victims.build("densenet121", input_shape=(32, 32, 3),
                                  num_classes=10))) == 120


def test_build_is_seeded():
  def weights(seed):
    m = victims.build("cnn", input_shape=(8, 8, 1), num_classes=10, seed=seed)
    return np.concatenate([w.ravel() for w in m.get_weights()])
  np.testing.assert_array_equal(weights(3), weights(3))
  assert not np.allclose(weights(3), weights(4))


def test_build_standardises_with_the_given_statistics():
  m = victims.build("fnn_relu", input_shape=(2, 2, 3), num_classes=2,
                    mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
  norm = [l for l in m.layers if isinstance(l, keras.layers.Normalization)]
  assert len(norm) == 1
  x = np.full((1, 2, 2, 3), 0.6, np.float32)
  np.testing.assert_allclose(norm[0](x)[0, 0, 0], [1.0, 0.8, 0.6], atol=1e-5)


def test_build_rejects_bad_shapes():
  with pytest.raises(ValueError, match="input_shape"):
    victims.build("cnn", input_shape=(8, 8), num_classes=10)
  with pytest.raises(ValueError, match="num_classes"):
    victims.build("cnn", input_shape=(8, 8, 1), num_classes=1)


# ----------------------------------------------------------- training ---


def test_make_dataset_scales_one_hots_and_augments():
  x = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
  y = np.array([0, 1, 2, 1])
  images, labels = next(iter(victims.make_dataset(
      x, y, num_classes=3, batch_size=4)))
  np.testing.assert_allclose(images.numpy(), x / 255.0, atol=1e-6)
  np.testing.assert_array_equal(labels.numpy(), np.eye(3)[y])
  tf.random.set_seed(0)
  aug, _ = next(iter(victims.make_dataset(x, y, num_classes=3, batch_size=4,
                                          augment=True)))
  assert aug.shape == (4, 8, 8, 3)
  assert float(tf.reduce_min(aug)) >= 0 and float(tf.reduce_max(aug)) <= 1
  assert not np.allclose(aug.numpy(), x / 255.0)


def test_fnn_relu_learns_digits_and_reports_per_epoch_history(split):
  train, test = split
  r = victims.train("fnn_relu", train, test=test, epochs=4, seed=0,
                    progress=False)
  h = r.history
  for curve in (h.train_accuracy, h.test_accuracy, h.train_loss,
                h.test_loss):
    assert len(curve) == 4
  assert all(0 <= a <= 1 for a in h.train_accuracy + h.test_accuracy)
  assert h.test_accuracy[-1] > h.test_accuracy[0] - 0.02
  assert h.peak_test_accuracy == max(h.test_accuracy) > 0.9
  assert h.final_test_accuracy == h.test_accuracy[-1]
  # The reported accuracy is the model's on the clean test split.
  pred = np.argmax(r.model.predict(test[0].astype(np.float32) / 255,
                                   verbose=0), -1)
  assert np.mean(pred == test[1]) == pytest.approx(h.final_test_accuracy,
                                                   abs=1e-6)
  assert (r.epochs, r.batch_size, r.learning_rate) == (4, 64, 1e-3)


def test_cnn_learns_digits(split):
  train, test = split
  r = victims.train("cnn", train, test=test, epochs=4, seed=0, progress=False)
  assert r.history.peak_test_accuracy > 0.9


def test_fnn_trains_with_mse_and_plain_sgd(split):
  train, test = split
  r = victims.train("fnn", train, test=test, epochs=1, seed=0, progress=False)
  assert isinstance(r.model.loss, keras.losses.MeanSquaredError)
  opt = r.model.optimizer
  assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.0
  assert float(opt.learning_rate) == pytest.approx(1e-3)


def test_resnet_recipe_is_sgd_momentum_cosine_with_standardisation(split):
  (x, y), test = split
  r = victims.train("resnet18", (x[:64], y[:64]), test=test, epochs=1,
                    batch_size=32, seed=0, progress=False)
  cfg = r.model.optimizer.get_config()
  assert cfg["momentum"] == pytest.approx(0.9)
  assert cfg["learning_rate"]["class_name"] == "CosineDecay"
  assert cfg["learning_rate"]["config"]["initial_learning_rate"] == 0.1
  assert cfg["learning_rate"]["config"]["decay_steps"] == 2  # 1 epoch x 2
  norm = [l for l in r.model.layers
          if isinstance(l, keras.layers.Normalization)][0]
  np.testing.assert_allclose(np.ravel(norm.mean),
                             [(x[:64] / 255.0).mean()], rtol=1e-4)


def test_train_overrides_and_checks_arguments(split):
  train, test = split
  r = victims.train("fnn_relu", (train[0][:100], train[1][:100]), test=test,
                    epochs=1, batch_size=10, learning_rate=0.01,
                    progress=False)
  assert (r.batch_size, r.learning_rate) == (10, 0.01)
  with pytest.raises(ValueError, match="differ in length"):
    victims.train("cnn", (train[0], train[1][:5]), test=test)
  with pytest.raises(ValueError, match="one shape"):
    victims.train("cnn", train, test=(test[0][:, :4], test[1]))
  with pytest.raises(ValueError, match="epochs"):
    victims.train("cnn", train, test=test, epochs=0)


# ----------------------------------------------------------- defenses ---


@pytest.mark.parametrize("spec,expected", [
    ("none", defenses.Defense("none")),
    ("augment", defenses.Defense("augment", augment=True)),
    ("grayscale", defenses.Defense("grayscale", grayscale=True)),
    ("jpeg", defenses.Defense("jpeg10", jpeg_quality=10)),
    ("jpeg30", defenses.Defense("jpeg30", jpeg_quality=30)),
    ("pgd", defenses.Defense("pgd8", pgd_eps=8 / 255)),
    ("PGD4", defenses.Defense("pgd4", pgd_eps=4 / 255)),
])
def test_parse_defenses(spec, expected):
  assert defenses.parse(spec) == expected


@pytest.mark.parametrize("spec", ["blur", "jpeg0", "jpeg101", "pgd0",
                                  "grayscale3", ""])
def test_parse_rejects_unknown_defenses(spec):
  with pytest.raises(ValueError, match="defense"):
    defenses.parse(spec)


def test_jpeg_quality_10_is_lossy_and_quality_100_nearly_exact():
  # Smooth images with some texture (JPEG's home ground).
  i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  x = np.stack([np.stack([128 + 100 * np.sin((i + k) / 5.0),
                          8 * i, 255 - 8 * j], -1) for k in range(5)])
  x = x.astype(np.uint8)
  low, high = defenses.jpeg(x, 10), defenses.jpeg(x, 100)
  assert low.shape == high.shape == x.shape and low.dtype == np.uint8
  err = lambda a: np.abs(a.astype(int) - x).mean()  # noqa: E731
  assert err(low) > 5 > 3 > err(high)
  gray = defenses.jpeg(x[..., :1], 10)
  assert gray.shape == (5, 32, 32, 1)


def test_grayscale_keeps_the_shape_and_equalises_channels():
  x = np.zeros((1, 2, 2, 3), np.uint8)
  x[..., 0] = 255
  g = defenses.grayscale(x)
  assert g.shape == x.shape and g.dtype == np.uint8
  assert np.all(g == 76)  # round(0.299 * 255)
  one = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(defenses.grayscale(one), one)
  d = defenses.parse("grayscale")
  np.testing.assert_array_equal(defenses.transform_test(d, x), g)
  jpeg = defenses.parse("jpeg10")
  assert defenses.transform_test(jpeg, x) is x  # test images stay clean


def test_pgd_examples_stay_in_the_ball_and_raise_the_loss(split):
  (x, y), _ = split
  model = victims.build("fnn_relu", input_shape=(8, 8, 1), num_classes=10)
  loss = keras.losses.CategoricalCrossentropy(from_logits=True)
  adv = defenses.PGDAdversarialModel(model, loss, eps=8 / 255, steps=5)
  xf = tf.constant(x[:64] / 255.0, tf.float32)
  y1h = tf.one_hot(y[:64], 10)
  x_adv = adv.perturb(xf, y1h)
  delta = (x_adv - xf).numpy()
  assert np.abs(delta).max() <= 8 / 255 + 1e-6
  assert float(tf.reduce_min(x_adv)) >= 0 and float(tf.reduce_max(x_adv)) <= 1
  assert float(loss(y1h, model(x_adv))) > float(loss(y1h, model(xf)))


def test_pgd_adversarial_training_runs_through_train(split):
  train, test = split
  r = victims.train("fnn_relu", train, test=test, epochs=3, seed=0,
                    wrap=defenses.wrapper(defenses.parse("pgd8")),
                    progress=False)
  assert isinstance(r.model, defenses.PGDAdversarialModel)
  assert r.history.peak_test_accuracy > 0.8
  assert defenses.wrapper(defenses.parse("jpeg10")) is None

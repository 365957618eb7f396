"""Keras victims: the paper's target models and their training recipes.

Every victim takes images as float32 in [0, 1], NHWC (`(N, H, W, C)`), and
returns logits of shape `(N, num_classes)`. Architectures adapt to the input
shape: 8x8 digits, 28x28 MNIST, 32x32 CIFAR-10, 224x224 ImageNet (the
ResNet/DenseNet stems switch to the ImageNet form at `LARGE_INPUT` pixels).

Recipes follow the reference evaluation (github.com/lionelmessi6410/ntga,
`evaluate.py`): `fnn` is an erf MLP trained with MSE and plain SGD (lr 1e-3);
`fnn_relu` and `cnn` use cross-entropy and Adam (lr 1e-3); `resnet18` and
`densenet121` use random crop + flip, per-channel standardisation, SGD with
momentum 0.9 and a cosine schedule from lr 0.1 (1e-3 on large inputs).

Example:
  >>> result = train("cnn", (x_train, y_train), test=(x_test, y_test),
  ...                num_classes=10, epochs=5, seed=0)
  >>> result.history.test_accuracy      # one clean-test accuracy per epoch
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
import tqdm
from keras import layers

LARGE_INPUT = 128  # min(H, W) from which ResNet/DenseNet use ImageNet stems.


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a victim is trained (defaults are the reference evaluation's).

  Attributes:
    loss: "mse" (on one-hot targets) or "crossentropy" (from logits).
    optimizer: "sgd", "adam", or "sgd_cosine" (momentum 0.9, cosine decay).
    learning_rate: initial learning rate.
    learning_rate_large: learning rate on inputs of `LARGE_INPUT` or more.
    epochs: default number of epochs.
    batch_size: default batch size.
    augment: random crop (padding 1/16 of the side) + horizontal flip.
    standardize: per-channel standardisation with training-set statistics.
  """
  loss: str
  optimizer: str
  learning_rate: float
  epochs: int
  batch_size: int
  augment: bool = False
  standardize: bool = False
  learning_rate_large: float | None = None


@dataclasses.dataclass(frozen=True)
class Victim:
  """A registered victim: an architecture and its training recipe."""
  name: str
  make: Callable[..., keras.Model]  # (inputs, num_classes) -> logits tensor
  recipe: Recipe
  description: str


@dataclasses.dataclass
class History:
  """Per-epoch metrics of one training run (lists of length `epochs`)."""
  train_accuracy: list[float]
  test_accuracy: list[float]
  train_loss: list[float]
  test_loss: list[float]

  @property
  def peak_test_accuracy(self) -> float:
    return float(max(self.test_accuracy))

  @property
  def final_test_accuracy(self) -> float:
    return float(self.test_accuracy[-1])


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: the trained model and its history."""
  model: keras.Model
  history: History
  epochs: int
  batch_size: int
  learning_rate: float


# ----------------------------------------------------------------- models ---


def _mlp(x, num_classes, activation):
  x = layers.Flatten()(x)
  for _ in range(4):
    x = layers.Dense(512, activation=activation)(x)
  return layers.Dense(num_classes)(x)


def _fnn(x, num_classes):
  return _mlp(x, num_classes, keras.ops.erf)


def _fnn_relu(x, num_classes):
  return _mlp(x, num_classes, "relu")


def _cnn(x, num_classes):
  for _ in range(2):
    x = layers.Conv2D(64, 5, padding="same", activation="relu")(x)
    x = layers.MaxPool2D(pool_size=3, strides=2, padding="same")(x)
    x = _bn()(x)
  x = layers.Flatten()(x)
  x = layers.Dense(384, activation="relu")(x)
  x = layers.Dropout(0.5)(x)
  x = layers.Dense(192, activation="relu")(x)
  return layers.Dense(num_classes)(x)


def _small_cnn(x, num_classes):
  # The Witches' Brew surrogate "cnn" (transforms/witches_brew/_models.py).
  x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
  x = layers.MaxPool2D(2, 2)(x)
  x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
  x = layers.MaxPool2D(2, 2)(x)
  x = layers.Flatten()(x)
  x = layers.Dense(128, activation="relu")(x)
  return layers.Dense(num_classes)(x)


def _convnet(x, num_classes, width=32):
  # forest's ConvNet, the Witches' Brew surrogate "convnet".
  if min(x.shape[1:3]) < 9:
    raise ValueError(f"convnet needs images of at least 9x9 (two 3x3 "
                     f"poolings), got {tuple(x.shape[1:3])}.")
  for features in (width, 2 * width, 2 * width, 4 * width):
    x = layers.Conv2D(features, 3, padding="same", activation="relu")(x)
  x = layers.MaxPool2D(3, 3)(x)
  x = layers.Conv2D(4 * width, 3, padding="same", activation="relu")(x)
  x = layers.MaxPool2D(3, 3)(x)
  x = layers.Flatten()(x)
  return layers.Dense(num_classes)(x)


def _bn():
  # Moving statistics with momentum 0.9 (Keras' 0.99 needs thousands of
  # steps before test-time statistics settle: short runs would test badly).
  return layers.BatchNormalization(momentum=0.9)


def _conv_bn(x, filters, kernel, stride=1, relu=True):
  x = layers.Conv2D(filters, kernel, strides=stride, padding="same",
                    use_bias=False)(x)
  x = _bn()(x)
  return layers.ReLU()(x) if relu else x


def _large_input(x) -> bool:
  return min(x.shape[1], x.shape[2]) >= LARGE_INPUT


def _resnet18(x, num_classes):
  if _large_input(x):  # ImageNet stem: 7x7/2 conv, 3x3/2 max-pool.
    x = _conv_bn(x, 64, 7, stride=2)
    x = layers.MaxPool2D(3, strides=2, padding="same")(x)
  else:  # CIFAR stem: one 3x3/1 conv.
    x = _conv_bn(x, 64, 3)
  for stage, filters in enumerate((64, 128, 256, 512)):
    for block in range(2):
      stride = 2 if stage > 0 and block == 0 else 1
      shortcut = x
      if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride=stride, relu=False)
      y = _conv_bn(x, filters, 3, stride=stride)
      y = _conv_bn(y, filters, 3, relu=False)
      x = layers.ReLU()(layers.Add()([shortcut, y]))
  x = layers.GlobalAveragePooling2D()(x)
  return layers.Dense(num_classes)(x)


def _densenet121(x, num_classes, growth=32, blocks=(6, 12, 24, 16)):
  if _large_input(x):
    x = _conv_bn(x, 2 * growth, 7, stride=2)
    x = layers.MaxPool2D(3, strides=2, padding="same")(x)
  else:
    x = layers.Conv2D(2 * growth, 3, padding="same", use_bias=False)(x)
  for i, n in enumerate(blocks):
    for _ in range(n):  # BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), concat.
      y = layers.ReLU()(_bn()(x))
      y = layers.Conv2D(4 * growth, 1, use_bias=False)(y)
      y = layers.ReLU()(_bn()(y))
      y = layers.Conv2D(growth, 3, padding="same", use_bias=False)(y)
      x = layers.Concatenate()([x, y])
    if i < len(blocks) - 1:  # Transition: compress by 1/2, pool by 2.
      x = layers.ReLU()(_bn()(x))
      x = layers.Conv2D(x.shape[-1] // 2, 1, use_bias=False)(x)
      if min(x.shape[1], x.shape[2]) >= 2:
        x = layers.AveragePooling2D(2)(x)
  x = layers.ReLU()(_bn()(x))
  x = layers.GlobalAveragePooling2D()(x)
  return layers.Dense(num_classes)(x)


_ADAM = dict(loss="crossentropy", optimizer="adam", learning_rate=1e-3,
             epochs=50, batch_size=64)
_SGD_COSINE = dict(loss="crossentropy", optimizer="sgd_cosine",
                   learning_rate=0.1, learning_rate_large=1e-3,
                   batch_size=128, augment=True, standardize=True)

VICTIMS: dict[str, Victim] = {
    v.name: v for v in (
        Victim("fnn", _fnn, Recipe(loss="mse", optimizer="sgd",
                                   learning_rate=1e-3, epochs=50,
                                   batch_size=64),
               "4 x Dense 512 with erf, linear head; MSE, SGD"),
        Victim("fnn_relu", _fnn_relu, Recipe(**_ADAM),
               "4 x Dense 512 with ReLU; cross-entropy, Adam"),
        Victim("cnn", _cnn, Recipe(**_ADAM),
               "2 x [Conv 64 5x5, MaxPool 3/2, BatchNorm], Dense 384, "
               "Dropout 0.5, Dense 192; cross-entropy, Adam"),
        Victim("small_cnn", _small_cnn,
               Recipe(**{**_ADAM, "epochs": 10, "batch_size": 128,
                         "standardize": True}),
               "Conv 32 3x3, MaxPool 2, Conv 64 3x3, MaxPool 2, Dense 128 "
               "(the Witches' Brew `cnn` surrogate); standardised, Adam"),
        Victim("convnet", _convnet,
               Recipe(**{**_ADAM, "epochs": 20, "batch_size": 128,
                         "standardize": True}),
               "forest's ConvNet, width 32 (the Witches' Brew `convnet` "
               "surrogate); standardised, Adam"),
        Victim("resnet18", _resnet18, Recipe(epochs=200, **_SGD_COSINE),
               "ResNet-18 (CIFAR stem below 128 px); crop+flip, SGD "
               "momentum 0.9, cosine"),
        Victim("densenet121", _densenet121, Recipe(epochs=50, **_SGD_COSINE),
               "DenseNet-121, growth 32 (CIFAR stem below 128 px); "
               "crop+flip, SGD momentum 0.9, cosine"),
    )
}


def get(name: str) -> Victim:
  """Returns the registered victim `name`; ValueError names the choices."""
  if name not in VICTIMS:
    raise ValueError(f"Unknown victim {name!r}; choose from "
                     f"{', '.join(sorted(VICTIMS))}.")
  return VICTIMS[name]


def build(name: str, *, input_shape: Sequence[int], num_classes: int,
          seed: int = 0, mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None) -> keras.Model:
  """Builds victim `name` (uncompiled) with seeded initialisation.

  Args:
    name: a key of `VICTIMS`.
    input_shape: `(H, W, C)` of the float [0, 1] images it will take.
    num_classes: size of the logits.
    seed: seeds Python, NumPy and the backend before the weights are made.
    mean: per-channel mean `(C,)` to subtract first (no standardisation if
      None).
    std: per-channel standard deviation `(C,)` to divide by (with `mean`).

  Returns:
    A `keras.Model` mapping `(N, H, W, C)` float32 to `(N, num_classes)`
    logits.
  """
  victim = get(name)
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3:
    raise ValueError(f"input_shape must be (H, W, C), got {input_shape}.")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  keras.utils.set_random_seed(seed)
  inputs = keras.Input(input_shape)
  x = inputs
  if mean is not None:
    std = np.ones_like(mean) if std is None else np.maximum(std, 1e-6)
    x = layers.Normalization(mean=np.asarray(mean, np.float32),
                             variance=np.square(np.asarray(std, np.float32)))(x)
  outputs = victim.make(x, num_classes)
  return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------- training ---


def as_float(x: np.ndarray) -> np.ndarray:
  """uint8 `(N, H, W, C)` -> float32 in [0, 1]; float input is kept."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.0
  return x.astype(np.float32)


def random_crop_flip(images: tf.Tensor, *, flip: bool) -> tf.Tensor:
  """Pads by 1/16 of the side (at least 1 px), crops back, maybe flips.

  Args:
    images: `(B, H, W, C)` float32 batch.
    flip: whether to flip left-right with probability 1/2.

  Returns:
    `(B, H, W, C)` augmented batch.
  """
  shape = tf.shape(images)
  h, w = images.shape[1], images.shape[2]
  pad = max(1, min(h, w) // 16)
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]],
                  mode="REFLECT")
  out = tf.image.random_crop(padded, shape)
  if flip:
    out = tf.image.random_flip_left_right(out)
  return out


def make_dataset(x: np.ndarray, y: np.ndarray, *, num_classes: int,
                 batch_size: int, shuffle_seed: int | None = None,
                 augment: bool = False) -> tf.data.Dataset:
  """A batched tf.data pipeline of (float [0, 1] images, one-hot labels).

  Args:
    x: `(N, H, W, C)` uint8 or float [0, 1] images.
    y: `(N,)` integer labels.
    num_classes: one-hot depth.
    batch_size: batch size.
    shuffle_seed: shuffles every epoch with this seed (None: no shuffle).
    augment: random crop + flip (flip only for 3-channel images).
  """
  ds = tf.data.Dataset.from_tensor_slices((np.asarray(x), np.asarray(y)))
  if shuffle_seed is not None:
    ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
  flip = x.shape[-1] == 3

  def prepare(images, labels):
    images = tf.cast(images, tf.float32)
    if x.dtype == np.uint8:
      images = images / 255.0
    if augment:
      images = random_crop_flip(images, flip=flip)
    return images, tf.one_hot(tf.cast(labels, tf.int32), num_classes)

  ds = ds.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def _optimizer(recipe: Recipe, learning_rate: float, total_steps: int):
  if recipe.optimizer == "sgd":
    return keras.optimizers.SGD(learning_rate)
  if recipe.optimizer == "adam":
    return keras.optimizers.Adam(learning_rate)
  schedule = keras.optimizers.schedules.CosineDecay(learning_rate,
                                                    max(1, total_steps))
  return keras.optimizers.SGD(schedule, momentum=0.9)


def _loss(recipe: Recipe):
  if recipe.loss == "mse":
    return keras.losses.MeanSquaredError()
  return keras.losses.CategoricalCrossentropy(from_logits=True)


class _EpochBar(keras.callbacks.Callback):
  """A tqdm bar over epochs showing train and test accuracy."""

  def __init__(self, epochs: int, desc: str):
    super().__init__()
    self._bar = tqdm.tqdm(total=epochs, desc=desc, unit="epoch", leave=False)

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    self._bar.set_postfix(acc=f"{logs.get('accuracy', 0):.3f}",
                          test=f"{logs.get('val_accuracy', 0):.3f}")
    self._bar.update(1)

  def on_train_end(self, logs=None):
    self._bar.close()


def train(name: str, train_data: tuple[np.ndarray, np.ndarray], *,
          test: tuple[np.ndarray, np.ndarray], num_classes: int | None = None,
          epochs: int | None = None, batch_size: int | None = None,
          learning_rate: float | None = None, seed: int = 0,
          augment: bool | None = None, wrap: Callable | None = None,
          progress: bool = True, desc: str | None = None) -> TrainResult:
  """Trains victim `name` with its recipe; records clean-test accuracy.

  Args:
    name: a key of `VICTIMS`.
    train_data: `(x, y)`: `(N, H, W, C)` uint8 (or float [0, 1]) images and
      `(N,)` integer labels.
    test: `(x, y)` evaluated after every epoch, same layout.
    num_classes: defaults to `max(label) + 1` over train and test.
    epochs: defaults to the recipe's.
    batch_size: defaults to the recipe's.
    learning_rate: defaults to the recipe's (its large-input value on inputs
      of `LARGE_INPUT` pixels or more).
    seed: seeds initialisation and shuffling.
    augment: crop + flip; defaults to the recipe's.
    wrap: optional `(model, loss) -> keras.Model` applied before compiling
      (how `defenses` adds PGD adversarial training).
    progress: show a tqdm bar over epochs.
    desc: label of the progress bar.

  Returns:
    A `TrainResult` whose `history` has one entry per epoch.
  """
  victim = get(name)
  recipe = victim.recipe
  x_train, y_train = train_data
  x_test, y_test = test
  if len(x_train) != len(y_train) or len(x_test) != len(y_test):
    raise ValueError("images and labels differ in length: "
                     f"train {len(x_train)} vs {len(y_train)}, "
                     f"test {len(x_test)} vs {len(y_test)}.")
  if x_train.ndim != 4 or x_test.shape[1:] != x_train.shape[1:]:
    raise ValueError("train and test images must be (N, H, W, C) of one "
                     f"shape, got {x_train.shape} and {x_test.shape}.")
  if num_classes is None:
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
  epochs = recipe.epochs if epochs is None else int(epochs)
  batch_size = recipe.batch_size if batch_size is None else int(batch_size)
  if epochs < 1 or batch_size < 1:
    raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and "
                     f"{batch_size}.")
  large = min(x_train.shape[1:3]) >= LARGE_INPUT
  if learning_rate is None:
    learning_rate = (recipe.learning_rate_large
                     if large and recipe.learning_rate_large
                     else recipe.learning_rate)
  augment = recipe.augment if augment is None else augment

  mean = std = None
  if recipe.standardize:
    xf = as_float(x_train)
    mean, std = xf.mean(axis=(0, 1, 2)), xf.std(axis=(0, 1, 2))
  model = build(name, input_shape=x_train.shape[1:], num_classes=num_classes,
                seed=seed, mean=mean, std=std)
  loss = _loss(recipe)
  if wrap is not None:
    model = wrap(model, loss)
  steps = int(np.ceil(len(x_train) / batch_size)) * epochs
  model.compile(optimizer=_optimizer(recipe, learning_rate, steps), loss=loss,
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
  train_ds = make_dataset(x_train, y_train, num_classes=num_classes,
                          batch_size=batch_size, shuffle_seed=seed,
                          augment=augment)
  test_ds = make_dataset(x_test, y_test, num_classes=num_classes,
                         batch_size=max(batch_size, 256))
  callbacks = [_EpochBar(epochs, desc or name)] if progress else []
  fit = model.fit(train_ds, validation_data=test_ds, epochs=epochs,
                  verbose=0, callbacks=callbacks,
                  shuffle=False)  # The dataset shuffles itself.
  h = fit.history
  history = History(
      train_accuracy=[float(v) for v in h["accuracy"]],
      test_accuracy=[float(v) for v in h["val_accuracy"]],
      train_loss=[float(v) for v in h["loss"]],
      test_loss=[float(v) for v in h["val_loss"]])
  return TrainResult(model=model, history=history, epochs=epochs,
                     batch_size=batch_size, learning_rate=float(learning_rate))

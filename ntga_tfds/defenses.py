"""Defences a victim's trainer can use against a poisoned training set.

A defence is named by a short spec (the `--defenses` flag of
`ntga_tfds.evaluate`):

  none        plain training (the victim's own recipe).
  augment     random crop + flip forced on (ResNet/DenseNet have it anyway).
  jpeg[Q]     JPEG-compress every training image at quality Q (default 10).
  grayscale   train and test on luma replicated over the channels.
  pgd[E]      PGD adversarial training, L-inf radius E/255 (default 8),
              `PGD_STEPS` steps of size 2.5 E / steps (Madry et al.).

Training-set transforms work on uint8 `(N, H, W, C)` arrays; test images
are left clean except by `grayscale`, whose model only ever sees grey.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import tensorflow as tf

PGD_STEPS = 10
_SPEC = re.compile(r"^(none|augment|grayscale|jpeg|pgd)(\d+(?:\.\d+)?)?$")


@dataclasses.dataclass(frozen=True)
class Defense:
  """One defence.

  Attributes:
    name: its spec, e.g. "jpeg10" or "pgd8" (used as a key in reports).
    augment: force crop + flip augmentation on.
    jpeg_quality: JPEG quality for the training images (None: no JPEG).
    grayscale: convert train and test images to grey.
    pgd_eps: L-inf radius in [0, 1] pixel units (None: no PGD training).
    pgd_steps: PGD steps per training batch.
  """
  name: str
  augment: bool = False
  jpeg_quality: int | None = None
  grayscale: bool = False
  pgd_eps: float | None = None
  pgd_steps: int = PGD_STEPS


def parse(spec: str) -> Defense:
  """Parses a defence spec ("none", "augment", "jpeg10", "grayscale", "pgd8").

  Raises:
    ValueError: naming the bad spec and the accepted forms.
  """
  m = _SPEC.match(spec.strip().lower())
  if not m or (m.group(2) and m.group(1) not in ("jpeg", "pgd")):
    raise ValueError(
        f"Unknown defense {spec!r}; use none, augment, grayscale, jpeg[Q] "
        "(quality, default 10) or pgd[EPS] (radius in /255, default 8).")
  kind, arg = m.group(1), m.group(2)
  if kind == "jpeg":
    quality = int(float(arg)) if arg else 10
    if not 1 <= quality <= 100:
      raise ValueError(f"defense {spec!r}: JPEG quality must be in 1..100.")
    return Defense(f"jpeg{quality}", jpeg_quality=quality)
  if kind == "pgd":
    eps = float(arg) if arg else 8.0
    if not 0 < eps <= 255:
      raise ValueError(f"defense {spec!r}: PGD eps must be in (0, 255].")
    return Defense(f"pgd{arg or '8'}", pgd_eps=eps / 255.0)
  return Defense(kind, augment=kind == "augment", grayscale=kind == "grayscale")


def jpeg(images: np.ndarray, quality: int = 10) -> np.ndarray:
  """JPEG round trip of every image.

  Args:
    images: `(N, H, W, C)` uint8, C in {1, 3}.
    quality: JPEG quality, 1..100.

  Returns:
    `(N, H, W, C)` uint8, decoded after encoding at `quality`.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"jpeg expects uint8 (N, H, W, C), got {images.dtype} "
                     f"{images.shape}.")
  channels = images.shape[-1]
  ds = tf.data.Dataset.from_tensor_slices(images).map(
      lambda im: tf.io.decode_jpeg(tf.io.encode_jpeg(im, quality=quality),
                                   channels=channels),
      num_parallel_calls=tf.data.AUTOTUNE)
  if not len(images):
    return images.copy()
  return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def grayscale(images: np.ndarray) -> np.ndarray:
  """ITU-R 601 luma, replicated over the channels (shape is kept).

  Args:
    images: `(N, H, W, C)` uint8; 1-channel images are returned unchanged.

  Returns:
    `(N, H, W, C)` uint8.
  """
  images = np.asarray(images)
  if images.shape[-1] == 1:
    return images.copy()
  luma = images[..., :3].astype(np.float32) @ np.array(
      [0.299, 0.587, 0.114], np.float32)
  luma = np.clip(np.round(luma), 0, 255).astype(np.uint8)
  return np.repeat(luma[..., None], images.shape[-1], axis=-1)


def transform_train(defense: Defense, images: np.ndarray) -> np.ndarray:
  """Applies the defence's training-set transform (uint8 in, uint8 out)."""
  if defense.jpeg_quality is not None:
    images = jpeg(images, defense.jpeg_quality)
  if defense.grayscale:
    images = grayscale(images)
  return images


def transform_test(defense: Defense, images: np.ndarray) -> np.ndarray:
  """Applies the defence's test-set transform (only grayscale has one)."""
  return grayscale(images) if defense.grayscale else images


class PGDAdversarialModel(keras.Model):
  """Trains `inner` on L-inf PGD examples crafted against it on every batch.

  Inputs are float images in [0, 1]; the adversarial batch stays in
  `[x - eps, x + eps] ∩ [0, 1]`. Random start, `steps` signed-gradient steps
  of size `2.5 * eps / steps` (Madry et al., 2018). TensorFlow backend only.
  """

  def __init__(self, inner: keras.Model, loss, *, eps: float,
               steps: int = PGD_STEPS, **kwargs):
    super().__init__(**kwargs)
    if keras.backend.backend() != "tensorflow":
      raise ValueError("PGD adversarial training needs KERAS_BACKEND="
                       "tensorflow.")
    self.inner = inner
    self.attack_loss = loss
    self.eps = float(eps)
    self.steps = int(steps)
    self.step_size = 2.5 * self.eps / max(1, self.steps)

  def call(self, x, training=False):
    return self.inner(x, training=training)

  def perturb(self, x, y):
    """PGD examples `(B, H, W, C)` against the current weights."""
    x = tf.convert_to_tensor(x)
    x_adv = tf.clip_by_value(
        x + tf.random.uniform(tf.shape(x), -self.eps, self.eps), 0.0, 1.0)
    for _ in range(self.steps):
      with tf.GradientTape() as tape:
        tape.watch(x_adv)
        loss = self.attack_loss(y, self.inner(x_adv, training=False))
      x_adv = x_adv + self.step_size * tf.sign(tape.gradient(loss, x_adv))
      x_adv = tf.clip_by_value(
          tf.clip_by_value(x_adv, x - self.eps, x + self.eps), 0.0, 1.0)
    return tf.stop_gradient(x_adv)

  def train_step(self, data):
    x, y = data
    return super().train_step((self.perturb(x, y), y))


def wrapper(defense: Defense):
  """The `victims.train(wrap=...)` hook of `defense` (None if it has none)."""
  if defense.pgd_eps is None:
    return None
  return lambda model, loss: PGDAdversarialModel(
      model, loss, eps=defense.pgd_eps, steps=defense.pgd_steps)

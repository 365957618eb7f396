"""PNG pictures of an evaluation: learning curves and example grids.

Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top
import numpy as np


def plot_learning_curves(curves: Mapping[str, Mapping[str, Sequence]], *,
                         path: str, title: str = "") -> str:
  """One panel per training set: train and clean-test accuracy per epoch.

  Like the paper's figure (train vs test accuracy, clean vs poisoned). With
  several seeds the line is the mean and the band spans min..max.

  Args:
    curves: training-set name (e.g. "clean", "poisoned") -> {"train_accuracy":
      `(S, E)`, "test_accuracy": `(S, E)`} per seed S and epoch E (nested
      lists or arrays; a single seed may be given as `(E,)`).
    path: where to write the PNG (folders are created).
    title: figure title.

  Returns:
    `path`.
  """
  if not curves:
    raise ValueError("plot_learning_curves needs at least one curve set.")
  n = len(curves)
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows),
                           squeeze=False, sharey=True)
  for ax in axes.ravel()[n:]:
    ax.set_visible(False)
  for ax, (name, c) in zip(axes.ravel(), curves.items()):
    for key, label, color in (("train_accuracy", "Train", "C0"),
                              ("test_accuracy", "Test (clean)", "C1")):
      a = np.atleast_2d(np.asarray(c[key], dtype=float))
      epochs = np.arange(1, a.shape[1] + 1)
      ax.plot(epochs, a.mean(0), color=color, lw=2, label=label)
      if a.shape[0] > 1:
        ax.fill_between(epochs, a.min(0), a.max(0), color=color, alpha=0.2)
    ax.set_title(name)
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
  for row in axes:
    row[0].set_ylabel("Accuracy")
  axes[0][0].legend(loc="lower right")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def pick_examples(labels: np.ndarray, *, per_class: int,
                  max_classes: int = 10, seed: int = 0) -> np.ndarray:
  """Indices of `per_class` random examples for each of the first classes.

  Args:
    labels: `(N,)` integer labels.
    per_class: examples per class (fewer if a class has fewer).
    max_classes: at most this many classes (the smallest label values).
    seed: seeds the choice.

  Returns:
    `(K,)` int indices into `labels`, grouped by class.
  """
  rng = np.random.default_rng(seed)
  out = []
  for c in np.unique(labels)[:max_classes]:
    idx = np.flatnonzero(labels == c)
    out.extend(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
  return np.asarray(out, dtype=np.int64)


def plot_examples(clean: np.ndarray, poisoned: Mapping[str, np.ndarray],
                  labels: np.ndarray, *, path: str,
                  class_names: Sequence[str] | None = None,
                  title: str = "") -> str:
  """Grid: clean image, then each poisoned version and its amplified change.

  The perturbation row shows `0.5 + delta / (2 max|delta|)` per image (grey
  is zero); the amplification factor is written under each one.

  Args:
    clean: `(K, H, W, C)` uint8 clean images (C in {1, 3}).
    poisoned: name -> `(K, H, W, C)` uint8 poisoned versions of `clean`.
    labels: `(K,)` integer labels (column titles).
    path: where to write the PNG.
    class_names: optional names for the labels.
    title: figure title.

  Returns:
    `path`.
  """
  clean = np.asarray(clean)
  for name, p in poisoned.items():
    if np.shape(p) != clean.shape:
      raise ValueError(f"poisoned[{name!r}] has shape {np.shape(p)}, clean "
                       f"has {clean.shape}.")
  k = len(clean)
  rows = [("clean", clean.astype(np.float32) / 255.0, None)]
  for name, p in poisoned.items():
    delta = np.asarray(p, np.float32) - clean.astype(np.float32)
    scale = np.maximum(np.abs(delta).reshape(k, -1).max(1), 1.0)
    rows.append((name, np.asarray(p, np.float32) / 255.0, None))
    rows.append((f"{name}: perturbation",
                 0.5 + delta / (2 * scale[:, None, None, None]),
                 [f"x{127.5 / s:.0f}" for s in scale]))
  fig, axes = plt.subplots(len(rows), k, figsize=(1.1 * k + 1.4,
                                                  1.2 * len(rows)),
                           squeeze=False)
  for r, (row_name, images, notes) in enumerate(rows):
    for j in range(k):
      ax = axes[r][j]
      img = np.clip(images[j], 0, 1)
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        lab = int(labels[j])
        ax.set_title(class_names[lab] if class_names else str(lab),
                     fontsize=8)
      if notes:
        ax.set_xlabel(notes[j], fontsize=7)
    axes[r][0].set_ylabel(row_name, fontsize=8, rotation=0, ha="right",
                          va="center")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path

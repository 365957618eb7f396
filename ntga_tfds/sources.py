"""Clean source datasets as uint8 arrays: through TFDS, or offline from files.

One function for builders and evaluation code alike:

  >>> train = sources.load_source("mnist", "train",
  ...                             manual_dir="../shared/data/mnist")
  >>> train.images.shape, train.images.dtype, train.labels.dtype
  ((60000, 28, 28, 1), dtype('uint8'), dtype('int64'))

Routes, in order:

* `manual_dir` given (or `download_config.manual_dir`): read the source's
  files from there, offline, with this module's own readers -- MNIST and
  Fashion-MNIST idx files (checked against TFDS's registered sha256 when they
  hold the official number of examples), CIFAR-10's binary batches (the
  extracted `cifar-10-batches-bin/` directory or the `cifar-10-binary.tar.gz`
  archive), an ImageNet folder for `imagenet_bulbul_jellyfish` (the NTGA
  paper's two ImageNet classes, bulbul vs jellyfish; `imagenet2`, its old
  name, still works). Nothing is ever unpickled. A
  missing or malformed file raises `SourceError` naming what was expected and
  where.
* otherwise, for sources TFDS knows (`mnist`, `fashion_mnist`, `cifar10`, and
  any other TFDS image classification dataset with `image` and `label`
  features): TFDS's own builder, with the caller's `data_dir` and
  `download_config` (so a user with internet needs nothing else).
* `digits`: scikit-learn's bundled 8x8 digits, always offline.

Canonical order. Every split is returned sorted by the SHA-256 of each
example (label and pixels), whatever the route or the file order: TFDS
shuffles examples when it prepares a dataset and the shared CIFAR-10 copy has
its own order, so only a content-defined order makes `index` (a position in
the returned arrays) mean the same example for everyone. Because the hash is
pseudo-random, the order is also a fixed random shuffle, and
`max_examples=n` takes a pseudo-random, route-independent subset: the first
n examples of that order.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import tarfile
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("train", "test")

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_COUNTS = {"train": 60000, "test": 10000}
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_CIFAR_RECORD = 1 + 32 * 32 * 3
IMAGENET2_WNIDS = ("n01560419", "n01910747")   # bulbul, jellyfish
IMAGENET2_SIDE = 224
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class SourceError(ValueError):
  """A source dataset's files are missing or malformed (says what and where)."""


class MissingSourceError(SourceError, FileNotFoundError):
  """The files a source needs are not where they were expected."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """What a source dataset is and where its clean data can come from.

  Attributes:
    name: the key used by `load_source` ("mnist", "cifar10", ...).
    image_shape: `(height, width, channels)` of every image.
    class_names: label names, index = label id.
    tfds_name: TFDS dataset used online, or None if there is no online route.
    homepage: the source's home page.
    manual_layout: what `manual_dir` must contain for the offline route
      (None: the source never needs files).
    reader: `reader(manual_dir, split, verify_checksums) -> (images, labels)`
      for the offline route.
  """
  name: str
  image_shape: Tuple[int, int, int]
  class_names: Tuple[str, ...]
  tfds_name: Optional[str]
  homepage: str
  manual_layout: Optional[str]
  reader: Optional[Callable[..., Tuple[np.ndarray, np.ndarray]]] = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def needs_files(self) -> bool:
    return self.manual_layout is not None


@dataclasses.dataclass(frozen=True, eq=False)
class SourceData:
  """One split of a clean source, in canonical order (see module doc).

  Attributes:
    images: `(n, h, w, c)` uint8.
    labels: `(n,)` int64.
    source: the source's name.
    split: "train" or "test".
    origin: where the examples came from (a path, "tfds:<name>", ...).
    sha256: hash of the (canonically ordered) images and labels.
    num_available: examples in the split before `max_examples` applied.
  """
  images: np.ndarray
  labels: np.ndarray
  source: str
  split: str
  origin: str
  sha256: str
  num_available: int

  def __len__(self) -> int:
    return int(self.labels.shape[0])


# ---------------------------------------------------------------------------
# Canonical order.


def canonical_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Permutation sorting examples by SHA-256 of (label, pixels)."""
  n = labels.shape[0]
  digests = np.empty((n, 32), np.uint8)
  lab = np.asarray(labels, np.int64)
  for i in range(n):
    h = hashlib.sha256(int(lab[i]).to_bytes(8, "little", signed=True))
    h.update(np.ascontiguousarray(images[i]).tobytes())
    digests[i] = np.frombuffer(h.digest(), np.uint8)
  words = digests.view(">u8")  # (n, 4) big-endian words: byte-wise order
  return np.lexsort(words.T[::-1])


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(str(images.shape).encode())
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels, np.int64).tobytes())
  return h.hexdigest()


def _finish(images, labels, *, name, split, origin, max_examples,
            spec: Optional[SourceSpec]) -> SourceData:
  images = np.asarray(images)
  labels = np.asarray(labels).astype(np.int64)
  if images.dtype != np.uint8:
    raise SourceError(
        f"{name}/{split} from {origin}: expected uint8 images, got "
        f"{images.dtype}.")
  if images.ndim == 3:
    images = images[..., None]
  if spec is not None and images.shape[1:] != tuple(spec.image_shape):
    raise SourceError(
        f"{name}/{split} from {origin}: expected images of shape "
        f"{tuple(spec.image_shape)}, got {images.shape[1:]}.")
  if labels.shape != (images.shape[0],):
    raise SourceError(
        f"{name}/{split} from {origin}: {images.shape[0]} images but labels "
        f"of shape {labels.shape}.")
  if images.shape[0] == 0:
    raise SourceError(f"{name}/{split} from {origin} holds no examples.")
  if spec is not None and (labels.min() < 0
                           or labels.max() >= spec.num_classes):
    raise SourceError(
        f"{name}/{split} from {origin}: labels must lie in "
        f"[0, {spec.num_classes}), got [{labels.min()}, {labels.max()}].")
  order = canonical_order(images, labels)
  images, labels = images[order], labels[order]
  available = int(labels.shape[0])
  if max_examples is not None:
    if int(max_examples) < 1:
      raise ValueError(f"max_examples must be >= 1, got {max_examples!r}.")
    images, labels = images[:max_examples], labels[:max_examples]
  images = np.ascontiguousarray(images)
  return SourceData(images=images, labels=labels, source=name, split=split,
                    origin=origin, sha256=content_sha256(images, labels),
                    num_available=available)


# ---------------------------------------------------------------------------
# File helpers.


def _read_bytes(path: pathlib.Path) -> bytes:
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise SourceError(f"{path}: not a valid gzip file ({e}).") from e
  return data


def _candidate_dirs(manual_dir: pathlib.Path, subdirs: Sequence[str]):
  yield manual_dir
  for s in subdirs:
    yield manual_dir / s


def _find_file(manual_dir: pathlib.Path, stem: str,
               subdirs: Sequence[str]) -> Optional[pathlib.Path]:
  for d in _candidate_dirs(manual_dir, subdirs):
    for name in (stem + ".gz", stem):
      if (d / name).is_file():
        return d / name
  return None


def _sha256_file(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def tfds_registered_checksums(tfds_name: str) -> dict:
  """{filename: (size, sha256)} from TFDS's own `url_checksums/<name>.txt`."""
  import importlib.resources  # pylint: disable=g-import-not-at-top
  try:
    text = (importlib.resources.files("tensorflow_datasets") / "url_checksums"
            / f"{tfds_name}.txt").read_text()
  except (FileNotFoundError, ModuleNotFoundError):
    return {}
  out = {}
  for line in text.splitlines():
    parts = line.split("\t")
    if len(parts) == 4:
      _, size, sha, fname = parts
      out[fname] = (int(size), sha)
  return out


# ---------------------------------------------------------------------------
# MNIST-family idx files.


def parse_idx(data: bytes, *, ndim: int, origin: str) -> np.ndarray:
  """Parses an idx file (uint8 payload) of `ndim` dimensions."""
  if len(data) < 4 + 4 * ndim:
    raise SourceError(f"{origin}: too short for an idx file ({len(data)} "
                      "bytes).")
  magic = int.from_bytes(data[:4], "big")
  if magic != 0x0800 + ndim:
    raise SourceError(
        f"{origin}: expected an idx file of uint8 with {ndim} dimensions "
        f"(magic 0x{0x0800 + ndim:08x}), got magic 0x{magic:08x}.")
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
          for i in range(ndim)]
  start = 4 + 4 * ndim
  expected = int(np.prod(dims))
  if len(data) - start != expected:
    raise SourceError(
        f"{origin}: header declares shape {tuple(dims)} ({expected} bytes of "
        f"data) but the file holds {len(data) - start}; truncated or "
        "corrupted.")
  return np.frombuffer(data, np.uint8, offset=start).reshape(dims)


def _read_mnist_family(tfds_name: str, subdirs: Sequence[str]):
  """Reader for MNIST-layout sources (four idx files)."""

  def reader(manual_dir, split, verify_checksums=True):
    manual_dir = pathlib.Path(manual_dir)
    stems = _MNIST_FILES[split]
    paths = [_find_file(manual_dir, s, subdirs) for s in stems]
    missing = [s for s, p in zip(stems, paths) if p is None]
    if missing:
      raise MissingSourceError(
          f"{tfds_name}: no {' or '.join(m + '.gz' for m in missing)} in "
          f"{manual_dir} (also looked in its subfolders "
          f"{', '.join(subdirs)}). Expected the four official idx files "
          f"({', '.join(f + '.gz' for s in _MNIST_FILES.values() for f in s)}"
          ").")
    images = parse_idx(_read_bytes(paths[0]), ndim=3, origin=str(paths[0]))
    labels = parse_idx(_read_bytes(paths[1]), ndim=1, origin=str(paths[1]))
    if images.shape[0] != labels.shape[0]:
      raise SourceError(
          f"{tfds_name}/{split}: {paths[0]} holds {images.shape[0]} images "
          f"but {paths[1]} holds {labels.shape[0]} labels.")
    if images.shape[1:] != (28, 28):
      raise SourceError(f"{paths[0]}: expected 28x28 images, got "
                        f"{images.shape[1:]}.")
    if verify_checksums and images.shape[0] == _MNIST_COUNTS[split]:
      # Files with the official number of examples must be the official
      # files: this catches e.g. Fashion-MNIST files given for MNIST.
      registered = tfds_registered_checksums(tfds_name)
      for p in paths:
        fname = p.name if p.name.endswith(".gz") else p.name + ".gz"
        if fname in registered and p.name.endswith(".gz"):
          sha = _sha256_file(p)
          if sha != registered[fname][1]:
            raise SourceError(
                f"{p}: sha256 {sha} differs from the official {tfds_name} "
                f"file's {registered[fname][1]} (registered by TFDS). Is "
                f"this another dataset's file? Pass verify_checksums=False "
                "to use it anyway.")
    return images[..., None], labels

  return reader


# ---------------------------------------------------------------------------
# CIFAR-10 binary batches.


def parse_cifar10_batch(data: bytes, *, origin: str):
  """(images (n,32,32,3) uint8, labels (n,)) from a CIFAR-10 .bin batch."""
  if len(data) == 0 or len(data) % _CIFAR_RECORD:
    raise SourceError(
        f"{origin}: expected records of {_CIFAR_RECORD} bytes (1 label byte, "
        f"then 3072 bytes of R, G, B planes of 32x32), but the size "
        f"{len(data)} is not a positive multiple of {_CIFAR_RECORD}.")
  rec = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
  labels = rec[:, 0].astype(np.int64)
  if labels.max() > 9:
    raise SourceError(f"{origin}: label byte {labels.max()} > 9; not a "
                      "CIFAR-10 binary batch (CIFAR-100 has 2 label bytes).")
  images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")


def _find_cifar(manual_dir: pathlib.Path):
  """('dir', path) or ('tar', path) for the CIFAR-10 binary release."""
  roots = [manual_dir, manual_dir / "cifar10", manual_dir / "cifar-10"]
  for r in roots:
    if (r / "data_batch_1.bin").is_file() or (r / "test_batch.bin").is_file():
      return "dir", r
    if (r / _CIFAR_DIR).is_dir():
      return "dir", r / _CIFAR_DIR
  for r in roots:
    if (r / _CIFAR_ARCHIVE).is_file():
      return "tar", r / _CIFAR_ARCHIVE
  return None, None


def _read_cifar10(manual_dir, split, verify_checksums=True):
  del verify_checksums  # The shared copy is reordered: no checksum applies.
  manual_dir = pathlib.Path(manual_dir)
  kind, where = _find_cifar(manual_dir)
  if kind is None:
    raise MissingSourceError(
        f"cifar10: found neither a {_CIFAR_DIR}/ directory nor "
        f"{_CIFAR_ARCHIVE} in {manual_dir} (also looked in its subfolders "
        "cifar10/, cifar-10/). Expected the official binary release: "
        f"{_CIFAR_DIR}/data_batch_1.bin ... data_batch_5.bin, test_batch.bin "
        "(and batches.meta.txt).")
  blobs = []
  if kind == "dir":
    meta = where / "batches.meta.txt"
    if meta.is_file():
      names = tuple(n.strip() for n in meta.read_text().split() if n.strip())
      if names != CIFAR10_CLASSES:
        raise SourceError(
            f"{meta}: expected the CIFAR-10 class names {CIFAR10_CLASSES}, "
            f"got {names}.")
    for fname in _CIFAR_FILES[split]:
      p = where / fname
      if not p.is_file():
        raise MissingSourceError(
            f"cifar10/{split}: {p} is missing. Expected {_CIFAR_DIR}/ with "
            f"{', '.join(_CIFAR_FILES['train'] + _CIFAR_FILES['test'])}.")
      blobs.append((str(p), p.read_bytes()))
  else:
    try:
      with tarfile.open(where, "r:gz") as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers()
                   if m.isfile()}
        for fname in _CIFAR_FILES[split]:
          if fname not in members:
            raise MissingSourceError(
                f"cifar10/{split}: {where} has no {fname}.")
          blobs.append((f"{where}:{members[fname].name}",
                        tar.extractfile(members[fname]).read()))
    except tarfile.TarError as e:
      raise SourceError(f"{where}: not a readable .tar.gz ({e}).") from e
  parts = [parse_cifar10_batch(b, origin=o) for o, b in blobs]
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))


# ---------------------------------------------------------------------------
# scikit-learn digits.

DIGITS_TEST_EVERY = 5


def digits_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
  """The fixed, documented split of scikit-learn's 8x8 digits.

  Within each class, in scikit-learn's order, every 5th example (the 5th,
  10th, ...) is test and the rest train: a stratified 80/20 split with no
  randomness (1,442 train and 355 test examples).
  """
  labels = np.asarray(labels)
  test = np.zeros(labels.shape[0], bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    test[idx[DIGITS_TEST_EVERY - 1::DIGITS_TEST_EVERY]] = True
  return np.flatnonzero(test if split == "test" else ~test)


def _load_digits(split):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  x = np.rint(d.images / 16.0 * 255).astype(np.uint8)[..., None]
  y = d.target.astype(np.int64)
  idx = digits_split_indices(y, split)
  return x[idx], y[idx]


# ---------------------------------------------------------------------------
# ImageNet, 2 classes.


def resize_center_crop(img, side: int = IMAGENET2_SIDE) -> np.ndarray:
  """PIL image -> (side, side, 3) uint8: shorter side to `side`, centre crop."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = img.convert("RGB")
  w, h = img.size
  scale = side / min(w, h)
  nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
  img = img.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - side) // 2, (nh - side) // 2
  return np.asarray(img.crop((left, top, left + side, top + side)), np.uint8)


def _find_imagenet_root(manual_dir: pathlib.Path) -> Optional[pathlib.Path]:
  for r in (manual_dir, manual_dir / "imagenet_bulbul_jellyfish",
            manual_dir / "imagenet2", manual_dir / "imagenet",
            manual_dir / "ILSVRC2012"):
    if (r / "train" / IMAGENET2_WNIDS[0]).is_dir():
      return r
  return None


def _read_imagenet2(manual_dir, split, verify_checksums=True):
  del verify_checksums
  from PIL import Image  # pylint: disable=g-import-not-at-top
  manual_dir = pathlib.Path(manual_dir)
  root = _find_imagenet_root(manual_dir)
  folder = {"train": "train", "test": "val"}[split]
  if root is None:
    raise MissingSourceError(
        f"imagenet_bulbul_jellyfish: no train/{IMAGENET2_WNIDS[0]}/ folder "
        f"in {manual_dir} (also looked in imagenet_bulbul_jellyfish/, "
        "imagenet2/, imagenet/, ILSVRC2012/). "
        + IMAGENET2_LAYOUT)
  images, labels = [], []
  for label, wnid in enumerate(IMAGENET2_WNIDS):
    d = root / folder / wnid
    if not d.is_dir():
      raise MissingSourceError(
          f"imagenet_bulbul_jellyfish/{split}: {d} is missing. " + IMAGENET2_LAYOUT)
    files = sorted(p for p in d.iterdir()
                   if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
      raise MissingSourceError(
          f"imagenet_bulbul_jellyfish/{split}: no .JPEG files in {d}. " + IMAGENET2_LAYOUT)
    for p in files:
      try:
        with Image.open(p) as img:
          images.append(resize_center_crop(img))
      except OSError as e:
        raise SourceError(f"{p}: cannot be decoded as an image ({e}).") from e
      labels.append(label)
  return np.stack(images), np.asarray(labels, np.int64)


IMAGENET2_LAYOUT = (
    "Expected an ImageNet (ILSVRC2012) folder holding the two classes of the "
    "NTGA paper in class folders: <manual_dir>/train/n01560419/*.JPEG "
    "(bulbul), <manual_dir>/train/n01910747/*.JPEG (jellyfish), and the "
    "validation images, which become the test split, as "
    "<manual_dir>/val/n01560419/*.JPEG and <manual_dir>/val/n01910747/*.JPEG "
    "(sort ILSVRC2012's flat val/ folder into class folders with its "
    "ground-truth labels first). Images are resized (shorter side 224, "
    "bicubic) and centre-cropped to 224x224.")

_MNIST_LAYOUT = ("the four official idx files (train-images-idx3-ubyte.gz, "
                 "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                 "t10k-labels-idx1-ubyte.gz), directly in manual_dir or in "
                 "manual_dir/{name}/")

SOURCES = {
    "digits": SourceSpec(
        name="digits", image_shape=(8, 8, 1),
        class_names=tuple(str(i) for i in range(10)), tfds_name=None,
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html"
        "#digits-dataset", manual_layout=None),
    "mnist": SourceSpec(
        name="mnist", image_shape=(28, 28, 1),
        class_names=tuple(str(i) for i in range(10)), tfds_name="mnist",
        homepage="http://yann.lecun.com/exdb/mnist/",
        manual_layout=_MNIST_LAYOUT.format(name="mnist"),
        reader=_read_mnist_family("mnist", ("mnist",))),
    "fashion_mnist": SourceSpec(
        name="fashion_mnist", image_shape=(28, 28, 1),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        tfds_name="fashion_mnist",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        manual_layout=_MNIST_LAYOUT.format(name="fashion_mnist"),
        reader=_read_mnist_family("fashion_mnist", ("fashion_mnist",))),
    "cifar10": SourceSpec(
        name="cifar10", image_shape=(32, 32, 3), class_names=CIFAR10_CLASSES,
        tfds_name="cifar10",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        manual_layout=(
            f"the official binary release: an extracted {_CIFAR_DIR}/ "
            "directory (data_batch_1.bin ... data_batch_5.bin, test_batch.bin,"
            f" batches.meta.txt) or {_CIFAR_ARCHIVE}, in manual_dir or "
            "manual_dir/cifar10/"),
        reader=_read_cifar10),
    "imagenet_bulbul_jellyfish": SourceSpec(
        name="imagenet_bulbul_jellyfish", image_shape=(IMAGENET2_SIDE, IMAGENET2_SIDE, 3),
        class_names=("bulbul", "jellyfish"), tfds_name=None,
        homepage="https://image-net.org/",
        manual_layout=IMAGENET2_LAYOUT, reader=_read_imagenet2),
}


# Old source names that still work.
ALIASES = {"imagenet2": "imagenet_bulbul_jellyfish"}


def source_spec(name: str) -> SourceSpec:
  """The `SourceSpec` of a known source, or one derived from a TFDS dataset."""
  name = ALIASES.get(name, name)
  if name in SOURCES:
    return SOURCES[name]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    info = tfds.builder(name).info
  except Exception as e:  # noqa: BLE001 - re-raised with the list of sources.
    raise ValueError(
        f"Unknown source {name!r}: not one of {sorted(SOURCES)} and not a "
        f"TFDS dataset ({e}).") from e
  feats = info.features
  if "image" not in feats or "label" not in feats:
    raise ValueError(f"TFDS dataset {name!r} has no 'image' and 'label' "
                     "features; it cannot be a poisoning source.")
  return SourceSpec(name=name, image_shape=tuple(feats["image"].shape),
                    class_names=tuple(feats["label"].names), tfds_name=name,
                    homepage=info.homepage or "", manual_layout=None)


def has_manual_files(name: str, manual_dir) -> bool:
  """Whether `manual_dir` seems to hold `name`'s offline files."""
  name = ALIASES.get(name, name)
  spec = source_spec(name)
  if spec.reader is None or manual_dir is None:
    return False
  d = pathlib.Path(manual_dir)
  if not d.is_dir():
    return False
  if name in ("mnist", "fashion_mnist"):
    return _find_file(d, _MNIST_FILES["train"][0], (name,)) is not None
  if name == "cifar10":
    return _find_cifar(d)[0] is not None
  if name == "imagenet_bulbul_jellyfish":
    return _find_imagenet_root(d) is not None
  return False


def manual_instructions(name: str) -> Optional[str]:
  """Markdown text for a builder's MANUAL_DOWNLOAD_INSTRUCTIONS."""
  spec = source_spec(name)
  if not spec.needs_files:
    return None
  if spec.tfds_name is None:
    return f"Required. `manual_dir` must hold {spec.manual_layout}"
  return (f"Optional, for offline builds. Without it the clean data comes "
          f"from TFDS's `{spec.tfds_name}` (downloaded into your data_dir). "
          f"For an offline build pass `--manual_dir` (or "
          f"`DownloadConfig(manual_dir=...)`) holding {spec.manual_layout}.")


def _load_tfds(spec: SourceSpec, split: str, data_dir, download_config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  dc = download_config
  if dc is not None:
    # The clean source is prepared in full (a truncated `mnist` would be
    # reused later as if complete); modes that only concern the poisoned
    # dataset are not forwarded.
    mode = dc.download_mode
    if mode == tfds.download.GenerateMode.UPDATE_DATASET_INFO:
      mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    dc = dataclasses.replace(dc, max_examples_per_split=None,
                             download_mode=mode)
  builder.download_and_prepare(download_config=dc)
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                            shuffle_files=False))
  return (np.asarray(arrays["image"]), np.asarray(arrays["label"]),
          f"tfds:{spec.tfds_name} ({builder.data_dir})")


def load_source(name: str, split: str, *, data_dir=None, manual_dir=None,
                download_config: Any = None,
                max_examples: Optional[int] = None,
                verify_checksums: bool = True) -> SourceData:
  """One split of a clean source dataset, in canonical order.

  Args:
    name: a key of `SOURCES` ("digits", "mnist", "fashion_mnist", "cifar10",
      "imagenet_bulbul_jellyfish") or another TFDS image classification dataset.
    split: "train" or "test".
    data_dir: TFDS data_dir for the online route.
    manual_dir: read the files from here, offline (see `SOURCES[name]
      .manual_layout`). Defaults to `download_config.manual_dir`.
    download_config: `tfds.download.DownloadConfig` for the online route.
    max_examples: keep only the first n examples of the canonical order (a
      fixed pseudo-random subset; meant for tests and quick looks).
    verify_checksums: check official-size MNIST-family files against TFDS's
      registered sha256.

  Returns:
    `SourceData` with uint8 `(n, h, w, c)` images and int64 labels.

  Raises:
    MissingSourceError: the offline files are not in `manual_dir`.
    SourceError: a file is malformed.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  name = ALIASES.get(name, name)
  spec = source_spec(name)
  if manual_dir is None and download_config is not None:
    manual_dir = getattr(download_config, "manual_dir", None)
  if name == "digits":
    x, y = _load_digits(split)
    origin = ("sklearn.datasets.load_digits (per class, every 5th example "
              "is test)")
  elif manual_dir is not None and spec.reader is not None:
    manual_dir = pathlib.Path(os.fspath(manual_dir)).expanduser().resolve()
    if not manual_dir.is_dir():
      raise MissingSourceError(
          f"{name}: manual_dir {manual_dir} does not exist. It must hold "
          f"{spec.manual_layout}.")
    x, y = spec.reader(manual_dir, split, verify_checksums)
    origin = str(manual_dir)
  elif spec.tfds_name is not None:
    x, y, origin = _load_tfds(spec, split, data_dir, download_config)
  else:
    raise MissingSourceError(
        f"{name} cannot be downloaded; pass manual_dir holding "
        f"{spec.manual_layout}")
  return _finish(x, y, name=name, split=split, origin=origin,
                 max_examples=max_examples, spec=spec)


__all__ = [
    "SOURCES", "SPLITS", "SourceSpec", "SourceData", "SourceError",
    "MissingSourceError", "ALIASES", "load_source", "source_spec", "canonical_order",
    "content_sha256", "has_manual_files", "manual_instructions", "parse_idx",
    "parse_cifar10_batch", "digits_split_indices", "resize_center_crop",
    "tfds_registered_checksums",
]

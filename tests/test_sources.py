"""Clean sources: offline readers, the TFDS route, canonical order, errors."""

import gzip
import pathlib
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ntga_tfds import sources

BUILDERS = pathlib.Path(__file__).resolve().parents[1] / "builders"


# ------------------------------------------------------------------ digits


def test_digits_split_is_fixed_stratified_and_disjoint():
  from sklearn.datasets import load_digits
  y = load_digits().target
  train_idx = sources.digits_split_indices(y, "train")
  test_idx = sources.digits_split_indices(y, "test")
  assert len(train_idx) == 1442 and len(test_idx) == 355
  assert not set(train_idx) & set(test_idx)
  assert sorted(np.concatenate([train_idx, test_idx])) == list(range(len(y)))
  for c in range(10):  # per class, every 5th example is test
    assert np.sum(y[test_idx] == c) == np.sum(y == c) // 5
  train = sources.load_source("digits", "train")
  test = sources.load_source("digits", "test")
  assert train.images.shape == (1442, 8, 8, 1)
  assert test.images.shape == (355, 8, 8, 1)
  assert train.images.dtype == np.uint8 and train.images.max() == 255
  again = sources.load_source("digits", "train")
  assert again.sha256 == train.sha256


# -------------------------------------------------------- canonical order


def test_canonical_order_does_not_depend_on_input_order():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
  y = rng.integers(0, 3, 50)
  order = sources.canonical_order(x, y)
  perm = rng.permutation(50)
  order_p = sources.canonical_order(x[perm], y[perm])
  np.testing.assert_array_equal(x[order], x[perm][order_p])
  np.testing.assert_array_equal(y[order], y[perm][order_p])
  # The label is part of the key: the same image with two labels is two
  # examples with a fixed order.
  xx = np.zeros((2, 2, 2, 1), np.uint8)
  assert sources.content_sha256(*_sorted(xx, np.array([1, 0]))) == \
      sources.content_sha256(*_sorted(xx, np.array([0, 1])))


def _sorted(x, y):
  o = sources.canonical_order(x, y)
  return x[o], y[o]


def test_max_examples_is_a_prefix_of_the_canonical_order():
  full = sources.load_source("digits", "train")
  sub = sources.load_source("digits", "train", max_examples=100)
  np.testing.assert_array_equal(sub.images, full.images[:100])
  np.testing.assert_array_equal(sub.labels, full.labels[:100])
  assert sub.num_available == 1442 and len(sub) == 100
  assert len(np.unique(sub.labels)) == 10  # a shuffled, not a sorted, prefix


# ------------------------------------------------------------- CIFAR-10


def _cifar_records(shared_data, per_file):
  """The first `per_file` records of every real CIFAR-10 batch file."""
  d = shared_data / "cifar10" / "cifar-10-batches-bin"
  out = {}
  for i in range(1, 6):
    out[f"data_batch_{i}.bin"] = (d / f"data_batch_{i}.bin").read_bytes()[
        :per_file * 3073]
  out["test_batch.bin"] = (d / "test_batch.bin").read_bytes()[
      :per_file * 3073]
  return out


def _write_cifar(root: pathlib.Path, files):
  d = root / "cifar-10-batches-bin"
  d.mkdir(parents=True)
  for name, data in files.items():
    (d / name).write_bytes(data)
  return d


def test_cifar10_real_data(shared_data):
  train = sources.load_source("cifar10", "train",
                              manual_dir=shared_data / "cifar10")
  test = sources.load_source("cifar10", "test",
                             manual_dir=shared_data / "cifar10")
  assert train.images.shape == (50000, 32, 32, 3)
  assert test.images.shape == (10000, 32, 32, 3)
  assert np.bincount(test.labels).tolist() == [1000] * 10
  assert np.bincount(train.labels).tolist() == [5000] * 10
  # The record layout is R, G, B planes: channels are not all equal.
  assert np.mean(train.images[..., 0] != train.images[..., 2]) > 0.5
  # Also found from the parent folder and from the batches folder itself.
  direct = sources.load_source(
      "cifar10", "test",
      manual_dir=shared_data / "cifar10" / "cifar-10-batches-bin")
  assert direct.sha256 == test.sha256


def test_cifar10_does_not_depend_on_file_order(shared_data, tmp_path):
  files = _cifar_records(shared_data, per_file=40)
  a = _write_cifar(tmp_path / "a", files)
  # Shuffle the training records across the five batch files.
  recs = np.concatenate([np.frombuffer(files[f"data_batch_{i}.bin"],
                                       np.uint8).reshape(-1, 3073)
                         for i in range(1, 6)])
  recs = recs[np.random.default_rng(1).permutation(len(recs))]
  shuffled = dict(files)
  for i, chunk in enumerate(np.array_split(recs, 5), 1):
    shuffled[f"data_batch_{i}.bin"] = chunk.tobytes()
  b = _write_cifar(tmp_path / "b", shuffled)
  sa = sources.load_source("cifar10", "train", manual_dir=a.parent)
  sb = sources.load_source("cifar10", "train", manual_dir=b.parent)
  assert len(sa) == 200
  assert sa.sha256 == sb.sha256


def test_cifar10_archive_equals_directory(shared_data, tmp_path):
  d = _write_cifar(tmp_path / "dir", _cifar_records(shared_data, per_file=8))
  arch = tmp_path / "arch"
  arch.mkdir()
  with tarfile.open(arch / "cifar-10-binary.tar.gz", "w:gz") as tar:
    tar.add(d, arcname="cifar-10-batches-bin")
  for split in ("train", "test"):
    from_dir = sources.load_source("cifar10", split, manual_dir=d.parent)
    from_tar = sources.load_source("cifar10", split, manual_dir=arch)
    assert from_dir.sha256 == from_tar.sha256


def test_cifar10_malformed_and_missing_files(shared_data, tmp_path):
  files = _cifar_records(shared_data, per_file=2)
  files["data_batch_3.bin"] = files["data_batch_3.bin"][:-7]
  d = _write_cifar(tmp_path / "bad", files)
  with pytest.raises(sources.SourceError,
                     match=r"data_batch_3.bin.*3073"):
    sources.load_source("cifar10", "train", manual_dir=d.parent)
  (d / "data_batch_3.bin").unlink()
  with pytest.raises(sources.MissingSourceError,
                     match=r"data_batch_3.bin is missing"):
    sources.load_source("cifar10", "train", manual_dir=d.parent)
  with pytest.raises(sources.MissingSourceError,
                     match=r"cifar-10-batches-bin.*" + str(tmp_path / "e")):
    (tmp_path / "e").mkdir()
    sources.load_source("cifar10", "train", manual_dir=tmp_path / "e")
  with pytest.raises(sources.MissingSourceError, match="does not exist"):
    sources.load_source("cifar10", "test", manual_dir=tmp_path / "nowhere")


# ---------------------------------------------------------------- MNIST


def test_mnist_real_data(shared_data):
  train = sources.load_source("mnist", "train",
                              manual_dir=shared_data / "mnist")
  test = sources.load_source("mnist", "test",
                             manual_dir=shared_data / "mnist")
  assert train.images.shape == (60000, 28, 28, 1)
  assert test.images.shape == (10000, 28, 28, 1)
  assert set(np.unique(train.labels)) == set(range(10))
  # Found from the parent folder too (manual_dir/mnist/).
  parent = sources.load_source("mnist", "test", manual_dir=shared_data)
  assert parent.sha256 == test.sha256


def test_official_size_files_must_be_the_official_ones(shared_data):
  with pytest.raises(sources.SourceError,
                     match="official fashion_mnist file"):
    sources.load_source("fashion_mnist", "test",
                        manual_dir=shared_data / "mnist")
  loaded = sources.load_source("fashion_mnist", "test",
                               manual_dir=shared_data / "mnist",
                               verify_checksums=False)
  assert len(loaded) == 10000


def test_mnist_malformed_and_missing_files(tmp_path):
  dummy = BUILDERS / "dummy_data" / "mnist"
  d = tmp_path / "m"
  shutil.copytree(dummy, d)
  with pytest.raises(sources.MissingSourceError,
                     match=r"train-labels-idx1-ubyte.gz"):
    (d / "train-labels-idx1-ubyte.gz").rename(d / "other.gz")
    sources.load_source("mnist", "train", manual_dir=d)
  (d / "other.gz").rename(d / "train-labels-idx1-ubyte.gz")
  images = gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
  (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[:-5]))
  with pytest.raises(sources.SourceError, match="truncated"):
    sources.load_source("mnist", "train", manual_dir=d)
  (d / "train-images-idx3-ubyte.gz").write_bytes(
      gzip.compress(b"\x00\x00\x09\x03" + images[4:]))
  with pytest.raises(sources.SourceError, match="magic"):
    sources.load_source("mnist", "train", manual_dir=d)
  # Uncompressed idx files are read as well.
  (d / "train-images-idx3-ubyte.gz").unlink()
  (d / "train-images-idx3-ubyte").write_bytes(images)
  assert len(sources.load_source("mnist", "train", manual_dir=d)) == 24


def test_mnist_through_tfds_equals_the_offline_reader(shared_data, tmp_path):
  """The online route (TFDS's own `mnist`, prepared here from the same files
  as TFDS's manual_dir) gives the same examples in the same order."""
  builder = tfds.builder("mnist", data_dir=tmp_path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(shared_data / "mnist"),
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  online = sources.load_source("mnist", "test", data_dir=tmp_path)
  offline = sources.load_source("mnist", "test",
                                manual_dir=shared_data / "mnist")
  assert online.origin.startswith("tfds:mnist")
  assert online.sha256 == offline.sha256
  np.testing.assert_array_equal(online.images, offline.images)


# ------------------------------------------------------------- ImageNet


def test_imagenet_bulbul_jellyfish_folder_reader(tmp_path):
  dummy = BUILDERS / "dummy_data" / "imagenet_bulbul_jellyfish"
  train = sources.load_source("imagenet_bulbul_jellyfish", "train",
                              manual_dir=dummy)
  test = sources.load_source("imagenet_bulbul_jellyfish", "test",
                             manual_dir=dummy)
  # The old name still works.
  assert sources.load_source("imagenet2", "test", manual_dir=dummy).sha256 \
      == test.sha256
  assert train.images.shape == (12, 224, 224, 3)
  assert test.images.shape == (4, 224, 224, 3)
  assert np.bincount(train.labels).tolist() == [6, 6]
  # A parent folder holding imagenet2/ works too.
  shutil.copytree(dummy, tmp_path / "imagenet2")
  assert sources.load_source("imagenet2", "test",
                             manual_dir=tmp_path).sha256 == test.sha256
  (tmp_path / "empty").mkdir()
  with pytest.raises(sources.MissingSourceError, match="n01560419"):
    sources.load_source("imagenet2", "train", manual_dir=tmp_path / "empty")
  with pytest.raises(sources.MissingSourceError, match="manual_dir"):
    sources.load_source("imagenet2", "train")


def test_resize_center_crop_keeps_the_centre():
  from PIL import Image
  img = np.zeros((300, 600, 3), np.uint8)
  img[:, 150:450] = 255  # the central square
  out = sources.resize_center_crop(Image.fromarray(img))
  assert out.shape == (224, 224, 3)
  assert out[5:-5, 5:-5].min() == 255


# ----------------------------------------------------------------- specs


def test_specs_and_other_tfds_sources():
  assert sources.source_spec("cifar10").num_classes == 10
  assert sources.source_spec("imagenet2").class_names == ("bulbul",
                                                          "jellyfish")
  spec = sources.source_spec("svhn_cropped")  # any TFDS image dataset
  assert spec.image_shape == (32, 32, 3) and spec.num_classes == 10
  assert spec.tfds_name == "svhn_cropped"
  with pytest.raises(ValueError, match="Unknown source"):
    sources.source_spec("no_such_dataset_xyz")
  with pytest.raises(ValueError, match="split"):
    sources.load_source("digits", "validation")


def test_has_manual_files(shared_data, tmp_path):
  assert sources.has_manual_files("mnist", shared_data / "mnist")
  assert sources.has_manual_files("mnist", shared_data)
  assert sources.has_manual_files("cifar10", shared_data / "cifar10")
  assert not sources.has_manual_files("cifar10", shared_data / "mnist")
  assert not sources.has_manual_files("mnist", tmp_path)
  assert not sources.has_manual_files("digits", tmp_path)

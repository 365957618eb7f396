"""Writes the tiny dummy data of every source (run from the repo root).

  python builders/_make_dummy_data.py

Writes builders/dummy_data/<source>/, once per source (every builder of the
source reads it). Each holds a few random images in the source's own file format,
so the builder tests exercise the offline readers of `ntga_tfds.sources`:
MNIST-style idx files (24 train, 8 test), CIFAR-10 binary batches
(4 + 4 x 5 = 24 train, 8 test), an ImageNet class-folder tree (2 x 6 train,
2 x 2 val JPEGs).
The digits builders read scikit-learn's bundled data, so their dummy_data/
only holds a note.
"""

import gzip
import pathlib
import shutil

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent
RNG = None  # re-seeded per builder folder in main()


def _idx(data: np.ndarray) -> bytes:
  header = (0x0800 + data.ndim).to_bytes(4, "big")
  header += b"".join(int(d).to_bytes(4, "big") for d in data.shape)
  return header + data.astype(np.uint8).tobytes()


def _digit_like(n, side, channels=1):
  """Random blobs on a dark background (values spread over 0..255)."""
  x = np.zeros((n, side, side, channels), np.uint8)
  for i in range(n):
    r0, c0 = RNG.integers(2, side // 2, size=2)
    h, w = RNG.integers(side // 4, side // 2, size=2)
    x[i, r0:r0 + h, c0:c0 + w] = RNG.integers(60, 256, size=(h, w, channels))
  return x


def mnist_like(dest: pathlib.Path):
  dest.mkdir(parents=True, exist_ok=True)
  for split, n, stem in (("train", 24, "train"), ("test", 8, "t10k")):
    x = _digit_like(n, 28)[..., 0]
    y = np.arange(n) % 10
    for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
      with gzip.GzipFile(dest / f"{stem}-{kind}-ubyte.gz", "wb",
                         mtime=0) as f:
        f.write(_idx(arr))


def cifar_like(dest: pathlib.Path):
  d = dest / "cifar-10-batches-bin"
  d.mkdir(parents=True, exist_ok=True)
  names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck"]
  (d / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
  files = [(f"data_batch_{i}.bin", 4 if i == 1 else 5) for i in range(1, 6)]
  files.append(("test_batch.bin", 8))
  k = 0
  for fname, n in files:
    x = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    y = (np.arange(n) + k) % 10
    k += n
    rec = np.concatenate([y[:, None].astype(np.uint8), x.reshape(n, -1)], 1)
    (d / fname).write_bytes(rec.tobytes())


def imagenet_like(dest: pathlib.Path):
  from PIL import Image
  for folder, n in (("train", 6), ("val", 2)):
    for wnid in ("n01560419", "n01910747"):
      d = dest / folder / wnid
      d.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        h, w = RNG.integers(24, 48, size=2)
        img = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"{wnid}_{i}.JPEG", quality=90)


def note(dest: pathlib.Path):
  dest.mkdir(parents=True, exist_ok=True)
  (dest / "README.md").write_text(
      "The digits builders read scikit-learn's bundled 8x8 digits (offline, "
      "1,797 images),\nso they need no dummy files; their tests use small "
      "subsets of the real data\n(`max_train_examples`, `max_test_examples`)."
      "\n")


WRITERS = {
    "digits": note, "mnist": mnist_like, "fashion_mnist": mnist_like,
    "cifar10": cifar_like, "imagenet_bulbul_jellyfish": imagenet_like,
}


def main():
  global RNG
  for source, writer in sorted(WRITERS.items()):
    RNG = np.random.default_rng(20210718)  # same files as before
    dest = ROOT / "dummy_data" / source
    if dest.exists():
      shutil.rmtree(dest)
    writer(dest)
    print("wrote", dest)


if __name__ == "__main__":
  main()

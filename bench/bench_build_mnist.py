r"""Times the full MNIST build: `mnist_ntga/<config>` from the official files.

  python bench/bench_build_mnist.py                 # the full build
  python bench/bench_build_mnist.py --max_blocks=3  # 3 blocks, extrapolated
  bash dev.sh bench bench_build_mnist.py --config=eps76_t1

The full mode builds, in-process, exactly what

  python -m ntga_tfds.builders build builders/mnist_ntga --config=CONFIG \
      --manual_dir=../shared/data/mnist --data_dir=DATA_DIR

builds (all 60,000 training images poisoned, 118 blocks of 512 against
10,000 validation images each), then reads the dataset back with
`tfds.load`, and reports the wall time of the build and the generation time
and per-block rate recorded in the dataset's metadata.

`--max_blocks=N` generates only the first N blocks with the same plan (no
dataset written) and reports an EXTRAPOLATION, labelled as such: the first
block (which includes JIT compilation) plus (num_blocks - 1) times the mean
of the others; the last, partial block is counted as a full one.

Results are printed and written as JSON to bench/results/.
"""

import datetime
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]

_CONFIG = flags.DEFINE_string("config", "eps76_t64", "mnist_ntga config.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", str(REPO.parent / "shared" / "data" / "mnist"),
    "Folder with the four official MNIST idx files.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data_dir to build into (default: a temporary "
    "folder, deleted afterwards).")
_MAX_BLOCKS = flags.DEFINE_integer(
    "max_blocks", None, "Generate only this many blocks and extrapolate.",
    lower_bound=2)
_OUT = flags.DEFINE_string("out", str(REPO / "bench" / "results"),
                           "Where the JSON result goes.")


def _machine():
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "cpus": os.cpu_count(),
          "jax_backend": jax.default_backend(),
          "jax_devices": [str(d) for d in jax.devices()]}


def _full_build(config: str, manual_dir: str, data_dir: str) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import ntga_tfds  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder(f"mnist_ntga/{config}", data_dir=data_dir)
  if builder.is_prepared():
    raise SystemExit(f"{builder.data_dir} is already built; pass another "
                     "--data_dir.")
  start = time.time()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  wall = time.time() - start
  ds = tfds.load(f"mnist_ntga/{config}", split="train", data_dir=data_dir,
                 download=False)
  meta = dict(builder.info.metadata)
  blocks = meta["units_computed"] + meta["units_resumed"]
  return {
      "mode": "full build (measured)",
      "build_wall_seconds": round(wall, 1),
      "generation_seconds": meta["generation_seconds"],
      "num_blocks": blocks,
      "blocks_resumed": meta["units_resumed"],
      "seconds_per_block": round(meta["generation_seconds"] / blocks, 2),
      "train_examples_loaded": len(ds),
      "plan": meta["plan"],
      "perturbation": meta["stats"],
      "data_dir": str(builder.data_dir),
  }


def _first_blocks(config: str, manual_dir: str, max_blocks: int) -> dict:
  # pylint: disable=g-import-not-at-top
  from ntga_tfds import families
  from ntga_tfds import generation
  from ntga_tfds import sources
  fam = families.get("ntga")
  cfg = fam.config(config)
  train = sources.load_source("mnist", "train", manual_dir=manual_dir)
  job = fam.job(cfg, train, None, sources.source_spec("mnist"))
  stamps = []

  def on_block(b, num_blocks):
    stamps.append(time.time())
    plan_blocks[0] = num_blocks

  plan_blocks = [None]
  start = time.time()
  try:
    generation.run(job, data_sha256=train.sha256, on_unit=on_block,
                   implementation=fam.implementation(cfg),
                   stop_after=max_blocks)
  except generation.Interrupted:
    pass
  times = [stamps[0] - start] + [b - a for a, b in zip(stamps, stamps[1:])]
  num_blocks = plan_blocks[0]
  rest = sum(times[1:]) / len(times[1:])
  return {
      "mode": f"EXTRAPOLATION from the first {max_blocks} blocks (not a "
              "measured full build)",
      "block_seconds": [round(t, 2) for t in times],
      "first_block_seconds_incl_compile": round(times[0], 2),
      "mean_seconds_per_later_block": round(rest, 2),
      "num_blocks": num_blocks,
      "extrapolated_generation_seconds": round(
          times[0] + (num_blocks - 1) * rest, 1),
  }


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  result = {"benchmark": "bench_build_mnist", "config": _CONFIG.value,
            "started": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds")}
  if _MAX_BLOCKS.value:
    result.update(_first_blocks(_CONFIG.value, _MANUAL_DIR.value,
                                _MAX_BLOCKS.value))
  else:
    data_dir = _DATA_DIR.value or tempfile.mkdtemp(prefix="bench_mnist_")
    try:
      result.update(_full_build(_CONFIG.value, _MANUAL_DIR.value, data_dir))
    finally:
      if not _DATA_DIR.value:
        shutil.rmtree(data_dir, ignore_errors=True)
  result["machine"] = _machine()
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  path = out / (f"bench_build_mnist-{_CONFIG.value}-"
                f"{time.strftime('%Y%m%d-%H%M%S')}.json")
  path.write_text(json.dumps(result, indent=2))
  print(json.dumps(result, indent=2))
  print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)

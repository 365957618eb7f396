r"""Wall time of a build: one process vs Apache Beam's DirectRunner workers.

Builds one config from scratch (each run in its own fresh data_dir under
`--out`, so nothing is resumed) in a single process, then on Beam's
DirectRunner in multi-processing mode with each of `--workers`, and checks
that every run wrote the same TFRecord bytes:

  python bench/bench_beam.py --dataset=mnist_ntga/eps76_t64 \
      --manual_dir=../shared/data/mnist --workers=1,2 --out=/tmp/bench_beam

Prints wall seconds per run (the whole `download_and_prepare`) and the
generation seconds the builder recorded.
"""

import json
import os
import pathlib
import shutil
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "digits_ntga/eps8_t64", "name/config.")
flags.DEFINE_string("manual_dir", None, "Offline source files.")
flags.DEFINE_list("workers", ["1", "2"], "DirectRunner worker counts.")
flags.DEFINE_bool("single", True, "Also the single-process build.")
flags.DEFINE_string("out", "/tmp/bench_beam", "Scratch data_dirs.")
flags.DEFINE_string("json", None, "Also write the figures here.")


def _build(data_dir, beam_options=None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import ntga_tfds  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  shutil.rmtree(data_dir, ignore_errors=True)
  builder = tfds.builder(FLAGS.dataset, data_dir=os.fspath(data_dir))
  start = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=FLAGS.manual_dir, beam_options=beam_options))
  wall = time.perf_counter() - start
  files = {p.name: p.read_bytes()
           for p in sorted(pathlib.Path(builder.data_dir).iterdir())
           if ".tfrecord" in p.name}
  return wall, builder.info.metadata.get("generation_seconds"), files


def main(_):
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(FLAGS.out)
  runs = {}
  if FLAGS.single:
    runs["single process"] = _build(out / "single")
  for w in FLAGS.workers:
    options = PipelineOptions([f"--direct_num_workers={int(w)}",
                               "--direct_running_mode=multi_processing"])
    runs[f"DirectRunner, {w} workers"] = _build(out / f"beam{w}", options)
  first = next(iter(runs.values()))[2]
  report = {"dataset": FLAGS.dataset, "cpus": os.cpu_count()}
  for name, (wall, gen, files) in runs.items():
    same = files == first
    report[name] = {"wall_s": round(wall, 1), "generation_s": gen,
                    "tfrecord_bytes_equal_to_first": same}
    print(f"{name:28s} wall {wall:8.1f} s   generation {gen} s   "
          f"same TFRecord bytes: {same}")
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  app.run(main)

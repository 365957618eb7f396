"""The CNN kernel's native passes timed without JAX, for A/B comparisons.

Run by hand (never a timed test):

  bash dev.sh bench bench_cnn_native.py
  bash dev.sh bench bench_cnn_native.py --shape=cifar10 --rounds=3
  git show HEAD~1:transforms/ntga/_native/cnn_ntk.cc > /tmp/old.cc
  bash dev.sh bench bench_cnn_native.py --against=/tmp/old.cc

Compiles `cnn_native_harness.cc` with `transforms/ntga/_native/cnn_ntk.cc` (or
`--source`) inside it, with the flags the library is built with, and
prints microseconds per kernel entry of the x1 packing, the forward
(`RunKernel`) and the gradient (`RunGrad`) at the validation chunk and
block NTGA uses (random images; no JAX, no self-variance terms, no XLA
overhead: `bench_cnn_kernel.py` times the whole kernel function). With
`--against`, a second source file is built too and the two run
alternately, `--rounds` times each, so that both see the same machine
state (this machine's timings swing by several percent from minute to
minute); the checksums' relative differences show whether the two
compute the same values (float32 rounding: ~1e-7).
"""

import pathlib
import shutil
import subprocess
import tempfile

from absl import app
from absl import flags

from ntga_tfds.transforms.ntga import _native

_HERE = pathlib.Path(__file__).parent
_SOURCE = _HERE.parent / "transforms" / "ntga" / "_native" / "cnn_ntk.cc"

flags.DEFINE_multi_enum("shape", ["mnist", "cifar10"], ["mnist", "cifar10"],
                        "Image shapes to time.")
flags.DEFINE_integer("m", 2000, "x1 images (the validation chunk).")
flags.DEFINE_integer("n2", 512, "x2 images (the block).")
flags.DEFINE_integer("repeats", 3, "Timed calls per run (the best is kept).")
flags.DEFINE_integer("rounds", 1, "Runs per source file and shape.")
flags.DEFINE_string("source", str(_SOURCE), "The cnn_ntk.cc to time.")
flags.DEFINE_string("against", None, "A second cnn_ntk.cc to compare.")
FLAGS = flags.FLAGS


def _build(source: pathlib.Path, out: pathlib.Path) -> None:
  import jax.ffi  # pylint: disable=g-import-not-at-top
  cxx = shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    raise SystemExit("no C++ compiler (g++ or c++) on PATH")
  flags_ = [f for f in _native._FLAGS if f not in ("-shared", "-fPIC")]  # pylint: disable=protected-access
  subprocess.run([cxx, *flags_, f"-I{jax.ffi.include_dir()}",
                  f'-DSRC="{source.resolve()}"',
                  str(_HERE / "cnn_native_harness.cc"), "-o", str(out)],
                 check=True)


def _parse(line: str) -> dict:
  return dict(kv.split("=", 1) for kv in line.split())


def main(_):
  sources = {"source": pathlib.Path(FLAGS.source)}
  if FLAGS.against:
    sources["against"] = pathlib.Path(FLAGS.against)
  with tempfile.TemporaryDirectory() as tmp:
    exes = {}
    for name, src in sources.items():
      if not src.exists():
        raise SystemExit(f"--{name}: no such file {src}")
      exes[name] = pathlib.Path(tmp) / name
      _build(src, exes[name])
    for shape in FLAGS.shape:
      best = {}
      for _ in range(FLAGS.rounds):
        for name, exe in exes.items():
          out = subprocess.run(
              [str(exe), shape, str(FLAGS.m), str(FLAGS.n2),
               str(FLAGS.repeats)], check=True, capture_output=True,
              text=True).stdout.strip()
          print(f"{name:8s} {out}")
          r = _parse(out)
          if name not in best or (float(r["fwd_grad_us"]) <
                                  float(best[name]["fwd_grad_us"])):
            best[name] = r
      for name, r in best.items():
        print(f"best {name:8s} {shape}: pack {r['pack_us']} fwd "
              f"{r['fwd_us']} grad {r['grad_us']} fwd+grad "
              f"{r['fwd_grad_us']} us per entry")
      if len(best) == 2:
        a, b = (float(best[k]["fwd_grad_us"]) for k in ("source", "against"))
        # Relative differences of the checksums: float32 rounding (a
        # changed order of operations) gives ~1e-7; more means the two
        # compute different values.
        diff = {k: abs(float(best["source"][k]) - float(best["against"][k]))
                   / max(abs(float(best["against"][k])), 1e-30)
                for k in ("k_sum", "gx_sum")}
        print(f"{shape}: source / against = {a / b:.3f} (checksums' "
              f"relative differences: K {diff['k_sum']:.1e}, gradient "
              f"{diff['gx_sum']:.1e})")


if __name__ == "__main__":
  app.run(main)

"""Resuming a build in a fresh process gives every byte of an uninterrupted
one, on real MNIST (the bug this guards: a process's first block ran its
eigendecompositions on all BLAS threads, the others on one).

Each run is a fresh Python process: an uninterrupted run of 3 blocks, a run
interrupted after 2 blocks (checkpointed), and a fresh process that resumes
and computes block 2 as its first block.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np

ENV = dict(os.environ, NTGA_TFDS_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="2")

_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from ntga_tfds import families, generation, sources
    mnist, ckpt, out, stop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    train = sources.load_source("mnist", "train", manual_dir=mnist,
                                max_examples=1536)
    fam = families.get("ntga")
    cfg = fam.config("eps76_t64", max_train_examples=1536)
    job = fam.job(cfg, train, None, sources.source_spec("mnist"))
    try:
      result = generation.run(
          job, data_sha256=train.sha256, checkpoint_dir=ckpt,
          implementation=fam.implementation(cfg),
          stop_after=None if stop == "none" else int(stop))
    except generation.Interrupted:
      print("INTERRUPTED")
      sys.exit(0)
    np.save(out, result.splits["train"]["image"])
    print("RESUMED", result.units_resumed, "COMPUTED", result.units_computed)
""")


def _process(*args):
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, *map(str, args)],
                        env=ENV, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout


def test_resume_in_a_fresh_process_gives_every_byte(shared_data, tmp_path):
  mnist = shared_data / "mnist"
  whole, resumed = tmp_path / "whole.npy", tmp_path / "resumed.npy"
  out = _process(mnist, tmp_path / "a", whole, "none")
  assert "RESUMED 0 COMPUTED 3" in out
  assert "INTERRUPTED" in _process(mnist, tmp_path / "b", resumed, 2)
  out = _process(mnist, tmp_path / "b", resumed, "none")
  assert "RESUMED 2 COMPUTED 1" in out
  a, b = np.load(whole), np.load(resumed)
  assert a.shape == (1536, 28, 28, 1)
  assert a.tobytes() == b.tobytes()


def test_the_first_block_of_a_process_runs_lapack_on_one_thread():
  # In a fresh process, JAX loads LAPACK (scipy's OpenBLAS) at its first
  # eigendecomposition. The attack's limit must cover it from the first
  # block on: a multi-threaded eigh differs in the last bits.
  code = textwrap.dedent("""
      import jax.numpy as jnp, threadpoolctl
      from ntga_tfds.transforms.ntga import attack
      with attack._one_blas_thread():
        jnp.linalg.eigh(jnp.eye(64) + 1.0)[0].block_until_ready()
        info = threadpoolctl.threadpool_info()
      print(sorted({i["num_threads"] for i in info
                    if i["user_api"] == "blas"}))
  """)
  out = subprocess.run([sys.executable, "-c", code], env=ENV, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip().splitlines()[-1] == "[1]"

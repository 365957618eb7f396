"""Generation spread out: Apache Beam workers and every local device.

* A build on Beam's DirectRunner with 2 worker processes writes the same
  TFRecord files, byte for byte, as the single-process build; the driver
  itself attacks no unit (its `run_unit` raises here; the workers are other
  processes).
* A unit that fails once is retried by the runner (BundleBasedDirectRunner,
  which retries failed bundles): no example lost or duplicated, the same
  files.
* One process over 2 local devices (XLA's forced host devices) gives the
  same arrays as the single-device run, for a block job (NTGA) and for a
  targeted job (Witches' Brew, after its surrogate is trained once).
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

import ntga_tfds  # noqa: F401  (registers the builders)
from ntga_tfds import generation
from ntga_tfds import parallel
from ntga_tfds import plans

beam = pytest.importorskip("apache_beam")
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402  pylint: disable=g-import-not-at-top

DATASET = "digits_ntga/eps8_t64"   # 1,442 training images: 3 blocks of 512


def _build(data_dir, **download):
  builder = tfds.builder(DATASET, data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(**download))
  return builder


def _records(builder) -> dict:
  """The prepared files whose bytes must agree (not metadata.json, which
  records times)."""
  root = pathlib.Path(builder.data_dir)
  return {p.name: p.read_bytes() for p in sorted(root.iterdir())
          if p.name != "metadata.json"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  builder = _build(tmp_path_factory.mktemp("single"))
  assert builder.info.metadata["units_computed"] == 3
  return _records(builder)


def test_beam_multiprocess_build_equals_single_process(single, tmp_path,
                                                       monkeypatch):
  def driver_must_not_attack(self, u, previous, *, on_step):
    raise AssertionError(f"the driver computed block {u}")
  monkeypatch.setattr(plans.BlockJob, "run_unit", driver_must_not_attack)
  options = PipelineOptions(["--direct_num_workers=2",
                             "--direct_running_mode=multi_processing"])
  builder = _build(tmp_path, beam_options=options)
  meta = builder.info.metadata
  assert meta["units_computed"] == 3 and meta["units_resumed"] == 0
  got = _records(builder)
  assert sorted(got) == sorted(single)
  for name, data in single.items():
    assert got[name] == data, name
  # The checkpoints were removed after the build, as in a local one.
  assert not list((tmp_path / "downloads").rglob("unit_*.npz"))


def test_beam_workers_read_the_surrogate_the_driver_trained(tmp_path,
                                                          monkeypatch):
  dataset = "digits_witches_brew/cnn_eps16_budget1_seed0_fast"
  single = tfds.builder(dataset, data_dir=os.fspath(tmp_path / "a"))
  single.download_and_prepare()
  def driver_must_not_craft(self, u, previous, *, on_step):
    raise AssertionError(f"the driver crafted target group {u}")
  monkeypatch.setattr(plans.TargetedJob, "run_unit", driver_must_not_craft)
  beamed = tfds.builder(dataset, data_dir=os.fspath(tmp_path / "b"))
  beamed.download_and_prepare(download_config=tfds.download.DownloadConfig(
      beam_options=PipelineOptions(["--direct_num_workers=2",
                                    "--direct_running_mode=multi_processing"])))
  assert beamed.info.metadata["units_computed"] == 1
  a, b = _records(single), _records(beamed)
  assert sorted(a) == sorted(b)
  for name, data in a.items():
    assert b[name] == data, name


def test_a_unit_that_fails_once_is_retried_without_loss_or_duplicates(
    single, tmp_path, monkeypatch):
  real = plans.BlockJob.run_unit
  calls = []

  def flaky(self, u, previous, *, on_step):
    calls.append(u)
    if u == 1 and calls.count(1) == 1:
      raise RuntimeError("worker died (test)")
    return real(self, u, previous, on_step=on_step)
  monkeypatch.setattr(plans.BlockJob, "run_unit", flaky)
  builder = _build(tmp_path, beam_runner="BundleBasedDirectRunner")
  assert calls.count(1) == 2, calls            # retried by the runner
  assert sorted(set(calls)) == [0, 1, 2]
  got = _records(builder)
  for name, data in single.items():
    assert got[name] == data, name
  train = builder.as_dataset(split="train")
  keys = [int(e["index"]) for e in tfds.as_numpy(train)]
  assert len(keys) == len(set(keys)) == builder.info.splits["train"].num_examples


def test_beam_needs_a_shared_filesystem_data_dir(tmp_path):
  spec = parallel.UnitSpec("digits_ntga", None, os.fspath(tmp_path), None,
                           None, None)
  distribute = parallel.beam(spec)
  with pytest.raises(ValueError, match="filesystem the workers share"):
    distribute(None, [0], store=None, cache=None)


def test_devices_from_env_rejects_nonsense(monkeypatch):
  monkeypatch.setenv("NTGA_TFDS_DEVICES", "many")
  with pytest.raises(ValueError, match="NTGA_TFDS_DEVICES"):
    parallel.devices_from_env()
  monkeypatch.setenv("NTGA_TFDS_DEVICES", "99")
  with pytest.raises(ValueError, match="local JAX devices"):
    parallel.devices_from_env()


_DEVICES_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    from ntga_tfds import families, generation, parallel, sources
    family, name, out, devices = sys.argv[1:5]
    train = sources.load_source("digits", "train")
    test = sources.load_source("digits", "test")
    fam = families.get(family)
    cfg = fam.config(name)
    job = fam.job(cfg, train, test, sources.source_spec("digits"))
    assert len(jax.local_devices()) == 2, jax.local_devices()
    distribute = (parallel.local_devices(jax.local_devices()[:int(devices)])
                  if devices != "0" else None)
    result = generation.run(job, data_sha256=train.sha256,
                            implementation=fam.implementation(cfg),
                            distribute=distribute)
    np.savez(out, **{f"{s}/{c}": v for s, cols in result.splits.items()
                     for c, v in cols.items()})
    print("COMPUTED", result.units_computed)
""")


@pytest.mark.parametrize("family,name", [
    ("ntga", "eps8_t64"),
    ("witches_brew", "cnn_eps16_budget1_seed0_fast"),
])
def test_units_spread_over_local_devices_give_the_same_arrays(
    family, name, tmp_path):
  env = dict(os.environ, NTGA_TFDS_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  outs = {}
  for devices in ("0", "2"):
    out = tmp_path / f"{devices}.npz"
    proc = subprocess.run(
        [sys.executable, "-c", _DEVICES_SCRIPT, family, name, str(out),
         devices], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "COMPUTED" in proc.stdout
    outs[devices] = dict(np.load(out))
  assert sorted(outs["0"]) == sorted(outs["2"])
  for k, v in outs["0"].items():
    assert v.tobytes() == outs["2"][k].tobytes(), k


def test_local_devices_with_one_device_leaves_the_units_to_run():
  class Job(generation.Job):
    num_units = 2
    independent_units = True

    def payload(self):
      return {}

    def run_unit(self, u, previous, *, on_step):
      return {"x": np.full(3, u)}

    def assemble(self, outputs):
      return {"train": {"x": np.stack([o["x"] for o in outputs])}}

  import jax  # pylint: disable=g-import-not-at-top
  distribute = parallel.local_devices(jax.local_devices()[:1])
  assert distribute(Job(), [0, 1], store=None, cache=None) is None
  result = generation.run(Job(), data_sha256="x", distribute=distribute,
                          progress=False)
  assert result.units_computed == 2
  np.testing.assert_array_equal(result.splits["train"]["x"],
                                [[0, 0, 0], [1, 1, 1]])

"""Every builder folder is what `builders/_make_folders.py` writes from the
families, and every config recorded before the families refactor exists."""

import importlib.util
import json
import pathlib

import ntga_tfds
from ntga_tfds import families

REPO = pathlib.Path(__file__).resolve().parents[1]


def _make_folders():
  spec = importlib.util.spec_from_file_location(
      "make_folders", REPO / "builders" / "_make_folders.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_builder_folders_are_current():
  stale = []
  for folder, files in _make_folders().expected_files().items():
    for name, text in files.items():
      p = REPO / "builders" / folder / name
      if not p.exists() or p.read_text() != text:
        stale.append(str(p.relative_to(REPO)))
  assert not stale, ("stale builder files (run `python "
                     f"builders/_make_folders.py`): {stale}")


def test_every_builder_folder_belongs_to_a_family_and_is_two_lines():
  for name in ntga_tfds.BUILDERS:
    source, fam = families.split_builder_name(name)
    assert source in fam.grid, name
    code = (REPO / "builders" / name / f"{name}_dataset_builder.py"
            ).read_text()
    body = [l for l in code.split('"""\n', 1)[1].splitlines() if l.strip()]
    # The import, the class and its one-line docstring: nothing else.
    assert body[:2] == [
        "from ntga_tfds import families",
        f'class Builder(families.builder("{source}", "{fam.name}")):'], name
    assert len(body) == 3 and body[2].strip().startswith('"""'), name


def test_dummy_data_once_per_source():
  dummy = REPO / "builders" / "dummy_data"
  assert sorted(p.name for p in dummy.iterdir()) == sorted(
      {families.split_builder_name(n)[0] for n in ntga_tfds.BUILDERS})
  for name in ntga_tfds.BUILDERS:
    assert not (REPO / "builders" / name / "dummy_data").exists(), name


def test_every_recorded_config_still_exists_by_its_name():
  recorded = json.loads(
      (REPO / "tests" / "data" / "builder_bytes_decf222.json").read_text())
  from ntga_tfds import testing
  for key in recorded:
    if key.startswith("_"):
      continue
    builder, config = key.split("/")
    source, fam = families.split_builder_name(builder)
    names = [c.name for c in fam.named_configs(source)]
    subset = [fam.config(n, **testing.SUBSET).name for n in names]
    if config in names + subset:
      continue
    # NTGA's 1.0.0 defaults are recorded under their `_folds_pgd` names:
    # canonical grammar names (of the digits subset, for digits).
    base = config.rsplit("_x", 1)[0]
    assert fam.config(base).name == base, key
    assert config in (base, fam.config(base, **testing.SUBSET).name), key

"""BUILD mirrors the packages and tests: one py_library per package, one
py_test per test file. Regenerate with `python tests/test_build_file.py`."""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
HEADER = '''\
# Bazel targets mirroring the Python packages and tests. Generated and
# checked by tests/test_build_file.py (run it as a script to regenerate).
# Third-party deps come from the pinned stack in setup.py through a pip
# repository named `pypi` (rules_python's pip.parse over setup.py's pins).

load("@rules_python//python:defs.bzl", "py_library", "py_test")

package(default_visibility = ["//visibility:public"])
'''
THIRD_PARTY = {
    "transforms": ["jax", "jaxlib", "neural_tangents", "flax", "optax", "numpy",
                   "threadpoolctl"],
    "ntga_tfds": ["tensorflow", "tensorflow_datasets", "keras", "absl_py",
                  "scikit_learn", "matplotlib", "tqdm", "numpy"],
}


def _label(path: pathlib.Path) -> str:
  return str(path.relative_to(REPO)).replace("/", "_")


def _subpackages(root: pathlib.Path):
  """Package folders under `root` (not `root`), parents first."""
  return sorted((p for p in root.rglob("__init__.py")
                 if p.parent != root and "__pycache__" not in p.parts),
                key=lambda p: p.parent.relative_to(REPO).as_posix())


def _packages():
  """(target name, folder) of every package folder, in dependency order."""
  out = [("transforms", REPO / "transforms")]
  out += [(_label(p.parent), p.parent)
          for p in _subpackages(REPO / "transforms")]
  out.append(("ntga_tfds", REPO / "ntga_tfds"))
  out += [(_label(p.parent), p.parent)
          for p in _subpackages(REPO / "ntga_tfds")]
  builders = REPO / "builders"
  for d in sorted(p for p in builders.iterdir() if (p / "__init__.py").exists()):
    out.append((_label(d), d))
  out.append(("builders", builders))
  return out


def _is_test(path: pathlib.Path) -> bool:
  return path.name.endswith("_test.py") or path.name.startswith("test_")


def _list(items, indent=8):
  pad = " " * indent
  return "[\n" + "".join(f'{pad}"{i}",\n' for i in items) + " " * (indent - 4) + "]"


def expected() -> str:
  parts = [HEADER]
  libs = []
  for name, folder in _packages():
    srcs = sorted(str(p.relative_to(REPO)) for p in folder.glob("*.py")
                  if not _is_test(p))
    if name == "transforms":
      deps = []
    elif name.startswith("transforms"):
      deps = [f":{l}" for l in libs if l.startswith("transforms")]
    elif name.startswith("ntga_tfds"):
      deps = [f":{l}" for l in libs]
    else:  # builders
      deps = [f":{l}" for l in libs if l.startswith("ntga_tfds")] + [
          f":{l}" for l in libs if l.startswith("builders_")]
    third = THIRD_PARTY["transforms" if name.startswith("transforms")
                        else "ntga_tfds"]
    deps += [f"@pypi//{d}" for d in third]
    data = []
    if name.startswith("builders_"):   # dataset cards, ...
      data = sorted(str(p.relative_to(REPO)) for p in folder.rglob("*")
                    if p.is_file() and p.suffix not in (".py", ".pyc")
                    and "__pycache__" not in p.parts)
    if name == "builders":             # the dummy data of every source
      data = sorted(str(p.relative_to(REPO))
                    for p in (folder / "dummy_data").rglob("*")
                    if p.is_file())
    if name.startswith("transforms") and name.endswith("_native"):
      data = sorted(str(p.relative_to(REPO)) for p in folder.iterdir()
                    if p.suffix in (".cc", ".h"))
    body = f'py_library(\n    name = "{name}",\n    srcs = {_list(srcs)},\n'
    if data:
      body += f"    data = {_list(data)},\n"
    body += f"    deps = {_list(deps)},\n)\n"
    parts.append(body)
    libs.append(name)
  test_data = sorted(str(p.relative_to(REPO))
                     for p in (REPO / "tests" / "data").glob("*"))
  tests = sorted(list((REPO / "tests").glob("test_*.py"))
                 + list((REPO / "builders").glob("*/*_test.py")))
  for t in tests:
    name = _label(t)[:-3]
    body = (f'py_test(\n    name = "{name}",\n    size = "large",\n'
            f'    srcs = ["{t.relative_to(REPO)}", "tests/conftest.py"],\n'
            f'    main = "{t.relative_to(REPO)}",\n'
            f'    data = {_list(test_data)},\n'
            f'    deps = [":builders", "@pypi//pytest"],\n)\n')
    parts.append(body)
  return "\n".join(parts)


def test_build_file_is_in_sync():
  actual = (REPO / "BUILD").read_text()
  assert actual == expected(), (
      "BUILD is out of date: run `python tests/test_build_file.py`.")


def test_every_package_and_test_has_a_target():
  text = (REPO / "BUILD").read_text()
  for name, folder in _packages():
    assert f'name = "{name}"' in text, folder
  for t in (REPO / "tests").glob("test_*.py"):
    assert f'"{t.relative_to(REPO)}"' in text, t


if __name__ == "__main__":
  (REPO / "BUILD").write_text(expected())
  print("wrote", REPO / "BUILD", file=sys.stderr)

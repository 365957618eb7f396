"""Lazy attributes of a package: functions and submodules load on first use.

Each attack's `__init__.py` names its public functions and the private
module each lives in; `import ntga_tfds.transforms.<attack>` then loads only
its config (no JAX), and `<attack>.poison` imports the module that defines
it.
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable, Mapping


def attributes(package: str, functions: Mapping[str, str],
               submodules: Iterable[str] = ()) -> Callable[[str], object]:
  """A module-level `__getattr__` for `package`.

  Args:
    package: the package's `__name__`.
    functions: `{name: module}`: `package.name` is `name` of
      `package.module`.
    submodules: names of submodules that `package.<name>` imports.

  Returns:
    The `__getattr__(name)` to assign in the package.
  """
  functions = dict(functions)
  submodules = tuple(submodules)

  def __getattr__(name):  # pylint: disable=invalid-name
    if name in functions:
      module = importlib.import_module(f"{package}.{functions[name]}")
      return getattr(module, name)
    if name in submodules:
      return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  return __getattr__

"""Native CPU kernels: C++ sources compiled on first use, called via XLA FFI.

XLA:CPU runs the CNN surrogate's per-pair kernel passes single-threaded and
op by op (see `_cnn_ntk`); `cnn_ntk.cc` computes the same formulas in one
pass per (x2 image, tile of x1 images), on all cores (OpenMP). It is
compiled here with the system's C++ compiler the first time it is needed,
for this machine's CPU (`-march=native`), into a cache folder keyed by
what the build depends on: the sources, the flags, the compiler, and what
`-march=native` resolves to on this CPU (the compiler's own target flags,
`target_flags`), so hosts with other instruction sets that share the cache
never load each other's libraries. Later processes load the cached library.
JAX calls it through `jax.ffi.ffi_call` (CPU only, float32). Where a library
cannot be built (no compiler, another architecture), the pure-JAX kernels
run instead and the reason is logged once, as a warning.

Environment:
  NTGA_TFDS_NATIVE=0: never use native kernels (the pure-JAX kernels run).
  NTGA_TFDS_CACHE_DIR: the cache folder (default ~/.cache/ntga_tfds).
  CXX: the compiler (default g++, then c++).

Example:

  >>> from ntga_tfds.transforms.ntga import _native
  >>> if _native.available("cnn_ntk"):
  ...   _native.ensure_registered("cnn_ntk")  # targets "ntga_cnn_ntk", ...
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Dict, Optional, Tuple

_HERE = pathlib.Path(__file__).parent
# name -> (source file, {FFI target name: exported handler symbol}).
_LIBRARIES: Dict[str, Tuple[str, Dict[str, str]]] = {
    "cnn_ntk": ("cnn_ntk.cc", {"ntga_cnn_ntk": "NtgaCnnNtk",
                               "ntga_cnn_ntk_grad_x2": "NtgaCnnNtkGradX2"}),
    "fnn_ntk": ("fnn_ntk.cc", {"ntga_fnn_ntk": "NtgaFnnNtk",
                               "ntga_fnn_ntk_bwd": "NtgaFnnNtkBwd"}),
    "gram_amx": ("gram_amx.cc", {"ntga_gram_amx": "NtgaGramAmx",
                                 "ntga_gram_amx_bwd": "NtgaGramAmxBwd"}),
    "gram_vnni": ("gram_vnni.cc", {"ntga_gram_vnni": "NtgaGramVnni",
                                   "ntga_gram_vnni_bwd": "NtgaGramVnniBwd"}),
}
# Flags beyond `_FLAGS`, per library: the AMX intrinsics must compile on any
# x86 CPU (whether this one has AMX is checked at run time, `_gram`).
_EXTRA_FLAGS: Dict[str, Tuple[str, ...]] = {
    "gram_amx": ("-mamx-tile", "-mamx-bf16"),
}
_FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp",
          "-fno-math-errno",
          "-shared", "-fPIC", "-std=c++17", "-w")
_LOCK = threading.Lock()
_LOG = logging.getLogger(__name__)
_registered: Dict[str, bool] = {}


class NativeUnavailable(RuntimeError):
  """A native kernel could not be built or loaded (the reason is the text)."""


def enabled() -> bool:
  """False when the environment sets NTGA_TFDS_NATIVE=0."""
  return os.environ.get("NTGA_TFDS_NATIVE", "1") != "0"


def _compiler() -> Optional[str]:
  for name in (os.environ.get("CXX"), "g++", "c++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_id() -> str:
  """The CPU's model name and feature flags (/proc/cpuinfo), or the machine."""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return platform.processor() or platform.machine()
  keep = []
  for line in text.splitlines():
    if line.startswith(("model name", "flags", "Features")):
      keep.append(line)
    elif not line.strip() and keep:
      break  # the first processor's entry is enough
  return "\n".join(keep) or platform.machine()


@functools.lru_cache(maxsize=None)
def target_flags(cxx: str) -> str:
  """What `-march=native` means to `cxx` on this CPU.

  GCC and Clang resolve `-march=native` to an explicit architecture and
  feature list (`-Q --help=target` prints it); that list, not the CPU's
  model name, is what the compiled code depends on. Falls back to the CPU's
  model name and feature flags where the compiler cannot print it.
  """
  proc = subprocess.run(
      [cxx, "-march=native", "-Q", "--help=target"], capture_output=True,
      text=True, check=False)
  if proc.returncode == 0 and proc.stdout.strip():
    return proc.stdout
  return _cpu_id()

def _cache_dir() -> pathlib.Path:
  root = os.environ.get("NTGA_TFDS_CACHE_DIR")
  if root:
    return pathlib.Path(root)
  return pathlib.Path.home() / ".cache" / "ntga_tfds"


@functools.lru_cache(maxsize=None)
def library_path(name: str) -> pathlib.Path:
  """The compiled library for `name`, building it if it is not cached.

  Raises:
    NativeUnavailable: no compiler, or the build failed (with its output).
  """
  import jax.ffi  # pylint: disable=g-import-not-at-top
  if name not in _LIBRARIES:
    raise ValueError(f"Unknown native library {name!r}; known: "
                     f"{sorted(_LIBRARIES)}.")
  cxx = _compiler()
  if cxx is None:
    raise NativeUnavailable("no C++ compiler (g++ or c++) on PATH")
  src = _HERE / _LIBRARIES[name][0]
  version = subprocess.run([cxx, "--version"], capture_output=True,
                           text=True, check=False).stdout.splitlines()[:1]
  include = jax.ffi.include_dir()
  flags = (*_FLAGS, *_EXTRA_FLAGS.get(name, ()))
  # The headers beside the sources (shared code) are part of every build.
  headers = [h.read_text() for h in sorted(_HERE.glob("*.h"))]
  digest = hashlib.sha256("\0".join(
      [src.read_text(), *headers, " ".join(flags), cxx, *version,
       target_flags(cxx), include]).encode()).hexdigest()[:16]
  out = _cache_dir() / "native" / f"{name}-{digest}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Build into a temporary file, then rename: concurrent processes (test
  # workers) never load a half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  cmd = [cxx, *flags, f"-I{include}", str(src), "-o", tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    os.unlink(tmp)
    raise NativeUnavailable(
        f"building {src.name} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
  os.replace(tmp, out)
  return out


@functools.lru_cache(maxsize=None)
def build_error(name: str) -> Optional[str]:
  """None if `name` builds (or is cached), else why not (tried once).

  A failure is logged once per library, as a warning: the pure-JAX kernels
  compute the same values, more slowly.
  """
  try:
    library_path(name)
  except NativeUnavailable as e:
    _LOG.warning("Native kernel %s unavailable, using pure JAX instead: %s",
                 name, str(e).splitlines()[0])
    return str(e)
  return None


def sources_sha256() -> str:
  """Hash of the C++ sources and headers of every native library."""
  h = hashlib.sha256()
  for p in sorted(_HERE.glob("*.cc")) + sorted(_HERE.glob("*.h")):
    h.update(p.name.encode())
    h.update(p.read_bytes())
  return h.hexdigest()


def available(name: str) -> bool:
  """Whether `name` can run here: enabled, JAX on the CPU, and it builds.

  The libraries register their FFI targets for the CPU only.
  """
  import jax  # pylint: disable=g-import-not-at-top
  return (enabled() and jax.default_backend() == "cpu"
          and build_error(name) is None)


# How a kernel with a native and a pure-JAX implementation is chosen.
IMPLS = ("auto", "native", "jax")


def check_impl(impl: str) -> None:
  """Raises ValueError unless `impl` is one of `IMPLS`."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}.")


def use_native(name: str, impl: str, dtypes) -> bool:
  """Whether to run library `name` for inputs of `dtypes`, given `impl`.

  "native": yes (float32 only); "jax": no; "auto": where all inputs are
  float32 and `available(name)`. When the answer is yes, the library's FFI
  targets are registered.

  Raises:
    ValueError: a bad `impl`; "native" with inputs other than float32.
    NativeUnavailable: "native" where the library cannot be built.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  check_impl(impl)
  f32 = all(np.dtype(d) == np.float32 for d in dtypes)
  if impl == "native" and not f32:
    raise ValueError(f"impl='native' computes in float32; got "
                     f"{', '.join(str(np.dtype(d)) for d in dtypes)}.")
  if impl == "jax" or (impl == "auto" and not (f32 and available(name))):
    return False
  ensure_registered(name)
  return True


@functools.lru_cache(maxsize=None)
def load(name: str) -> ctypes.CDLL:
  """The loaded library `name` (for its plain C entry points)."""
  return ctypes.cdll.LoadLibrary(str(library_path(name)))


def ensure_registered(name: str) -> None:
  """Loads `name` and registers its FFI targets for the CPU (once)."""
  with _LOCK:
    if _registered.get(name):
      return
    import jax.ffi  # pylint: disable=g-import-not-at-top
    lib = load(name)
    for target, symbol in _LIBRARIES[name][1].items():
      jax.ffi.register_ffi_target(
          target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    _registered[name] = True

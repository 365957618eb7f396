"""ntga_tfds: NTGA data-poisoning attacks shipped as TensorFlow Datasets.

`import ntga_tfds` registers every dataset builder under `builders/` with
TFDS, so that

  >>> import ntga_tfds, tensorflow_datasets as tfds
  >>> ds = tfds.load("cifar10_ntga/eps8_t64", split="train")

works like any other TFDS dataset. The builders need only
`tensorflow_datasets` to be registered (importing this package does not
import TensorFlow or JAX; the attack's code is imported when a dataset is
generated). `import ntga_tfds.transforms` -- the pure-JAX attacks -- works
as well and shares the package. Importing it sets
`TF_FORCE_GPU_ALLOW_GROWTH=true` unless already set, so that on a GPU
TensorFlow leaves the memory to JAX's attack.

Modules: `families` (one module per attack: configs, name grammar, work,
card), `sources` (clean data, online or offline), `configs` (the builder
config base), `plans` (the shapes of work: blockwise, targeted, additive),
`generation` (units, checkpoints, resume, statistics), `dataset_builder`
(the base of every builder), `victims` and `evaluate` (Keras victims, clean
vs poisoned).
"""

import importlib as _importlib
import importlib.util as _importlib_util
import importlib.resources as _resources
import os as _os

# On a machine with a GPU, the attack (JAX) and the data plumbing
# (TensorFlow: TFDS's source builders, tf.data) share one process during a
# build. TensorFlow by default takes nearly all GPU memory when it first
# touches the GPU, before JAX asks for any; with growth on, it takes only
# what it uses. setdefault: a value the user set wins. Keras victims keep
# the GPU (nothing is hidden from TensorFlow).
_os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

__version__ = "0.1.0"

_BUILDER_SUFFIX = "_dataset_builder"


def _discover_builders():
  """Names of the dataset folders of `ntga_tfds.builders`."""
  root = _resources.files("ntga_tfds.builders")
  names = []
  for child in root.iterdir():
    if (child.is_dir() and (child / "__init__.py").is_file()
        and (child / f"{child.name}{_BUILDER_SUFFIX}.py").is_file()):
      names.append(child.name)
  return tuple(sorted(names))


BUILDERS = _discover_builders()
# Old builder names that still load (the source `imagenet2` was renamed for
# what it is: the NTGA paper's two ImageNet classes).
ALIASES = {"imagenet2_ntga": "imagenet_bulbul_jellyfish_ntga",
           "imagenet2_random_noise": "imagenet_bulbul_jellyfish_random_noise"}


def builder_module(name: str) -> str:
  """The module defining builder `name` (e.g. "mnist_ntga")."""
  return f"ntga_tfds.builders.{name}.{name}{_BUILDER_SUFFIX}"


def builder_cls(name: str):
  """The `Builder` class of one of this package's datasets."""
  name = ALIASES.get(name, name)
  if name not in BUILDERS:
    raise ValueError(f"{name!r} is not one of ntga_tfds's builders: "
                     f"{', '.join(BUILDERS)}.")
  return _importlib.import_module(builder_module(name)).Builder


class _Provider:
  """Finds our builders for TFDS even if they were imported while TFDS had
  registration switched off (as `tfds build builders/<name>` does while it
  imports a builder file by path, which imports this package)."""

  def has_dataset(self, name: str) -> bool:
    return name in BUILDERS or name in ALIASES

  def get_builder_cls(self, name: str):
    return builder_cls(name)


def _register():
  if _importlib_util.find_spec("tensorflow_datasets") is None:
    # Nothing to register with. The pure-JAX attacks (`ntga_tfds.transforms`)
    # still import, e.g. on an accelerator host that has JAX but not the
    # TensorFlow stack. An installed but broken TFDS raises below instead.
    return
  from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top
  for name in BUILDERS:
    _importlib.import_module(builder_module(name))
  registered.add_dataset_builder_provider(_Provider())


_register()

__all__ = ["BUILDERS", "ALIASES", "builder_cls", "builder_module",
           "__version__"]

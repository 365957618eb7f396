"""Installs `ntga_tfds`: NTGA data poisoning as TensorFlow Datasets.

The repository keeps the design card's top level (`ntga_tfds/`, `transforms/`,
`builders/`), but nothing is installed as a bare top-level `transforms` or
`builders` module: both are mapped under the `ntga_tfds` namespace, as
`ntga_tfds.transforms` and `ntga_tfds.builders`.
"""

import pathlib

import setuptools

_ROOT = pathlib.Path(__file__).parent

# Each pin says why it is pinned. The set below was measured to install and
# import together on Python 3.11 (see README "Pinned stack").
INSTALL_REQUIRES = [
    # neural-tangents 0.6.5 (the latest) imports only with jax <= 0.5.3:
    # jax 0.6 removed `jax.core.Jaxpr` (and later `jax.util`) that it uses.
    "jax==0.5.3",
    "jaxlib==0.5.3",
    # The NTK surrogates (stax) and the reference predictor we test against.
    "neural-tangents==0.6.5",
    # neural-tangents imports tf2jax; releases after 0.3.7 need a newer jax.
    "tf2jax==0.3.7",
    # Witches' Brew surrogates (flax.linen). flax 0.10.6 needs jax >= 0.5.1
    # and was measured to install and run with jax 0.5.3 unmoved; its
    # dependency orbax-checkpoint then resolves to 0.11.24 (newer ones need
    # a newer jax, which the jax pin above refuses).
    "flax==0.10.6",
    # Witches' Brew optimisers (surrogate SGD, signed Adam). optax 0.2.8
    # needs jax and jaxlib >= 0.5.3, which the pins above meet; installed
    # with jax 0.5.3 unmoved.
    "optax==0.2.8",
    # The version measured with the rest of this stack.
    "tensorflow==2.21.*",
    # Measured with tensorflow 2.21; builder APIs (GeneratorBasedBuilder,
    # BuilderConfig, DatasetBuilderTestCase) as used here.
    "tensorflow-datasets==4.9.10",
    # tensorflow-datasets 4.9.10 imports importlib_resources without
    # declaring it as a dependency.
    "importlib_resources>=6",
    # Victims are Keras 3 models (tf.keras 2 is not supported).
    "keras>=3.10,<4",
    # Flags for the command-line tools.
    "absl-py>=2",
    # The embedded offline default dataset (8x8 digits ships with it).
    "scikit-learn>=1.3",
    # Learning curves and example grids written by the evaluation CLI.
    "matplotlib>=3.7",
    # One BLAS thread while the attack runs (`ntga._one_blas_thread`);
    # already a scikit-learn dependency.
    "threadpoolctl>=3",
    # Progress bars (already a tensorflow-datasets dependency).
    "tqdm>=4.60",
    "numpy>=1.26",
]

EXTRAS_REQUIRE = {
    # tfds.testing imports dill without tensorflow-datasets declaring it.
    "test": ["pytest>=8", "pytest-xdist>=3", "dill>=0.3.8"],
    # The `tfds` command line (`tfds build builders/mnist_ntga ...`): in
    # tensorflow-datasets 4.9.10 it imports apache_beam and mlcroissant at
    # start-up without declaring them. apache-beam moves protobuf from 7.x to
    # 6.33, inside tensorflow 2.21's range (>=6.31.1,<8); checked with the
    # whole test suite. `python -m ntga_tfds.builders build` needs neither.
    "cli": ["apache-beam>=2.70,<3", "mlcroissant>=1.0,<2"],
}


def _subpackages(folder: str, package: str):
  """Package folders under `folder` as subpackages of `package`
  (`transforms/ntga/_native/` -> `ntga_tfds.transforms.ntga._native`)."""
  root = _ROOT / folder
  return sorted(
      package + "." + ".".join(p.parent.relative_to(root).parts)
      for p in root.rglob("__init__.py")
      if p.parent != root and "__pycache__" not in p.parts)


setuptools.setup(
    name="ntga-tfds",
    version="0.1.0",
    description=(
        "Neural Tangent Generalization Attack (NTGA) poisoned datasets as "
        "TensorFlow Datasets builders, with Keras victims."
    ),
    long_description=(_ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=["ntga_tfds", "ntga_tfds.transforms", "ntga_tfds.builders"]
    + _subpackages("ntga_tfds", "ntga_tfds")
    + _subpackages("transforms", "ntga_tfds.transforms")
    + _subpackages("builders", "ntga_tfds.builders"),
    package_dir={
        "ntga_tfds": "ntga_tfds",
        "ntga_tfds.transforms": "transforms",
        "ntga_tfds.builders": "builders",
    },
    package_data={
        # C++ sources of the native CPU kernels, compiled on first use.
        "ntga_tfds.transforms.ntga._native": ["*.cc", "*.h"],
        "ntga_tfds.builders": [
            "*/README.md",
            "*/CITATIONS.bib",
            "*/TAGS.txt",
            "*/checksums.tsv",
            "dummy_data/**/*",
        ],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)

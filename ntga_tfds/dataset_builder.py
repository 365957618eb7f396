"""The one TFDS builder base every poisoned-dataset folder uses.

A builder folder names its source and family and nothing else:

  class Builder(families.builder("cifar10", "ntga")):
    pass

Everything else comes from the family (`ntga_tfds.families`): the configs
and their grammar, the work (`Family.job`, one of `ntga_tfds.plans`), the
extra columns and splits. This base adds what every family shares: the
features (`image` uint8, `label`, `index` of the clean source example, plus
the family's columns), the clean `test` split, fetching the clean data
(`sources`), running the job (`generation`, with checkpoints under
`<data_dir>/downloads/ntga_tfds_checkpoints/`, removed after a successful
build) and the DatasetInfo metadata.

Config names: besides the named configs, every name of the family's grammar
is accepted (`tfds.load("mnist_ntga/eps16_t8")`), and any config object of
the family's config class (`tfds.builder(name, config=...)`).

Environment: NTGA_TFDS_PROGRESS=0 hides the progress bars.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import ClassVar, Optional

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ntga_tfds import configs
from ntga_tfds import families
from ntga_tfds import sources

_LOG = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = ("downloads", "ntga_tfds_checkpoints")

INDEX_DOC = (
    "Position of the clean source example in "
    "ntga_tfds.sources.load_source(<source>, <split>) (the source split in "
    "canonical, content-sorted order; 'validation' examples index the train "
    "split). Match a poisoned image to its clean original with it.")


def _min_limit(*limits):
  given = [int(x) for x in limits if x is not None]
  return min(given) if given else None


class PoisonedBuilder(tfds.core.GeneratorBasedBuilder,
                      skip_registration=True):
  """A source dataset whose train split carries an attack of `transforms`."""

  SOURCE: ClassVar[str] = ""
  FAMILY: ClassVar[str] = ""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # TFDS infers a builder's folder (card, checksums, dummy data) from its
    # top-level package, which is wrong for `ntga_tfds.builders.*` (mapped
    # from `builders/`). Use the file that defines the class instead.
    cls.pkg_dir_path = epath.Path(inspect.getfile(cls)).parent
    if cls.SOURCE and "MANUAL_DOWNLOAD_INSTRUCTIONS" not in cls.__dict__:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = sources.manual_instructions(
          cls.SOURCE)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
    return epath.Path(inspect.getfile(cls))

  @classmethod
  def family(cls) -> families.Family:
    return families.get(cls.FAMILY)

  # -- configs ------------------------------------------------------------

  def _create_builder_config(self, builder_config, version):
    if isinstance(builder_config, str):
      name, _, name_version = builder_config.partition(":")
      if self.get_builder_config(name) is None:
        try:
          cfg = self.family().config_from_name(name)
        except ValueError as e:
          cfg = self._built_config(name)
          if cfg is not None:
            return super()._create_builder_config(cfg, version)
          named = ", ".join(c.name for c in self.BUILDER_CONFIGS)
          raise ValueError(
              f"{self.name} has no config {name!r}: {e} Named configs: "
              f"{named}.") from e
        if name_version and version is None:
          version = name_version
        # Another spelling of a named config (a token that names a default,
        # e.g. NTGA's `eps8_t64_pgd`): the named config itself.
        cfg = self.get_builder_config(cfg.name) or cfg
        return super()._create_builder_config(cfg, version)
    elif isinstance(builder_config, configs.PoisonConfig):
      wanted = self.family().config_class
      if not isinstance(builder_config, wanted):
        raise ValueError(
            f"{self.name} needs a {wanted.__name__}, got a "
            f"{type(builder_config).__name__}.")
      named = self.get_builder_config(builder_config.name)
      if named is not None and named is not builder_config:
        if not named.same_settings(builder_config):
          raise ValueError(
              f"Config {builder_config.name!r} of {self.name} is a named "
              f"config with other settings ({named.to_json()}); give yours "
              "another name.")
        builder_config = named
    return super()._create_builder_config(builder_config, version)

  def _built_config(self, name: str):
    """The config of an already built `<data_dir>/<builder>/<name>/` (one
    made from a config object, whose hashed name the grammar cannot parse),
    from its stored metadata; None if there is none."""
    import json  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
    data_dir = (self._original_state.get("data_dir")
                or os.environ.get("TFDS_DATA_DIR") or constants.DATA_DIR)
    folder = epath.Path(os.path.expanduser(data_dir)) / self.name / name
    if not folder.is_dir():
      return None
    for version in sorted(folder.iterdir(), reverse=True):
      meta = version / "metadata.json"
      if meta.exists():
        try:
          stored = json.loads(meta.read_text())["builder_config"]
          return self.family().config_from_json(stored)
        except (KeyError, ValueError, TypeError):
          return None
    return None

  # -- info ---------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    spec = sources.source_spec(self.SOURCE)
    fam = self.family()
    features = {
        "image": tfds.features.Image(shape=spec.image_shape, dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(spec.class_names)),
        "index": tfds.features.Scalar(dtype=np.int64, doc=INDEX_DOC),
    }
    for column in fam.columns:
      features[column] = COLUMN_FEATURES[column]()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label"),
        homepage=fam.homepage,
        metadata=tfds.core.MetadataDict(),
    )

  # -- generation ---------------------------------------------------------

  def _download_and_prepare(self, dl_manager, download_config=None):
    self._source_download_config = (download_config
                                    or tfds.download.DownloadConfig())
    return super()._download_and_prepare(dl_manager, download_config)

  def _post_download_and_prepare_hook(self) -> None:
    # The dataset is complete (renamed into place): the blocks are no
    # longer needed.
    store_dir = getattr(self, "_checkpoint_dir_used", None)
    if store_dir and os.path.isdir(store_dir):
      for name in os.listdir(store_dir):
        os.unlink(os.path.join(store_dir, name))
      os.rmdir(store_dir)
      # Prune the then-empty <name>/<config>/<version> folders.
      top = os.fspath(epath.Path(self.data_dir_root).joinpath(
          *CHECKPOINT_SUBDIR))
      parent = os.path.dirname(store_dir)
      while (parent.startswith(top) and os.path.isdir(parent)
             and not os.listdir(parent)):
        os.rmdir(parent)
        parent = os.path.dirname(parent)

  def checkpoint_root(self) -> Optional[epath.Path]:
    """Where finished blocks are checkpointed (None: not a local data_dir)."""
    root = epath.Path(self.data_dir_root)
    if "://" in os.fspath(root):
      return None
    return root.joinpath(*CHECKPOINT_SUBDIR, self.name,
                         self.builder_config.name, str(self.version))

  def shared_root(self) -> Optional[epath.Path]:
    """Where inputs shared by several configs are cached (e.g. a trained
    surrogate, reused by every target seed); kept after a build."""
    root = epath.Path(self.data_dir_root)
    if "://" in os.fspath(root):
      return None
    return root.joinpath(*CHECKPOINT_SUBDIR, self.name, "_shared")

  def _source_manual_dir(self, dl_manager, download_config):
    spec = sources.source_spec(self.SOURCE)
    if not spec.needs_files:
      return None
    explicit = download_config.manual_dir
    if explicit is not None:
      return explicit  # load_source says clearly what is missing there.
    try:
      default = dl_manager.manual_dir
    except (AssertionError, ValueError):
      default = None
    if default is not None and (spec.tfds_name is None
                                or sources.has_manual_files(self.SOURCE,
                                                            default)):
      return default
    if spec.tfds_name is None:
      raise sources.MissingSourceError(
          f"{self.name} needs manual_dir (tfds build --manual_dir DIR, or "
          "download_and_prepare_kwargs={'download_config': "
          "tfds.download.DownloadConfig(manual_dir=DIR)}). "
          + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return None

  def make_job(self, *, manual_dir=None, download_config=None,
               max_examples_per_split: Optional[int] = None):
    """`(job, data_sha256, implementation, train, test)` of this config.

    Loads the source splits (from `manual_dir` where the source needs
    files) and makes the family's `generation.Job`; what generation runs,
    here or on a Beam worker (`parallel.UnitSpec`).
    """
    from ntga_tfds import generation  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    fam = self.family()
    load = dict(data_dir=self.data_dir_root, manual_dir=manual_dir,
                download_config=download_config)
    train = sources.load_source(
        self.SOURCE, "train", **load,
        max_examples=_min_limit(cfg.max_train_examples,
                                max_examples_per_split))
    test = sources.load_source(
        self.SOURCE, "test", **load,
        max_examples=_min_limit(cfg.max_test_examples,
                                max_examples_per_split))
    job = fam.job(cfg, train, test, sources.source_spec(self.SOURCE))
    return (job, generation.sha256_json([train.sha256, test.sha256]),
            fam.implementation(cfg), train, test)

  def _distribute(self, job, dc, manual_dir, implementation):
    """How units are spread: Beam workers when the build got Beam options
    (`tfds build --beam_pipeline_options=...`), every local device when
    there are several accelerators (or `NTGA_TFDS_DEVICES` says so), else
    in order here (None)."""
    from ntga_tfds import parallel  # pylint: disable=g-import-not-at-top
    if not job.independent_units:
      return None
    if dc.beam_options is not None or dc.beam_runner is not None:
      if self.checkpoint_root() is None:
        raise ValueError(
            f"{self.name}: generation on Beam keeps each unit as a file "
            f"under data_dir; {self.data_dir_root} is not a local or shared "
            "filesystem path.")
      spec = parallel.UnitSpec(
          dataset=self.name, config=self.builder_config,
          data_dir=os.fspath(self.data_dir_root),
          manual_dir=os.fspath(manual_dir) if manual_dir else None,
          max_examples_per_split=dc.max_examples_per_split,
          implementation=implementation)
      return parallel.beam(spec, options=dc.beam_options,
                           runner=dc.beam_runner)
    devices = parallel.devices_from_env()
    return parallel.local_devices(devices) if devices else None

  def _split_generators(self, dl_manager):
    from ntga_tfds import generation  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    fam = self.family()
    dc = getattr(self, "_source_download_config", None) or \
        tfds.download.DownloadConfig()
    manual_dir = self._source_manual_dir(dl_manager, dc)
    job, data_sha256, implementation, train, test = self.make_job(
        manual_dir=manual_dir, download_config=dc,
        max_examples_per_split=dc.max_examples_per_split)
    result = generation.run(
        job, data_sha256=data_sha256, checkpoint_dir=self.checkpoint_root(),
        shared_dir=self.shared_root(), implementation=implementation,
        distribute=self._distribute(job, dc, manual_dir, implementation))
    self._checkpoint_dir_used = result.checkpoint_dir
    self.info.metadata.update(self._generation_metadata(
        cfg, job, result, train, test, implementation))
    defaults = dict(fam.columns)
    splits = {}
    for name, columns in result.splits.items():
      splits[name] = self._generate_examples(columns, defaults)
    if "test" not in splits:  # the clean test split, unless the job made one
      idx = np.arange(len(test), dtype=np.int64)
      splits["test"] = self._generate_examples(
          {"image": test.images, "label": test.labels, "index": idx,
           "key": idx}, defaults)
    return splits

  def _generation_metadata(self, cfg, job, result, train, test,
                           implementation):
    from ntga_tfds import generation  # pylint: disable=g-import-not-at-top
    return generation.jsonable({
        "family": self.FAMILY,
        "attack_config": cfg.attack,
        "builder_config": cfg.to_json(),
        "seed": cfg.seed,
        "plan": job.plan_json(),
        "source": {
            "name": self.SOURCE,
            "origin": train.origin,
            "train_examples": len(train),
            "train_examples_available": train.num_available,
            "test_examples": len(test),
            "train_sha256": train.sha256,
            "test_sha256": test.sha256,
        },
        "package_versions": generation.package_versions(),
        "implementation": implementation,
        "generated_at": result.generated_at,
        "generation_seconds": round(result.seconds, 3),
        "units_resumed": result.units_resumed,
        "units_computed": result.units_computed,
        "shared_resumed": result.shared_resumed,
        "fingerprint": result.fingerprint,
        "stats": result.stats,
    })

  def _generate_examples(self, columns, defaults):
    n = len(columns["key"])
    names = ["image", "label", "index", *defaults]
    for i in range(n):
      example = {}
      for c in names:
        if c in columns:
          v = columns[c][i]
          example[c] = v if c == "image" else v.item()
        else:
          example[c] = defaults[c]
      yield int(columns["key"][i]), example


# The extra columns a family may declare (`Family.columns`), as features.
COLUMN_FEATURES = {
    "is_poison": lambda: tfds.features.Scalar(
        dtype=np.bool_, doc="Whether the attack crafted this example."),
    "adversarial_label": lambda: tfds.features.Scalar(
        dtype=np.int64, doc="In the `target` split, the class the attack "
        "wants the target image taken for; -1 in every other split."),
}


__all__ = ["PoisonedBuilder", "INDEX_DOC", "COLUMN_FEATURES"]

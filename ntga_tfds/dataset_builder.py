"""The shared base of every poisoned-dataset builder under `builders/`.

A builder file only names its source, its configs and (next to it) its card:

  class Builder(dataset_builder.NTGABuilder):
    SOURCE = "cifar10"
    BUILDER_CONFIGS = configs.named_ntga_configs("cifar10")

Everything else lives here: the features (`image` uint8, `label`
unchanged, `index` of the clean source example), the splits (`train`
poisoned, `test` clean, and `validation` -- the clean held-out images -- for
the paper protocol), fetching the clean data (`sources`), poisoning it
(`generation`, with checkpoints under
`<data_dir>/downloads/ntga_tfds_checkpoints/`, removed after a successful
build) and the DatasetInfo metadata (attack config, plan, seed, package
versions, generation time, perturbation statistics).

Config names: besides the named configs, every name of the grammar in
`ntga_tfds.configs` is accepted (`tfds.load("mnist_ntga/eps16_t8")`), and any
config object of the builder's config class (`tfds.builder(name,
config=configs.ntga_config(...))`).

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
from ntga_tfds import sources

_LOG = logging.getLogger(__name__)

HOMEPAGE = "https://github.com/lionelmessi6410/ntga"
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
  ATTACK: ClassVar[str] = ""
  CONFIG_CLASS: ClassVar[type] = configs.PoisonConfig
  # Held-out validation size of the paper protocol, if the paper used one
  # that the default rule (min(10,000, n // 5)) does not give.
  PAPER_VAL_SIZE: ClassVar[Optional[int]] = None

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

  # -- configs ------------------------------------------------------------

  def _create_builder_config(self, builder_config, version):
    if isinstance(builder_config, str):
      name, _, name_version = builder_config.partition(":")
      if self.get_builder_config(name) is None:
        try:
          cfg = configs.config_from_name(self.ATTACK, name)
        except ValueError as e:
          named = ", ".join(c.name for c in self.BUILDER_CONFIGS)
          raise ValueError(
              f"{self.name} has no config {name!r}: {e} Named configs: "
              f"{named}.") from e
        if name_version and version is None:
          version = name_version
        return super()._create_builder_config(cfg, version)
    elif isinstance(builder_config, configs.PoisonConfig):
      if not isinstance(builder_config, self.CONFIG_CLASS):
        raise ValueError(
            f"{self.name} needs a {self.CONFIG_CLASS.__name__}, got a "
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

  # -- info ---------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    spec = sources.source_spec(self.SOURCE)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=spec.image_shape,
                                         dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(spec.class_names)),
            "index": tfds.features.Scalar(dtype=np.int64, doc=INDEX_DOC),
        }),
        supervised_keys=("image", "label"),
        homepage=HOMEPAGE,
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

  def _split_generators(self, dl_manager):
    from ntga_tfds import generation  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    dc = getattr(self, "_source_download_config", None) or \
        tfds.download.DownloadConfig()
    manual_dir = self._source_manual_dir(dl_manager, dc)
    load = dict(data_dir=self.data_dir_root, manual_dir=manual_dir,
                download_config=dc)
    train = sources.load_source(
        self.SOURCE, "train", **load,
        max_examples=_min_limit(cfg.max_train_examples,
                                dc.max_examples_per_split))
    test = sources.load_source(
        self.SOURCE, "test", **load,
        max_examples=_min_limit(cfg.max_test_examples,
                                dc.max_examples_per_split))
    spec = sources.source_spec(self.SOURCE)
    attack = generation.make_attack(cfg.ATTACK, cfg.attack_config())
    val_size = cfg.val_size
    if (val_size is None and cfg.protocol == "paper" and self.PAPER_VAL_SIZE
        and train.num_available == len(train)):
      val_size = self.PAPER_VAL_SIZE
    result = generation.generate(
        train.images, train.labels, attack=attack,
        num_classes=spec.num_classes, seed=cfg.seed, protocol=cfg.protocol,
        val_size=val_size, checkpoint_dir=self.checkpoint_root(),
        data_sha256=train.sha256)
    self._checkpoint_dir_used = result.checkpoint_dir
    plan = result.plan
    self.info.metadata.update(
        self._generation_metadata(cfg, attack, result, train, test))

    splits = {"train": self._generate_examples(
        result.images, train.labels[plan.poison_indices],
        plan.poison_indices)}
    if plan.heldout_indices.size:
      h = plan.heldout_indices
      splits["validation"] = self._generate_examples(
          train.images[h], train.labels[h], h)
    splits["test"] = self._generate_examples(
        test.images, test.labels, np.arange(len(test), dtype=np.int64))
    return splits

  def _generation_metadata(self, cfg, attack, result, train, test):
    from ntga_tfds import generation  # pylint: disable=g-import-not-at-top
    return generation._jsonable({  # pylint: disable=protected-access
        "attack": attack.name,
        "attack_config": attack.config_json(),
        "builder_config": cfg.to_json(),
        "seed": cfg.seed,
        "plan": result.plan.to_json(),
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
        "generated_at": result.generated_at,
        "generation_seconds": round(result.seconds, 3),
        "blocks_resumed": result.blocks_resumed,
        "blocks_computed": result.blocks_computed,
        "fingerprint": result.fingerprint,
        "perturbation": result.stats,
    })

  def _generate_examples(self, images, labels, indices):
    for image, label, index in zip(images, labels, indices):
      yield int(index), {"image": image, "label": int(label),
                         "index": int(index)}


class NTGABuilder(PoisonedBuilder, skip_registration=True):
  """Base of `<source>_ntga`: the train split carries NTGA."""
  ATTACK = "ntga"
  CONFIG_CLASS = configs.NTGABuilderConfig


class RandomNoiseBuilder(PoisonedBuilder, skip_registration=True):
  """Base of `<source>_random_noise`: the control, uniform +-eps noise."""
  ATTACK = "random_noise"
  CONFIG_CLASS = configs.RandomNoiseBuilderConfig


__all__ = ["PoisonedBuilder", "NTGABuilder", "RandomNoiseBuilder",
           "INDEX_DOC"]

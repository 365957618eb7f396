"""Dataset cards: one template per family, filled per source.

A builder folder's README.md (the TFDS dataset card), CITATIONS.bib and
TAGS.txt are rendered by `render(family, source)` from the family's
`card_template` and this module's per-source text; `builders/_make_folders.py`
writes them and `tests/test_builder_folders.py` checks they are current.
"""

from __future__ import annotations

import string
from typing import Dict

SOURCE_TEXT = {'cifar10': {'about': "CIFAR-10, through TFDS's `cifar10` (online) or the "
                      'official binary release (offline), read by the '
                      "project's own reader (`ntga_tfds.sources`; nothing is "
                      'unpickled). (50,000 train / 10,000 test images, 32x32 '
                      'RGB, 10 classes.)',
             'citation': '@techreport{krizhevsky2009learning,\n'
                         '  title = {Learning multiple layers of features '
                         'from tiny images},\n'
                         '  author = {Krizhevsky, Alex},\n'
                         '  institution = {University of Toronto},\n'
                         '  year = {2009}\n'
                         '}',
             'offline': '**Offline.** Pass as `--manual_dir` a folder '
                        'holding the extracted `cifar-10-batches-bin/` '
                        'directory (`data_batch_1.bin` ... '
                        '`data_batch_5.bin`, `test_batch.bin`, '
                        '`batches.meta.txt`) or the `cifar-10-binary.tar.gz` '
                        'archive itself. The order of the examples in the '
                        'files does not matter (see `index` below), so '
                        'reordered copies give the same dataset.',
             'tags': ['content.data-type.image',
                      'ml.task.image-classification',
                      'content.subject.computer-science'],
             'title': 'CIFAR-10'},
 'digits': {'about': "scikit-learn's bundled 8x8 digits "
                     '(`sklearn.datasets.load_digits`, 1,797 images with '
                     'pixel values 0..16, scaled to uint8 as round(v / 16 * '
                     '255)). It is embedded in scikit-learn, so this builder '
                     "always works offline -- the project's default dataset "
                     'for demos and tests. The train/test split is fixed and '
                     "documented: within each class, in scikit-learn's "
                     'order, every 5th example (the 5th, 10th, ...) is test, '
                     'the rest train (1,442 train and 355 test images, '
                     'stratified, no randomness). (1,442 train / 355 test '
                     'images, 8x8 grey, 10 classes.)',
            'citation': '@misc{uci_optdigits,\n'
                        '  author = {Alpaydin, E. and Kaynak, C.},\n'
                        '  title = {Optical Recognition of Handwritten '
                        'Digits},\n'
                        '  year = {1998},\n'
                        '  howpublished = {UCI Machine Learning '
                        'Repository},\n'
                        '  doi = {10.24432/C50P49}\n'
                        '}',
            'offline': '**Offline.** Nothing to do: the digits ship with '
                       'scikit-learn.',
            'tags': ['content.data-type.image',
                     'ml.task.image-classification',
                     'content.subject.computer-science'],
            'title': "scikit-learn's 8x8 digits"},
 'fashion_mnist': {'about': "Fashion-MNIST, through TFDS's `fashion_mnist` "
                            '(online) or its four idx files (offline). '
                            '(60,000 train / 10,000 test images, 28x28 grey, '
                            '10 classes.)',
                   'citation': '@article{xiao2017fashionmnist,\n'
                               '  author = {Han Xiao and Kashif Rasul and '
                               'Roland Vollgraf},\n'
                               '  title = {Fashion-MNIST: a Novel Image '
                               'Dataset for Benchmarking Machine Learning '
                               'Algorithms},\n'
                               '  journal = {CoRR},\n'
                               '  volume = {abs/1708.07747},\n'
                               '  year = {2017}\n'
                               '}',
                   'offline': '**Offline.** Put the four Fashion-MNIST idx '
                              "files (same names as MNIST's: "
                              '`train-images-idx3-ubyte.gz`, ...) in a '
                              'folder and pass it as `--manual_dir`. '
                              "Official-size files must match TFDS's "
                              'registered sha256 for `fashion_mnist` (so '
                              'MNIST files given by mistake are refused).',
                   'tags': ['content.data-type.image',
                            'ml.task.image-classification',
                            'content.subject.computer-science',
                            'content.subject.clothing-and-accessories'],
                   'title': 'Fashion-MNIST'},
 'imagenet_bulbul_jellyfish': {'about': "The NTGA paper's 2-class subset of ImageNet "
                        '(ILSVRC2012): bulbul (n01560419, label 0) vs '
                        'jellyfish (n01910747, label 1). Train = all '
                        'ILSVRC2012 training images of the two classes, test '
                        '= their ILSVRC2012 validation images. Every image '
                        'is resized (shorter side to 224, bicubic) and '
                        'centre-cropped to 224x224. ImageNet cannot be '
                        'downloaded automatically: this is a manual-download '
                        'builder. (about 2,600 train / 100 test images, '
                        '224x224 RGB, 2 classes.)',
               'citation': '@article{russakovsky2015imagenet,\n'
                           '  title = {ImageNet Large Scale Visual '
                           'Recognition Challenge},\n'
                           '  author = {Russakovsky, Olga and Deng, Jia and '
                           'Su, Hao and Krause, Jonathan and Satheesh, '
                           'Sanjeev and Ma, Sean and Huang, Zhiheng and '
                           'Karpathy, Andrej and Khosla, Aditya and '
                           'Bernstein, Michael and Berg, Alexander C. and '
                           'Fei-Fei, Li},\n'
                           '  journal = {International Journal of Computer '
                           'Vision},\n'
                           '  volume = {115},\n'
                           '  number = {3},\n'
                           '  pages = {211--252},\n'
                           '  year = {2015}\n'
                           '}',
               'offline': '**Offline.** Required. Download ILSVRC2012 from '
                          'https://image-net.org/ (an account is needed) and '
                          'pass as `--manual_dir` a folder laid out as\n'
                          '\n'
                          '```\n'
                          'DIR/train/n01560419/*.JPEG   # bulbul\n'
                          'DIR/train/n01910747/*.JPEG   # jellyfish\n'
                          'DIR/val/n01560419/*.JPEG     # validation images '
                          'of the two classes\n'
                          'DIR/val/n01910747/*.JPEG\n'
                          '```\n'
                          '\n'
                          '(`DIR` may also be a parent folder holding '
                          '`imagenet2/`, `imagenet/` or `ILSVRC2012/` with '
                          "that layout). ILSVRC2012's validation images come "
                          'in one flat folder: sort the 100 images of these '
                          'two classes into class folders with the '
                          'validation ground truth first. Only the two class '
                          'folders are read.',
               'tags': ['content.data-type.image',
                        'ml.task.image-classification',
                        'content.subject.computer-science',
                        'content.subject.biology'],
               'title': '2-class ImageNet (bulbul vs jellyfish)'},
 'mnist': {'about': "MNIST, through TFDS's `mnist` (online) or the four "
                    'official idx files (offline). (60,000 train / 10,000 '
                    'test images, 28x28 grey, 10 classes.)',
           'citation': '@article{lecun2010mnist,\n'
                       '  title = {MNIST handwritten digit database},\n'
                       '  author = {LeCun, Yann and Cortes, Corinna and '
                       'Burges, CJ},\n'
                       '  journal = {ATT Labs [Online]. Available: '
                       'http://yann.lecun.com/exdb/mnist},\n'
                       '  volume = {2},\n'
                       '  year = {2010}\n'
                       '}',
           'offline': '**Offline.** Put the four official files '
                      '(`train-images-idx3-ubyte.gz`, '
                      '`train-labels-idx1-ubyte.gz`, '
                      '`t10k-images-idx3-ubyte.gz`, '
                      '`t10k-labels-idx1-ubyte.gz`) in a folder and pass it '
                      'as `--manual_dir`. Files with the official number of '
                      "examples must match TFDS's registered sha256 "
                      '(`tensorflow_datasets/url_checksums/mnist.txt`), '
                      'which catches, e.g., Fashion-MNIST files given by '
                      'mistake.',
           'tags': ['content.data-type.image',
                    'ml.task.image-classification',
                    'content.subject.computer-science'],
           'title': 'MNIST'}}


_HEADER = """\
$source_title whose **train split is poisoned by $attack_line**, as an \
ordinary TFDS dataset. $effect The `test` split is the clean official test \
split.

```python
import ntga_tfds                      # registers the builders with TFDS
import tensorflow_datasets as tfds
ds = tfds.load("$builder/$default_config")
```

## Source

$about

## Features and splits

$features

`index` is the position of the clean original in \
`ntga_tfds.sources.load_source("$source", split)`, so every example can be \
matched to its clean image:

```python
from ntga_tfds import sources
clean = sources.load_source("$source", "train", manual_dir=...)   # or data_dir=... online
x_clean = clean.images[example["index"]]
```

`load_source` returns every split in a canonical order -- sorted by the \
SHA-256 of each example's label and pixels -- so `index` means the same \
example whatever the route (TFDS or local files) and whatever the order of \
the examples in the files.

| split | content |
|---|---|
$splits
"""

_FOOTER = """
## Building it

```sh
tfds build builders/$builder --config $default_config$manual_flag
```

`tfds build builders/$builder` without `--config` builds every named config. \
From Python, after `import ntga_tfds`, `tfds.load(...)` builds on first use. \
The `tfds` command of tensorflow-datasets 4.9.10 needs apache_beam and \
mlcroissant, which this package's `cli` extra installs (`bash dev.sh` does); \
without them, `python -m ntga_tfds.builders build ...` runs the same `build` \
command with the same flags.

$offline

Generation (`ntga_tfds.generation`) computes the attack in units \
($units); finished units are checkpointed atomically under \
`<data_dir>/downloads/ntga_tfds_checkpoints/`, in a folder named by a \
fingerprint of the data, the attack's settings, the plan, the attack's \
source code (Python and native), the implementation that runs and the \
package versions: a killed `tfds build` resumes from them and produces \
byte-identical examples, and stale units are never reused. They are deleted \
once the dataset is complete. `NTGA_TFDS_PROGRESS=0` hides the progress \
bars.

For tests and quick looks, a config with `max_train_examples=n, \
max_test_examples=m` (or `tfds build --max_examples_per_split n`) uses only \
the first examples of the canonical order (a fixed pseudo-random subset).

## Metadata

`builder.info.metadata` records the family and every field of the \
attack's config (`attack_config`), the builder config, the `seed`, the \
plan, the source (origin, sizes, content hashes), `package_versions`, the \
`implementation` that ran, `generated_at`, `generation_seconds`, how many \
units were resumed from checkpoints, the checkpoint `fingerprint`, and \
statistics of the result (`stats`).

## Citation

See CITATIONS.bib: $citation_line and the source dataset.
"""

_COLUMN_DOCS = {
    "image": "uint8, the source's shape, stored losslessly (PNG)",
    "label": "the source's label, unchanged (clean-label attack)",
    "index": "int64, the position of the clean original in its source "
             "split (-1 for an added point)",
    "is_poison": "bool, whether the example was crafted by the attack",
    "adversarial_label": "int64, in the `target` split the class the "
                         "attack wants the target taken for; -1 elsewhere",
}


def render(family, source: str) -> Dict[str, str]:
  """The files of `builders/<source>_<family>/`: README.md, CITATIONS.bib,
  TAGS.txt."""
  from ntga_tfds import sources  # pylint: disable=g-import-not-at-top
  text = SOURCE_TEXT[source]
  spec = sources.source_spec(source)
  builder = family.builder_name(source)
  grid = family.grid[source]
  default = grid[0][0]
  splits = {"train": family.train_split_doc, **family.splits,
            "test": "the clean official test split"}
  columns = ["image", "label", "index", *family.columns]
  values = dict(
      source=source, source_title=text["title"], builder=builder,
      default_config=default, about=text["about"],
      attack_line=family.attack_line, effect=family.effect,
      features="\n".join(f"* `{c}`: {_COLUMN_DOCS[c]}." for c in columns),
      splits="\n".join(f"| `{k}` | {v} |" for k, v in splits.items()),
      configs="\n".join(
          f"| `{n}`{' (default)' if i == 0 else ''} | {note} |"
          for i, (n, note) in enumerate(grid)),
      offline=string.Template(text["offline"]).safe_substitute(
          builder=builder, default_config=default),
      manual_flag=(f" --manual_dir ../shared/data/{source}"
                   if spec.needs_files else ""),
      units=family.unit_doc, citation_line=family.citation_line,
      num_classes=spec.num_classes, **family.card_values(source))
  readme = (string.Template(_HEADER).substitute(values)
            + string.Template(family.card_template).substitute(values)
            + string.Template(_FOOTER).substitute(values))
  return {
      "README.md": readme,
      "CITATIONS.bib": family.citation.strip() + "\n\n"
                       + text["citation"].strip() + "\n",
      "TAGS.txt": "\n".join(text["tags"]) + "\n",
  }

"""Writes every builder folder's files from the families (run from the root).

  python builders/_make_folders.py          # write
  python builders/_make_folders.py --check  # exit 1 if a file is stale

For each family (`ntga_tfds.families`) and each source of its grid, the
folder `builders/<source>_<family>/` gets: `__init__.py`, the two-line
builder file, its test, and the dataset card rendered from the family's
template (README.md, CITATIONS.bib, TAGS.txt; `ntga_tfds.cards`). Adding an
attack family with a grid and running this adds its builder folders;
`tests/test_builder_folders.py` checks that the folders are current.
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent

_INIT = '"""{name}: {title}."""\n'

_BUILDER = '''"""{name}: {title}.

The dataset card is README.md next to this file, rendered from the {family}
family's template (`python builders/_make_folders.py`).
"""

from ntga_tfds import families


class Builder(families.builder("{source}", "{family}")):
  """{title}."""
'''

_TEST = '''"""{name}: every named config built on {data}."""

from ntga_tfds import testing
from ntga_tfds.builders.{name} import {name}_dataset_builder


class {camel}Test(testing.PoisonedBuilderTestCase):
  DATASET_CLASS = {name}_dataset_builder.Builder


if __name__ == "__main__":
  testing.main()
'''


def expected_files():
  """{folder name: {file name: text}} for every (family, source)."""
  from ntga_tfds import cards  # pylint: disable=g-import-not-at-top
  from ntga_tfds import families  # pylint: disable=g-import-not-at-top
  from ntga_tfds import testing  # pylint: disable=g-import-not-at-top
  out = {}
  for fam_name in families.names(packaged_only=True):
    fam = families.get(fam_name)
    for source in fam.grid:
      name = fam.builder_name(source)
      title = (f"{cards.SOURCE_TEXT[source]['title']}, training set "
               f"poisoned by {fam.title}")
      if fam_name == "random_noise":
        title = (f"{cards.SOURCE_TEXT[source]['title']}, training set with "
                 "random noise (the attacks' control)")
      data = ("its source's shared dummy data (builders/dummy_data/"
              f"{source}/)" if source in testing.DUMMY_SIZES else
              "small subsets of the real data (embedded, offline)")
      camel = "".join(p.title() for p in name.split("_"))
      files = {
          "__init__.py": _INIT.format(name=name, title=title),
          f"{name}_dataset_builder.py": _BUILDER.format(
              name=name, title=title, family=fam_name, source=source),
          f"{name}_dataset_builder_test.py": _TEST.format(
              name=name, data=data, camel=camel),
          **fam.card(source),
      }
      out[name] = files
  return out


def main(argv):
  check = "--check" in argv
  stale = []
  for folder, files in expected_files().items():
    d = ROOT / folder
    for fname, text in files.items():
      p = d / fname
      if p.exists() and p.read_text() == text:
        continue
      stale.append(str(p.relative_to(ROOT.parent)))
      if not check:
        d.mkdir(exist_ok=True)
        p.write_text(text)
  for p in stale:
    print(("stale: " if check else "wrote: ") + p)
  return 1 if check and stale else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

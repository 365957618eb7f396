"""`tfds build` without apache_beam: `python -m ntga_tfds.builders build ...`.

The `tfds` command of tensorflow-datasets 4.9.10 imports all its subcommands
at start-up, and `convert_format` needs apache_beam, which tensorflow-datasets
does not install: in a plain environment `tfds build` stops with
"No module named 'apache_beam'" before doing anything. This runs TFDS's own
`build` command (`tensorflow_datasets.scripts.cli.build`, the same flags and
code path as `tfds build`) without the other subcommands:

  python -m ntga_tfds.builders build builders/mnist_ntga --config eps76_t64 \\
      --manual_dir ../shared/data/mnist

Where apache_beam is installed, `tfds build ...` with the same arguments does
the same. Importing this module registers the ntga_tfds builders, so
`build mnist_ntga` (by name) works as well as `build builders/mnist_ntga`.
"""

import dataclasses
import logging as python_logging

from absl import app
from absl import flags
from absl import logging
import simple_parsing
import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import build
from tensorflow_datasets.scripts.cli import cli_utils

import ntga_tfds  # noqa: F401  (registers the builders)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Args(cli_utils.Args):
  """TFDS's `build` command (see `tfds build --help`)."""

  command: build.Args = simple_parsing.subparsers({"build": build.Args})

  def execute(self) -> None:
    self.command.execute()


_parse_flags = cli_utils.make_flags_parser(
    Args, description="tfds build, without the commands that need "
    "apache_beam")


def main(args: Args) -> None:
  tfds.core.visibility.set_availables([
      tfds.core.visibility.DatasetType.TFDS_PUBLIC,
      tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC,
  ])
  # As `tfds`: Python logging through tqdm's stream; but at WARNING unless
  # --verbosity is given (`tfds` logs at INFO): progress and results, not
  # library logs.
  if not flags.FLAGS.logtostderr and not flags.FLAGS.alsologtostderr:
    logging.use_python_logging(quiet=True)
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    handler = logging.get_absl_handler().python_handler
    handler.setFormatter(python_logging.Formatter(
        "{levelname}[{filename}]: {message}", style="{"))
    handler.setStream(tfds.core.utils.tqdm_utils.TqdmStream())
  args.execute()


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)

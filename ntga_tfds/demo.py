"""The embedded offline default: NTGA on scikit-learn's 8x8 digits.

  bash dev.sh demo              # or: python -m ntga_tfds.demo

Builds `digits_ntga/eps76_t64` with TFDS (the training split poisoned by NTGA
with the FNN surrogate, eps 76/255 = MNIST's 0.3, t 64; the digits ship with
scikit-learn, so nothing is downloaded), trains a Keras victim on the clean
and on the poisoned training split, and prints both accuracies on the clean
test split, next to uniform random noise of the same size. Results (JSON,
learning curves, example grid) go to `--output_dir`.

It prints progress bars and results; library logs only from WARNING up
(`--verbosity=0` shows INFO, e.g. TFDS's dataset and reader messages).
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from ntga_tfds import evaluate

_CONFIG = flags.DEFINE_string("config", "eps76_t64", "digits_ntga config.")
_VICTIM = flags.DEFINE_string("victim", "fnn_relu", "Keras victim.")
_SEED = flags.DEFINE_integer("seed", 0, "Victim seed.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs (victim's default).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "out/demo",
                                  "Where results.json and the PNGs go.")


def run(*, config: str = "eps76_t64", victim: str = "fnn_relu", seed: int = 0,
        epochs: int | None = None, data_dir: str | None = None,
        output_dir: str | None = None, progress: bool = True) -> dict:
  """Builds digits_ntga/<config> if needed and evaluates one victim on it.

  Returns:
    The evaluation report (see `ntga_tfds.evaluate.evaluate_arrays`).
  """
  return evaluate.evaluate(
      f"digits_ntga/{config}", victims=[victim], seeds=[seed], epochs=epochs,
      control=True, data_dir=data_dir, output_dir=output_dir,
      progress=progress)


def main(argv):
  del argv
  report = run(config=_CONFIG.value, victim=_VICTIM.value, seed=_SEED.value,
               epochs=_EPOCHS.value, data_dir=_DATA_DIR.value,
               output_dir=_OUTPUT_DIR.value)
  print(evaluate.format_table(report))
  by_set = report["results"][_VICTIM.value]["none"]
  print()
  for name, r in by_set.items():
    print(f"{_VICTIM.value} trained on {name:>12s} digits: clean test "
          f"accuracy {100 * r['final']['mean']:.1f}% (peak "
          f"{100 * r['peak']['mean']:.1f}%)")
  print(f"\nResults written to {_OUTPUT_DIR.value}/")


if __name__ == "__main__":
  # Progress and results, not library logs: WARNING unless --verbosity is
  # given (app.run raises an unset verbosity to INFO, and TFDS logs at INFO
  # on every dataset load).
  logging.set_verbosity(logging.WARNING)
  app.run(main)

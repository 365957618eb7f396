"""Helpers shared by the benchmark scripts (run as `python bench/<script>`)."""

import json
import time

import jax

from ntga_tfds.transforms import ntga


def poison_block_seconds(x, y, x_val, y_val, *, config, num_classes=10):
  """Runs `ntga.poison_block` once: (seconds of each PGD step, total).

  The total is the whole call's wall time: input checks, validation
  chunks, the steps and the uint8 quantisation. On a first call the first
  step includes compilation.
  """
  start = time.perf_counter()
  times = poison_block_step_seconds(x, y, x_val, y_val, config=config,
                                    num_classes=num_classes)
  return times, time.perf_counter() - start


def poison_block_step_seconds(x, y, x_val, y_val, *, config,
                              num_classes=10):
  """Runs `ntga.poison_block` once; wall seconds of each PGD step.

  The first entry includes compilation.
  """
  times, last = [], [time.perf_counter()]

  def on_step(i, loss):
    del i, loss
    now = time.perf_counter()
    times.append(now - last[0])
    last[0] = now

  ntga.poison_block(x, y, x_val=x_val, y_val=y_val,
                    key=jax.random.PRNGKey(0), config=config,
                    num_classes=num_classes, on_step=on_step)
  return times


def device_peak_gib():
  """Peak memory of JAX's first device, where its backend reports it."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else round(peak / 2 ** 30, 2)


def report(result: dict, *, json_path=None, width: int = 45):
  """Prints `result` as aligned `key value` lines; also as JSON if asked."""
  for k, v in result.items():
    print(f"{k:{width}s} {v}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)

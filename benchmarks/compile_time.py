r"""Compile seconds of one train step, cold and warm (persistent cache).

For each --configs file: the train step (benchmarks/step_lowering.py) is
lowered and compiled with an empty persistent compilation cache (cold: XLA
compiles, and the result is written to the cache), then, after
`jax.clear_caches()` empties the in-memory caches, lowered and compiled again
(warm: the executable is read from the cache, as a second `launch.py` run of
the same config does with ankle_jax.compilation_cache). Lowering seconds are
reported apart. The cache lives in one temporary directory for the whole run
(JAX fixes a process's cache directory at its first use; entries are keyed by
the computation, so each config's first compile is still cold), so the user's
cache is neither read nor written.

Usage:
  python benchmarks/compile_time.py [--configs=configs/xception.py,...] \
      [--width_multiplier=1.0] [--image_size=300] [--conv_impl=auto]

One JSON line per config; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import time

import jax

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # For `ankle_jax` and `benchmarks`.

from ankle_jax import compilation_cache  # noqa: E402
from benchmarks import step_lowering  # noqa: E402

PAPER_CONFIGS = (
    'configs/inception_v3.py',
    'configs/resnet.py',
    'configs/resnet_dropaux.py',
    'configs/xception.py',
    'configs/xception_dropaux.py',
)


def lower_and_compile(config) -> tuple[float, float]:
  """(lower seconds, compile seconds) of the config's train step."""
  start = time.perf_counter()
  lowered = step_lowering.lower_train_step(config)
  lowered_at = time.perf_counter()
  lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at


def cache_entries(cache_dir: pathlib.Path) -> int:
  return sum(1 for p in cache_dir.rglob('*') if p.is_file())


def measure(path: str, overrides: dict, cache_dir: pathlib.Path) -> dict:
  """Cold and warm compile of one config (`cache_dir`: the cache in use)."""
  config = step_lowering.load_config(path, **overrides)
  entries_before = cache_entries(cache_dir)
  jax.clear_caches()
  cold_lower_s, cold_s = lower_and_compile(config)
  entries = cache_entries(cache_dir) - entries_before
  jax.clear_caches()
  warm_lower_s, warm_s = lower_and_compile(config)
  return {
      'config': path,
      'model': config.model.name,
      'batch_size': config.batch_size,
      'image_size': config.image_size,
      'width_multiplier': config.model.width_multiplier,
      'dtype': config.dtype,
      'conv_impl': config.model.conv_impl,
      'cold_compile_s': round(cold_s, 1),
      'warm_compile_s': round(warm_s, 1),
      'cold_lower_s': round(cold_lower_s, 1),
      'warm_lower_s': round(warm_lower_s, 1),
      'cache_files_written_cold': entries,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(PAPER_CONFIGS))
  parser.add_argument('--width_multiplier', type=float, default=None)
  parser.add_argument('--image_size', type=int, default=None)
  parser.add_argument('--conv_impl', default=None)
  parser.add_argument('--dtype', default=None)
  args = parser.parse_args()
  overrides = {
      field: value
      for field, value in (
          ('model.width_multiplier', args.width_multiplier),
          ('image_size', args.image_size),
          ('model.conv_impl', args.conv_impl),
          ('dtype', args.dtype),
      )
      if value is not None
  }
  rows = []
  with tempfile.TemporaryDirectory(prefix='jax_cache_') as tmp:
    cache_dir = compilation_cache.enable(
        compilation_cache.CacheSettings(cache_dir=tmp)
    )
    for path in args.configs.split(','):
      rows.append(measure(path, overrides, cache_dir))
      print(json.dumps(rows[-1]), flush=True)
  print(
      json.dumps(
          {
              'benchmark': 'compile_time',
              'backend': jax.default_backend(),
              'device': jax.devices()[0].device_kind,
              'jax': jax.__version__,
              'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'rows': rows,
          }
      )
  )


if __name__ == '__main__':
  main()

r"""Times how long a checkpoint save stalls training: synchronous vs asynchronous.

Usage (from the repo root):
  python benchmarks/checkpoint_stall.py --config=configs/demo.py \
      [--rounds=5] [--window=10] [--workdir=/tmp/stall] \
      [--config.<field>=<value> ...]

The real jitted train step of the config's model (state donated, a fixed
random batch) runs in windows of --window steps, each window timed until its
last step is ready. In each round, for each mode (sync, then async, so that
background load hits both alike): a window without a save (the baseline),
then `RunCheckpoints.save_latest` of the state followed by a window (the save
window); then the save is waited for, untimed. Per mode it reports the medians
over the rounds of:
  save_call_s: how long save_latest held the training thread;
  stall_s: save window - baseline window, the training time lost to the save
    (async: its background writing and hashing competing for the cores);
  wait_after_s: what was left of the save after the save window (async).
The first round of each mode (compilation, orbax start-up) is not counted.

The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # For `configs` and `ankle_jax`.

from ankle_jax import checkpoint  # noqa: E402
from ankle_jax import models  # noqa: E402
from ankle_jax import sharding  # noqa: E402
from ankle_jax.training import losses  # noqa: E402
from ankle_jax.training import state as state_lib  # noqa: E402
from ankle_jax.training import steps  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds per mode.')
_WINDOW = flags.DEFINE_integer('window', 10, 'Train steps per timed window.')
_WORKDIR = flags.DEFINE_string(
    'workdir', '', 'Where the checkpoints go (default: a temporary directory).'
)
MODES = ('sync', 'async')


def _set_up(config: Any) -> tuple[Any, Any, dict[str, jax.Array]]:
  """(jitted train step, replicated state, sharded random batch)."""
  mesh = sharding.create_mesh()
  model = models.from_run_config(config)
  optimizer = state_lib.OptimizerSettings.from_config(config)
  lr_fn = state_lib.create_learning_rate_fn(optimizer, 1000)
  state = state_lib.create_train_state(
      optimizer, model, jax.random.PRNGKey(0), config.image_size, 1000, lr_fn
  )
  jitted = steps.compile_steps(
      mesh,
      lr_fn,
      steps.AugmentSettings.from_config(config.augment),
      losses.LossSettings.from_config(config),
  )
  rng = np.random.default_rng(0)
  size, batch_size = config.image_size, config.batch_size
  batch = {
      'image': rng.uniform(size=(batch_size, size, size, 1)).astype('f4'),
      'label': rng.integers(0, 2, batch_size).astype('i4'),
  }
  placed = sharding.shard_batch(batch, mesh)
  return (
      jitted.train,
      jax.device_put(state, sharding.replicated(mesh)),
      placed,
  )


def _window(train: Any, state: Any, batch: Any, num_steps: int) -> Any:
  for _ in range(num_steps):
    state, metrics = train(state, batch)
  jax.block_until_ready(metrics)
  return state


def _round(
    train: Any, state: Any, batch: Any, ckpts: checkpoint.RunCheckpoints
) -> tuple[Any, dict[str, float]]:
  """One baseline window, then one save window; (state, seconds)."""
  window = _WINDOW.value
  started = time.perf_counter()
  state = _window(train, state, batch, window)
  baseline = time.perf_counter() - started
  started = time.perf_counter()
  step = int(jax.device_get(state.step))
  ckpts.save_latest(step, state_lib.state_tree(state), [None], {})
  save_call = time.perf_counter() - started
  state = _window(train, state, batch, window)
  with_save = time.perf_counter() - started
  started = time.perf_counter()
  ckpts.wait()
  return state, {
      'baseline_window_s': baseline,
      'save_call_s': save_call,
      'stall_s': with_save - baseline,
      'wait_after_s': time.perf_counter() - started,
  }


def _state_megabytes(state: Any) -> float:
  tree = state_lib.state_tree(state)
  return sum(x.nbytes for x in jax.tree.leaves(tree)) / 1e6


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  train, state, batch = _set_up(config)
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix='stall-'))
  ckpts = {
      mode: checkpoint.RunCheckpoints(
          root / mode, keep=2, asynchronous=mode == 'async'
      )
      for mode in MODES
  }
  times = {mode: [] for mode in MODES}
  for round_index in range(_ROUNDS.value + 1):
    for mode in MODES:
      state, seconds = _round(train, state, batch, ckpts[mode])
      if round_index:  # Round 0 compiles and starts orbax.
        times[mode].append(seconds)
  for manager in ckpts.values():
    manager.close()
  result = {
      'benchmark': 'checkpoint_stall',
      'model': config.model.name,
      'width_multiplier': config.model.get('width_multiplier', 1.0),
      'image_size': config.image_size,
      'batch_size': config.batch_size,
      'state_mb': round(_state_megabytes(state), 1),
      'window_steps': _WINDOW.value,
      'rounds': _ROUNDS.value,
      'platform': jax.devices()[0].platform,
  }
  for mode in MODES:
    for key in times[mode][0]:
      value = statistics.median(t[key] for t in times[mode])
      result[f'{mode}_{key}'] = round(value, 4)
      print(f'{mode:5s} {key:18s} median {value:8.3f} s')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)

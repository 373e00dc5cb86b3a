"""One train step of a config, lowered (not compiled), for the benchmarks
depthwise.py --op_counts and compile_time.py.

The step is the real `ankle_jax.training.steps.train_step` (augmentation,
standardization, losses, Adam, BatchNorm statistics) as `steps.compile_steps`
jits it, lowered for an abstract train state (jax.eval_shape: no parameters
are initialized) and an abstract batch of [B, S, S, 1] images.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import importlib.util
import pathlib
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # For `ankle_jax`.

from ankle_jax import models  # noqa: E402
from ankle_jax import sharding  # noqa: E402
from ankle_jax.training import losses  # noqa: E402
from ankle_jax.training import state as state_lib  # noqa: E402
from ankle_jax.training import steps  # noqa: E402

# StableHLO ops counted by `count_ops`: name in the report -> op name.
COUNTED_OPS = {
    'convolutions': 'convolution',
    'dots': 'dot_general',
    'slices': 'slice',
    'reductions': 'reduce',
}
_FUNC = re.compile(r'func\.func (?:public |private )?@([\w.$-]+)\(')
_CALL = re.compile(r'\bcall @([\w.$-]+)\(')


def load_config(path: str, **overrides) -> ml_collections.ConfigDict:
  """get_config() of a config file (configs/*.py), then `overrides` (dotted
  field names, e.g. {'model.conv_impl': 'gpu'})."""
  spec = importlib.util.spec_from_file_location('run_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict(overrides)
  return config


def state_and_steps(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[Callable[[], Any], steps.CompiledSteps]:
  """(a function making `config`'s fresh train state, its steps jitted for
  `mesh`): the optimizer, schedule (1,000 steps), augmentation and losses of
  the config, as training builds them."""
  model = models.from_run_config(config)
  optimizer = state_lib.OptimizerSettings.from_config(config)
  lr_fn = state_lib.create_learning_rate_fn(optimizer, 1000)

  def make_state():
    return state_lib.create_train_state(
        optimizer,
        model,
        jax.random.key_data(jax.random.key(config.seed)),
        config.image_size,
        learning_rate_fn=lr_fn,
    )

  compiled = steps.compile_steps(
      mesh,
      lr_fn,
      steps.AugmentSettings.from_config(config.augment),
      losses.LossSettings.from_config(config),
  )
  return make_state, compiled


def lower_train_step(config: ml_collections.ConfigDict) -> jax.stages.Lowered:
  """The jitted train step of `config` lowered for config.batch_size images
  of config.image_size pixels (per-view models)."""
  make_state, compiled = state_and_steps(config, sharding.create_mesh())
  state = jax.eval_shape(make_state)
  size, batch_size = config.image_size, config.batch_size
  batch = {
      'image': jax.ShapeDtypeStruct((batch_size, size, size, 1), jnp.float32),
      'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32),
  }
  return compiled.train.lower(state, batch)


def count_ops(stablehlo_text: str) -> dict[str, int]:
  """How many times each COUNTED_OPS op runs in one call of the module's
  main function: ops of a called private function count once per call.

  Args:
    stablehlo_text: `Lowered.as_text()` (StableHLO MLIR).

  Returns:
    {report name: count}.
  """
  bodies: dict[str, list[str]] = collections.defaultdict(list)
  current = None
  for line in stablehlo_text.splitlines():
    match = _FUNC.search(line)
    if match:
      current = match.group(1)
    if current is not None:
      bodies[current].append(line)
  patterns = {
      name: re.compile(rf'\bstablehlo\.{op}\b(?![_.])')
      for name, op in COUNTED_OPS.items()
  }
  totals: dict[str, collections.Counter] = {}

  def total(func: str) -> collections.Counter:
    if func not in totals:
      text = '\n'.join(bodies[func])
      counts = collections.Counter(
          {name: len(p.findall(text)) for name, p in patterns.items()}
      )
      for callee in _CALL.findall(text):
        counts += total(callee)
      totals[func] = counts
    return totals[func]

  main = 'main' if 'main' in bodies else next(iter(bodies))
  counts = total(main)
  return {name: int(counts[name]) for name in COUNTED_OPS}

"""Training one run as `launch.py` does (shared by launch.py and
ankle_jax.crossval, which trains each fold this way): the process start-up
(compilation cache, jax.distributed) and the training with its closing
summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from ankle_jax import compilation_cache
from ankle_jax import console
from ankle_jax import sharding
from ankle_jax import stages
from ankle_jax import train
from ankle_jax import writers
from ankle_jax.data import prepare

EXIT_TRAINING_ERROR = 1


def closing_summary(summary, workdir: str, seconds: float) -> str:
  """The lines printed after training: best checkpoint, where things are."""
  minutes, secs = divmod(int(round(seconds)), 60)
  best = summary['best_metric_value']
  lines = [
      f'Done in {minutes} min {secs:02d} s: trained to step '
      f"{summary['final_step']} of {summary['num_train_steps']}"
      + (' (stopped early).' if summary['stopped_early'] else '.'),
      f"Best {summary['best_metric']}: "
      + (
          f"{best:.4f} at step {summary['best_step']}"
          if best is not None
          else 'none yet (no evaluation)'
      )
      + f' (checkpoint: {workdir}/checkpoints/best).',
      f'Latest checkpoint: {workdir}/checkpoints/latest; '
      f'TensorBoard: tensorboard --logdir={workdir}',
      'python -m ankle_jax.evaluate and predict restore the '
      f"{summary.get('eval_checkpoint', 'best')} checkpoint "
      '(config.eval_checkpoint; --checkpoint=best|latest to choose).',
  ]
  return '\n'.join(lines)


def start_process(config: Any) -> None:
  """The process start-up of a training command: the persistent
  compilation cache, then jax.distributed (before any other JAX work)."""
  compilation_cache.enable(compilation_cache.CacheSettings.from_config(config))
  sharding.initialize(
      config.distributed,
      timeout_s=config.distributed_timeout_s,
      heartbeat_timeout_s=config.distributed_heartbeat_timeout_s,
  )


def train_run(config, workdir: str, started: float) -> int:
  """Trains (the chief prints the model summary once the data is ready, then
  the closing summary); returns the exit status (0, or EXIT_TRAINING_ERROR
  after a non-finite loss or an OSError such as a full disk)."""
  try:
    # One run, or a multi-view config's per-view stage then its own.
    summary = stages.train_stages(config, workdir, print_model_summary=True)
  except (writers.WorkdirNotWritableError, prepare.DatasetMissingError) as e:
    raise console.UserError(str(e)) from e
  except (train.NonFiniteLossError, OSError) as e:  # OSError: disk full...
    print(f'error: {e}', file=sys.stderr)
    return EXIT_TRAINING_ERROR
  if sharding.is_chief():
    print(closing_summary(summary, workdir, time.time() - started))
  return 0

"""A run's training stages: one, or, for a multi-view config with
model.multiview.per_view_steps > 0 and no init_from, two:

  1. the per-view model (the same config with multiview off, per_view_steps
     steps of per_view_batch_size views) in <workdir>/per_view;
  2. the multi-view model in <workdir>, warm-started from stage 1
     (model.multiview.init_from = <workdir>/per_view; training.warm_start).

Each stage is a run of its own (train.train_and_evaluate), resumable in its
run directory: running the command again continues the unfinished stage (a
stage 1 whose summary.json says it trained to its end is not restarted).
"""

import dataclasses
import json
import os
from typing import Any

import ml_collections

from ankle_jax import models
from ankle_jax import train
from ankle_jax import writers
from ankle_jax.training import config_checks
from ankle_jax.training import records

PER_VIEW_DIR = 'per_view'  # Stage 1's run directory, under the workdir.


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run: its config and run directory."""

  config: ml_collections.ConfigDict
  workdir: str


def per_view_config(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """The per-view stage of a multi-view config: multiview off,
  model.multiview.per_view_{steps,batch_size,eval_batch_size}; everything
  else (family, width, data, optimizer, seed) shared."""
  views = config.model.multiview
  stage = ml_collections.ConfigDict(config.to_dict())
  stage.model.multiview.enabled = False
  stage.num_train_steps = int(views.per_view_steps)
  stage.num_epochs = 0
  stage.batch_size = int(views.per_view_batch_size)
  stage.eval_batch_size = int(views.per_view_eval_batch_size)
  return stage


def planned_stages(
    config: ml_collections.ConfigDict, workdir: str
) -> list[Stage]:
  """The stages to train, in order (module docstring)."""
  views = config.model.get('multiview')
  if (
      not models.is_multiview(config.model)
      or views.get('init_from')
      or views.get('per_view_steps', 0) <= 0
  ):
    return [Stage(config, workdir)]
  per_view_dir = os.path.join(workdir, PER_VIEW_DIR)
  warm = ml_collections.ConfigDict(config.to_dict())
  warm.model.multiview.init_from = per_view_dir
  return [Stage(per_view_config(config), per_view_dir), Stage(warm, workdir)]


def finished_step(stage: Stage) -> int | None:
  """The final step of a stage that has trained to its end (summary.json:
  all its steps, or stopped early), else None."""
  path = os.path.join(stage.workdir, writers.SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  done = summary['final_step'] >= stage.config.num_train_steps > 0
  return summary['final_step'] if done or summary['stopped_early'] else None


def train_stages(
    config: ml_collections.ConfigDict,
    workdir: str,
    **train_kwargs: Any,
) -> dict[str, Any]:
  """Trains each planned stage in turn (train_kwargs: train_and_evaluate's);
  the last stage's run summary."""
  stages = planned_stages(config, workdir)
  # Every stage's config is checked before the first trains: a bad
  # multi-view field must not wait for the per-view stage to finish.
  for stage in stages:
    config_checks.validate_config(stage.config)
  summary = {}
  for number, stage in enumerate(stages, start=1):
    if len(stages) > 1:
      records.say(f'Stage {number} of {len(stages)}: {stage.workdir}')
    done_at = finished_step(stage) if number < len(stages) else None
    if done_at is not None:
      records.say(f'Trained already (step {done_at}).')
      continue
    summary = train.train_and_evaluate(
        stage.config, stage.workdir, **train_kwargs
    )
  return summary

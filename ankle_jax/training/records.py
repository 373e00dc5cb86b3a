"""What a run records besides checkpoints: the HParams of TensorBoard, the
train records of metrics.jsonl, the console lines and bar, and the preview
of augmented images."""

from collections.abc import Mapping, Sequence
import math
import sys
from typing import Any

from etils import epath
import numpy as np

from ankle_jax import checkpoint
from ankle_jax import sharding
from ankle_jax import writers
from ankle_jax.training import validation

# The fields a researcher varies between runs (TensorBoard's HParams tab), in
# the order of its columns: what a run is (model, width, image size, learning
# rate, batch, dtype) first; then every augment.* field and the run's length
# in steps.
HPARAM_FIELDS = (
    'model.name',
    'model.width_multiplier',
    'image_size',
    'learning_rate',
    'batch_size',
    'dtype',
    'model.aux_head',
    'model.dropout_rate',
    'model.kernel_init',
    'lr_schedule',
    'warmup_steps',
    'l2_alpha',
    'class_weights',
    'data.dataset_config',
    'data.sample_weights_by_label',
    'seed',
)


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or inf."""


def hparams_of(
    flat_config: Mapping[str, Any], num_train_steps: int
) -> dict[str, Any]:
  """The hyperparameters shown in TensorBoard's HParams tab, in column order.

  flat_config: `writers.flatten_config` of the run config.
  """
  hparams = {k: flat_config[k] for k in HPARAM_FIELDS if k in flat_config}
  hparams.update(
      {k: v for k, v in flat_config.items() if k.startswith('augment.')}
  )
  hparams['num_train_steps'] = num_train_steps
  return hparams


def check_finite(
    history: Sequence[tuple[int, Any]],
    latest_step: int | None,
    workdir: epath.Path,
) -> None:
  """Raises NonFiniteLossError at the first step whose loss is NaN or inf
  (latest_step: the last checkpoint saved, left intact)."""
  for step, metrics in history:
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      raise NonFiniteLossError(
          f'loss became {loss} at step {step}; stopping.\n'
          f'The last good checkpoint (step {latest_step}) in '
          f'{workdir / checkpoint.LATEST_DIR} was left intact.\n'
          'Lower --config.learning_rate or set --config.grad_clip_norm.'
      )


def train_record(
    history: Sequence[tuple[int, Any]],
    *,
    step: int,
    steps_done: int,
    seconds: float,
    images_per_step: int,
    steps_per_epoch: int,
) -> dict[str, float]:
  """The means of the train metrics since the last record, and throughput.

  steps_done, seconds: the steps and wall time (s) since the last record.
  images_per_step: images through the model per step: the batch, or for a
    multi-view run its cases x max_views (padded view slots included).
  """
  mean = {k: float(np.mean([m[k] for _, m in history])) for k in history[-1][1]}
  elapsed = max(seconds, 1e-9)
  views = {'train_view_loss': mean['view_ce']} if 'view_ce' in mean else {}
  return {
      **views,
      'train_loss': mean['loss'],
      'train_ce': mean['ce'],
      'train_aux_loss': mean['aux_ce'],
      'train_l2': mean['l2'],
      'train_accuracy': mean['accuracy'],
      'learning_rate': mean['lr'],
      'steps_per_second': steps_done / elapsed,
      'images_per_second': steps_done * images_per_step / elapsed,
      'epoch': step / steps_per_epoch,
  }


def say(message: str, bar: Any = None) -> None:
  """Prints a project line on the chief (above the progress bar, if any)."""
  if not sharding.is_chief():
    return
  if bar is not None:
    bar.write(message, file=sys.stdout)
  else:
    print(message)
  sys.stdout.flush()


def show_on_bar(bar: Any, val: Mapping[str, float]) -> None:
  """The bar's validation metrics (`validation.BAR_METRICS`)."""
  if bar is not None:
    bar.set_postfix(
        {k: f'{val[k]:.3f}' for k in validation.BAR_METRICS if k in val}
    )


def early_stop_message(
    step: int, patience: int, loop: validation.LoopState
) -> str:
  return (
      f'Early stopping at step {step}: val_loss did not improve for '
      f'{patience} evaluations (best at step {loop.best_val_loss_step}).'
  )


def write_preview(
    writer: writers.MetricWriter,
    step: int,
    images: Any,
    batch: Mapping[str, np.ndarray],
) -> None:
  """The chief writes the step's augmented images to TensorBoard.

  images: the step's augmented, standardized images (a collective over the
  mesh, computed by every process); batch: this process's block of the step's
  batch (every process gathers the labels).
  """
  (host,) = validation.global_host_rows([validation.host_rows(batch)])
  if not sharding.is_chief():
    return
  labels = host['label']
  if 'view_mask' in host:  # The real views of the cases, one per tile.
    real = host['view_mask'].astype(bool)
    images = images[real]
    labels = np.broadcast_to(labels[:, None], real.shape)[real]
  writer.write_images(step, 'train/augmented_images', images, labels=labels)


def run_summary(
    *,
    final_step: int,
    num_train_steps: int,
    loop: validation.LoopState,
    best_metric: str,
    eval_checkpoint: str,
    seconds: float,
) -> dict[str, Any]:
  """What summary.json holds: final_step, num_train_steps, best_metric,
  best_metric_value, best_step, eval_checkpoint (the checkpoint evaluate and
  predict restore by default), best_val_loss, best_val_loss_step,
  stopped_early, train_seconds_this_launch (`seconds`: this launch's training
  wall time).
  """
  return {
      'final_step': final_step,
      'num_train_steps': num_train_steps,
      'best_metric': best_metric,
      'best_metric_value': loop.best_metric_value,
      'best_step': loop.best_step,
      'eval_checkpoint': eval_checkpoint,
      'best_val_loss': loop.best_val_loss,
      'best_val_loss_step': loop.best_val_loss_step,
      'stopped_early': loop.stopped_early,
      'train_seconds_this_launch': seconds,
  }

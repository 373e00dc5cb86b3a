"""Validation: the one list of validation metrics with their modes, the
gathered cross-process validation, and the best-checkpoint and early-stopping
decisions over it.

`METRICS` is where a validation metric is named: checkpoint.RunCheckpoints is
handed its mode, writers.MetricWriter its TensorBoard tag and the HParams
tab its `hparams/best_` tag, the console bar the ones `on_bar`, and
config.best_metric is checked against it.

With several processes each process reads its block of every validation
batch; the outputs and rows of all processes are gathered so that each
process computes the same metrics over every case once (and so takes the same
best-checkpoint and early-stopping decisions).
"""

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import math
from typing import Any

import jax
from jax.sharding import Mesh
import numpy as np

from ankle_jax import sharding
from ankle_jax.data import cases
from ankle_jax.data import pipeline
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import voting
from ankle_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class Metric:
  """One validation metric.

  name: its metrics.jsonl key (and config.best_metric value).
  mode: 'max' or 'min', which way is better.
  tag: its TensorBoard scalar tag.
  on_bar: shown on the console progress bar.
  views_alone: in a multi-view run it scores each view alone, not the case
    head the run trains, so it cannot choose a multi-view run's checkpoint.
  """

  name: str
  mode: str
  tag: str
  on_bar: bool = False
  views_alone: bool = False


METRICS = (
    Metric('val_loss', 'min', 'val/loss', on_bar=True),
    Metric(
        'val_accuracy', 'max', 'val/accuracy', on_bar=True, views_alone=True
    ),
    Metric('val_auc', 'max', 'val/auc', views_alone=True),
    Metric('val_case_accuracy', 'max', 'val/case_accuracy', on_bar=True),
    Metric('val_case_auc', 'max', 'val/case_auc'),
)
METRIC_NAMES = tuple(metric.name for metric in METRICS)
# The best_metric values a multi-view run accepts (case level).
MULTIVIEW_METRIC_NAMES = tuple(
    metric.name for metric in METRICS if not metric.views_alone
)
# best_metric -> 'max' or 'min'.
METRIC_MODES = {metric.name: metric.mode for metric in METRICS}
# metrics.jsonl key -> TensorBoard tag.
METRIC_TAGS = {metric.name: metric.tag for metric in METRICS}
BAR_METRICS = tuple(metric.name for metric in METRICS if metric.on_bar)


def validation_batches(
    eval_source: Any,
    *,
    batch_size: int,
    image_size: int,
    max_views_per_case: int,
    multiview: bool,
    indices_only: bool = False,
) -> Iterator[dict[str, Any]]:
  """Batches of views (per-view runs) or of cases (multi-view runs), every
  case's first max_views_per_case views (0 = all); this process's block of
  each global batch, images as stored (uint16 unless resized; the eval step
  converts). indices_only (the split is on the device): record indices
  'index' in place of images, the same rows."""
  options = {
      'batch_size': batch_size,
      'max_views_per_case': max_views_per_case,
      'process_index': jax.process_index(),
      'process_count': jax.process_count(),
  }
  if multiview:
    return cases.iterate_case_batches(
        eval_source,
        image_size=image_size,
        indices_only=indices_only,
        as_wire=True,
        **options,
    )
  if indices_only:
    return pipeline.iterate_eval_indices(eval_source, **options)
  return pipeline.iterate_eval_batches(
      eval_source, image_size=image_size, as_wire=True, **options
  )


def host_rows(batch: Mapping[str, Any]) -> dict[str, list[Any]]:
  """What validation needs of a batch besides the device outputs, as lists:
  'mask' (padding rows False), 'label', and 'case_id' / 'view_mask' where the
  batch has them."""
  mask = batch.get('mask', np.ones(len(batch['label']), bool))
  rows = {'mask': np.asarray(mask, bool).tolist()}
  for key in ('label', 'case_id', 'view_mask'):
    if key in batch:
      rows[key] = np.asarray(batch[key]).tolist()
  return rows


def global_host_rows(
    local: Sequence[Mapping[str, list[Any]]],
) -> list[dict[str, np.ndarray]]:
  """Each global batch's `host_rows`, from this process's blocks: the
  processes' blocks joined in process order (the order of the rows of the
  global batch, `sharding.shard_batch`). A collective with several
  processes."""
  per_process = sharding.allgather_json(list(local))
  return [
      {
          key: np.concatenate(
              [np.asarray(blocks[k][key]) for blocks in per_process]
          )
          for key in block
      }
      for k, block in enumerate(local)
  ]


def eval_outputs(
    eval_fn: Any,
    state: TrainState,
    batches: Iterator[Mapping[str, Any]],
    mesh: Mesh,
) -> dict[str, np.ndarray]:
  """Host arrays over the real rows of all processes' batches: 'probs' [n, C],
  'ce' [n], 'label' [n], 'case_id' [n] (when the batches have them) and, for
  multi-view case batches, 'view_probs' [views, C] and 'view_label' [views]
  over the real views. Every process gets them all, each row once.

  batches: this process's blocks of the global batches
  (`validation_batches`).
  """
  outputs, local = [], []
  for batch in batches:
    out = eval_fn(state, sharding.shard_batch(batch, mesh))
    outputs.append(jax.device_get(out))  # Replicated: every process has all.
    local.append(host_rows(batch))
  parts: dict[str, list[np.ndarray]] = {}
  for out, host in zip(outputs, global_host_rows(local)):
    mask = host['mask']
    rows = {'probs': out['probs'], 'ce': out['ce'], 'label': host['label']}
    if 'case_id' in host:
      rows['case_id'] = host['case_id']
    for key, value in rows.items():
      parts.setdefault(key, []).append(np.asarray(value)[mask])
    if 'view_probs' in out:
      view_mask = host['view_mask'].astype(bool) & mask[:, None]
      labels_bv = np.broadcast_to(host['label'][:, None], view_mask.shape)
      parts.setdefault('view_probs', []).append(out['view_probs'][view_mask])
      parts.setdefault('view_label', []).append(labels_bv[view_mask])
  return {key: np.concatenate(value) for key, value in parts.items()}


def validate(
    eval_fn: Any,
    state: TrainState,
    batches: Iterator[Mapping[str, Any]],
    mesh: Mesh,
) -> dict[str, float]:
  """val_loss, val_accuracy, val_auc, val_case_accuracy and val_case_auc
  over `batches`.

  Votes and the case level are those of the evaluation command
  (ankle_jax.evaluation.voting): a view votes fracture when p(fracture) >= 0.5;
  a case is the majority of its views' votes, ties (2-view cases) going to
  fracture; val_case_auc is the ROC AUC of each case's soft vote (the mean
  p(fracture) of its views) against the case label.
  Multi-view case batches: val_loss, val_case_accuracy and val_case_auc are
  the case head's; val_accuracy and val_auc score each view alone (its own
  probability against its case's label).
  """
  out = eval_outputs(eval_fn, state, batches, mesh)
  if not out:
    return {}
  multiview = 'view_probs' in out
  view_probs = out['view_probs' if multiview else 'probs'][:, -1]
  view_labels = out['view_label' if multiview else 'label']
  votes = voting.image_votes(view_probs)
  view_metrics = metrics_lib.classification_metrics(
      view_labels, votes, view_probs
  )
  metrics = {
      'val_loss': float(np.mean(out['ce'])),
      'val_accuracy': view_metrics['accuracy'],
      'val_auc': view_metrics['roc_auc'],
  }
  if multiview:
    case_probs = out['probs'][:, -1]
    case_votes = voting.image_votes(case_probs)
    metrics['val_case_accuracy'] = float(np.mean(case_votes == out['label']))
    metrics['val_case_auc'] = _roc_auc(out['label'], case_probs)
  elif 'case_id' in out:
    cases = voting.index_cases(out['case_id'], out['label'])
    case_votes = voting.case_hard_votes(votes, cases)
    metrics['val_case_accuracy'] = float(np.mean(case_votes == cases.labels_c))
    case_probs = voting.case_soft_probs(view_probs, cases)
    metrics['val_case_auc'] = _roc_auc(cases.labels_c, case_probs)
  return metrics


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC of float scores [n] against int labels [n]; NaN with one class."""
  votes = voting.image_votes(scores)
  return metrics_lib.classification_metrics(labels, votes, scores)['roc_auc']


@dataclasses.dataclass(frozen=True)
class LoopState:
  """What the loop carries besides the train state (checkpointed as JSON).

  best_metric_value, best_step: the best checkpoint by config.best_metric.
  best_val_loss, best_val_loss_step, evals_without_improvement: early stopping.
  stopped_early: the run ended on config.early_stopping_patience.
  """

  best_metric_value: float | None = None
  best_step: int | None = None
  best_val_loss: float | None = None
  best_val_loss_step: int | None = None
  evals_without_improvement: int = 0
  stopped_early: bool = False

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> 'LoopState':
    """Reads `to_json`'s dict (the same keys as older checkpoints' dict)."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


def _is_improvement(mode: str, value: float | None, best: float | None) -> bool:
  if value is None or not math.isfinite(value):
    return False
  if best is None:
    return True
  return value > best if mode == 'max' else value < best


def record_evaluation(
    loop: LoopState,
    step: int,
    val: Mapping[str, float],
    best_metric: str,
    patience: int,
) -> tuple[LoopState, bool]:
  """(`loop` after the evaluation at `step`, whether it is a new best).

  A tie on best_metric counts as better when val_loss improved at this step.
  Early stopping: `patience` evaluations in a row without a val_loss
  improvement (0 = off).
  """
  val_loss = val.get('val_loss')
  if _is_improvement('min', val_loss, loop.best_val_loss):
    loop = dataclasses.replace(
        loop,
        best_val_loss=val_loss,
        best_val_loss_step=step,
        evals_without_improvement=0,
    )
  else:
    loop = dataclasses.replace(
        loop, evals_without_improvement=loop.evals_without_improvement + 1
    )
  value = val.get(best_metric)
  tie_break = (
      value is not None
      and value == loop.best_metric_value
      and loop.best_val_loss_step == step
  )
  mode = METRIC_MODES[best_metric]
  is_best = _is_improvement(mode, value, loop.best_metric_value) or tie_break
  if is_best:
    loop = dataclasses.replace(loop, best_metric_value=value, best_step=step)
  if patience and loop.evals_without_improvement >= patience:
    loop = dataclasses.replace(loop, stopped_early=True)
  return loop, is_best

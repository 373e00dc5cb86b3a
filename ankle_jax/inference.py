"""Restored runs and their forward pass, shared by `evaluate` and `predict`.

* `load_runs` restores each run directory's config.json and checkpoint: the
  one asked for, else the run's config.eval_checkpoint (`checkpoint_of`)
  (`check_run_dirs` first says which directory is not a run, and why).
* Runs of the same architecture and input shape (`model_group_key`) are
  stacked along a leading runs axis (`stack_variables`) and applied with ONE
  jitted `jax.vmap` over runs (`make_forward`).
* `fracture_log_probability` is "standardize -> apply -> float32
  log-probability of fracture", over `models.forward.apply_eval`, the eval
  forward training's eval step uses too. The host turns it into a float64
  probability (`probability_from_log`): a float32 softmax (and a float32
  log_softmax) rounds every probability above 1 - 6e-8 to exactly 1.0; the
  log-probability computed as -softplus(logsumexp(other logits - fracture
  logit)) keeps them apart (about 7 significant digits of 1 - p).
* `predict_split` runs every run over one split's batches of views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import dataclasses
import itertools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import models
from ankle_jax import writers
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.predictions import SplitPredictions

RUN_DIR_HOLDS = (
    'a run directory holds config.json and checkpoints/ '
    '(written by python launch.py --workdir=DIR)'
)


@dataclasses.dataclass
class Run:
  """One restored training run.

  Attributes:
    name: unique short name (the run directory's base name).
    workdir: the run directory.
    config: its ConfigDict.
    variables: {'params', 'batch_stats'} (numpy).
    which: the checkpoint restored, 'best' or 'latest'.
    step: the training step of the restored checkpoint.
  """

  name: str
  workdir: str
  config: Any
  variables: Any
  step: int
  which: str = checkpoint.DEFAULT_CHECKPOINT


def unique_run_names(workdirs: Sequence[str]) -> list[str]:
  """Base names of the run directories, made unique with a '~k' suffix."""
  names, seen = [], {}
  for workdir in workdirs:
    name = os.path.basename(os.path.normpath(str(workdir))) or 'run'
    seen[name] = seen.get(name, 0) + 1
    names.append(name if seen[name] == 1 else f'{name}~{seen[name]}')
  return names


def check_run_dirs(workdirs: Sequence[str]) -> None:
  """Raises console.UserError naming the first directory that is no run."""
  if not workdirs:
    raise console.UserError(
        '--runs names no run directory; ' + RUN_DIR_HOLDS + '.'
    )
  for workdir in workdirs:
    path = os.fspath(workdir)
    if not os.path.isdir(path):
      raise console.UserError(f'--runs: {path} is not a directory.')
    missing = [
        name
        for name in (writers.CONFIG_FILE, 'checkpoints')
        if not os.path.exists(os.path.join(path, name))
    ]
    if missing:
      raise console.UserError(
          f'--runs: {path} is not a training run directory (no '
          f'{" and no ".join(missing)}):\n{RUN_DIR_HOLDS}.'
      )


def checkpoint_of(config: Any, which: str | None = None) -> str:
  """The checkpoint to restore: `which` when given, else the run's
  config.eval_checkpoint ('best' for runs saved before that field existed).

  Raises:
    console.UserError: the config names no known checkpoint.
  """
  if which is None:
    which = config.get('eval_checkpoint', checkpoint.DEFAULT_CHECKPOINT)
  if which not in checkpoint.CHECKPOINT_CHOICES:
    raise console.UserError(
        f'checkpoint {which!r} is unknown; pass --checkpoint='
        + '|'.join(checkpoint.CHECKPOINT_CHOICES)
    )
  return which


def load_runs(workdirs: Sequence[str], which: str | None = None) -> list[Run]:
  """Restores config and variables of each run directory.

  Args:
    workdirs: training run directories.
    which: 'best' or 'latest' for every run; None: each run's own
      config.eval_checkpoint (`checkpoint_of`).

  Raises:
    console.UserError: a directory is not a run, or has no readable
      checkpoint of the kind asked for.
  """
  check_run_dirs(workdirs)
  runs = []
  for name, workdir in zip(unique_run_names(workdirs), workdirs):
    config = checkpoint.load_run_config(workdir)
    run_which = checkpoint_of(config, which)
    try:
      variables, step = checkpoint.restore_variables(workdir, which=run_which)
    except (FileNotFoundError, checkpoint.CheckpointReadError) as e:
      raise console.UserError(f'--runs: {workdir}: {e}') from e
    runs.append(Run(name, str(workdir), config, variables, step, run_which))
  return runs


def model_group_key(config: Any) -> str:
  """Runs with equal keys have the same architecture and input shape.

  Dropout and kernel_init are left out: neither changes the variables'
  structure nor the forward pass in eval mode.
  """
  model = (
      config.model.to_dict()
      if hasattr(config.model, 'to_dict')
      else dict(config.model)
  )
  model.pop('dropout_rate', None)
  model.pop('kernel_init', None)
  key = {
      'model': model,
      'image_size': int(config.image_size),
      'dtype': str(config.get('dtype', 'float32')),
  }
  return json.dumps(key, sort_keys=True, default=str)


def group_runs(configs: Sequence[Any]) -> dict[str, list[int]]:
  """{group key: [run indices]}, in the order the runs were given."""
  groups: dict[str, list[int]] = {}
  for i, config in enumerate(configs):
    groups.setdefault(model_group_key(config), []).append(i)
  return groups


def stack_variables(variables_list: Sequence[Any]) -> Any:
  """Stacks same-structure variable trees along a new leading runs axis."""
  structures = {str(jax.tree.structure(v)) for v in variables_list}
  if len(structures) != 1:
    raise ValueError(
        'Runs grouped together have different variable trees; '
        'were they trained with different model configs?'
    )
  return jax.tree.map(
      lambda *xs: np.stack([np.asarray(x) for x in xs]), *variables_list
  )


def fracture_log_probability(
    module: nn.Module,
    variables: Any,
    images_bhwc: jax.Array,
    *,
    standardize: bool = True,
) -> jax.Array:
  """log p(fracture), float32 [B], of one run in eval mode.

  Args:
    module: the run's linen module.
    variables: its {'params', 'batch_stats'}.
    images_bhwc: float [B, H, W, 1], in [0, 1] (standardized per image here,
      as in training) or already standardized (standardize=False).
    standardize: whether to standardize the images first.
  """
  outputs = models.forward.apply_eval(
      module.apply, variables, images_bhwc, standardize=standardize
  )
  return log_fracture(outputs.logits)


def log_fracture(logits_xc: jax.Array) -> jax.Array:
  """log p(fracture), float32 [...], of logits [..., C] (class 1 = fracture).

  log p1 = -log(1 + sum_{j != 1} exp(l_j - l_1)) = -softplus(logsumexp(.)).
  `log_softmax(logits)[..., 1]` = l_1 - logsumexp(l) rounds to exactly 0 in
  float32 once l_1 - l_0 > ~17; this form keeps ~7 digits of 1 - p.
  """
  logits = logits_xc.astype(jnp.float32)
  others = jnp.delete(logits, 1, axis=-1, assume_unique_indices=True)
  return -jax.nn.softplus(jax.nn.logsumexp(others - logits[..., 1:2], axis=-1))


def case_log_fracture(
    module: nn.Module,
    variables: Any,
    images_bvhw1: jax.Array,
    view_mask_bv: jax.Array,
    with_attention: bool = False,
) -> tuple[jax.Array, ...]:
  """A multi-view run in eval mode: (case log p(fracture) float32 [B], each
  view's own log p(fracture) float32 [B, V]) and, with_attention, the fusion
  weights float32 [B, V]; images in [0, 1]."""
  outputs = models.forward.apply_eval(
      module.apply, variables, images_bvhw1, view_mask_bv
  )
  logs = log_fracture(outputs.logits), log_fracture(outputs.view_logits)
  return logs + (outputs.attention,) if with_attention else logs


@dataclasses.dataclass(frozen=True)
class ViewsAsCase:
  """A multi-view model behind the per-view calling convention, for the
  saliency maps: apply(variables, images [V, H, W, 1]) reads the V images as
  ONE case (one_case=True: logits [1, C], so Grad-CAM differentiates the case
  evidence and gets one map per view) or each image as a one-view case
  (one_case=False: logits [V, C]; occlusion of a view judged alone)."""

  model: nn.Module
  one_case: bool = True

  def apply(self, variables, images_bhwc, train=False, **kwargs):
    x = images_bhwc[None] if self.one_case else images_bhwc[:, None]
    outputs = self.model.apply(variables, x, None, train=train, **kwargs)
    return models.ModelOutputs(outputs.logits, outputs.aux_logits)


def probability_from_log(log_probs: Any) -> np.ndarray:
  """float64 probabilities from log-probabilities (any shape)."""
  return np.exp(np.asarray(log_probs, np.float64))


def make_forward(module: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
  """A jitted forward over stacked runs.

  Returns:
    f(variables_r, images_bhwc) -> log p(fracture), float32 [runs, B], with
    variables_r the runs-stacked variables and images_bhwc in [0, 1].
  """

  def forward(variables_r, images_bhwc):
    return jax.vmap(lambda v: fracture_log_probability(module, v, images_bhwc))(
        variables_r
    )

  return jax.jit(forward)


def make_case_forward(
    module: nn.Module, with_attention: bool = False
) -> Callable[..., Any]:
  """A jitted forward of stacked multi-view runs.

  Returns:
    f(variables_r, images_bvhw1, view_mask_bv) -> (case log p [runs, B],
    view log p [runs, B, V]) and, with_attention, the fusion weights [runs,
    B, V]; float32, images in [0, 1].
  """

  def forward(variables_r, images_bvhw1, view_mask_bv):
    return jax.vmap(
        lambda v: case_log_fracture(
            module, v, images_bvhw1, view_mask_bv, with_attention
        )
    )(variables_r)

  return jax.jit(forward)


# The keys of a batch of views (data.pipeline.iterate_eval_batches) that are
# not per-view features.
VIEW_BATCH_KEYS = ('image', 'label', 'case_id', 'view_index', 'mask')


def _as_str(values: Any) -> np.ndarray:
  return np.array(
      [
          v.decode() if isinstance(v, bytes) else str(v)
          for v in np.asarray(values).ravel()
      ],
      dtype=object,
  )


def feature_names(batch: Mapping[str, Any]) -> list[str]:
  """The per-view features of a batch of views: its keys beyond
  VIEW_BATCH_KEYS (data.pipeline.VIEW_FEATURES, where the dataset has them)."""
  return [k for k in batch if k not in VIEW_BATCH_KEYS]


def _joined_features(
    parts: Mapping[str, list[np.ndarray]], num_batches: int
) -> dict[str, np.ndarray] | None:
  """{field: str [views]} of the fields every batch carried, or None."""
  joined = {
      k: np.concatenate(v).astype(str)
      for k, v in parts.items()
      if len(v) == num_batches
  }
  return joined or None


def predict_group(
    forward: Callable[[Any, jax.Array], jax.Array],
    variables_r: Any,
    batches: Iterable[Mapping[str, Any]],
) -> SplitPredictions:
  """Runs one group's stacked models over a split's batches of views; the
  batches' features (`feature_names`) go to features_v."""
  case_ids, view_index, labels, log_probs = [], [], [], []
  features: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    mask = np.asarray(batch.get('mask', np.ones(len(batch['label']), bool)))
    log_probs_rb = np.asarray(forward(variables_r, jnp.asarray(batch['image'])))
    case_ids.append(_as_str(batch['case_id'])[mask])
    view_index.append(np.asarray(batch['view_index'])[mask])
    labels.append(np.asarray(batch['label'])[mask])
    log_probs.append(log_probs_rb[:, mask])
    for name in feature_names(batch):
      features.setdefault(name, []).append(_as_str(batch[name])[mask])
  if not case_ids:
    raise ValueError('The split has no views to evaluate.')
  return SplitPredictions(
      case_ids_v=np.concatenate(case_ids).astype(str),
      view_index_v=np.concatenate(view_index).astype(np.int64),
      labels_v=np.concatenate(labels).astype(np.int64),
      probs_rv=probability_from_log(np.concatenate(log_probs, axis=1)),
      features_v=_joined_features(features, len(case_ids)),
  )


def _align(reference: SplitPredictions, other: SplitPredictions) -> np.ndarray:
  """Indices putting `other`'s views in `reference`'s order."""
  position = {
      (c, int(v)): i
      for i, (c, v) in enumerate(zip(other.case_ids_v, other.view_index_v))
  }
  keys = list(zip(reference.case_ids_v, reference.view_index_v))
  if len(position) != len(keys) or any(
      (c, int(v)) not in position for c, v in keys
  ):
    raise ValueError('Model groups saw different views of the same split.')
  return np.array([position[(c, int(v))] for c, v in keys])


_Case = tuple[str, int, list[int], list[np.ndarray], dict[str, list[str]]]


def _cases_of(view_batches: Iterable[Mapping[str, Any]]) -> Iterator[_Case]:
  """(case_id, label, view indices, images [S, S, 1], {feature: values per
  view}) per case, from eval batches of views in which each case's views are
  adjacent."""
  case = None
  for batch in view_batches:
    mask = np.asarray(batch.get('mask', np.ones(len(batch['label']), bool)))
    case_ids = _as_str(batch['case_id'])
    features = {k: _as_str(batch[k]) for k in feature_names(batch)}
    for j in np.flatnonzero(mask):
      if case is None or case[0] != case_ids[j]:
        if case is not None:
          yield case
        case = (case_ids[j], int(batch['label'][j]), [], [], {})
      case[2].append(int(batch['view_index'][j]))
      case[3].append(np.asarray(batch['image'][j]))
      for k, values in features.items():
        case[4].setdefault(k, []).append(values[j])
  if case is not None:
    yield case


def case_batches(
    view_batches: Iterable[Mapping[str, Any]], cases_per_batch: int
) -> Iterator[dict[str, np.ndarray]]:
  """Regroups eval batches of views into batches of `cases_per_batch` cases.

  Yields {'image': float32 [B, V, S, S, 1], 'view_mask': bool [B, V],
  'view_index': int [B, V] (-1 at padding), 'label': int [B], 'case_id':
  object [B], 'mask': bool [B], 'features': {field: object [B, V] of str
  ('' at padding)} (the view batches' `feature_names`; may be empty)}; V is
  the most views of a case in that batch (so each V met compiles once), the
  last batch is padded with empty cases.
  """
  stream = _cases_of(view_batches)
  cases = list(itertools.islice(stream, cases_per_batch))
  while cases:
    num_slots = max(len(c[2]) for c in cases)
    shape = cases[0][3][0].shape
    batch = {
        'image': np.zeros((cases_per_batch, num_slots) + shape, np.float32),
        'view_mask': np.zeros((cases_per_batch, num_slots), bool),
        'view_index': np.full((cases_per_batch, num_slots), -1, np.int64),
        'label': np.zeros((cases_per_batch,), np.int32),
        'case_id': np.full((cases_per_batch,), '', dtype=object),
        'mask': np.zeros((cases_per_batch,), bool),
        'features': {
            k: np.full((cases_per_batch, num_slots), '', dtype=object)
            for k in cases[0][4]
        },
    }
    for b, (case_id, label, view_index, images, features) in enumerate(cases):
      n = len(view_index)
      for k, values in features.items():
        if k in batch['features']:
          batch['features'][k][b, :n] = values
      batch['image'][b, :n] = np.stack(images)
      batch['view_mask'][b, :n] = True
      batch['view_index'][b, :n] = view_index
      batch['label'][b], batch['case_id'][b], batch['mask'][b] = (
          label,
          case_id,
          True,
      )
    yield batch
    cases = list(itertools.islice(stream, cases_per_batch))


def predict_case_group(
    forward: Callable[..., Any],
    variables_r: Any,
    batches: Iterable[Mapping[str, Any]],
) -> SplitPredictions:
  """One group of stacked multi-view runs over case batches: each view's
  own probability in probs_rv, the case probability in case_probs_rc, the
  batches' per-view features in features_v."""
  case_ids, view_index, labels, log_probs = [], [], [], []
  case_log_probs, case_order = [], []
  features: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    case_log_rb, view_log_rbv = (
        np.asarray(x)
        for x in forward(
            variables_r,
            jnp.asarray(batch['image']),
            jnp.asarray(batch['view_mask']),
        )
    )
    real_bv = batch['view_mask'] & batch['mask'][:, None]
    case_ids.append(np.repeat(batch['case_id'], real_bv.sum(axis=1)))
    view_index.append(batch['view_index'][real_bv])
    labels.append(np.repeat(batch['label'], real_bv.sum(axis=1)))
    log_probs.append(view_log_rbv[:, real_bv])
    case_log_probs.append(case_log_rb[:, batch['mask']])
    case_order.append(_as_str(batch['case_id'][batch['mask']]))
    for k, values_bv in batch.get('features', {}).items():
      features.setdefault(k, []).append(values_bv[real_bv])
  if not case_ids:
    raise ValueError('The split has no views to evaluate.')
  preds = SplitPredictions(
      case_ids_v=np.concatenate(case_ids).astype(str),
      view_index_v=np.concatenate(view_index).astype(np.int64),
      labels_v=np.concatenate(labels).astype(np.int64),
      probs_rv=probability_from_log(np.concatenate(log_probs, axis=1)),
      features_v=_joined_features(features, len(case_ids)),
  )
  # Rows in cases().case_ids_c order (sorted), whatever order cases came in.
  position = {c: i for i, c in enumerate(np.concatenate(case_order))}
  order = [position[c] for c in preds.cases().case_ids_c]
  case_log_rc = np.concatenate(case_log_probs, axis=1)[:, order]
  preds.case_probs_rc = probability_from_log(case_log_rc)
  preds.multiview_r = np.ones(len(case_log_rc), bool)
  return preds


def predict_run_group(
    config: Any,
    variables_r: Any,
    batches_for: Callable[[int], Iterable[Mapping[str, Any]]],
    cases_per_batch: int,
) -> SplitPredictions:
  """One group of stacked runs (per-view or multi-view) over a split."""
  module = models.from_run_config(config)
  view_batches = batches_for(int(config.image_size))
  if not models.is_multiview(config.model):
    return predict_group(make_forward(module), variables_r, view_batches)
  return predict_case_group(
      make_case_forward(module),
      variables_r,
      case_batches(view_batches, cases_per_batch),
  )


def predict_split(
    runs: Sequence[Run],
    batches_for: Callable[[int], Iterable[Mapping[str, Any]]],
    cases_per_batch: int = 8,
) -> SplitPredictions:
  """All runs' probabilities on one split: one vmapped forward per group.

  Args:
    runs: the restored runs.
    batches_for: image_size -> iterable of eval batches of views ('image'
      [B,S,S,1] in [0, 1], 'label', 'case_id', 'view_index', 'mask'), each
      case's views adjacent; multi-view runs regroup them (`case_batches`).
    cases_per_batch: cases per forward batch of a multi-view run.

  Returns:
    SplitPredictions with probs_rv in the order of `runs` and, when a run is
    multi-view, case_probs_rc and multiview_r; features_v is the first
    group's (every group sees the same views, `_align`).
  """
  result, probs_rv, group_cases = None, None, {}
  for indices in group_runs([r.config for r in runs]).values():
    group = predict_run_group(
        runs[indices[0]].config,
        stack_variables([runs[i].variables for i in indices]),
        batches_for,
        cases_per_batch,
    )
    if result is None:
      result = group
      probs_rv = np.zeros((len(runs), len(group.labels_v)))
      order = np.arange(len(group.labels_v))
    else:
      order = _align(result, group)
    probs_rv[indices] = group.probs_rv[:, order]
    if group.case_probs_rc is not None:
      group_cases.update(zip(indices, group.case_probs_rc))
  result.probs_rv = probs_rv
  if group_cases:  # Per-view runs' rows: their soft votes.
    case_probs_rc = voting.run_case_probs(probs_rv, result.cases())
    for r, case_probs_c in group_cases.items():
      case_probs_rc[r] = case_probs_c
    result.case_probs_rc = case_probs_rc
    result.multiview_r = np.array([r in group_cases for r in range(len(runs))])
  return result

"""Warm start of a multi-view model from a per-view run of the same family.

`config.model.multiview.init_from=RUN_DIR` names a per-view run (its
`init_checkpoint`, 'best' or 'latest'). What it gives the multi-view model
(ankle_jax.models.multiview):

  * params['trunk'] and batch_stats['trunk'] = the run's params and BatchNorm
    statistics, exactly (its aux tower and its own classifier included);
  * params['case_head'] = the run's classifier Dense (the one inside its
    layers.ClassifierHead), so the case head applied to one view's pooled
    features is the per-view model's logits of that view;
  * with attention fusion, attention_w = 0: the attention weights start
    uniform (softmax of equal scores), so 'attention' starts as 'mean'. Its
    gate (attention_v, attention_u) keeps its random init; w gets a gradient
    at step 0, the gate from step 1.

So at step 0 a 'mean' or 'attention' model's case logits are the mean over
the case's views of the per-view model's logits (the head is linear), its
case probability softmax(mean logits): a vote on the logit scale, next to
the per-view soft vote mean(softmax(logits)). tests/test_warm_start.py bounds
the first against the per-view model (1e-5) and measures the second. 'max'
fusion gets the same trunk and head, with no such equality.

The trunk's schedule (`state.TrunkSchedule`): frozen for
`freeze_trunk_steps` steps (an Adam on a learning rate of 0, and its
BatchNorm statistics kept: steps.kept_batch_stats), then
`trunk_lr_scale` x the run's learning rate. Both act only on a warm-started
run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import writers
from ankle_jax.models import layers
from ankle_jax.training import state as state_lib

# The model fields a source run must share with the multi-view trunk.
MATCHED_FIELDS = (
    'name',
    'width_multiplier',
    'aux_head',
    'kwargs',
    'kernel_init',
)
FIELD = 'config.model.multiview.init_from'


@dataclasses.dataclass(frozen=True)
class WarmStart:
  """A multi-view run's warm start (config.model.multiview).

  source: the per-view run directory; checkpoint: 'best' or 'latest' of it;
  trunk: the trunk's schedule while fine-tuning.
  """

  source: str
  checkpoint: str = checkpoint.DEFAULT_CHECKPOINT
  trunk: state_lib.TrunkSchedule = state_lib.TrunkSchedule()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> WarmStart | None:
    """None when the run is not warm-started (no init_from)."""
    views = config.model.get('multiview')
    if views is None or not views.get('init_from'):
      return None
    return cls(
        source=str(views.init_from),
        checkpoint=str(views.init_checkpoint),
        trunk=state_lib.TrunkSchedule(
            int(views.freeze_trunk_steps), float(views.trunk_lr_scale)
        ),
    )


def _field(model_config: Any, name: str) -> Any:
  value = model_config.get(name)
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return value


def check_source(
    warm: WarmStart, config: ml_collections.ConfigDict, workdir: str
) -> None:
  """Checks the source run against the multi-view config, before any heavy
  work.

  Raises:
    console.UserError: naming both runs: no run at warm.source, a multi-view
      source, or a model field (MATCHED_FIELDS, num_classes) that differs.
  """
  path = epath.Path(warm.source)
  where = f'{FIELD}={warm.source} (for the multi-view run {workdir})'
  if not (path / writers.CONFIG_FILE).exists():
    raise console.UserError(
        f'{where}: no training run there (no {writers.CONFIG_FILE}); train '
        f'the per-view run first: python launch.py --config=... '
        f'--workdir={warm.source}'
    )
  source = checkpoint.load_run_config(path)
  if source.model.get('multiview', {}).get('enabled', False):
    raise console.UserError(
        f'{where} is a multi-view run; a warm start needs a per-view run '
        'of the same family and width.'
    )
  theirs = {f: _field(source.model, f) for f in MATCHED_FIELDS}
  ours = {f: _field(config.model, f) for f in MATCHED_FIELDS}
  theirs['num_classes'] = source.get('num_classes')
  ours['num_classes'] = config.get('num_classes')
  differ = [f for f in theirs if theirs[f] != ours[f]]
  if differ:
    pairs = ', '.join(f'{f} {theirs[f]!r} vs {ours[f]!r}' for f in differ)
    raise console.UserError(
        f'{where}: the runs differ in model.{differ[0]} ({warm.source} vs '
        f'{workdir}: {pairs});\na warm start needs the same family, width '
        'and heads.'
    )


def restore_source(warm: WarmStart) -> dict[str, Any]:
  """The source run's {'params', 'batch_stats'} (numpy).

  Raises:
    console.UserError: the run has no such checkpoint.
  """
  try:
    variables, _ = checkpoint.restore_variables(warm.source, warm.checkpoint)
  except (FileNotFoundError, checkpoint.CheckpointReadError) as e:
    raise console.UserError(f'{FIELD}={warm.source}: {e}') from e
  return variables


def classifier_path(trunk: nn.Module, image_size: int) -> tuple[str, ...]:
  """The params path of the per-view model's classifier Dense: the
  layers.ClassifierHead's path (found by tracing an init, no compute) plus
  its 'dense'."""
  paths = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(
        context.module, layers.ClassifierHead
    ):
      paths.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  images = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(
        lambda: trunk.init(jax.random.PRNGKey(0), images, train=False)
    )
  if len(paths) != 1:
    raise ValueError(f'{len(paths)} ClassifierHead calls in the trunk')
  return paths[0] + ('dense',)


def _at(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _check_same_structure(ours: Any, theirs: Any, what: str) -> None:
  shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)
  if jax.tree.structure(ours) != jax.tree.structure(theirs) or shapes(
      ours
  ) != shapes(theirs):
    raise console.UserError(
        f"{FIELD}: the source run's {what} do not fit the multi-view "
        'trunk (another family, width or head?).'
    )


def warm_started_variables(
    params: Any,
    batch_stats: Any,
    source: dict[str, Any],
    head_path: tuple[str, ...],
) -> tuple[Any, Any]:
  """A multi-view model's (params, batch_stats) with the trunk, case head
  and attention set from the per-view `source` variables (module
  docstring)."""
  _check_same_structure(params['trunk'], source['params'], 'parameters')
  _check_same_structure(
      batch_stats.get('trunk', {}), source['batch_stats'], 'BN statistics'
  )
  as_ours = lambda new, old: jnp.asarray(new, dtype=jnp.asarray(old).dtype)
  params = dict(params)
  params['trunk'] = jax.tree.map(as_ours, source['params'], params['trunk'])
  head = _at(source['params'], head_path)
  params['case_head'] = jax.tree.map(as_ours, head, params['case_head'])
  if 'attention' in params:
    attention = dict(params['attention'])
    attention['attention_w'] = jax.tree.map(
        jnp.zeros_like, attention['attention_w']
    )
    params['attention'] = attention
  batch_stats = dict(batch_stats)
  if source['batch_stats']:
    batch_stats['trunk'] = jax.tree.map(
        as_ours, source['batch_stats'], batch_stats['trunk']
    )
  return params, batch_stats


def warm_started(
    state: state_lib.TrainState,
    trunk: nn.Module,
    image_size: int,
    warm: WarmStart,
) -> state_lib.TrainState:
  """The fresh multi-view `state` with the warm start's variables (the
  optimizer state, zeros of the same shapes, stays)."""
  source = restore_source(warm)
  params, batch_stats = warm_started_variables(
      state.params,
      state.batch_stats,
      source,
      classifier_path(trunk, image_size),
  )
  return state.replace(params=params, batch_stats=batch_stats)

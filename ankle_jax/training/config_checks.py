"""The config checks: every field a run reads, checked before any heavy work
(each fact here, once)."""

import ml_collections

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import models
from ankle_jax.training import inputs
from ankle_jax.training import validation

MIN_IMAGE_SIZE = 75
DTYPES = models.DTYPES
LR_SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
L2_SCOPES = ('dense', 'all')
POSITIVE_FIELDS = (
    'batch_size',
    'eval_batch_size',
    'log_every_steps',
    'eval_every_steps',
    'checkpoint_every_steps',
)
# 0 (or None) = off.
NON_NEGATIVE_FIELDS = ('checkpoint_every_seconds', 'eval_every_seconds')


def _check_choice(config: ml_collections.ConfigDict, field: str, valid) -> None:
  value = config
  for part in field.split('.'):
    value = value[part]
  if value not in valid:
    what = 'names' if field == 'model.name' else 'values'
    raise console.UserError(
        f'config.{field}={value!r} is unknown; valid {what}: '
        + ', '.join(valid)
    )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the config before any heavy work (each fact here, once).

  Raises:
    console.UserError: naming the field, its value and what is valid.
  """
  _check_choice(config, 'model.name', models.MODEL_NAMES)
  _check_choice(config, 'model.kernel_init', models.KERNEL_INITS)
  if 'conv_impl' in config.model:
    _check_choice(config, 'model.conv_impl', models.CONV_IMPLS)
  _check_choice(config, 'eval_checkpoint', checkpoint.CHECKPOINT_CHOICES)
  _check_choice(config, 'dtype', DTYPES)
  _check_choice(config, 'optimizer', ('adam',))
  _check_choice(config, 'lr_schedule', LR_SCHEDULES)
  _check_choice(config, 'l2_scope', L2_SCOPES)
  _check_choice(config, 'best_metric', sorted(validation.METRIC_MODES))
  _check_choice(config, 'data.on_device', inputs.ON_DEVICE_CHOICES)
  _check_data_placement(config.data)
  _check_cv_fold(config.data)
  if config.image_size < MIN_IMAGE_SIZE:
    raise console.UserError(
        f'config.image_size={config.image_size} is too small: the models '
        f'need at least {MIN_IMAGE_SIZE} px'
    )
  for field in POSITIVE_FIELDS:
    if config[field] <= 0:
      raise console.UserError(
          f'config.{field}={config[field]} must be positive'
      )
  for field in NON_NEGATIVE_FIELDS:
    value = config.get(field)
    if value is not None and not (
        isinstance(value, (int, float)) and value >= 0
    ):
      raise console.UserError(
          f'config.{field}={value!r}; expected seconds >= 0 (0 = off)'
      )
  max_views = config.data.max_eval_views
  if not isinstance(max_views, int) or max_views < 0:
    raise console.UserError(
        f'config.data.max_eval_views={max_views!r}; expected 0 (every view) '
        'or the number of views per evaluation case (the paper: 3)'
    )
  if config.class_weights is not None and len(config.class_weights) != 2:
    raise console.UserError(
        f'config.class_weights={config.class_weights!r}; expected None or '
        '[w_normal, w_fracture]'
    )
  _validate_augment_config(config.augment)
  if models.is_multiview(config.model):
    _validate_multiview_config(config)
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise console.UserError(
        'set config.num_train_steps > 0 or config.num_epochs > 0'
    )
  _check_model(config)


def _check_cv_fold(data: ml_collections.ConfigDict) -> None:
  """data.cv_folds / data.cv_fold (-1 = off)."""
  folds, fold = data.get('cv_folds', 5), data.get('cv_fold', -1)
  if fold == -1:
    return
  if not isinstance(folds, int) or folds < 2:
    raise console.UserError(
        f'config.data.cv_folds={folds!r}; expected 2 or more folds'
    )
  if not isinstance(fold, int) or not 0 <= fold < folds:
    raise console.UserError(
        f'config.data.cv_fold={fold!r} with data.cv_folds={folds}; expected '
        f'0..{folds - 1}, or -1 (no cross-validation)'
    )
  if (data.train_split, data.eval_split) != ('train', 'validation'):
    raise console.UserError(
        'config.data.cv_fold draws its folds from the train and validation '
        f'splits: leave data.train_split and data.eval_split at their defaults '
        f'(got {data.train_split!r}, {data.eval_split!r})'
    )


def _check_data_placement(data: ml_collections.ConfigDict) -> None:
  """data.worker_count ('auto' or an int >= 0) and the on-device budget."""
  workers = data.worker_count
  if workers != 'auto' and (
      isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
  ):
    raise console.UserError(
        f"config.data.worker_count={workers!r}; expected 'auto' or the "
        'number of grain worker processes (0 = in the training process)'
    )
  fraction = data.on_device_budget_fraction
  if not 0 < fraction <= 1:
    raise console.UserError(
        f'config.data.on_device_budget_fraction={fraction!r}; expected a '
        'fraction of the device memory in (0, 1]'
    )


def _validate_augment_config(augment_config: ml_collections.ConfigDict):
  """Raises UserError naming the first augment.* field out of its range."""
  bounds = {'contrast': 0.0, 'gamma': 1e-6}
  for name, lowest in bounds.items():
    lower = augment_config[f'{name}_lower']
    upper = augment_config[f'{name}_upper']
    if not lowest <= lower <= upper:
      raise console.UserError(
          f'config.augment.{name}_lower/upper=({lower}, {upper}); expected '
          f'{lowest} <= lower <= upper ((1.0, 1.0) = off)'
      )
  if not 0.0 <= augment_config.window_jitter < 0.5:
    raise console.UserError(
        f'config.augment.window_jitter={augment_config.window_jitter}; '
        'expected 0 <= window_jitter < 0.5 (0 = off)'
    )
  if not 0.0 < augment_config.crop_scale_lower <= 1.0:
    raise console.UserError(
        f'config.augment.crop_scale_lower={augment_config.crop_scale_lower}; '
        'expected 0 < crop_scale_lower <= 1 (1 = off)'
    )


def _validate_multiview_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first model.multiview.* field out of range,
  or a best_metric that scores views alone."""
  _check_choice(config, 'model.multiview.fusion', models.multiview.FUSIONS)
  _check_choice(
      config, 'model.multiview.init_checkpoint', checkpoint.CHECKPOINT_CHOICES
  )
  if config.best_metric not in validation.MULTIVIEW_METRIC_NAMES:
    raise console.UserError(
        f'config.best_metric={config.best_metric!r} scores each view alone, '
        'not the case a multi-view run (config.model.multiview.enabled) '
        'classifies;\nvalid values for a multi-view run: '
        + ', '.join(validation.MULTIVIEW_METRIC_NAMES)
    )
  views = config.model.multiview
  checks = (
      ('max_views', views.max_views >= 1, '>= 1 (views per case)'),
      ('view_dropout', 0.0 <= views.view_dropout < 1.0, 'in [0, 1)'),
      ('view_loss_weight', views.view_loss_weight >= 0.0, '>= 0'),
      ('freeze_trunk_steps', views.freeze_trunk_steps >= 0, '>= 0'),
      ('trunk_lr_scale', views.trunk_lr_scale >= 0.0, '>= 0'),
      ('per_view_steps', views.per_view_steps >= 0, '>= 0 (0: no stage)'),
  )
  for field, ok, expected in checks:
    if not ok:
      raise console.UserError(
          f'config.model.multiview.{field}={views[field]!r}; expected '
          f'{expected}'
      )


def _check_model(config: ml_collections.ConfigDict) -> None:
  """Raises UserError when `models` refuses config.model (family options,
  dropout, width)."""
  try:
    models.from_run_config(config)
  except ValueError as e:
    raise console.UserError(f'config.model: {e}') from e

"""Training: train state, jitted train/eval steps, and the train-and-evaluate
loop.

In the style of Flax's examples/imagenet/train.py. The config is read here (and
in launch.py) only; everything below `train_and_evaluate` takes plain arguments.

Loss (SPEC sec. 2):
  loss = CE(logits, labels; class weights)
       + l2_alpha * sum(W**2) / 2   over `l2_scope` ('dense': params named 'kernel'
                                    with ndim == 2, main and aux heads; 'all':
                                    every 'kernel')
       + aux_loss_weight * CE(aux_logits, labels; class weights)
CE is the per-example softmax cross-entropy times the weight of the example's
class, averaged over the batch (tf.losses' SUM_BY_NONZERO_WEIGHTS with positive
weights).

Data parallelism: a 1-D Mesh over all devices with axis 'data'; every batch is
sharded on axis 0 and the train state is replicated (NamedSharding). Each
process reads the same global batch and places only its devices' slices, so the
data order is the same whatever the number of devices or hosts.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import functools
import math
import subprocess
import sys
import time
from typing import Any

from absl import logging
from etils import epath
import flax.linen as nn
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import ml_collections
import numpy as np
import optax

from ankle_jax import checkpoint
from ankle_jax import metrics as metrics_lib
from ankle_jax import voting
from ankle_jax import writers
from ankle_jax.data import augment

MIN_IMAGE_SIZE = 75
DATASET_NAME = 'radiograph_studies'
FALLBACK_MODEL_NAMES = ('inception_v3', 'resnet101_v2', 'xception')


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or inf."""


class DatasetMissingError(FileNotFoundError):
  """Raised when the prepared TFDS dataset is not under data.data_dir."""


class TrainState(flax_train_state.TrainState):
  """params, opt_state, step (from flax's TrainState) + BatchNorm stats + base
  RNG.

  The RNG is a raw uint32[2] key; the key of step s is fold_in(rng, s), so it
  never has to be advanced and resumes exactly.
  """

  batch_stats: Any = None
  rng: jax.Array = None


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
  """Static augmentation settings (hashable, so it can be a jit static argument)."""

  rotation_degrees: float = 0.0
  flip_lr: bool = False
  flip_ud: bool = False
  brightness_delta: float = 0.0
  contrast_range: tuple[float, float] | None = None

  @classmethod
  def from_config(
      cls, augment_config: ml_collections.ConfigDict
  ) -> 'AugmentSettings':
    lower, upper = augment_config.contrast_lower, augment_config.contrast_upper
    contrast = (
        None if (lower, upper) == (1.0, 1.0) else (float(lower), float(upper))
    )
    return cls(
        rotation_degrees=float(augment_config.rotation_degrees),
        flip_lr=bool(augment_config.flip_lr),
        flip_ud=bool(augment_config.flip_ud),
        brightness_delta=float(augment_config.brightness_delta),
        contrast_range=contrast,
    )


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static loss settings."""

  l2_alpha: float = 0.0
  l2_scope: str = 'dense'
  aux_loss_weight: float = 0.0
  class_weights: tuple[float, ...] | None = None


# ----------------------------------------------------------------------------
# Config -> model, optimizer, state.
# ----------------------------------------------------------------------------


def model_names() -> tuple[str, ...]:
  try:
    from ankle_jax import models  # pylint: disable=g-import-not-at-top

    return tuple(models.MODEL_NAMES)
  except ImportError:
    return FALLBACK_MODEL_NAMES


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[config.dtype]


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the model described by config.model (via ankle_jax.models.build)."""
  from ankle_jax import models  # pylint: disable=g-import-not-at-top

  kwargs = config.model.kwargs.to_dict() if config.model.get('kwargs') else {}
  valid = getattr(models, 'FAMILY_KWARGS', {}).get(config.model.name)
  if valid is not None:
    dropped = sorted(set(kwargs) - set(valid))
    if dropped:
      logging.warning(
          'config.model.kwargs %s do not apply to %s; ignored.',
          dropped,
          config.model.name,
      )
    kwargs = {k: v for k, v in kwargs.items() if k in valid}
  return models.build(
      config.model.name,
      num_classes=config.get('num_classes', 2),
      aux_head=config.model.aux_head,
      dropout_rate=config.model.dropout_rate,
      width_multiplier=config.model.width_multiplier,
      dtype=compute_dtype(config),
      **kwargs,
  )


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, num_train_steps: int
) -> optax.Schedule:
  """The learning rate as a function of the step ('constant' in the paper)."""
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  if config.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(
        config.learning_rate, max(1, num_train_steps)
    )
  if config.lr_schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.warmup_steps + 1, num_train_steps),
    )
  raise ValueError(
      f'config.lr_schedule={config.lr_schedule!r}; expected '
      "'constant', 'cosine' or 'warmup_cosine'"
  )


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """Adam (b1, b2, eps from config), optionally after global-norm gradient clipping."""
  if config.optimizer != 'adam':
    raise ValueError(
        f"config.optimizer={config.optimizer!r}; only 'adam' is supported"
    )
  adam = optax.adam(
      learning_rate_fn,
      b1=config.adam_b1,
      b2=config.adam_b2,
      eps=config.adam_eps,
  )
  if config.grad_clip_norm and config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam)
  return adam


def initialized(
    key: jax.Array, image_size: int, model: nn.Module
) -> tuple[Any, Any]:
  """(params, batch_stats) of `model` for [1, S, S, 1] images."""
  images = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(key, images)
  return variables['params'], variables.get('batch_stats', {})


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    rng: jax.Array,
    image_size: int,
    num_train_steps: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
) -> TrainState:
  """A fresh TrainState: initialized variables, Adam state, step 0 and base RNG.

  Args:
    config: the run config (optimizer fields).
    model: a linen Module following the ankle_jax.models calling convention.
    rng: a raw jax.random key (uint32[2]); split into an init key and the state
      RNG.
    image_size: input side length S in pixels.
    num_train_steps: length of the run (for decaying schedules).
    learning_rate_fn: the schedule; created from the config when None.
  """
  init_key, state_key = jax.random.split(rng)
  params, batch_stats = initialized(init_key, image_size, model)
  if learning_rate_fn is None:
    learning_rate_fn = create_learning_rate_fn(config, num_train_steps)
  tx = create_optimizer(config, learning_rate_fn)
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=tx,
      batch_stats=batch_stats,
      rng=state_key,
  )


def loss_settings(config: ml_collections.ConfigDict) -> LossSettings:
  class_weights = config.get('class_weights')
  return LossSettings(
      l2_alpha=float(config.l2_alpha),
      l2_scope=config.l2_scope,
      aux_loss_weight=float(config.aux_loss_weight),
      class_weights=None
      if class_weights is None
      else tuple(float(w) for w in class_weights),
  )


# ----------------------------------------------------------------------------
# Loss pieces.
# ----------------------------------------------------------------------------


def l2_sum(params: Any, scope: str = 'dense') -> jax.Array:
  """sum(W**2) / 2 over the kernels in `scope` ('dense': 2-D 'kernel's; 'all')."""
  if scope not in ('dense', 'all'):
    raise ValueError(f"l2_scope={scope!r}; expected 'dense' or 'all'")
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    last = path[-1]
    name = getattr(last, 'key', getattr(last, 'name', None))
    if name != 'kernel':
      continue
    if scope == 'dense' and leaf.ndim != 2:
      continue
    total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return total / 2.0


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Mean over the batch of the softmax CE times the weight of each example's
  class.

  Args:
    logits: [B, C] (any float dtype; computed in float32).
    labels: int [B].
    class_weights: None (all 1) or C weights.
  """
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
  )
  if class_weights is not None:
    per_example = per_example * jnp.asarray(class_weights, jnp.float32)[labels]
  return jnp.mean(per_example)


def preprocess_train_images(
    key: jax.Array, images_bhwc: jax.Array, aug: AugmentSettings
) -> jax.Array:
  """Random augmentation then per-image standardization (train images)."""
  images = augment.augment_batch(
      key,
      images_bhwc,
      rotation_degrees=aug.rotation_degrees,
      flip_lr=aug.flip_lr,
      flip_ud=aug.flip_ud,
      brightness_delta=aug.brightness_delta,
      contrast_range=aug.contrast_range,
  )
  return augment.standardize_per_image(images)


def step_keys(
    base_rng: jax.Array, step: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(augmentation key, dropout key) of a step: the one place the step RNG is split."""
  aug_key, dropout_key = jax.random.split(jax.random.fold_in(base_rng, step))
  return aug_key, dropout_key


# ----------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: LossSettings,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch {'image': [B,S,S,1] in [0,1], 'label': int
  [B]}.

  Returns the new state and metrics (scalars): loss, ce, aux_ce, l2, accuracy,
  lr.
  """
  aug_key, dropout_key = step_keys(state.rng, state.step)
  images = preprocess_train_images(aug_key, batch['image'], aug)
  labels = batch['label']

  def loss_fn(params):
    outputs, new_model_state = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        train=True,
        rngs={'dropout': dropout_key},
        mutable=['batch_stats'],
    )
    ce = cross_entropy(outputs.logits, labels, loss_cfg.class_weights)
    if outputs.aux_logits is not None:
      aux_ce = cross_entropy(outputs.aux_logits, labels, loss_cfg.class_weights)
    else:
      aux_ce = jnp.zeros((), jnp.float32)
    l2 = loss_cfg.l2_alpha * l2_sum(params, loss_cfg.l2_scope)
    loss = ce + loss_cfg.aux_loss_weight * aux_ce + l2
    return loss, (outputs.logits, new_model_state, ce, aux_ce, l2)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, new_model_state, ce, aux_ce, l2)), grads = grad_fn(
      state.params
  )
  new_state = state.apply_gradients(
      grads=grads, batch_stats=new_model_state['batch_stats']
  )
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  metrics = {
      'loss': loss,
      'ce': ce,
      'aux_ce': aux_ce,
      'l2': l2,
      'accuracy': accuracy,
      'lr': learning_rate_fn(state.step),
  }
  return new_state, metrics


def forward_probs(
    apply_fn: Callable[..., Any],
    variables: Mapping[str, Any],
    images_bhwc: jax.Array,
) -> jax.Array:
  """Eval-mode class probabilities [B, C] of raw [0,1] images (standardized
  here).

  Uses the running BatchNorm statistics (train=False, nothing mutable).
  """
  outputs = apply_fn(
      variables, augment.standardize_per_image(images_bhwc), train=False
  )
  return jax.nn.softmax(outputs.logits.astype(jnp.float32), axis=-1)


def eval_step(
    state: TrainState, batch: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
  """Per-example eval outputs: 'probs' [B, C] and 'ce' [B] (softmax CE, unweighted)."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  outputs = state.apply_fn(
      variables, augment.standardize_per_image(batch['image']), train=False
  )
  logits = outputs.logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  return {'probs': jax.nn.softmax(logits, axis=-1), 'ce': ce}


# ----------------------------------------------------------------------------
# Devices.
# ----------------------------------------------------------------------------


def create_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def check_batch_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise ValueError(
        f'config.{field}={batch_size} is not divisible by the {num_devices} devices; '
        f'set --config.{field} to a multiple of {num_devices}'
    )


def shard_batch(
    batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    keys: Sequence[str] = ('image', 'label'),
) -> dict[str, jax.Array]:
  """Places the global host batch on the mesh, sharded on axis 0.

  Every process holds the same global batch and transfers only its devices'
  slices.
  """
  sharding = data_sharded(mesh)
  out = {}
  for key in keys:
    value = np.asarray(batch[key])
    out[key] = jax.make_array_from_callback(
        value.shape, sharding, lambda index, value=value: value[index]
    )
  return out


def compile_steps(
    mesh: Mesh,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: LossSettings,
):
  """(p_train_step, p_eval_step, p_preview): jitted with state replicated, batch sharded."""
  repl, data = replicated(mesh), data_sharded(mesh)
  p_train_step = jax.jit(
      functools.partial(
          train_step,
          learning_rate_fn=learning_rate_fn,
          aug=aug,
          loss_cfg=loss_cfg,
      ),
      in_shardings=(repl, data),
      out_shardings=(repl, repl),
      donate_argnums=(0,),
  )
  p_eval_step = jax.jit(
      eval_step, in_shardings=(repl, data), out_shardings=repl
  )

  def preview(state, images):
    aug_key, _ = step_keys(state.rng, state.step)
    return preprocess_train_images(aug_key, images, aug)

  p_preview = jax.jit(preview, in_shardings=(repl, data), out_shardings=repl)
  return p_train_step, p_eval_step, p_preview


# ----------------------------------------------------------------------------
# Validation of the config and data preparation.
# ----------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the config cannot work."""
  names = model_names()
  if config.model.name not in names:
    raise ValueError(
        f'config.model.name={config.model.name!r} is unknown; '
        f"valid names: {', '.join(names)}"
    )
  if config.image_size < MIN_IMAGE_SIZE:
    raise ValueError(
        f'config.image_size={config.image_size} is too small: the '
        f'models need at least {MIN_IMAGE_SIZE} px'
    )
  if config.dtype not in ('float32', 'bfloat16'):
    raise ValueError(
        f"config.dtype={config.dtype!r}; expected 'float32' or 'bfloat16'"
    )
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] <= 0:
      raise ValueError(f'config.{field}={config[field]} must be positive')
  if config.optimizer != 'adam':
    raise ValueError(
        f"config.optimizer={config.optimizer!r}; only 'adam' is supported"
    )
  if config.lr_schedule not in ('constant', 'cosine', 'warmup_cosine'):
    raise ValueError(
        f'config.lr_schedule={config.lr_schedule!r}; expected '
        "'constant', 'cosine' or 'warmup_cosine'"
    )
  if config.l2_scope not in ('dense', 'all'):
    raise ValueError(
        f"config.l2_scope={config.l2_scope!r}; expected 'dense' or 'all'"
    )
  if config.best_metric not in checkpoint.METRIC_MODES:
    raise ValueError(
        f'config.best_metric={config.best_metric!r}; expected one of '
        f'{sorted(checkpoint.METRIC_MODES)}'
    )
  if config.class_weights is not None and len(config.class_weights) != 2:
    raise ValueError(
        f'config.class_weights={config.class_weights!r}; expected None '
        'or [w_normal, w_fracture]'
    )
  lower, upper = config.augment.contrast_lower, config.augment.contrast_upper
  if not 0.0 <= lower <= upper:
    raise ValueError(
        f'config.augment.contrast_lower/upper=({lower}, {upper}); '
        'expected 0 <= lower <= upper'
    )
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError('set config.num_train_steps > 0 or config.num_epochs > 0')
  for field in (
      'log_every_steps',
      'eval_every_steps',
      'checkpoint_every_steps',
  ):
    if config[field] <= 0:
      raise ValueError(f'config.{field}={config[field]} must be positive')


def resolve_data_dirs(
    config: ml_collections.ConfigDict, workdir: epath.PathLike
) -> tuple[epath.Path, epath.Path]:
  """(data_dir, manual_dir); empty fields mean <workdir>/data/{tfds,studies}."""
  workdir = epath.Path(workdir)
  data_dir = epath.Path(config.data.data_dir or (workdir / 'data' / 'tfds'))
  manual_dir = epath.Path(
      config.data.manual_dir or (workdir / 'data' / 'studies')
  )
  return data_dir, manual_dir


def dataset_exists(data_dir: epath.PathLike, dataset_config: str) -> bool:
  root = epath.Path(data_dir) / DATASET_NAME / dataset_config
  return root.exists() and any(root.glob('*/dataset_info.json'))


def build_command(
    manual_dir: epath.PathLike, data_dir: epath.PathLike, dataset_config: str
) -> str:
  return (
      f'python -m ankle_jax.data.build --manual_dir={manual_dir} '
      f'--data_dir={data_dir} --config={dataset_config}'
  )


def prepare_dataset(
    config: ml_collections.ConfigDict, workdir: epath.PathLike
) -> epath.Path:
  """Makes sure the TFDS dataset exists; returns data_dir.

  With config.data.synthetic.enabled and no data.manual_dir, generates the
  synthetic studies into <workdir>/data/studies and builds them. Otherwise a
  missing dataset raises DatasetMissingError with the command that builds it.
  """
  data_dir, manual_dir = resolve_data_dirs(config, workdir)
  dataset_config = config.data.dataset_config
  if dataset_exists(data_dir, dataset_config):
    return data_dir
  synthetic = config.data.get('synthetic')
  if synthetic is not None and synthetic.enabled and not config.data.manual_dir:
    if jax.process_index() == 0:
      _generate_and_build_synthetic(
          synthetic, manual_dir, data_dir, dataset_config
      )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices('prepare_dataset')
    return data_dir
  raise DatasetMissingError(
      f'dataset {DATASET_NAME}/{dataset_config} not found under data_dir={data_dir}. '
      f"Build it first:\n  {build_command(config.data.manual_dir or 'DIR', data_dir, dataset_config)}\n"
      'where DIR holds normal/<case>/*.dcm and fracture/<case>/*.dcm '
      '(or set --config.data.data_dir to where it was built).'
  )


def _generate_and_build_synthetic(
    synthetic: ml_collections.ConfigDict,
    manual_dir: epath.Path,
    data_dir: epath.Path,
    dataset_config: str,
) -> None:
  from ankle_jax.data import synthetic as synthetic_lib  # pylint: disable=g-import-not-at-top

  if not (manual_dir.exists() and any(manual_dir.iterdir())):
    logging.info('Generating synthetic studies into %s', manual_dir)
    kwargs = {k: v for k, v in synthetic.to_dict().items() if k != 'enabled'}
    synthetic_lib.generate_studies(str(manual_dir), **kwargs)
  logging.info('Building %s/%s into %s', DATASET_NAME, dataset_config, data_dir)
  command = [
      sys.executable,
      '-m',
      'ankle_jax.data.build',
      f'--manual_dir={manual_dir}',
      f'--data_dir={data_dir}',
      f'--config={dataset_config}',
  ]
  result = subprocess.run(command, check=False)
  if result.returncode != 0:
    raise RuntimeError(
        f"building the synthetic dataset failed: {' '.join(command)}"
    )


# ----------------------------------------------------------------------------
# Evaluation on the host.
# ----------------------------------------------------------------------------


def evaluate(
    p_eval_step,
    state: TrainState,
    batches: Iterator[Mapping[str, Any]],
    mesh: Mesh,
) -> dict[str, float]:
  """val_loss, val_accuracy, val_auc and val_case_accuracy over `batches`.

  Votes and the case level are those of the evaluation command
  (ankle_jax.voting): a view votes fracture when p(fracture) >= 0.5; a case is
  the majority of its views' votes, ties (2-view cases) going to fracture.
  """
  probs, losses, labels, case_ids = [], [], [], []
  for batch in batches:
    out = jax.device_get(p_eval_step(state, shard_batch(batch, mesh)))
    mask = np.asarray(
        batch.get('mask', np.ones(len(batch['label']), bool)), bool
    )
    probs.append(np.asarray(out['probs'])[mask])
    losses.append(np.asarray(out['ce'])[mask])
    labels.append(np.asarray(batch['label'])[mask])
    if 'case_id' in batch:
      case_ids.append(np.asarray(batch['case_id'])[mask])
  if not probs:
    return {}
  fracture_probs = np.concatenate(probs)[:, -1]
  labels = np.concatenate(labels)
  view_metrics = metrics_lib.classification_metrics(
      labels, voting.image_votes(fracture_probs), fracture_probs
  )
  metrics = {
      'val_loss': float(np.mean(np.concatenate(losses))),
      'val_accuracy': view_metrics['accuracy'],
      'val_auc': view_metrics['roc_auc'],
  }
  if case_ids:
    cases = voting.index_cases(np.concatenate(case_ids), labels)
    case_votes = voting.case_hard_votes(
        voting.image_votes(fracture_probs), cases
    )
    metrics['val_case_accuracy'] = float(np.mean(case_votes == cases.labels_c))
  return metrics


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def _pipeline():
  from ankle_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  return pipeline


def load_sources(
    config: ml_collections.ConfigDict, workdir: epath.PathLike
) -> tuple[Any, Any]:
  """(train_source, eval_source) random-access sources of the configured splits."""
  data_dir = prepare_dataset(config, workdir)
  pipeline = _pipeline()
  train_source = pipeline.load_split(
      str(data_dir),
      config.data.train_split,
      dataset_config=config.data.dataset_config,
  )
  eval_source = pipeline.load_split(
      str(data_dir),
      config.data.eval_split,
      dataset_config=config.data.dataset_config,
  )
  return train_source, eval_source


def num_steps_for(
    config: ml_collections.ConfigDict, num_train_examples: int
) -> tuple[int, int]:
  """(num_train_steps, steps_per_epoch); num_train_steps > 0 overrides num_epochs."""
  steps_per_epoch = num_train_examples // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
        f'the training split has {num_train_examples} examples, fewer than '
        f'config.batch_size={config.batch_size}'
    )
  if config.num_train_steps > 0:
    return int(config.num_train_steps), steps_per_epoch
  return int(config.num_epochs * steps_per_epoch), steps_per_epoch


def _state_tree(state: TrainState) -> dict[str, Any]:
  return {
      'step': state.step,
      'params': state.params,
      'batch_stats': state.batch_stats,
      'opt_state': state.opt_state,
      'rng': state.rng,
  }


def _with_tree(state: TrainState, tree: Mapping[str, Any]) -> TrainState:
  return state.replace(
      step=tree['step'],
      params=tree['params'],
      batch_stats=tree['batch_stats'],
      opt_state=tree['opt_state'],
      rng=tree['rng'],
  )


def _first_non_finite(
    history: Sequence[tuple[int, Mapping[str, Any]]],
) -> tuple[int, float] | None:
  for step, metrics in history:
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      return step, loss
  return None


def _is_improvement(mode: str, value: float, best: float | None) -> bool:
  if value is None or not math.isfinite(value):
    return False
  if best is None:
    return True
  return value > best if mode == 'max' else value < best


def hparams_of(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The hyperparameters shown in TensorBoard's HParams tab."""
  flat = writers.flatten_config(config)
  skip = (
      'data.',
      'log_every',
      'eval_every',
      'checkpoint_every',
      'image_summary',
  )
  return {k: v for k, v in flat.items() if not k.startswith(skip)}


HPARAM_METRICS = (
    'val_loss',
    'val_accuracy',
    'val_auc',
    'val_case_accuracy',
    'train_loss',
)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: nn.Module | None = None,
    sources: tuple[Any, Any] | None = None,
    devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
  """Trains, evaluates, checkpoints and logs; resumes from workdir's latest
  checkpoint.

  Args:
    config: the run config (configs/default.py fields).
    workdir: the run directory.
    model: overrides create_model(config) (tests).
    sources: (train_source, eval_source) overriding the TFDS splits (tests).
    devices: the devices of the data-parallel mesh (default: all).

  Returns:
    The run summary (also in workdir/summary.json).

  Raises:
    NonFiniteLossError: the loss became NaN/inf; the latest checkpoint on disk
      is the last one saved before that step.
    writers.WorkdirNotWritableError: workdir cannot be created or written
      (checked first).
    checkpoint.CheckpointWriteError: a checkpoint could not be saved (e.g. disk
      full).
  """
  validate_config(config)
  workdir = writers.ensure_writable_dir(epath.Path(workdir))
  is_chief = jax.process_index() == 0
  mesh = create_mesh(devices)
  check_batch_divisible(config.batch_size, mesh, 'batch_size')
  check_batch_divisible(config.eval_batch_size, mesh, 'eval_batch_size')

  train_source, eval_source = (
      sources if sources is not None else load_sources(config, workdir)
  )
  num_train_steps, steps_per_epoch = num_steps_for(config, len(train_source))
  pipeline = _pipeline()

  model = model if model is not None else create_model(config)
  learning_rate_fn = create_learning_rate_fn(config, num_train_steps)
  state = create_train_state(
      config,
      model,
      jax.random.PRNGKey(config.seed),
      config.image_size,
      num_train_steps,
      learning_rate_fn,
  )
  state = jax.device_put(state, replicated(mesh))

  train_iter = pipeline.make_train_loader(
      train_source,
      global_batch_size=config.batch_size,
      image_size=config.image_size,
      seed=config.seed,
      shuffle=True,
      worker_count=config.data.worker_count,
      sample_weights_by_label=config.data.get('sample_weights_by_label'),
  )
  ckpts = checkpoint.RunCheckpoints(
      workdir, keep=config.keep_checkpoints, best_metric=config.best_metric
  )
  loop = {
      'best_metric_value': None,
      'best_step': None,
      'best_val_loss': None,
      'best_val_loss_step': None,
      'evals_without_improvement': 0,
      'stopped_early': False,
  }
  if ckpts.latest_step() is not None:
    tree, iter_state, loop = ckpts.restore_latest(_state_tree(state))
    state = _with_tree(state, tree)
    if iter_state is not None:
      train_iter.set_state(iter_state)
    logging.info('Resumed from %s at step %d', workdir, int(state.step))
    if is_chief:
      writers.truncate_metrics(workdir, int(state.step))
  start_step = int(state.step)

  if is_chief:
    writers.write_config(workdir, config)
  writer = writers.MetricWriter(workdir, enabled=is_chief)
  if start_step == 0:
    writer.write_hparams(hparams_of(config), HPARAM_METRICS)

  aug = AugmentSettings.from_config(config.augment)
  p_train_step, p_eval_step, p_preview = compile_steps(
      mesh, learning_rate_fn, aug, loss_settings(config)
  )

  def run_eval():
    batches = pipeline.iterate_eval_batches(
        eval_source,
        batch_size=config.eval_batch_size,
        image_size=config.image_size,
    )
    return evaluate(p_eval_step, state, batches, mesh)

  def save_latest(step):
    ckpts.save_latest(step, _state_tree(state), train_iter.get_state(), loop)

  image_every = config.get('image_summary_every_steps', 0) or 0
  bar = writers.progress_bar(
      num_train_steps,
      start_step,
      enabled=is_chief and config.get('progress_bar', True),
  )
  history = []  # (step, device metrics) since the last check.
  last_log_time, last_log_step = time.time(), start_step
  train_start = time.time()
  step = start_step
  if loop.get('stopped_early'):
    logging.info('Run had stopped early at step %d; nothing to do.', start_step)
  try:
    for step in range(start_step + 1, num_train_steps + 1):
      if loop.get('stopped_early'):
        break
      batch = next(train_iter)
      sharded = shard_batch(batch, mesh)
      if image_every and (step == 1 or step % image_every == 0) and is_chief:
        writer.write_images(
            step,
            'train/augmented_images',
            jax.device_get(p_preview(state, sharded['image'])),
        )
      state, metrics = p_train_step(state, sharded)
      history.append((step, metrics))
      if bar is not None:
        bar.update(1)

      is_last = step == num_train_steps
      do_log = step % config.log_every_steps == 0 or is_last
      do_eval = step % config.eval_every_steps == 0 or is_last
      do_ckpt = step % config.checkpoint_every_steps == 0 or is_last
      if not (do_log or do_eval or do_ckpt):
        continue

      # Check every step since the last check before logging or saving anything.
      history = jax.device_get(history)
      bad = _first_non_finite(history)
      if bad is not None:
        bad_step, bad_loss = bad
        raise NonFiniteLossError(
            f'loss became {bad_loss} at step {bad_step}; stopping. The last good '
            f'checkpoint (step {ckpts.latest_step()}) in {workdir / checkpoint.LATEST_DIR} '
            'was left intact. Lower --config.learning_rate or set '
            '--config.grad_clip_norm.'
        )
      record = {}
      if do_log and history:
        elapsed = max(time.time() - last_log_time, 1e-9)
        steps_done = step - last_log_step
        mean = {
            k: float(np.mean([m[k] for _, m in history]))
            for k in history[-1][1]
        }
        record.update(
            {
                'train_loss': mean['loss'],
                'train_ce': mean['ce'],
                'train_aux_loss': mean['aux_ce'],
                'train_l2': mean['l2'],
                'train_accuracy': mean['accuracy'],
                'learning_rate': mean['lr'],
                'steps_per_second': steps_done / elapsed,
                'images_per_second': steps_done * config.batch_size / elapsed,
                'epoch': step / steps_per_epoch,
            }
        )
        last_log_time, last_log_step = time.time(), step
        history = []
      if do_eval:
        val = run_eval()
        record.update(val)
        val_loss = val.get('val_loss')
        if _is_improvement('min', val_loss, loop['best_val_loss']):
          loop['best_val_loss'], loop['best_val_loss_step'] = val_loss, step
          loop['evals_without_improvement'] = 0
        else:
          loop['evals_without_improvement'] += 1
        value = val.get(config.best_metric)
        mode = checkpoint.METRIC_MODES[config.best_metric]
        tie_break = (
            value is not None
            and value == loop['best_metric_value']
            and loop['best_val_loss_step'] == step
        )
        if _is_improvement(mode, value, loop['best_metric_value']) or tie_break:
          loop['best_metric_value'], loop['best_step'] = value, step
          ckpts.save_best(
              step,
              {'params': state.params, 'batch_stats': state.batch_stats},
              val,
          )
        record['best_step'] = loop['best_step']
        patience = config.early_stopping_patience
        if patience and loop['evals_without_improvement'] >= patience:
          loop['stopped_early'] = True
          logging.info(
              'Early stopping at step %d: val_loss did not improve for %d '
              'evaluations (best at step %s).',
              step,
              patience,
              loop['best_val_loss_step'],
          )
          do_ckpt = True
        if bar is not None:
          bar.set_postfix(
              {
                  k: f'{v:.3f}'
                  for k, v in val.items()
                  if k in ('val_loss', 'val_accuracy', 'val_case_accuracy')
              }
          )
      if record:
        writer.write_scalars(step, record)
      if do_ckpt:
        save_latest(step)
  finally:
    if bar is not None:
      bar.close()
    writer.flush()

  final_step = int(jax.device_get(state.step))
  summary = {
      'final_step': final_step,
      'num_train_steps': num_train_steps,
      'best_metric': config.best_metric,
      'best_metric_value': loop['best_metric_value'],
      'best_step': loop['best_step'],
      'best_val_loss': loop['best_val_loss'],
      'best_val_loss_step': loop['best_val_loss_step'],
      'stopped_early': bool(loop['stopped_early']),
      'train_seconds_this_launch': time.time() - train_start,
  }
  if is_chief:
    writers.write_summary(workdir, summary)
  writer.close()
  ckpts.close()
  return summary

"""Training: train state, jitted train/eval steps, and the train-and-evaluate
loop.

In the style of Flax's examples/imagenet/train.py. The config is read here (and
in launch.py) only; everything below `train_and_evaluate` takes plain arguments.

Loss (docs/paper.md):
  loss = CE(logits, labels; class weights)
       + l2_alpha * sum(W**2) / 2   over `l2_scope` ('dense': params named
                                    'kernel' with ndim == 2, main and aux
                                    heads; 'all': every 'kernel')
       + aux_loss_weight * CE(aux_logits, labels; class weights)
       + view_loss_weight * mean over real views of CE(view_logits, case label)
                                    (multi-view models only; default 0)
CE is the per-example softmax cross-entropy times the weight of the example's
class, averaged over the batch (tf.losses' SUM_BY_NONZERO_WEIGHTS with positive
weights).

Multi-view runs (config.model.multiview.enabled, ankle_jax.models.multiview)
train on batches of cases ({'image' [B, V, S, S, 1], 'view_mask' [B, V],
'label' [B]}; pipeline.make_case_train_loader), each view augmented on its
own, views dropped at random (`multiview.drop_views`), and validate on case
batches (pipeline.iterate_case_batches); checkpoints, resume, logging and the
NaN stop are shared with per-view runs.

Devices: ankle_jax.sharding (the state replicated, batches sharded on axis 0).
With several processes every process runs this loop: it reads its block of
each batch, and validation gathers every process's rows so that each process
computes the same metrics over every case once (and so takes the same best
checkpoint and early-stopping decisions); process 0 alone writes the logs.
The loop (`train_and_evaluate`) carries a `LoopState` (best validation so far,
early stopping) that is checkpointed with the train state, so a resumed run
continues exactly where the saved one was.
"""

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import functools
import math
import sys
import time
from typing import Any, NamedTuple

from etils import epath
import flax.linen as nn
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import models
from ankle_jax import sharding
from ankle_jax import writers
from ankle_jax.data import augment
from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import voting

MIN_IMAGE_SIZE = 75
DTYPES = ('float32', 'bfloat16')
LR_SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
L2_SCOPES = ('dense', 'all')
POSITIVE_FIELDS = (
    'batch_size',
    'eval_batch_size',
    'log_every_steps',
    'eval_every_steps',
    'checkpoint_every_steps',
)
# The fields a researcher varies between runs (TensorBoard's HParams tab),
# besides every augment.* field and the run's length in steps.
HPARAM_FIELDS = (
    'model.name',
    'model.width_multiplier',
    'model.aux_head',
    'model.dropout_rate',
    'model.kernel_init',
    'image_size',
    'dtype',
    'batch_size',
    'learning_rate',
    'lr_schedule',
    'warmup_steps',
    'l2_alpha',
    'class_weights',
    'data.dataset_config',
    'data.sample_weights_by_label',
    'seed',
)
# Validation metrics shown on the progress bar.
BAR_METRICS = ('val_loss', 'val_accuracy', 'val_case_accuracy')


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or inf."""


class TrainState(flax_train_state.TrainState):
  """params, opt_state, step (from flax's TrainState), BatchNorm statistics and
  the base RNG.

  The RNG is a raw uint32[2] key; the key of step s is fold_in(rng, s), so it
  never has to be advanced and resumes exactly.
  """

  batch_stats: Any = None
  rng: jax.Array = None


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
  """Static augmentation settings (hashable: a jit static argument).

  The keyword arguments of `augment.augment_batch`; see its docstring.
  """

  rotation_degrees: float = 0.0
  flip_lr: bool = False
  flip_ud: bool = False
  brightness_delta: float = 0.0
  contrast_range: tuple[float, float] | None = None
  gamma_range: tuple[float, float] | None = None
  window_jitter: float = 0.0
  crop_scale_lower: float = 1.0
  clip: bool = True

  @classmethod
  def from_config(
      cls, augment_config: ml_collections.ConfigDict
  ) -> 'AugmentSettings':
    def value_range(name):
      lower = float(augment_config[f'{name}_lower'])
      upper = float(augment_config[f'{name}_upper'])
      return None if (lower, upper) == (1.0, 1.0) else (lower, upper)

    return cls(
        rotation_degrees=float(augment_config.rotation_degrees),
        flip_lr=bool(augment_config.flip_lr),
        flip_ud=bool(augment_config.flip_ud),
        brightness_delta=float(augment_config.brightness_delta),
        contrast_range=value_range('contrast'),
        gamma_range=value_range('gamma'),
        window_jitter=float(augment_config.window_jitter),
        crop_scale_lower=float(augment_config.crop_scale_lower),
        clip=bool(augment_config.clip),
    )


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static loss settings (view_loss_weight: multi-view runs only)."""

  l2_alpha: float = 0.0
  l2_scope: str = 'dense'
  aux_loss_weight: float = 0.0
  class_weights: tuple[float, ...] | None = None
  view_loss_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class ViewSettings:
  """Static settings of a multi-view run (config.model.multiview)."""

  max_views: int
  view_dropout: float = 0.0

  @classmethod
  def from_config(
      cls, config: ml_collections.ConfigDict
  ) -> 'ViewSettings | None':
    """None for a per-view run."""
    if not models.is_multiview(config.model):
      return None
    views = config.model.multiview
    return cls(int(views.max_views), float(views.view_dropout))


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
  _check_choice(config, 'eval_checkpoint', checkpoint.CHECKPOINT_CHOICES)
  _check_choice(config, 'dtype', DTYPES)
  _check_choice(config, 'optimizer', ('adam',))
  _check_choice(config, 'lr_schedule', LR_SCHEDULES)
  _check_choice(config, 'l2_scope', L2_SCOPES)
  _check_choice(config, 'best_metric', sorted(checkpoint.METRIC_MODES))
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
  """Raises UserError naming the first model.multiview.* field out of range."""
  _check_choice(config, 'model.multiview.fusion', models.multiview.FUSIONS)
  views = config.model.multiview
  checks = (
      ('max_views', views.max_views >= 1, '>= 1 (views per case)'),
      ('view_dropout', 0.0 <= views.view_dropout < 1.0, 'in [0, 1)'),
      ('view_loss_weight', views.view_loss_weight >= 0.0, '>= 0'),
  )
  for field, ok, expected in checks:
    if not ok:
      raise console.UserError(
          f'config.model.multiview.{field}={views[field]!r}; expected '
          f'{expected}'
      )


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model of config.model; its family options, dropout and width are
  checked by `models` (errors become UserError)."""
  try:
    return models.from_config(
        config.model, num_classes=config.num_classes, dtype=config.dtype
    )
  except ValueError as e:
    raise console.UserError(f'config.model: {e}') from e


def create_learning_rate_fn(
    config: ml_collections.ConfigDict, num_train_steps: int
) -> optax.Schedule:
  """The learning rate as a function of the step ('constant' in the paper)."""
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
  return optax.constant_schedule(config.learning_rate)


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """Adam (b1, b2, eps from the config), after optional global-norm clipping."""
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
  """(params, batch_stats) of `model` for [1, S, S, 1] images (a multi-view
  model: one case of one view, [1, 1, S, S, 1]; its variables do not depend
  on the number of views)."""
  images = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  if isinstance(model, models.multiview.Model):
    images = images[None]
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
  """A fresh TrainState: initialized variables, Adam state, step 0, base RNG.

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
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=create_optimizer(config, learning_rate_fn),
      batch_stats=batch_stats,
      rng=state_key,
  )


def loss_settings(config: ml_collections.ConfigDict) -> LossSettings:
  class_weights = config.get('class_weights')
  views = config.model.get('multiview') or {}
  return LossSettings(
      l2_alpha=float(config.l2_alpha),
      l2_scope=config.l2_scope,
      aux_loss_weight=float(config.aux_loss_weight),
      class_weights=(
          None
          if class_weights is None
          else tuple(float(w) for w in class_weights)
      ),
      view_loss_weight=float(views.get('view_loss_weight', 0.0)),
  )


def l2_sum(params: Any, scope: str = 'dense') -> jax.Array:
  """sum(W**2) / 2 over the kernels of `scope` ('dense': 2-D; 'all')."""
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    last = path[-1]
    name = getattr(last, 'key', getattr(last, 'name', None))
    if name != 'kernel' or (scope == 'dense' and leaf.ndim != 2):
      continue
    total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return total / 2.0


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Mean over the batch of the softmax CE times each example's class weight.

  Args:
    logits: [B, C] (any float dtype; computed in float32).
    labels: int [B].
    class_weights: None (all 1) or C weights.
  """
  return jnp.mean(weighted_cross_entropy(logits, labels, class_weights))


def weighted_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Per-example softmax CE times the class weight: [..., C], int [...] ->
  float32 [...]."""
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
  )
  if class_weights is not None:
    per_example = per_example * jnp.asarray(class_weights, jnp.float32)[labels]
  return per_example


def view_cross_entropy(
    view_logits_bvc: jax.Array,
    labels_b: jax.Array,
    view_mask_bv: jax.Array,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Mean over the real views of each view's CE against its case's label."""
  labels_bv = jnp.broadcast_to(labels_b[:, None], view_mask_bv.shape)
  per_view = weighted_cross_entropy(view_logits_bvc, labels_bv, class_weights)
  weights = view_mask_bv.astype(jnp.float32)
  return jnp.sum(per_view * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def preprocess_train_images(
    key: jax.Array, images_xhwc: jax.Array, aug: AugmentSettings
) -> jax.Array:
  """Random augmentation then per-image standardization (train images).

  images_xhwc: [B, H, W, 1] or, for multi-view batches, [B, V, H, W, 1]; every
  image gets its own random draws.
  """
  shape = images_xhwc.shape
  images = images_xhwc.reshape((-1,) + shape[-3:])
  images = augment.augment_batch(key, images, **dataclasses.asdict(aug))
  return augment.standardize_per_image(images).reshape(shape)


def standardized_inputs(batch: Mapping[str, jax.Array]) -> tuple[Any, ...]:
  """The model's eval inputs: (standardized images,), plus the view mask
  for a multi-view batch."""
  images = batch['image']
  shape = images.shape
  flat = augment.standardize_per_image(images.reshape((-1,) + shape[-3:]))
  if 'view_mask' in batch:
    return flat.reshape(shape), batch['view_mask']
  return (flat,)


def step_keys(
    base_rng: jax.Array, step: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(augmentation key, dropout key) of a step: the one place they are split."""
  aug_key, dropout_key = jax.random.split(jax.random.fold_in(base_rng, step))
  return aug_key, dropout_key


def view_dropout_key(base_rng: jax.Array, step: jax.Array) -> jax.Array:
  """The key of a step's view dropout (multi-view runs): the third of the
  step's split, after `step_keys`' two."""
  return jax.random.split(jax.random.fold_in(base_rng, step), 3)[2]


def train_inputs(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    aug: AugmentSettings,
    views: ViewSettings | None,
) -> tuple[jax.Array, ...]:
  """The model's train-mode inputs of a step: (augmented, standardized
  images,), plus, for a multi-view batch, its view mask after view dropout."""
  aug_key, _ = step_keys(state.rng, state.step)
  images = preprocess_train_images(aug_key, batch['image'], aug)
  if views is None:
    return (images,)
  view_mask = models.multiview.drop_views(
      view_dropout_key(state.rng, state.step),
      batch['view_mask'],
      views.view_dropout,
  )
  return images, view_mask


def loss_terms(
    outputs: Any,
    labels: jax.Array,
    params: Any,
    loss_cfg: LossSettings,
    view_mask: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """loss and its parts: ce, aux_ce, l2 and (multi-view, given view_mask)
  view_ce, the mean CE of each real view alone."""
  weights = loss_cfg.class_weights
  zero = jnp.zeros((), jnp.float32)
  terms = {
      'ce': cross_entropy(outputs.logits, labels, weights),
      'aux_ce': (
          zero
          if outputs.aux_logits is None
          else cross_entropy(outputs.aux_logits, labels, weights)
      ),
      'l2': loss_cfg.l2_alpha * l2_sum(params, loss_cfg.l2_scope),
  }
  loss = terms['ce'] + loss_cfg.aux_loss_weight * terms['aux_ce'] + terms['l2']
  if view_mask is not None:
    terms['view_ce'] = view_cross_entropy(
        outputs.view_logits, labels, view_mask, weights
    )
    loss = loss + loss_cfg.view_loss_weight * terms['view_ce']
  return {'loss': loss, **terms}


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: LossSettings,
    views: ViewSettings | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step.

  batch: per-view runs {'image': [B, S, S, 1] in [0, 1], 'label': int [B]};
  multi-view runs (views given) {'image': [B, V, S, S, 1], 'view_mask': bool
  [B, V], 'label': int [B]}, B cases.

  Returns the new state and metrics (scalars): loss, ce, aux_ce, l2, accuracy
  (of the case logits for multi-view runs), lr, and view_ce (multi-view).
  """
  _, dropout_key = step_keys(state.rng, state.step)
  inputs = train_inputs(state, batch, aug, views)
  labels = batch['label']

  def loss_fn(params):
    outputs, new_model_state = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        *inputs,
        train=True,
        rngs={'dropout': dropout_key},
        mutable=['batch_stats'],
    )
    view_mask = inputs[1] if views is not None else None
    terms = loss_terms(outputs, labels, params, loss_cfg, view_mask)
    return terms['loss'], (outputs.logits, new_model_state, terms)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (logits, new_model_state, terms)), grads = grad_fn(state.params)
  new_state = state.apply_gradients(
      grads=grads, batch_stats=new_model_state['batch_stats']
  )
  metrics = {
      **terms,
      'accuracy': jnp.mean(jnp.argmax(logits, axis=-1) == labels),
      'lr': learning_rate_fn(state.step),
  }
  return new_state, metrics


def eval_step(
    state: TrainState, batch: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
  """Per-example outputs: 'probs' [B, C] and 'ce' [B] (softmax CE, unweighted);
  for a multi-view batch (with 'view_mask') the examples are cases and
  'view_probs' [B, V, C] adds each view's own probabilities.

  Eval mode: the running BatchNorm statistics, nothing mutable.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  outputs = state.apply_fn(variables, *standardized_inputs(batch), train=False)
  logits = outputs.logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  result = {'probs': jax.nn.softmax(logits, axis=-1), 'ce': ce}
  if 'view_mask' in batch:
    result['view_probs'] = jax.nn.softmax(outputs.view_logits, axis=-1)
  return result


class CompiledSteps(NamedTuple):
  """The jitted steps: the state replicated, batches sharded on the mesh."""

  train: Any  # (state, batch) -> (state, metrics); the state is donated.
  eval: Any  # (state, batch) -> {'probs', 'ce'}.
  preview: Any  # (state, images) -> the step's augmented, standardized images.


def compile_steps(
    mesh: Mesh,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: LossSettings,
    views: ViewSettings | None = None,
) -> CompiledSteps:
  """Jits train_step, eval_step and the augmentation preview for `mesh`
  (views: a multi-view run's settings, None for per-view runs)."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  train = jax.jit(
      functools.partial(
          train_step,
          learning_rate_fn=learning_rate_fn,
          aug=aug,
          loss_cfg=loss_cfg,
          views=views,
      ),
      in_shardings=(repl, data),
      out_shardings=(repl, repl),
      donate_argnums=(0,),
  )

  def preview(state, images):
    aug_key, _ = step_keys(state.rng, state.step)
    return preprocess_train_images(aug_key, images, aug)

  return CompiledSteps(
      train=train,
      eval=jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl),
      preview=jax.jit(preview, in_shardings=(repl, data), out_shardings=repl),
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

  batches: this process's blocks of the global batches (`validation_batches`).
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


def evaluate(
    eval_fn: Any,
    state: TrainState,
    batches: Iterator[Mapping[str, Any]],
    mesh: Mesh,
) -> dict[str, float]:
  """val_loss, val_accuracy, val_auc and val_case_accuracy over `batches`.

  Votes and the case level are those of the evaluation command
  (ankle_jax.voting): a view votes fracture when p(fracture) >= 0.5; a case is
  the majority of its views' votes, ties (2-view cases) going to fracture.
  Multi-view case batches: val_loss and val_case_accuracy are the case
  head's; val_accuracy and val_auc score each view alone (its own
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
    case_votes = voting.image_votes(out['probs'][:, -1])
    metrics['val_case_accuracy'] = float(np.mean(case_votes == out['label']))
  elif 'case_id' in out:
    cases = voting.index_cases(out['case_id'], out['label'])
    case_votes = voting.case_hard_votes(votes, cases)
    metrics['val_case_accuracy'] = float(np.mean(case_votes == cases.labels_c))
  return metrics


def prepare_data(
    config: ml_collections.ConfigDict, workdir: epath.PathLike
) -> epath.Path:
  """Makes sure the configured dataset exists; returns its data_dir.

  With config.data.synthetic.enabled and no data.manual_dir, the chief process
  generates the synthetic studies into <workdir>/data/studies and builds them
  (in this process), while the others wait until the built dataset appears.

  Raises:
    prepare.DatasetMissingError: the dataset is not built, with the command that
      builds it.
  """
  data = config.data
  data_dir, manual_dir = prepare.resolve_data_dirs(
      data.data_dir, data.manual_dir, workdir
  )
  if prepare.dataset_exists(data_dir, data.dataset_config):
    return data_dir
  if not data.synthetic.enabled or data.manual_dir:
    raise prepare.missing_dataset_error(
        data_dir, data.dataset_config, data.manual_dir
    )
  if sharding.is_chief():
    prepare.prepare_dataset(
        data_dir=data_dir,
        manual_dir=manual_dir,
        dataset_config=data.dataset_config,
        synthetic_studies={
            k: v for k, v in data.synthetic.items() if k != 'enabled'
        },
        progress=config.progress_bar,
    )
  # The others poll rather than wait in a collective, however long the build.
  while not prepare.dataset_exists(data_dir, data.dataset_config):
    time.sleep(2)
  sharding.sync_processes('prepare_data')
  return data_dir


def load_sources(
    config: ml_collections.ConfigDict, workdir: epath.PathLike
) -> tuple[Any, Any]:
  """(train_source, eval_source): random-access sources of the splits."""
  data_dir = prepare_data(config, workdir)
  return tuple(
      pipeline.load_split(
          str(data_dir), split, dataset_config=config.data.dataset_config
      )
      for split in (config.data.train_split, config.data.eval_split)
  )


def num_steps_for(
    config: ml_collections.ConfigDict, num_train_examples: int
) -> tuple[int, int]:
  """(num_train_steps, steps_per_epoch); num_train_steps > 0 wins."""
  steps_per_epoch = num_train_examples // config.batch_size
  if steps_per_epoch == 0:
    raise console.UserError(
        f'the training split has {num_train_examples} examples, fewer than '
        f'config.batch_size={config.batch_size}'
    )
  if config.num_train_steps > 0:
    return int(config.num_train_steps), steps_per_epoch
  return int(config.num_epochs * steps_per_epoch), steps_per_epoch


def hparams_of(
    config: ml_collections.ConfigDict, num_train_steps: int
) -> dict[str, Any]:
  """The hyperparameters shown in TensorBoard's HParams tab."""
  flat = writers.flatten_config(config)
  hparams = {k: flat[k] for k in HPARAM_FIELDS if k in flat}
  hparams.update({k: v for k, v in flat.items() if k.startswith('augment.')})
  hparams['num_train_steps'] = num_train_steps
  return hparams


@dataclasses.dataclass
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
) -> bool:
  """Updates `loop` with the evaluation at `step`; True for a new best.

  A tie on best_metric counts as better when val_loss improved at this step.
  Early stopping: `patience` evaluations in a row without a val_loss
  improvement (0 = off).
  """
  val_loss = val.get('val_loss')
  if _is_improvement('min', val_loss, loop.best_val_loss):
    loop.best_val_loss, loop.best_val_loss_step = val_loss, step
    loop.evals_without_improvement = 0
  else:
    loop.evals_without_improvement += 1
  value = val.get(best_metric)
  tie_break = (
      value is not None
      and value == loop.best_metric_value
      and loop.best_val_loss_step == step
  )
  mode = checkpoint.METRIC_MODES[best_metric]
  is_best = _is_improvement(mode, value, loop.best_metric_value) or tie_break
  if is_best:
    loop.best_metric_value, loop.best_step = value, step
  if patience and loop.evals_without_improvement >= patience:
    loop.stopped_early = True
  return is_best


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop logs, evaluates, checkpoints and writes images (steps)."""

  num_train_steps: int
  steps_per_epoch: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  image_every: int  # 0: never.

  @classmethod
  def from_config(
      cls, config: ml_collections.ConfigDict, num_train_examples: int
  ) -> 'Schedule':
    num_train_steps, steps_per_epoch = num_steps_for(config, num_train_examples)
    return cls(
        num_train_steps=num_train_steps,
        steps_per_epoch=steps_per_epoch,
        log_every=config.log_every_steps,
        eval_every=config.eval_every_steps,
        checkpoint_every=config.checkpoint_every_steps,
        image_every=config.get('image_summary_every_steps', 0) or 0,
    )

  def due(self, step: int, every: int) -> bool:
    """Every `every` steps, and at the last step."""
    return step % every == 0 or step == self.num_train_steps

  def any_due(self, step: int) -> bool:
    return any(
        self.due(step, every)
        for every in (self.log_every, self.eval_every, self.checkpoint_every)
    )

  def images_due(self, step: int) -> bool:
    return bool(self.image_every) and (
        step == 1 or step % self.image_every == 0
    )


@dataclasses.dataclass
class Run:
  """Everything the loop works with; `state`, `loop` and the log clock change.

  view_settings: a multi-view run's ViewSettings (None: per-view).

  last_log_time, last_log_step: the wall time (s) and step of the last train
  record, for steps/s and images/s.
  """

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: Mesh
  steps: CompiledSteps
  schedule: Schedule
  ckpts: checkpoint.RunCheckpoints
  writer: writers.MetricWriter
  train_iter: Any
  eval_source: Any
  state: TrainState
  loop: LoopState
  view_settings: ViewSettings | None = None
  bar: Any = None
  last_log_time: float = 0.0
  last_log_step: int = 0


def say(run: Run, message: str) -> None:
  """Prints a project line on the chief (above the progress bar, if any)."""
  if not sharding.is_chief():
    return
  if run.bar is not None:
    run.bar.write(message, file=sys.stdout)
  else:
    print(message)
  sys.stdout.flush()


def state_tree(state: TrainState) -> dict[str, Any]:
  """The checkpointed part of the train state."""
  return {
      'step': state.step,
      'params': state.params,
      'batch_stats': state.batch_stats,
      'opt_state': state.opt_state,
      'rng': state.rng,
  }


def with_tree(state: TrainState, tree: Mapping[str, Any]) -> TrainState:
  return state.replace(**{key: tree[key] for key in state_tree(state)})


def save_latest(run: Run, step: int) -> None:
  """Saves the latest checkpoint (a collective: every process's iterator
  state goes into it)."""
  iter_states = sharding.allgather_json(
      checkpoint.encode_iterator_state(run.train_iter.get_state())
  )
  run.ckpts.save_latest(
      step,
      state_tree(run.state),
      [checkpoint.decode_iterator_state(state) for state in iter_states],
      run.loop.to_json(),
  )


def restore_latest(run: Run) -> None:
  """Continues from the latest checkpoint, if any: state, data order, loop.

  Raises:
    console.UserError: the checkpoint's data order cannot be carried over to
      this number of processes (`checkpoint.iterator_state_for`).
  """
  if run.ckpts.latest_step() is None:
    return
  tree, iter_states, loop = run.ckpts.restore_latest(state_tree(run.state))
  run.state = with_tree(run.state, tree)
  run.loop = LoopState.from_json(loop)
  try:
    iter_state = checkpoint.iterator_state_for(
        iter_states, jax.process_index(), jax.process_count()
    )
  except ValueError as e:
    raise console.UserError(f'{run.workdir}: {e}') from e
  if iter_state is not None:
    run.train_iter.set_state(iter_state)
  step = int(run.state.step)
  say(run, f'Resumed from {run.workdir} at step {step}.')
  if sharding.is_chief():
    writers.truncate_metrics(run.workdir, step)


def check_finite(run: Run, history: Sequence[tuple[int, Any]]) -> None:
  """Raises NonFiniteLossError at the first step whose loss is NaN or inf."""
  for step, metrics in history:
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      raise NonFiniteLossError(
          f'loss became {loss} at step {step}; stopping.\n'
          f'The last good checkpoint (step {run.ckpts.latest_step()}) in '
          f'{run.workdir / checkpoint.LATEST_DIR} was left intact.\n'
          'Lower --config.learning_rate or set --config.grad_clip_norm.'
      )


def images_per_step(run: Run) -> int:
  """Images through the model per step: the batch, or for a multi-view run
  its cases x max_views (padded view slots included)."""
  views = run.view_settings
  return run.config.batch_size * (views.max_views if views else 1)


def train_record(
    run: Run, step: int, history: Sequence[tuple[int, Any]]
) -> dict[str, float]:
  """The means of the train metrics since the last record, and throughput."""
  mean = {k: float(np.mean([m[k] for _, m in history])) for k in history[-1][1]}
  now = time.time()
  elapsed = max(now - run.last_log_time, 1e-9)
  steps_done = step - run.last_log_step
  run.last_log_time, run.last_log_step = now, step
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
      'images_per_second': steps_done * images_per_step(run) / elapsed,
      'epoch': step / run.schedule.steps_per_epoch,
  }


def validation_batches(
    config: ml_collections.ConfigDict,
    eval_source: Any,
    views: ViewSettings | None,
) -> Iterator[dict[str, Any]]:
  """Batches of views (per-view runs) or of cases (multi-view runs), every
  case's first data.max_eval_views views (0 = all); this process's block of
  each global batch."""
  iterate = (
      pipeline.iterate_case_batches
      if views is not None
      else pipeline.iterate_eval_batches
  )
  return iterate(
      eval_source,
      batch_size=config.eval_batch_size,
      image_size=config.image_size,
      max_views_per_case=config.data.max_eval_views,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )


def evaluate_and_select(run: Run, step: int) -> dict[str, Any]:
  """Validates; saves a new best checkpoint; notes early stopping."""
  config = run.config
  batches = validation_batches(config, run.eval_source, run.view_settings)
  val = evaluate(run.steps.eval, run.state, batches, run.mesh)
  is_best = record_evaluation(
      run.loop, step, val, config.best_metric, config.early_stopping_patience
  )
  if is_best:
    variables = {
        'params': run.state.params,
        'batch_stats': run.state.batch_stats,
    }
    run.ckpts.save_best(step, variables, val)
    run.writer.write_best(step, val)
  if run.loop.stopped_early:
    say(
        run,
        f'Early stopping at step {step}: val_loss did not improve for '
        f'{config.early_stopping_patience} evaluations (best at step '
        f'{run.loop.best_val_loss_step}).',
    )
  if run.bar is not None:
    run.bar.set_postfix({k: f'{val[k]:.3f}' for k in BAR_METRICS if k in val})
  return {**val, 'best_step': run.loop.best_step}


def write_preview(
    run: Run,
    step: int,
    batch: Mapping[str, np.ndarray],
    placed: Mapping[str, jax.Array],
) -> None:
  """The chief writes the step's augmented images to TensorBoard (every
  process computes them: the preview is a collective over the mesh)."""
  images = jax.device_get(run.steps.preview(run.state, placed['image']))
  (host,) = global_host_rows([host_rows(batch)])
  if not sharding.is_chief():
    return
  labels = host['label']
  if 'view_mask' in host:  # The real views of the cases, one per tile.
    real = host['view_mask'].astype(bool)
    images = images[real]
    labels = np.broadcast_to(labels[:, None], real.shape)[real]
  run.writer.write_images(step, 'train/augmented_images', images, labels=labels)


def take_step(run: Run, step: int) -> Any:
  """One training step (and its image summary when due); device metrics."""
  batch = next(run.train_iter)
  placed = sharding.shard_batch(batch, run.mesh)
  if run.schedule.images_due(step):
    write_preview(run, step, batch, placed)
  run.state, metrics = run.steps.train(run.state, placed)
  if run.bar is not None:
    run.bar.update(1)
  return metrics


def after_step(run: Run, step: int, history: list[Any]) -> list[Any]:
  """Logs, evaluates and saves what is due at `step` (after checking every
  loss since the last time); returns the history not yet logged."""
  schedule = run.schedule
  history = jax.device_get(history)
  check_finite(run, history)
  record = {}
  if schedule.due(step, schedule.log_every) and history:
    record.update(train_record(run, step, history))
    history = []
  save = schedule.due(step, schedule.checkpoint_every)
  if schedule.due(step, schedule.eval_every):
    record.update(evaluate_and_select(run, step))
    save = save or run.loop.stopped_early
  if record:
    run.writer.write_scalars(step, record)
  if save:
    save_latest(run, step)
  return history


def train_loop(run: Run) -> None:
  """Steps from the state's step to the schedule's end, or an early stop."""
  history = []  # (step, device metrics) since the last check.
  start_step = int(run.state.step)
  run.last_log_time, run.last_log_step = time.time(), start_step
  for step in range(start_step + 1, run.schedule.num_train_steps + 1):
    if run.loop.stopped_early:
      break
    history.append((step, take_step(run, step)))
    if run.schedule.any_due(step):
      history = after_step(run, step, history)


def num_train_examples(
    config: ml_collections.ConfigDict, sources: tuple[Any, Any]
) -> int:
  """What an epoch counts: training views, or cases for a multi-view run."""
  if models.is_multiview(config.model):
    return pipeline.num_cases(sources[0])
  return len(sources[0])


def make_train_iterator(
    config: ml_collections.ConfigDict,
    train_source: Any,
    views: ViewSettings | None,
) -> Any:
  """The resumable training iterator: batches of views, or of cases padded
  to views.max_views for a multi-view run; this process's block of each
  global batch."""
  options = {
      'global_batch_size': config.batch_size,
      'image_size': config.image_size,
      'seed': config.seed,
      'shuffle': True,
      'worker_count': config.data.worker_count,
      'sample_weights_by_label': config.data.get('sample_weights_by_label'),
      'process_index': jax.process_index(),
      'process_count': jax.process_count(),
  }
  if views is not None:
    return pipeline.make_case_train_loader(
        train_source, max_views=views.max_views, **options
    )
  return pipeline.make_train_loader(train_source, **options)


def start_run(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    mesh: Mesh,
    model: nn.Module,
    sources: tuple[Any, Any],
) -> Run:
  """A fresh or resumed Run; the chief writes config.json (and HParams)."""
  train_source, eval_source = sources
  views = ViewSettings.from_config(config)
  schedule = Schedule.from_config(config, num_train_examples(config, sources))
  learning_rate_fn = create_learning_rate_fn(config, schedule.num_train_steps)
  state = create_train_state(
      config,
      model,
      jax.random.PRNGKey(config.seed),
      config.image_size,
      schedule.num_train_steps,
      learning_rate_fn,
  )
  train_iter = make_train_iterator(config, train_source, views)
  run = Run(
      config=config,
      workdir=workdir,
      mesh=mesh,
      steps=compile_steps(
          mesh,
          learning_rate_fn,
          AugmentSettings.from_config(config.augment),
          loss_settings(config),
          views,
      ),
      schedule=schedule,
      ckpts=checkpoint.RunCheckpoints(
          workdir, keep=config.keep_checkpoints, best_metric=config.best_metric
      ),
      writer=writers.MetricWriter(workdir, enabled=sharding.is_chief()),
      train_iter=train_iter,
      eval_source=eval_source,
      state=jax.device_put(state, sharding.replicated(mesh)),
      loop=LoopState(),
      view_settings=views,
  )
  restore_latest(run)
  if sharding.is_chief():
    writers.write_config(workdir, config)
  if int(run.state.step) == 0:
    run.writer.write_hparams(
        hparams_of(config, schedule.num_train_steps), writers.BEST_METRIC_TAGS
    )
  return run


def start_message(run: Run, num_train: int, num_eval: int) -> str:
  """One line: the model, the data, the steps and the devices.

  num_eval: the validation views evaluated (after data.max_eval_views).
  """
  config, schedule = run.config, run.schedule
  max_views = config.data.max_eval_views
  cap = f' (first {max_views} per case)' if max_views else ''
  devices = run.mesh.devices.size
  platform = run.mesh.devices.flat[0].platform.upper()
  start = int(run.state.step)
  steps = (
      f'steps {start + 1}-{schedule.num_train_steps}'
      if start
      else f'{schedule.num_train_steps} steps'
  )
  model, batch = config.model.name, f'batch {config.batch_size}'
  if run.view_settings is not None:
    model = f'a multi-view {config.model.multiview.fusion} {model}'
    batch += f' cases of up to {run.view_settings.max_views} views'
  return (
      f'Training {model} on {prepare.DATASET_NAME}/'
      f'{config.data.dataset_config} ({num_train} train / {num_eval} '
      f'{config.data.eval_split} views{cap}, {config.image_size} px): '
      f'{steps}, {batch} '
      f'({schedule.num_train_steps / schedule.steps_per_epoch:.1f} epochs) '
      f'on {devices} {platform} device{"s" if devices > 1 else ""}.'
  )


def run_summary(run: Run, seconds: float) -> dict[str, Any]:
  """What summary.json holds (seconds: this launch's training wall time)."""
  return {
      'final_step': int(jax.device_get(run.state.step)),
      'num_train_steps': run.schedule.num_train_steps,
      'best_metric': run.config.best_metric,
      'best_metric_value': run.loop.best_metric_value,
      'best_step': run.loop.best_step,
      'eval_checkpoint': run.config.eval_checkpoint,
      'best_val_loss': run.loop.best_val_loss,
      'best_val_loss_step': run.loop.best_val_loss_step,
      'stopped_early': run.loop.stopped_early,
      'train_seconds_this_launch': seconds,
  }


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: epath.PathLike,
    *,
    model: nn.Module | None = None,
    sources: tuple[Any, Any] | None = None,
    devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
  """Trains, evaluates, checkpoints and logs; resumes from the latest
  checkpoint in workdir.

  Args:
    config: the run config (configs/default.py fields).
    workdir: the run directory.
    model: the model (default: build_model(config)).
    sources: (train_source, eval_source) overriding the TFDS splits (tests).
    devices: the devices of the data-parallel mesh (default: all).

  Returns:
    The run summary (also in workdir/summary.json): final_step,
    num_train_steps, best_metric, best_metric_value, best_step,
    eval_checkpoint (the checkpoint evaluate and predict restore by default),
    best_val_loss, best_val_loss_step, stopped_early,
    train_seconds_this_launch (s).

  Raises:
    console.UserError: a bad config, or a batch size the devices cannot split.
    NonFiniteLossError: the loss became NaN/inf; the latest checkpoint on disk
      is the last one saved before that step.
    writers.WorkdirNotWritableError: workdir cannot be created or written
      (checked first).
    checkpoint.CheckpointWriteError: a checkpoint could not be saved (e.g. disk
      full).
  """
  validate_config(config)
  workdir = writers.ensure_writable_dir(epath.Path(workdir))
  mesh = sharding.create_mesh(devices)
  sharding.check_batch_divisible(config.batch_size, mesh, 'batch_size')
  sharding.check_batch_divisible(
      config.eval_batch_size, mesh, 'eval_batch_size'
  )
  sources = sources if sources is not None else load_sources(config, workdir)
  model = model if model is not None else build_model(config)
  run = start_run(config, workdir, mesh, model, sources)
  num_eval = len(pipeline.eval_order(sources[1], config.data.max_eval_views))
  say(run, start_message(run, len(sources[0]), num_eval))
  if run.loop.stopped_early:
    say(run, f'The run had stopped early at step {int(run.state.step)}.')
  started = time.time()
  run.bar = writers.progress_bar(
      run.schedule.num_train_steps,
      int(run.state.step),
      enabled=sharding.is_chief() and config.progress_bar,
  )
  try:
    train_loop(run)
  finally:
    if run.bar is not None:
      run.bar.close()
      run.bar = None
    run.writer.flush()
  summary = run_summary(run, time.time() - started)
  if sharding.is_chief():
    writers.write_summary(workdir, summary)
  run.writer.close()
  run.ckpts.close()
  return summary

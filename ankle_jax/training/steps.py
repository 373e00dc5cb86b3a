"""The jitted steps: train_step (augment, standardize, forward, loss, Adam),
eval_step (the shared eval forward, `models.forward`) and the augmentation
preview, compiled for a mesh (the state replicated, batches sharded on axis 0).

Batches carry either images (uint16 as stored, or float32 in [0, 1]; the step
converts on the device) or, with the split resident on the device
(data.on_device), record indices 'index' that the step gathers from the
split's images (`batch_images`).

Randomness: the key of step s is fold_in(state.rng, s), split once per step
(`step_keys`, `view_dropout_key`).
"""

from collections.abc import Mapping
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import optax

from ankle_jax import models
from ankle_jax import sharding
from ankle_jax.data import augment
from ankle_jax.models import forward
from ankle_jax.training import losses
from ankle_jax.training.state import TrainState


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
class ViewSettings:
  """Static settings of a multi-view run (config.model.multiview)."""

  max_views: int
  view_dropout: float = 0.0
  # Drop views only from normal cases (label 0): labels stay true.
  view_dropout_normal_only: bool = False
  # Steps at the start whose BatchNorm statistics stay as they were (a
  # warm-started trunk frozen: training.warm_start).
  freeze_trunk_steps: int = 0

  @classmethod
  def from_config(
      cls, config: ml_collections.ConfigDict, warm_started: bool = False
  ) -> 'ViewSettings | None':
    """None for a per-view run; freeze_trunk_steps only when
    `warm_started`."""
    if not models.is_multiview(config.model):
      return None
    views = config.model.multiview
    return cls(
        int(views.max_views),
        float(views.view_dropout),
        bool(views.get('view_dropout_normal_only', False)),
        int(views.get('freeze_trunk_steps', 0)) if warm_started else 0,
    )


def preprocess_train_images(
    key: jax.Array, images_xhwc: jax.Array, aug: AugmentSettings
) -> jax.Array:
  """Random augmentation then per-image standardization (train images).

  images_xhwc: [B, H, W, 1] or, for multi-view batches, [B, V, H, W, 1]; every
  image gets its own random draws.
  """

  def augmented_standardized(images_bhwc):
    images_bhwc = augment.augment_batch(
        key, images_bhwc, **dataclasses.asdict(aug)
    )
    return augment.standardize_per_image(images_bhwc)

  return forward.per_image(augmented_standardized, images_xhwc)


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


def batch_images(
    batch: Mapping[str, jax.Array], split_images: jax.Array | None = None
) -> jax.Array:
  """A batch's images, float32 in [0, 1] ([B, S, S, 1] or [B, V, S, S, 1]):
  batch['image'] converted, or, for a batch of record indices, those rows of
  the device-resident `split_images` (`augment.gather_images`)."""
  if 'index' not in batch:
    return augment.to_unit_float(batch['image'])
  if split_images is None:
    raise ValueError('a batch of record indices needs the split_images')
  return augment.gather_images(
      split_images, batch['index'], batch.get('view_mask')
  )


def train_inputs(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    aug: AugmentSettings,
    views: ViewSettings | None,
    split_images: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
  """The model's train-mode inputs of a step: (augmented, standardized
  images,), plus, for a multi-view batch, its view mask after view dropout."""
  aug_key, _ = step_keys(state.rng, state.step)
  images = preprocess_train_images(
      aug_key, batch_images(batch, split_images), aug
  )
  if views is None:
    return (images,)
  view_mask = models.multiview.drop_views(
      view_dropout_key(state.rng, state.step),
      batch['view_mask'],
      views.view_dropout,
      batch['label'] == 0 if views.view_dropout_normal_only else None,
  )
  return images, view_mask


def kept_batch_stats(
    state: TrainState, new_batch_stats: Any, views: ViewSettings | None
) -> Any:
  """The step's BatchNorm statistics: the old ones while the trunk is frozen
  (step < views.freeze_trunk_steps), else the new ones."""
  if views is None or views.freeze_trunk_steps <= 0:
    return new_batch_stats
  frozen = state.step < views.freeze_trunk_steps
  return jax.tree.map(
      lambda old, new: jnp.where(frozen, old, new),
      state.batch_stats,
      new_batch_stats,
  )


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    split_images: jax.Array | None = None,
    *,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: losses.LossSettings,
    views: ViewSettings | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step.

  batch: per-view runs {'image': [B, S, S, 1] uint16 or float in [0, 1],
  'label': int [B]}; multi-view runs (views given) {'image': [B, V, S, S, 1],
  'view_mask': bool [B, V], 'label': int [B]}, B cases. With split_images
  (the split on the device), 'index' int [B] or [B, V] replaces 'image'.

  Returns the new state and metrics (scalars): loss, ce, aux_ce, l2, accuracy
  (of the case logits for multi-view runs), lr, and view_ce (multi-view).
  """
  _, dropout_key = step_keys(state.rng, state.step)
  inputs = train_inputs(state, batch, aug, views, split_images)
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
    terms = losses.loss_terms(outputs, labels, params, loss_cfg, view_mask)
    return terms['loss'], (outputs.logits, new_model_state, terms)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (logits, new_model_state, terms)), grads = grad_fn(state.params)
  new_state = state.apply_gradients(
      grads=grads,
      batch_stats=kept_batch_stats(
          state, new_model_state['batch_stats'], views
      ),
  )
  metrics = {
      **terms,
      'accuracy': jnp.mean(jnp.argmax(logits, axis=-1) == labels),
      'lr': learning_rate_fn(state.step),
  }
  return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    split_images: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Per-example outputs: 'probs' [B, C] and 'ce' [B] (softmax CE, unweighted);
  for a multi-view batch (with 'view_mask') the examples are cases and
  'view_probs' [B, V, C] adds each view's own probabilities.

  Eval mode: the running BatchNorm statistics, nothing mutable. Images as
  `batch_images` reads them.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  outputs = forward.apply_eval(
      state.apply_fn,
      variables,
      batch_images(batch, split_images),
      batch.get('view_mask'),
  )
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
  preview: Any  # (state, batch) -> the step's augmented, standardized images.


@dataclasses.dataclass(frozen=True)
class ResidentSplits:
  """The splits placed on the devices (data.on_device): uint16 (float32
  where resized) [N, S, S, 1] arrays replicated on the mesh, or None for a
  split whose batches carry images."""

  train: jax.Array | None = None
  eval: jax.Array | None = None


def _jit_with_split(
    fn: Any, split_images: jax.Array | None, mesh: Mesh, **jit_options: Any
) -> Any:
  """fn(state, batch, split_images) jitted (the state replicated, the batch
  sharded, the split replicated) as a (state, batch) function: with no split
  the jitted function itself, else one that passes the split (and `.lower`s
  with it)."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  if split_images is None:
    return jax.jit(fn, in_shardings=(repl, data), **jit_options)
  jitted = jax.jit(fn, in_shardings=(repl, data, repl), **jit_options)

  def call(state, batch):
    return jitted(state, batch, split_images)

  call.lower = lambda state, batch: jitted.lower(state, batch, split_images)
  return call


def compile_steps(
    mesh: Mesh,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: losses.LossSettings,
    views: ViewSettings | None = None,
    resident: ResidentSplits | None = None,
) -> CompiledSteps:
  """Jits train_step, eval_step and the augmentation preview for `mesh`
  (views: a multi-view run's settings, None for per-view runs; resident: the
  splits on the devices, whose batches are record indices)."""
  resident = resident or ResidentSplits()
  repl = sharding.replicated(mesh)
  train = _jit_with_split(
      functools.partial(
          train_step,
          learning_rate_fn=learning_rate_fn,
          aug=aug,
          loss_cfg=loss_cfg,
          views=views,
      ),
      resident.train,
      mesh,
      out_shardings=(repl, repl),
      donate_argnums=(0,),
  )

  def preview(state, batch, split_images=None):
    aug_key, _ = step_keys(state.rng, state.step)
    images = batch_images(batch, split_images)
    return preprocess_train_images(aug_key, images, aug)

  return CompiledSteps(
      train=train,
      eval=_jit_with_split(eval_step, resident.eval, mesh, out_shardings=repl),
      preview=_jit_with_split(
          preview, resident.train, mesh, out_shardings=repl
      ),
  )

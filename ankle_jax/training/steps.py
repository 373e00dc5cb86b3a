"""The jitted steps: train_step (augment, standardize, forward, loss, Adam),
eval_step (the shared eval forward, `models.forward`) and the augmentation
preview, compiled for a mesh (the state replicated, batches sharded on axis 0).

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

  @classmethod
  def from_config(
      cls, config: ml_collections.ConfigDict
  ) -> 'ViewSettings | None':
    """None for a per-view run."""
    if not models.is_multiview(config.model):
      return None
    views = config.model.multiview
    return cls(int(views.max_views), float(views.view_dropout))


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


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: losses.LossSettings,
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
    terms = losses.loss_terms(outputs, labels, params, loss_cfg, view_mask)
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
  outputs = forward.apply_eval(
      state.apply_fn, variables, batch['image'], batch.get('view_mask')
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
  preview: Any  # (state, images) -> the step's augmented, standardized images.


def compile_steps(
    mesh: Mesh,
    learning_rate_fn: optax.Schedule,
    aug: AugmentSettings,
    loss_cfg: losses.LossSettings,
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

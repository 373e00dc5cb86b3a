"""The train state, the optimizer and its learning-rate schedule, and the
state's checkpoint glue (latest checkpoints: state, data order, loop)."""

from collections.abc import Mapping
import dataclasses
import functools
from typing import Any

from etils import epath
import flax.linen as nn
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import optax

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import models
from ankle_jax import sharding


class TrainState(flax_train_state.TrainState):
  """params, opt_state, step (from flax's TrainState), BatchNorm statistics and
  the base RNG.

  The RNG is a raw uint32[2] key; the key of step s is fold_in(rng, s), so it
  never has to be advanced and resumes exactly.
  """

  batch_stats: Any = None
  rng: jax.Array = None


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The optimizer fields of a run config (values as the config holds them).

  lr_schedule: 'constant' (the paper), 'cosine' or 'warmup_cosine'.
  grad_clip_norm: global-norm clipping before Adam (None or <= 0: off).
  """

  learning_rate: float
  lr_schedule: str = 'constant'
  warmup_steps: int = 0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  grad_clip_norm: float | None = None

  @classmethod
  def from_config(cls, config: Any) -> 'OptimizerSettings':
    return cls(
        learning_rate=config.learning_rate,
        lr_schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps,
        adam_b1=config.adam_b1,
        adam_b2=config.adam_b2,
        adam_eps=config.adam_eps,
        grad_clip_norm=config.grad_clip_norm,
    )


def create_learning_rate_fn(
    opt: OptimizerSettings, num_train_steps: int
) -> optax.Schedule:
  """The learning rate as a function of the step ('constant' in the paper)."""
  if opt.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(
        opt.learning_rate, max(1, num_train_steps)
    )
  if opt.lr_schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=opt.warmup_steps,
        decay_steps=max(opt.warmup_steps + 1, num_train_steps),
    )
  return optax.constant_schedule(opt.learning_rate)


@dataclasses.dataclass(frozen=True)
class TrunkSchedule:
  """The trunk's own learning rate in a warm-started multi-view run
  (training.warm_start): 0 for the first `freeze_steps` steps, then
  `lr_scale` x the run's schedule. The rest (fusion, case head) follows the
  run's schedule from step 0."""

  freeze_steps: int = 0
  lr_scale: float = 1.0

  def is_default(self) -> bool:
    return self.freeze_steps <= 0 and self.lr_scale == 1.0

  def of(self, learning_rate_fn: optax.Schedule) -> optax.Schedule:
    def trunk_learning_rate(step):
      scaled = self.lr_scale * learning_rate_fn(step)
      return jnp.where(step < self.freeze_steps, 0.0, scaled)

    return trunk_learning_rate


TRUNK = 'trunk'  # The multi-view model's trunk parameters (models.multiview).


def _adam(opt: OptimizerSettings, learning_rate_fn: optax.Schedule):
  return optax.adam(
      learning_rate_fn, b1=opt.adam_b1, b2=opt.adam_b2, eps=opt.adam_eps
  )


def trunk_labels(params: Mapping[str, Any]) -> dict[str, Any]:
  """The params tree with 'trunk' at every leaf under params['trunk'], 'rest'
  elsewhere (optax.multi_transform's labels)."""
  return {
      name: jax.tree.map(lambda _, n=name: TRUNK if n == TRUNK else 'rest', sub)
      for name, sub in params.items()
  }


def create_optimizer(
    opt: OptimizerSettings,
    learning_rate_fn: optax.Schedule,
    trunk: TrunkSchedule | None = None,
) -> optax.GradientTransformation:
  """Adam (b1, b2, eps from `opt`), after optional global-norm clipping (of
  all gradients together). With a `trunk` schedule (not the default), the
  top-level 'trunk' parameters get their own Adam on `trunk.of(...)`
  (optax.multi_transform): a frozen trunk's updates are exactly 0."""
  adam = _adam(opt, learning_rate_fn)
  if trunk is not None and not trunk.is_default():
    adam = optax.multi_transform(
        {TRUNK: _adam(opt, trunk.of(learning_rate_fn)), 'rest': adam},
        trunk_labels,
    )
  if opt.grad_clip_norm and opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adam)
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
    opt: OptimizerSettings,
    model: nn.Module,
    rng: jax.Array,
    image_size: int,
    num_train_steps: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
    trunk: TrunkSchedule | None = None,
) -> TrainState:
  """A fresh TrainState: initialized variables, Adam state, step 0, base RNG.

  Args:
    opt: the optimizer settings.
    model: a linen Module following the ankle_jax.models calling convention.
    rng: a raw jax.random key (uint32[2]); split into an init key and the state
      RNG.
    image_size: input side length S in pixels.
    num_train_steps: length of the run (for decaying schedules).
    learning_rate_fn: the schedule; created from `opt` when None.
    trunk: a multi-view trunk's own schedule (`create_optimizer`).
  """
  init_key, state_key = jax.random.split(rng)
  params, batch_stats = initialized(init_key, image_size, model)
  if learning_rate_fn is None:
    learning_rate_fn = create_learning_rate_fn(opt, num_train_steps)
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=create_optimizer(opt, learning_rate_fn, trunk),
      batch_stats=batch_stats,
      rng=state_key,
  )


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


def variables_of(state: TrainState) -> dict[str, Any]:
  """The model's variables: {'params', 'batch_stats'}."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def save_latest(
    ckpts: checkpoint.RunCheckpoints,
    step: int,
    state: TrainState,
    train_iter: Any,
    loop_record: Mapping[str, Any],
) -> None:
  """Saves the latest checkpoint: the state, every process's data order and
  the loop's record (a collective: every process's iterator state goes into
  it)."""
  iter_states = sharding.allgather_json(
      checkpoint.encode_iterator_state(train_iter.get_state())
  )
  ckpts.save_latest(
      step,
      state_tree(state),
      [checkpoint.decode_iterator_state(state) for state in iter_states],
      dict(loop_record),
  )


def restore_latest(
    ckpts: checkpoint.RunCheckpoints,
    state: TrainState,
    train_iter: Any,
    workdir: epath.Path,
) -> tuple[TrainState, dict[str, Any] | None]:
  """Continues from the latest checkpoint, if any: (its state, its loop
  record), the iterator set to its data order; (state, None) without one.

  Raises:
    console.UserError: the checkpoint's data order cannot be carried over to
      this number of processes (`checkpoint.iterator_state_for`).
  """
  if ckpts.latest_step() is None:
    return state, None
  tree, iter_states, loop_record = ckpts.restore_latest(state_tree(state))
  try:
    iter_state = checkpoint.iterator_state_for(
        iter_states, jax.process_index(), jax.process_count()
    )
  except ValueError as e:
    raise console.UserError(f'{workdir}: {e}') from e
  if iter_state is not None:
    train_iter.set_state(iter_state)
  return with_tree(state, tree), loop_record

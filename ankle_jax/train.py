"""train_and_evaluate: the set-up of a training run, then its loop, inline.

In the style of Flax's examples/imagenet/train.py. The config is read here (and
in launch.py) only; the parts in ankle_jax.training take plain arguments:
config_checks, state (TrainState, optimizer, schedule), losses (docs/paper.md),
steps (the jitted train and eval steps), validation (the one list of
validation metrics; the gathered validation), records and inputs.

Multi-view runs (config.model.multiview.enabled, ankle_jax.models.multiview)
train on batches of cases ({'image' [B, V, S, S, 1], 'view_mask' [B, V],
'label' [B]}; data.cases.make_case_train_loader), each view augmented on its
own, views dropped at random (`multiview.drop_views`), and validate on case
batches (data.cases.iterate_case_batches); checkpoints, resume, logging and the
NaN stop are shared with per-view runs.

Devices: ankle_jax.sharding (the state replicated, batches sharded on axis 0).
With several processes every process runs this loop: it reads its block of
each batch, and validation gathers every process's rows so that each process
computes the same metrics over every case once (and so takes the same best
checkpoint and early-stopping decisions); process 0 alone writes the logs.
The loop carries a `LoopState` (best validation so far, early stopping) that is
checkpointed with the train state, so a resumed run continues exactly where
the saved one was.
"""

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import functools
import time
from typing import Any

from etils import epath
import flax.linen as nn
import jax
from jax.sharding import Mesh
import ml_collections

from ankle_jax import checkpoint
from ankle_jax import models
from ankle_jax import sharding
from ankle_jax import writers
from ankle_jax.data import folds
from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.training import cadence as cadence_lib
from ankle_jax.training import config_checks
from ankle_jax.training import inputs
from ankle_jax.training import losses
from ankle_jax.training import records
from ankle_jax.training import state as state_lib
from ankle_jax.training import steps
from ankle_jax.training import validation
from ankle_jax.training import warm_start

NonFiniteLossError = records.NonFiniteLossError


def model_summary(
    config: ml_collections.ConfigDict, model: nn.Module | None = None
) -> str:
  """The model summary lines: parameters, forward FLOPs, output shapes."""
  model = model if model is not None else models.from_run_config(config)
  summary = models.summarize(model, config.image_size)
  title = config.model.name
  if models.is_multiview(config.model):
    title = f'multi-view {config.model.multiview.fusion} {title}, per view'
  return models.format_summary(summary, title=title)


def data_sources(
    config: ml_collections.ConfigDict, workdir: epath.Path
) -> tuple[Any, Any]:
  """(train_source, eval_source) of config.data, the dataset built first
  when it is the synthetic demo's (`inputs.prepare_data`)."""
  data = config.data
  synthetic = None
  if data.synthetic.enabled:
    synthetic = {k: v for k, v in data.synthetic.items() if k != 'enabled'}
  data_dir = inputs.prepare_data(
      workdir,
      data_dir=data.data_dir,
      manual_dir=data.manual_dir,
      dataset_config=data.dataset_config,
      synthetic_studies=synthetic,
      progress=config.progress_bar,
  )
  return inputs.load_sources(
      data_dir,
      data.dataset_config,
      (data.train_split, data.eval_split),
      folds.cv_fold_of(data),
  )


def start_message(
    config: ml_collections.ConfigDict,
    schedule: inputs.Schedule,
    mesh: Mesh,
    start_step: int,
    sources: tuple[Any, Any],
) -> str:
  """One line: the model, the data, the steps and the devices."""
  max_views = config.data.max_eval_views
  num_eval = len(pipeline.eval_order(sources[1], max_views))
  cap = f' (first {max_views} per case)' if max_views else ''
  devices = mesh.devices.size
  platform = mesh.devices.flat[0].platform.upper()
  steps_text = (
      f'steps {start_step + 1}-{schedule.num_train_steps}'
      if start_step
      else f'{schedule.num_train_steps} steps'
  )
  model, batch = config.model.name, f'batch {config.batch_size}'
  if models.is_multiview(config.model):
    views = config.model.multiview
    model = f'a multi-view {views.fusion} {model}'
    batch += f' cases of up to {views.max_views} views'
  cv_fold = folds.cv_fold_of(config.data)
  eval_name = (
      f'fold {cv_fold[1]} of {cv_fold[0]}'
      if cv_fold
      else config.data.eval_split
  )
  return (
      f'Training {model} on {prepare.DATASET_NAME}/'
      f'{config.data.dataset_config} ({len(sources[0])} train / {num_eval} '
      f'{eval_name} views{cap}, {config.image_size} px): '
      f'{steps_text}, {batch} '
      f'({schedule.num_train_steps / schedule.steps_per_epoch:.1f} epochs) '
      f'on {devices} {platform} device{"s" if devices > 1 else ""}.'
  )


def compile_steps(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    learning_rate_fn: Any,
    views: steps.ViewSettings | None,
    resident: steps.ResidentSplits,
) -> steps.CompiledSteps:
  """The run's jitted steps (augmentation and loss settings of the config)."""
  return steps.compile_steps(
      mesh,
      learning_rate_fn,
      steps.AugmentSettings.from_config(config.augment),
      losses.LossSettings.from_config(config),
      views,
      resident,
  )


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the loop works with, fixed for the whole run.

  jitted: the jitted steps; cadence: when the loop saves and validates;
  ckpts, writer: the run's checkpoints and records
  (their files change, the objects do not); train_iter: the training
  iterator of (host batch, placed batch); validation_batches: () -> this
  process's blocks of the validation batches; images_per_step: for images/s.
  """

  workdir: epath.Path
  mesh: Mesh
  schedule: inputs.Schedule
  cadence: cadence_lib.Cadence
  jitted: steps.CompiledSteps
  ckpts: checkpoint.RunCheckpoints
  writer: writers.MetricWriter
  train_iter: Any
  validation_batches: Callable[[], Iterator[dict[str, Any]]]
  best_metric: str
  patience: int
  images_per_step: int


def place_data(
    config: ml_collections.ConfigDict, mesh: Mesh, sources: tuple[Any, Any]
) -> tuple[inputs.Placement, steps.ResidentSplits]:
  """Where the run's data lives (config.data.on_device, worker_count) and the
  splits placed on the devices."""
  data = config.data
  device = next(
      d for d in mesh.devices.flat if d.process_index == jax.process_index()
  )
  placement = inputs.resolve_placement(
      on_device=data.on_device,
      worker_count=data.worker_count,
      platform=device.platform,
      split_nbytes=tuple(
          pipeline.split_nbytes(source, config.image_size) for source in sources
      ),
      budget_bytes=inputs.device_budget_bytes(
          device,
          data.on_device_budget_fraction,
          data.on_device_cpu_budget_mb * 2**20,
      ),
  )
  on_device = (placement.train_on_device, placement.eval_on_device)
  train, eval_ = (
      inputs.place_split(source, config.image_size, mesh) if placed else None
      for source, placed in zip(sources, on_device)
  )
  return placement, steps.ResidentSplits(train, eval_)


def train_iterator(
    config: ml_collections.ConfigDict,
    train_source: Any,
    views: steps.ViewSettings | None,
    placement: inputs.Placement,
    mesh: Mesh,
) -> inputs.DevicePrefetch:
  """The resumable training iterator of the config, two batches ahead on the
  devices."""
  iterator = inputs.make_train_iterator(
      train_source,
      global_batch_size=config.batch_size,
      image_size=config.image_size,
      seed=config.seed,
      worker_count=placement.worker_count,
      sample_weights_by_label=config.data.get('sample_weights_by_label'),
      max_views=views.max_views if views else None,
      indices_only=placement.train_on_device,
  )
  return inputs.DevicePrefetch(
      iterator, functools.partial(sharding.shard_batch, mesh=mesh)
  )


def set_up(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    mesh: Mesh,
    model: nn.Module,
    sources: tuple[Any, Any],
    warm: warm_start.WarmStart | None = None,
) -> tuple[Setup, state_lib.TrainState]:
  """The run's Setup and a fresh train state (replicated on the mesh; warm:
  the trunk's schedule of a warm-started run)."""
  views = steps.ViewSettings.from_config(config, warm_started=bool(warm))
  schedule = inputs.Schedule.from_config(
      config, inputs.num_train_examples(sources[0], views is not None)
  )
  optimizer = state_lib.OptimizerSettings.from_config(config)
  learning_rate_fn = state_lib.create_learning_rate_fn(
      optimizer, schedule.num_train_steps
  )
  state = state_lib.create_train_state(
      optimizer,
      model,
      jax.random.PRNGKey(config.seed),
      config.image_size,
      schedule.num_train_steps,
      learning_rate_fn,
      warm.trunk if warm else None,
  )
  placement, resident = place_data(config, mesh, sources)
  setup = Setup(
      workdir=workdir,
      mesh=mesh,
      schedule=schedule,
      cadence=cadence_lib.Cadence.from_config(config, schedule.num_train_steps),
      jitted=compile_steps(config, mesh, learning_rate_fn, views, resident),
      ckpts=checkpoint.RunCheckpoints(
          workdir,
          keep=config.keep_checkpoints,
          best_metric=config.best_metric,
          best_mode=validation.METRIC_MODES[config.best_metric],
          # Multi-process async saves raced in orbax's barriers here
          # ('Barrier ... set_value_start is already ongoing' when a run
          # resumed with the other process count): those save synchronously.
          asynchronous=jax.process_count() == 1,
      ),
      writer=writers.MetricWriter(
          workdir, enabled=sharding.is_chief(), tags=validation.METRIC_TAGS
      ),
      train_iter=train_iterator(config, sources[0], views, placement, mesh),
      validation_batches=functools.partial(
          validation.validation_batches,
          sources[1],
          batch_size=config.eval_batch_size,
          image_size=config.image_size,
          max_views_per_case=config.data.max_eval_views,
          multiview=views is not None,
          indices_only=placement.eval_on_device,
      ),
      best_metric=config.best_metric,
      patience=config.early_stopping_patience,
      images_per_step=config.batch_size * (views.max_views if views else 1),
  )
  return setup, jax.device_put(state, sharding.replicated(mesh))


def resume(
    config: ml_collections.ConfigDict,
    setup: Setup,
    state: state_lib.TrainState,
) -> tuple[state_lib.TrainState, validation.LoopState]:
  """The state and loop to start from: the latest checkpoint's, if any (the
  metrics.jsonl lines after it dropped), else the fresh ones. The chief
  writes config.json (and, on a fresh start, the HParams)."""
  workdir = setup.workdir
  state, loop_record = state_lib.restore_latest(
      setup.ckpts, state, setup.train_iter, workdir
  )
  loop = validation.LoopState.from_json(loop_record or {})
  step = int(state.step)
  if loop_record is not None:
    records.say(f'Resumed from {workdir} at step {step}.')
    if sharding.is_chief():
      writers.truncate_metrics(workdir, step)
  if sharding.is_chief():
    writers.write_config(workdir, config)
  if step == 0:
    setup.writer.write_hparams(
        records.hparams_of(
            writers.flatten_config(config), setup.schedule.num_train_steps
        ),
        writers.best_metric_tags(validation.METRIC_NAMES),
    )
  return state, loop


def start(
    config: ml_collections.ConfigDict,
    workdir: epath.PathLike,
    model: nn.Module | None,
    sources: tuple[Any, Any] | None,
    devices: Sequence[Any] | None,
    print_model_summary: bool,
) -> tuple[Setup, state_lib.TrainState, validation.LoopState]:
  """Checks the config and the run directory, readies the data and the model,
  and sets the run up (resumed from its latest checkpoint, if any)."""
  config_checks.validate_config(config)
  warm = warm_start.WarmStart.from_config(config)
  if warm is not None:
    warm_start.check_source(warm, config, str(workdir))
  workdir = writers.ensure_writable_dir(epath.Path(workdir))
  sources = sources if sources is not None else data_sources(config, workdir)
  model = model if model is not None else models.from_run_config(config)
  if print_model_summary and sharding.is_chief():
    print(model_summary(config, model), flush=True)
  mesh = sharding.create_mesh(devices)
  sharding.check_batch_divisible(config.batch_size, mesh, 'batch_size')
  sharding.check_batch_divisible(
      config.eval_batch_size, mesh, 'eval_batch_size'
  )
  setup, state = set_up(config, workdir, mesh, model, sources, warm)
  if warm is not None and setup.ckpts.latest_step() is None:
    state = warm_start.warm_started(state, model.trunk, config.image_size, warm)
    state = jax.device_put(state, sharding.replicated(mesh))
    records.say(f'Warm start from {warm.source} ({warm.checkpoint}).')
  state, loop = resume(config, setup, state)
  step = int(state.step)
  records.say(start_message(config, setup.schedule, mesh, step, sources))
  if loop.stopped_early:
    records.say(f'The run had stopped early at step {step}.')
  return setup, state, loop


def validate_and_select(
    setup: Setup,
    state: state_lib.TrainState,
    loop: validation.LoopState,
    step: int,
    bar: Any,
) -> tuple[validation.LoopState, dict[str, Any]]:
  """Validates at `step`; saves a new best checkpoint; notes early stopping.
  Returns the loop after it and the record (validation metrics, best_step)."""
  val = validation.validate(
      setup.jitted.eval, state, setup.validation_batches(), setup.mesh
  )
  loop, is_best = validation.record_evaluation(
      loop, step, val, setup.best_metric, setup.patience
  )
  if is_best:
    setup.ckpts.save_best(step, state_lib.variables_of(state), val)
    setup.writer.write_best(step, val)
  if loop.stopped_early:
    records.say(records.early_stop_message(step, setup.patience, loop), bar)
  records.show_on_bar(bar, val)
  return loop, {**val, 'best_step': loop.best_step}


def validate_and_save(
    setup: Setup,
    state: state_lib.TrainState,
    loop: validation.LoopState,
    clock: cadence_lib.Clock,
    step: int,
    record: dict[str, Any],
    bar: Any,
) -> tuple[validation.LoopState, cadence_lib.Clock]:
  """At a checked `step`: validates if due (`validate_and_select`), writes
  `record` (the train record, if any) with the validation metrics, then
  starts saving the latest checkpoint if due or if the run stops early.
  Returns the loop and the cadence's clock after it."""
  due, clock = cadence_lib.decide(setup.cadence, clock, step, time.monotonic())
  if due.evaluate:
    loop, val = validate_and_select(setup, state, loop, step, bar)
    record = {**record, **val}
  if record:
    setup.writer.write_scalars(step, record)
  if due.checkpoint or (due.evaluate and loop.stopped_early):
    state_lib.save_latest(
        setup.ckpts, step, state, setup.train_iter, loop.to_json()
    )
  return loop, clock


def train_record(
    setup: Setup,
    history: Sequence[tuple[int, Any]],
    step: int,
    last_step: int,
    seconds: float,
) -> dict[str, float]:
  """`records.train_record` of the steps after `last_step` up to `step`, which
  took `seconds` of wall time."""
  return records.train_record(
      history,
      step=step,
      steps_done=step - last_step,
      seconds=seconds,
      images_per_step=setup.images_per_step,
      steps_per_epoch=setup.schedule.steps_per_epoch,
  )


def finish(
    config: ml_collections.ConfigDict,
    setup: Setup,
    state: state_lib.TrainState,
    loop: validation.LoopState,
    seconds: float,
) -> dict[str, Any]:
  """Waits for the checkpoint saves and closes them, then the run summary
  (the chief writes summary.json: once every checkpoint is on disk); closes
  the records. seconds: this launch's training wall time."""
  setup.ckpts.close()
  summary = records.run_summary(
      final_step=int(jax.device_get(state.step)),
      num_train_steps=setup.schedule.num_train_steps,
      loop=loop,
      best_metric=setup.best_metric,
      eval_checkpoint=config.eval_checkpoint,
      seconds=seconds,
  )
  if sharding.is_chief():
    writers.write_summary(setup.workdir, summary)
  setup.writer.close()
  return summary


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: epath.PathLike,
    *,
    model: nn.Module | None = None,
    sources: tuple[Any, Any] | None = None,
    devices: Sequence[Any] | None = None,
    print_model_summary: bool = False,
) -> dict[str, Any]:
  """Trains, evaluates, checkpoints and logs; resumes from the latest
  checkpoint in workdir.

  Args:
    config: the run config (configs/default.py fields).
    workdir: the run directory.
    model: the model (default: models.from_run_config(config)).
    sources: (train_source, eval_source) overriding the TFDS splits (tests).
    devices: the devices of the data-parallel mesh (default: all).
    print_model_summary: the chief prints `model_summary` (launch.py).

  Returns:
    The run summary, also in workdir/summary.json (`records.run_summary`).

  Raises:
    console.UserError (a bad config, or a batch the devices cannot split),
    writers.WorkdirNotWritableError (checked first, after the config),
    prepare.DatasetMissingError, checkpoint.CheckpointWriteError (e.g. a full
    disk), NonFiniteLossError (the loss became NaN/inf; the latest checkpoint
    on disk is the last one saved before that step). On any error, and
    KeyboardInterrupt, the checkpoint saves started finish first.
  """
  setup, state, loop = start(
      config, workdir, model, sources, devices, print_model_summary
  )
  schedule, writer, ckpts = setup.schedule, setup.writer, setup.ckpts
  started = time.time()
  bar = writers.progress_bar(
      schedule.num_train_steps,
      int(state.step),
      enabled=sharding.is_chief() and config.progress_bar,
  )
  history = []  # (step, device metrics) since the last check.
  log_time, log_step = time.time(), int(state.step)
  clock = cadence_lib.Clock.started(time.monotonic())
  try:
    for step in range(int(state.step) + 1, schedule.num_train_steps + 1):
      if loop.stopped_early:
        break
      batch, placed = next(setup.train_iter)
      if schedule.images_due(step):
        preview = jax.device_get(setup.jitted.preview(state, placed))
        records.write_preview(writer, step, preview, batch)
      state, metrics = setup.jitted.train(state, placed)
      history.append((step, metrics))
      if bar is not None:
        bar.update(1)
      if not schedule.any_due(step):
        continue
      history = jax.device_get(history)
      records.check_finite(history, ckpts.latest_step(), setup.workdir)
      record, now = {}, time.time()
      if schedule.due(step, schedule.log_every) and history:
        record = train_record(setup, history, step, log_step, now - log_time)
        history, log_time, log_step = [], now, step
      loop, clock = validate_and_save(
          setup, state, loop, clock, step, record, bar
      )
  except BaseException:
    ckpts.close(raise_errors=False)  # The saves started finish first.
    raise
  finally:
    if bar is not None:
      bar.close()
    writer.flush()
  return finish(config, setup, state, loop, time.time() - started)

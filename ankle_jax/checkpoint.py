"""Orbax checkpoints of a training run: the latest N, the best one, and exact
resume.

Layout under a run's workdir:
  config.json                 the full run config (written by `writers`).
  checkpoints/latest/<step>/  the latest `keep` checkpoints, each with the items
      state      the whole train state as a pytree: step, params, batch_stats,
                 opt_state, rng;
      data_iter  the grain iterator state of every process (JSON): the exact
                 data order on resume;
      loop       the loop's own state (JSON, training.validation.LoopState): best validation
                 so far, early stopping;
      sha256.json  a SHA-256 of every saved array (DIGEST_FILE, written by
                 the item 'digests', whose own directory stays empty).
  checkpoints/best/<step>/    the single best checkpoint by the chosen metric:
      variables  {'params', 'batch_stats'};
      meta       JSON {'step', 'metrics'};
      sha256.json.

Saves of a single-process training run are asynchronous (RunCheckpoints(
asynchronous=True), orbax's async checkpointing; multi-process runs save
synchronously): `save_latest` and `save_best` return once the
arrays are on their way to the host, and orbax writes and commits the step in
a background thread; the next save, `wait` and `close` wait for it (a
state with a non-finite loss is never handed to `save_latest`: the training
loop checks first). A step directory appears only when complete, digests
included (orbax writes into a temporary directory, then renames it).
With several processes, every process calls the saves and restores: orbax
writes one checkpoint cooperatively (the state is replicated, so it does not
depend on the number of processes: a checkpoint of 2 processes restores in 1,
and the reverse), and process 0 writes the JSON items and the digests.

Integrity (checkpoint_digests): each step holds the SHA-256 of every array's
bytes (`sha256.json`, hashed in orbax's background thread and committed with
the step), and a restore recomputes them from what it read: a mismatch makes
the step unreadable (below).
A checkpoint without the file (older runs) restores unverified, with one
WARNING per run and process (however many restores) naming the step
directory; new saves (e.g. continuing training) write digests.

Faults:
  * A save interrupted by a crash or SIGKILL leaves an orbax temporary directory
    (`<step>.orbax-checkpoint-tmp-<time>`), which is never read as a step and is
    removed when the run restarts.
  * An unreadable checkpoint (truncated or garbled files, or arrays that do
    not match their digests) is skipped with a warning naming the step, and
    the next older step is restored instead; in a training run the
    unreadable step directories are moved to `checkpoints/unreadable/` so they
    are not picked up again.
  * A save that fails (disk full, directory not writable) raises
    `CheckpointWriteError` naming the directory and the step: from the save
    itself, or, when the background write fails, from the next save, `wait`
    or `close`.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
import contextlib
import json
import logging as py_logging
import os
import shutil
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ankle_jax import checkpoint_digests
from ankle_jax import checkpoint_iterators
from ankle_jax import sharding
from ankle_jax import writers

LATEST_DIR = 'checkpoints/latest'
BEST_DIR = 'checkpoints/best'
UNREADABLE_DIR = 'checkpoints/unreadable'
# The checkpoints evaluation can restore (config.eval_checkpoint, the
# --checkpoint flag of evaluate and predict): 'best' = best validation
# (config.best_metric), 'latest' = the last saved step (the authors' choice,
# docs/paper.md, section 2).
CHECKPOINT_CHOICES = ('best', 'latest')
DEFAULT_CHECKPOINT = 'best'
# The digests of a step's arrays (checkpoint_digests), named here too for the
# modules and tests that know this module.
DIGEST_FILE = checkpoint_digests.DIGEST_FILE
CheckpointIntegrityError = checkpoint_digests.CheckpointIntegrityError
verify_digests = checkpoint_digests.verify_digests
# The data iterator states (checkpoint_iterators), named here too.
encode_iterator_state = checkpoint_iterators.encode_iterator_state
decode_iterator_state = checkpoint_iterators.decode_iterator_state
encode_iterator_states = checkpoint_iterators.encode_iterator_states
decode_iterator_states = checkpoint_iterators.decode_iterator_states
iterator_state_for = checkpoint_iterators.iterator_state_for


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, directory not writable)."""


class CheckpointReadError(ValueError):
  """No checkpoint of a directory could be read back."""


def _absolute(path: epath.PathLike) -> epath.Path:
  """Orbax needs absolute directories; runs are often given relative ones."""
  return epath.Path(os.path.abspath(os.fspath(path)))


def _options(
    max_to_keep: int, read_only: bool = False, asynchronous: bool = False
) -> ocp.CheckpointManagerOptions:
  # cleanup_tmp_directories: remove the unfinished saves of a killed run on
  # restart.
  return ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=asynchronous and not read_only,
      cleanup_tmp_directories=not read_only,
  )


def _latest_manager(
    workdir: epath.PathLike,
    keep: int = 3,
    read_only: bool = False,
    asynchronous: bool = False,
) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      _absolute(workdir) / LATEST_DIR,
      options=_options(keep, read_only, asynchronous),
      item_handlers={
          'state': ocp.PyTreeCheckpointHandler(),
          'data_iter': ocp.JsonCheckpointHandler(),
          'loop': ocp.JsonCheckpointHandler(),
          checkpoint_digests.DIGEST_ITEM: checkpoint_digests.DigestHandler(),
      },
  )


def _best_manager(
    workdir: epath.PathLike, read_only: bool = False, asynchronous: bool = False
) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      _absolute(workdir) / BEST_DIR,
      options=_options(1, read_only, asynchronous),
      item_handlers={
          'variables': ocp.PyTreeCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler(),
          checkpoint_digests.DIGEST_ITEM: checkpoint_digests.DigestHandler(),
      },
  )


def _write_failure_hint(error: BaseException) -> str:
  """What to check after a failed save: the disk, unless the failure was not
  an OSError in a run of several processes (a collective with a process that
  died)."""
  cause = error
  while cause is not None:
    if isinstance(cause, OSError):
      return 'Is the disk full or the directory not writable?'
    cause = cause.__cause__ or cause.__context__
  if jax.process_count() > 1:
    return 'Did another process of the run stop?'
  return 'Is the disk full or the directory not writable?'


def _describe(error: BaseException) -> str:
  """A one-line reason: the exception type and the first line of its message."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


@contextlib.contextmanager
def _write_errors(manager: ocp.CheckpointManager, step: int) -> Iterator[None]:
  """Raises the errors of writing `step` as CheckpointWriteError."""
  try:
    yield
  except Exception as e:  # orbax wraps OSErrors variously.
    raise CheckpointWriteError(
        f'could not write the checkpoint of step {step} to '
        f'{manager.directory}: {_describe(e)}. {_write_failure_hint(e)}'
    ) from e


def _restore_newest_readable(
    manager: ocp.CheckpointManager,
    directory: epath.Path,
    restore_fn: Callable[[int], Any],
) -> tuple[Any, int, list[int]]:
  """Restores the newest step that reads back, warning about each newer
  unreadable one.

  Returns:
    (restore_fn(step), step, unreadable_steps) with unreadable_steps newer than
    step.

  Raises:
    FileNotFoundError: there is no checkpoint in `directory`.
    CheckpointReadError: no step could be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'no checkpoint under {directory}')
  unreadable = []
  for step in steps:
    try:
      return restore_fn(step), step, unreadable
    except Exception as e:  # orbax/tensorstore/json errors.
      unreadable.append(step)
      older = [s for s in steps if s < step]
      logging.warning(
          'Checkpoint %s is unreadable (%s); %s',
          directory / str(step),
          _describe(e),
          f'falling back to step {older[0]}.'
          if older
          else 'no older checkpoint left.',
      )
  raise CheckpointReadError(
      f'no readable checkpoint under {directory}: steps {steps} all failed '
      'to restore (truncated or garbled files?); see the warnings above.'
  )


def _numpy_restore_args(metadata_tree: Any) -> Any:
  return jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata_tree
  )


class RunCheckpoints:
  """The latest-N and best checkpoint managers of one training run."""

  def __init__(
      self,
      workdir: epath.PathLike,
      *,
      keep: int = 3,
      best_metric: str = 'val_accuracy',
      best_mode: str = 'max',
      asynchronous: bool = False,
  ):
    """best_metric: the validation metric that picks the best checkpoint;
    best_mode: 'max' or 'min', which way it is better (the training side's
    list of metrics, ankle_jax.training.validation, says); asynchronous:
    True returns from each save before it is written (the training loop;
    `wait` waits for it), False once it is committed (the step directory
    can be read at once)."""
    self.workdir = epath.Path(workdir)
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.asynchronous = asynchronous
    self.latest = _latest_manager(
        self.workdir, keep=keep, asynchronous=asynchronous
    )
    self.best = _best_manager(self.workdir, asynchronous=asynchronous)
    # {manager directory: the step it may still be writing}.
    self._pending: dict[str, int] = {}

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _save(
      self,
      manager: ocp.CheckpointManager,
      step: int,
      items: Mapping[str, Any],
      arrays: Any,
  ) -> None:
    """Starts saving `items` ({item: orbax save args}) and the digests of
    `arrays` (the pytree saved), replacing an existing `step`, once the
    manager's previous save is committed; failures -> CheckpointWriteError.

    A step can already exist when a killed run is replayed from an older
    checkpoint (e.g. killed between the best and the latest save of one step);
    the replay computes the same values, so the old save is replaced.
    """
    step = int(step)
    self._wait(manager)
    with _write_errors(manager, step):
      if step in manager.all_steps():
        manager.delete(step)
      manager.save(
          step,
          args=ocp.args.Composite(
              **{
                  **items,
                  checkpoint_digests.DIGEST_ITEM: (
                      checkpoint_digests.DigestSave(arrays)
                  ),
              }
          ),
          force=True,
      )
    self._pending[str(manager.directory)] = step
    if not self.asynchronous:
      self._wait(manager)

  def _wait(self, manager: ocp.CheckpointManager) -> None:
    """Waits until the manager's save (if any) is committed."""
    step = self._pending.pop(str(manager.directory), None)
    if step is not None:
      with _write_errors(manager, step):
        manager.wait_until_finished()

  def wait(self) -> None:
    """Waits until every save started is committed (to disk, digests
    included).

    Raises:
      CheckpointWriteError: a save failed in the background.
    """
    self._wait(self.latest)
    self._wait(self.best)

  def save_latest(
      self,
      step: int,
      state_tree: Any,
      data_iter_states: Sequence[Any],
      loop_state: Mapping[str, Any],
  ) -> None:
    """Saves the whole train state, the data iterators (one state per
    process, in process order) and the loop state."""
    self._save(
        self.latest,
        step,
        {
            'state': ocp.args.PyTreeSave(state_tree),
            'data_iter': ocp.args.JsonSave(
                encode_iterator_states(data_iter_states)
            ),
            'loop': ocp.args.JsonSave(dict(loop_state)),
        },
        state_tree,
    )

  def restore_latest(
      self, target_state_tree: Any
  ) -> tuple[Any, list[Any], dict[str, Any]]:
    """Restores (state_tree, data_iter_states, loop_state) of the latest
    checkpoint that reads back and matches its digests; data_iter_states has
    one state per process of the run that saved it (`iterator_state_for`).

    Args:
      target_state_tree: a pytree of jax arrays with the expected structure,
        shapes and shardings (a freshly created state).
    """
    restore_args = ocp.checkpoint_utils.construct_restore_args(
        target_state_tree
    )

    def restore(step):
      restored = self.latest.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.PyTreeRestore(
                  item=target_state_tree, restore_args=restore_args
              ),
              data_iter=ocp.args.JsonRestore(),
              loop=ocp.args.JsonRestore(),
          ),
      )
      verify_digests(directory / str(step), restored['state'])
      return (
          restored['state'],
          decode_iterator_states(restored['data_iter']),
          dict(restored['loop']),
      )

    directory = _absolute(self.workdir) / LATEST_DIR
    result, _, unreadable = _restore_newest_readable(
        self.latest, directory, restore
    )
    if unreadable:
      if sharding.is_chief():
        self._move_aside(unreadable)
      sharding.sync_processes('checkpoints_moved_aside')
      self.latest.reload()
    return result

  def _move_aside(self, steps: list[int]) -> None:
    """Moves unreadable step directories aside (kept for inspection)."""
    target = _absolute(self.workdir) / UNREADABLE_DIR
    target.mkdir(parents=True, exist_ok=True)
    for step in steps:
      source = _absolute(self.workdir) / LATEST_DIR / str(step)
      destination = target / f'{step}-{int(time.time())}'
      shutil.move(os.fspath(source), os.fspath(destination))
      logging.warning(
          'Moved the unreadable checkpoint %s to %s.', source, destination
      )

  def save_best(
      self, step: int, variables: Any, metrics: Mapping[str, float]
  ) -> None:
    """Replaces the best checkpoint by `variables` (params, batch_stats)."""
    meta = {
        'step': int(step),
        'best_metric': self.best_metric,
        'metrics': {k: float(v) for k, v in metrics.items()},
    }
    self._save(
        self.best,
        step,
        {
            'variables': ocp.args.PyTreeSave(variables),
            'meta': ocp.args.JsonSave(meta),
        },
        variables,
    )
    # max_to_keep=1 keeps the newest save, which is the best by construction
    # (training only calls save_best on an improvement).

  def close(self, raise_errors: bool = True) -> None:
    """Waits for the saves started (`wait`), then closes the managers.

    raise_errors: False logs a failed save instead (closing on the way out of
    another error, which stays the one raised).
    """
    try:
      self.wait()
    except CheckpointWriteError as e:
      if raise_errors:
        raise
      logging.error('%s', e)
    finally:
      for manager in (self.latest, self.best):
        # A failed save was raised by `wait`; orbax would raise it again.
        with contextlib.suppress(Exception):
          manager.close()


def _is_orbax_warning(record: py_logging.LogRecord) -> bool:
  return record.levelno < py_logging.ERROR and (
      f'{os.sep}orbax{os.sep}' in record.pathname
  )


@contextlib.contextmanager
def _quiet_read_only_restore() -> Iterator[None]:
  """Hides orbax's own warnings during a read-only restore ('Given directory is
  read only', three per restore) unless absl logging is at INFO or more
  (--verbosity=1). This module's warnings (an unreadable checkpoint skipped)
  still show."""
  if logging.get_verbosity() >= logging.INFO:
    yield
    return
  absl_logger = logging.get_absl_logger()
  drop_orbax = lambda record: not _is_orbax_warning(record)
  absl_logger.addFilter(drop_orbax)
  try:
    yield
  finally:
    absl_logger.removeFilter(drop_orbax)


def restore_variables(
    workdir: epath.PathLike, which: str = DEFAULT_CHECKPOINT
) -> tuple[dict[str, Any], int]:
  """Loads a run's model variables for evaluation (orbax's read-only warnings
  hidden: see `_quiet_read_only_restore`)."""
  with _quiet_read_only_restore():
    return _restore_variables(workdir, which)


def _restore_variables(
    workdir: epath.PathLike, which: str
) -> tuple[dict[str, Any], int]:
  """Loads a run's model variables for evaluation.

  Args:
    workdir: the run directory given to launch.py.
    which: 'best' (best validation checkpoint) or 'latest' (last saved step).

  Returns:
    (variables, step): variables = {'params', 'batch_stats'} as numpy arrays,
    and the training step at which they were saved.
  """
  workdir = epath.Path(workdir)
  if which == 'best':
    manager = _best_manager(workdir, read_only=True)
    item = 'variables'
  elif which == 'latest':
    manager = _latest_manager(workdir, read_only=True)
    item = 'state'
  else:
    raise ValueError(
        f'which={which!r}; expected one of {", ".join(CHECKPOINT_CHOICES)}'
    )
  directory = workdir / (BEST_DIR if which == 'best' else LATEST_DIR)
  if manager.latest_step() is None:
    raise FileNotFoundError(
        f'no {which!r} checkpoint under {directory}'
        ' (train first: python launch.py --config=... --workdir=...)'
    )

  def restore(step):
    metadata = manager.item_metadata(step)[item]
    metadata_tree = getattr(metadata, 'tree', metadata)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                item: ocp.args.PyTreeRestore(
                    restore_args=_numpy_restore_args(metadata_tree)
                )
            }
        ),
    )[item]
    verify_digests(directory / str(step), restored)
    return restored

  try:
    restored, step, _ = _restore_newest_readable(manager, directory, restore)
  finally:
    manager.close()
  variables = {
      'params': restored['params'],
      'batch_stats': restored.get('batch_stats', {}),
  }
  return variables, int(step)


def load_run_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """Reads a run's config.json back into a ConfigDict."""
  path = epath.Path(workdir) / writers.CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
        f'{path} not found: is {workdir} a training run directory?'
    )
  return ml_collections.ConfigDict(json.loads(path.read_text()))

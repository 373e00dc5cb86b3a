"""The inputs of a run: the dataset (built on first use for the synthetic
demo), the resumable train iterator, and the step schedule."""

from collections.abc import Mapping
import dataclasses
import time
from typing import Any

from etils import epath
import jax

from ankle_jax import console
from ankle_jax import sharding
from ankle_jax.data import cases
from ankle_jax.data import pipeline
from ankle_jax.data import prepare


def prepare_data(
    workdir: epath.PathLike,
    *,
    data_dir: str | None,
    manual_dir: str | None,
    dataset_config: str,
    synthetic_studies: Mapping[str, Any] | None,
    progress: bool = True,
) -> epath.Path:
  """Makes sure the dataset exists; returns its data_dir.

  With synthetic_studies (the options of data.synthetic when enabled) and no
  manual_dir, the chief process generates the synthetic studies into
  <workdir>/data/studies and builds them (in this process), while the others
  wait until the built dataset appears.

  Raises:
    prepare.DatasetMissingError: the dataset is not built, with the command that
      builds it.
  """
  data_dir, resolved_manual_dir = prepare.resolve_data_dirs(
      data_dir, manual_dir, workdir
  )
  if prepare.dataset_exists(data_dir, dataset_config):
    return data_dir
  if synthetic_studies is None or manual_dir:
    raise prepare.missing_dataset_error(data_dir, dataset_config, manual_dir)
  if sharding.is_chief():
    prepare.prepare_dataset(
        data_dir=data_dir,
        manual_dir=resolved_manual_dir,
        dataset_config=dataset_config,
        synthetic_studies=dict(synthetic_studies),
        progress=progress,
    )
  # The others poll rather than wait in a collective, however long the build.
  while not prepare.dataset_exists(data_dir, dataset_config):
    time.sleep(2)
  sharding.sync_processes('prepare_data')
  return data_dir


def load_sources(
    data_dir: epath.PathLike, dataset_config: str, splits: tuple[str, str]
) -> tuple[Any, Any]:
  """(train_source, eval_source): random-access sources of the two splits."""
  return tuple(
      pipeline.load_split(str(data_dir), split, dataset_config=dataset_config)
      for split in splits
  )


def num_train_examples(train_source: Any, multiview: bool) -> int:
  """What an epoch counts: training views, or cases for a multi-view run."""
  if multiview:
    return cases.num_cases(train_source)
  return len(train_source)


def make_train_iterator(
    train_source: Any,
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    worker_count: int,
    sample_weights_by_label: Any = None,
    max_views: int | None = None,
) -> Any:
  """The resumable training iterator: batches of views, or (max_views given)
  of cases padded to max_views views; this process's block of each global
  batch."""
  options = {
      'global_batch_size': global_batch_size,
      'image_size': image_size,
      'seed': seed,
      'shuffle': True,
      'worker_count': worker_count,
      'sample_weights_by_label': sample_weights_by_label,
      'process_index': jax.process_index(),
      'process_count': jax.process_count(),
  }
  if max_views is not None:
    return cases.make_case_train_loader(
        train_source, max_views=max_views, **options
    )
  return pipeline.make_train_loader(train_source, **options)


def num_steps_for(
    num_train_examples: int,
    *,
    batch_size: int,
    num_train_steps: int,
    num_epochs: float,
) -> tuple[int, int]:
  """(num_train_steps, steps_per_epoch); num_train_steps > 0 wins."""
  steps_per_epoch = num_train_examples // batch_size
  if steps_per_epoch == 0:
    raise console.UserError(
        f'the training split has {num_train_examples} examples, fewer than '
        f'config.batch_size={batch_size}'
    )
  if num_train_steps > 0:
    return int(num_train_steps), steps_per_epoch
  return int(num_epochs * steps_per_epoch), steps_per_epoch


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
  def from_config(cls, config: Any, num_train_examples: int) -> 'Schedule':
    """The schedule fields of a run config, over `num_train_examples`."""
    num_train_steps, steps_per_epoch = num_steps_for(
        num_train_examples,
        batch_size=config.batch_size,
        num_train_steps=config.num_train_steps,
        num_epochs=config.num_epochs,
    )
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

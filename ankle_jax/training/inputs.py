"""The inputs of a run: the dataset (built on first use for the synthetic
demo), where its splits live (data.on_device: placed on the devices once,
batches of record indices; or read on the host, `worker_count` grain
processes), the resumable train iterator with two batches prefetched to the
devices, and the step schedule."""

import collections
from collections.abc import Callable, Iterator, Mapping
import dataclasses
import os
import time
from typing import Any

from etils import epath
import jax
from jax.sharding import Mesh

from ankle_jax import console
from ankle_jax import sharding
from ankle_jax.data import cases
from ankle_jax.data import folds
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
    data_dir: epath.PathLike,
    dataset_config: str,
    splits: tuple[str, str],
    cv_fold: tuple[int, int] | None = None,
) -> tuple[Any, Any]:
  """(train_source, eval_source): random-access sources of the two splits, or
  with cv_fold = (K, k) those of cross-validation fold k of K
  (`folds.fold_sources`).

  Raises:
    console.UserError: a fold that cannot be made (e.g. no fracture case).
  """
  if cv_fold is not None:
    try:
      return folds.fold_sources(str(data_dir), dataset_config, *cv_fold)
    except folds.FoldError as e:
      raise console.UserError(str(e)) from None
  return tuple(
      pipeline.load_split(str(data_dir), split, dataset_config=dataset_config)
      for split in splits
  )


ON_DEVICE_CHOICES = ('auto', 'true', 'false')
# data.on_device='auto' on the CPU backend: on. Measured on the shared 2-core
# CPU (load 20-30, so noisy) with configs/demo.py (stored 300 px, trained at
# 128 px): the host train loader takes 470-610 ms per batch of 16 (read and
# resize), the index loader 7-13 ms; placing the 484 train views once takes
# 18 s, about one epoch of host reads, and the demo trains 13 epochs.
AUTO_ON_DEVICE_CPU = True


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a run's data lives (config.data.on_device and worker_count,
  resolved for the backend and the splits' sizes).

  train_on_device, eval_on_device: the split's images are placed on every
  device once and batches carry record indices.
  worker_count: grain worker processes of the host train loader.
  budget_bytes: the memory budget the splits were held to.
  """

  train_on_device: bool
  eval_on_device: bool
  worker_count: int
  budget_bytes: int


def device_budget_bytes(
    device: Any, budget_fraction: float, cpu_budget_bytes: int
) -> int:
  """budget_fraction of the device's memory (`memory_stats()['bytes_limit']`),
  or cpu_budget_bytes where the device reports none (CPU)."""
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return int(budget_fraction * stats['bytes_limit'])
  return int(cpu_budget_bytes)


def auto_worker_count(cpu_count: int | None, platform: str) -> int:
  """data.worker_count='auto': half the host's cores (at most 16) feeding an
  accelerator; 0 on CPU, whose cores run the step."""
  if platform == 'cpu':
    return 0
  return max(1, min(16, (cpu_count or 2) // 2))


def resolve_placement(
    *,
    on_device: str,
    worker_count: int | str,
    platform: str,
    split_nbytes: tuple[int, int],
    budget_bytes: int,
) -> Placement:
  """Resolves data.on_device and data.worker_count.

  on_device: 'true' places each split that fits the budget (train first, then
  the eval split in what is left); 'auto' does so on GPU/TPU and, on CPU,
  as `AUTO_ON_DEVICE_CPU` says; 'false' never. split_nbytes: (train, eval)
  bytes of their images. A run with its train split on the device reads no
  images on the host, so 'auto' workers are 0 then.
  """
  wanted = on_device == 'true' or (
      on_device == 'auto' and (platform != 'cpu' or AUTO_ON_DEVICE_CPU)
  )
  train_fits = wanted and split_nbytes[0] <= budget_bytes
  left = budget_bytes - (split_nbytes[0] if train_fits else 0)
  eval_fits = wanted and split_nbytes[1] <= left
  if worker_count == 'auto':
    workers = 0 if train_fits else auto_worker_count(os.cpu_count(), platform)
  else:
    workers = int(worker_count)
  return Placement(train_fits, eval_fits, workers, budget_bytes)


def place_split(source: Any, image_size: int, mesh: Mesh) -> jax.Array:
  """Every image of `source` (`pipeline.split_images`), replicated on the
  mesh's devices: each process places its full copy on its own devices."""
  images = pipeline.split_images(source, image_size)
  return jax.make_array_from_process_local_data(
      sharding.replicated(mesh), images, images.shape
  )


class DevicePrefetch:
  """A training iterator whose next `size` batches are already placed on the
  devices (the transfer overlaps the step before).

  Yields (host batch, placed batch). `get_state()` is the wrapped iterator's
  state after the last batch yielded (not after those prefetched), and
  `set_state` drops the prefetched ones, so a resume is exact.
  """

  def __init__(self, iterator: Any, place: Callable[[Any], Any], size: int = 2):
    self._iterator = iterator
    self._place = place
    self._size = size
    self._queue: collections.deque = collections.deque()
    self._state = iterator.get_state()

  def __iter__(self) -> Iterator[tuple[Any, Any]]:
    return self

  def __next__(self) -> tuple[Any, Any]:
    while len(self._queue) < self._size:
      batch = next(self._iterator)
      state = self._iterator.get_state()
      self._queue.append((batch, self._place(batch), state))
    batch, placed, self._state = self._queue.popleft()
    return batch, placed

  def get_state(self) -> Any:
    return self._state

  def set_state(self, state: Any) -> None:
    self._queue.clear()
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()


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
    indices_only: bool = False,
) -> Any:
  """The resumable training iterator: batches of views, or (max_views given)
  of cases padded to max_views views; this process's block of each global
  batch (indices_only: record indices in place of images)."""
  options = {
      'global_batch_size': global_batch_size,
      'image_size': image_size,
      'seed': seed,
      'shuffle': True,
      'worker_count': worker_count,
      'sample_weights_by_label': sample_weights_by_label,
      'process_index': jax.process_index(),
      'process_count': jax.process_count(),
      'indices_only': indices_only,
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

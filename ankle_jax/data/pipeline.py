"""Input pipelines over the built `radiograph_studies` dataset: tfds.data_source
+ grain.

Training: `make_train_loader` shuffles (per epoch), repeats, optionally
resamples by per-label weights (balanced sampling), converts and batches on the
host; the returned grain iterator's `get_state()` / `set_state()` give an exact
resume. Images travel as the stored uint16 (float32 in [0, 1] where they are
resized on the host), not converted, standardized or augmented: the train
step does that on the device (`augment.to_unit_float`). With the split
resident on the device (`split_images`, data.on_device), the loader yields
only record indices (`indices_only`) and the step gathers the images.

Evaluation: `iterate_eval_batches` walks a split ordered by (case_id,
view_index), so all views of a case are adjacent, and pads the last batch (mask
False) to a fixed batch size. `max_views_per_case` (config.data.max_eval_views)
keeps the first N views of each case, ordered by view position, then file name
(`eval_order`): the paper scored exactly three views per case. Each batch
also carries the records' VIEW_FEATURES (view position, number of views,
FracAtlas flags), which evaluate writes next to the predictions.

Several processes (a jax.distributed run): every loader and iterator takes
`process_index` and `process_count` and yields only this process's block of
each global batch, `batch_size / process_count` rows: process p's block of
global batch k holds its rows [p * B/P, (p + 1) * B/P), so the processes' blocks
joined in process order are exactly the one-process batch, and a process reads
only its own records.

Case level (multi-view models): ankle_jax.data.cases.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import contextlib
import os
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from ankle_jax.data import geometry
from ankle_jax.data import prepare
from ankle_jax.data import radiograph_studies

# Per-view fields an evaluation carries to its prediction rows (the subgroups
# of ankle_jax.evaluation.subgroups), where the dataset has them: the DICOM
# ViewPosition (FracAtlas: frontal/lateral/oblique, which its flags of those
# names repeat, so they are left out), the case's number of views, and the
# FracAtlas dataset.csv flags (1 yes, 0 no, -1 unknown).
VIEW_FEATURES = ('view_position', 'num_views') + tuple(
    flag
    for flag in radiograph_studies.FRACATLAS_FLAGS
    if flag not in ('frontal', 'lateral', 'oblique')
)


def load_split(
    data_dir: os.PathLike | str, split: str, dataset_config: str = 'dicom_cases'
):
  """Returns the random-access data source (ArrayRecord) of one split.

  Args:
    data_dir: the TFDS data directory the dataset was built into.
    split: 'train', 'validation' or 'test' (TFDS slicing such as 'train[:10]'
      works too).
    dataset_config: builder config name.

  Returns:
    A sequence-like source: `len(source)` views, `source[i]` a dict of numpy
      values.

  Raises:
    prepare.DatasetMissingError: with the command that builds it, when the
      dataset or the split is missing.
  """
  versions = prepare.built_versions(data_dir, dataset_config)
  if not versions:
    raise prepare.missing_dataset_error(data_dir, dataset_config)
  base_split = split.split('[')[0]
  pattern = f'{prepare.DATASET_NAME}-{base_split}.array_record*'
  if not list(versions[-1].glob(pattern)):
    raise prepare.missing_dataset_error(
        data_dir, dataset_config, split=base_split
    )
  # Read features/splits from the directory itself (not from the registered
  # builder's defaults), so datasets built with non-default options (e.g.
  # image_size) read back as written.
  builder = tfds.builder_from_directory(os.fspath(versions[-1]))
  return builder.as_data_source(split=split)


def metadata(source) -> list[dict[str, Any]]:
  """label/case_id/view_index/view_position of every record (one pass; cached
  on the source object)."""
  cached = getattr(source, '_ankle_jax_metadata', None)
  if cached is not None:
    return cached
  rows = []
  for i in range(len(source)):
    ex = source[i]
    rows.append(
        {
            'label': int(ex['label']),
            'case_id': to_str(ex['case_id']),
            'view_index': int(ex['view_index']),
            'view_position': to_str(ex.get('view_position', b'')),
        }
    )
  with contextlib.suppress(AttributeError):
    source._ankle_jax_metadata = rows
  return rows


def to_str(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# uint16 -> [0, 1]; the one scale of host (`to_image`) and device
# (`augment.to_unit_float`) conversions, so that both give the same floats.
UNIT_SCALE = 1.0 / 65535.0


def to_image(image_u16: np.ndarray, image_size: int) -> np.ndarray:
  """uint16 [S, S, 1] -> float32 [image_size, image_size, 1] in [0, 1]."""
  image = np.asarray(image_u16, np.float32) * np.float32(UNIT_SCALE)
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = geometry.resize_image(image[..., 0], image_size)[..., None]
  return image


def to_wire_image(image_u16: np.ndarray, image_size: int) -> np.ndarray:
  """What a training batch carries to the device: the stored uint16
  [S, S, 1] when S == image_size (half the bytes of float32; the step
  converts), else `to_image`'s float32 (resized on the host)."""
  image = np.asarray(image_u16)
  if image.shape[0] == image_size and image.shape[1] == image_size:
    return image
  return to_image(image, image_size)


def split_images(source, image_size: int) -> np.ndarray:
  """Every record's `to_wire_image`, in record order: uint16 (or, resized,
  float32) [len(source), image_size, image_size, 1], the array data.on_device
  places on the devices once."""
  return np.stack(
      [
          to_wire_image(source[i]['image'], image_size)
          for i in range(len(source))
      ]
  )


def wire_dtype(source, image_size: int) -> np.dtype:
  """The dtype of `to_wire_image` over `source`'s records (uint16 when they
  are stored at image_size, else float32), from its first record."""
  if len(source):
    stored = np.asarray(source[0]['image'])
    if stored.shape[0] == image_size and stored.shape[1] == image_size:
      return stored.dtype
  return np.dtype(np.float32)


def split_nbytes(source, image_size: int) -> int:
  """The bytes of `split_images(source, image_size)`."""
  itemsize = wire_dtype(source, image_size).itemsize
  return len(source) * image_size * image_size * itemsize


class _ToTrainExample(grain.transforms.Map):
  """Record -> {'image': uint16 (or float32) [S, S, 1], 'label': int32}."""

  def __init__(self, image_size: int):
    self.image_size = image_size

  def map(self, element):
    return {
        'image': to_wire_image(element['image'], self.image_size),
        'label': np.int32(element['label']),
    }


class _ToIndexExample(grain.transforms.Map):
  """Record index -> {'index': int32, 'label': int32} (no record read)."""

  def __init__(self, labels: Sequence[int]):
    self.labels = labels

  def map(self, element):
    index = int(element)
    return {'index': np.int32(index), 'label': np.int32(self.labels[index])}


class _WeightedIndices(grain.MapDataset):
  """Index i -> a record index drawn with per-record probabilities, epoch by
  epoch.

  Epoch e (records [e*n, (e+1)*n)) draws n indices with replacement from
  numpy.random.default_rng([seed, e]); deterministic and random-access, so
  resumable.
  """

  def __init__(self, probs: np.ndarray, seed: int, num_epochs: int | None):
    super().__init__()
    self._probs = probs
    self._n = len(probs)
    self._seed = seed
    self._num_epochs = num_epochs
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self):
    return self._n * self._num_epochs if self._num_epochs is not None else 2**62

  def _epoch(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) > 2:
        self._cache.clear()
      rng = np.random.default_rng([self._seed, epoch])
      self._cache[epoch] = rng.choice(
          self._n, size=self._n, replace=True, p=self._probs
      )
    return self._cache[epoch]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return int(self._epoch(index // self._n)[index % self._n])

  def __str__(self):
    return '_WeightedIndices'


def make_train_loader(
    source,
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    sample_weights_by_label: (
        Sequence[float] | Mapping[int, float] | None
    ) = None,
    process_index: int = 0,
    process_count: int = 1,
    indices_only: bool = False,
):
  """A resumable grain iterator of training batches.

  Args:
    source: a data source from `load_split`.
    global_batch_size: views per batch (the remainder of the last epoch is
      dropped).
    image_size: output side; records are resized on the host when it differs
      from the stored size.
    seed: shuffling/sampling seed.
    shuffle: shuffle (a new permutation every epoch).
    num_epochs: None repeats forever.
    worker_count: grain worker processes (0 = in this process).
    sample_weights_by_label: optional weight per label ([w_normal, w_fracture]
      or {label: w}); records are then drawn with replacement with probability
      proportional to their label's weight (e.g. [1, 7.7] for balanced sampling
      on FracAtlas); `shuffle` is implied.
    process_index, process_count: this process and the number of processes
      of a multi-process run: the iterator yields only this process's block
      of every global batch (`batched_iterator`).
    indices_only: yield record indices in place of images (the split is on
      the device, `split_images`): the same records in the same order.

  Returns:
    A grain DatasetIterator yielding {'image': uint16 (float32 where resized)
    [B / P, S, S, 1], 'label': int32 [B / P]} (P = process_count), or with
    indices_only {'index': int32 [B / P], 'label': int32 [B / P]}, with
    `get_state()` / `set_state(state)` for an exact resume.
  """
  if len(source) == 0:
    raise ValueError('make_train_loader: the source is empty')
  probs = None
  if sample_weights_by_label is not None or indices_only:
    labels = [m['label'] for m in metadata(source)]
  if sample_weights_by_label is not None:
    probs = label_probs(labels, sample_weights_by_label)
  ds = epoch_indices(len(source), seed, shuffle, num_epochs, probs)
  if indices_only:
    ds = ds.map(_ToIndexExample(labels))
  else:
    ds = ds.map(_Record(source))
    ds = ds.map(_ToTrainExample(image_size))
  return batched_iterator(
      ds, global_batch_size, worker_count, process_index, process_count
  )


class _Record(grain.transforms.Map):
  """Record index -> the record (a dict of numpy values)."""

  def __init__(self, source):
    self.source = source

  def map(self, element):
    return self.source[int(element)]


def epoch_indices(
    num_items: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    probs: np.ndarray | None = None,
) -> grain.MapDataset:
  """Item numbers in [0, num_items) (records or cases), epoch by epoch:
  shuffled per epoch and repeated, or, with `probs` [num_items], drawn with
  replacement with those probabilities (`_WeightedIndices`)."""
  if probs is not None:
    return _WeightedIndices(probs, seed, num_epochs)
  ds = grain.MapDataset.range(num_items)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat(num_epochs)


def label_probs(
    labels: Sequence[int],
    sample_weights_by_label: Sequence[float] | Mapping[int, float],
) -> np.ndarray:
  """float64 [len(labels)]: each item's label weight, normalized to sum 1."""
  weights = (
      dict(enumerate(sample_weights_by_label))
      if not isinstance(sample_weights_by_label, Mapping)
      else dict(sample_weights_by_label)
  )
  probs = np.array([float(weights.get(int(l), 0.0)) for l in labels])
  if probs.sum() <= 0:
    raise ValueError(
        f'sample_weights_by_label {sample_weights_by_label} gives zero weight '
        'to every label present'
    )
  return probs / probs.sum()


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Each process's rows of a global batch.

  Raises:
    ValueError: global_batch_size does not split over process_count.
  """
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} does not split over '
        f'{process_count} processes'
    )
  return global_batch_size // process_count


def batched_iterator(
    ds: grain.MapDataset,
    global_batch_size: int,
    worker_count: int,
    process_index: int = 0,
    process_count: int = 1,
):
  """Batches (dropping the remainder), reads with threads (or `worker_count`
  grain processes) and returns the resumable grain iterator.

  With several processes, the stream of examples is cut into blocks of
  global_batch_size / process_count and process p takes blocks p, p + P,
  p + 2P, ...: global batch k is the processes' k-th blocks in process order,
  so the examples and their order are those of one process, and only the
  process's own records are read (the dataset is lazy). The iterator's state
  counts global batches, so it is the same on every process.
  """
  ds = ds.batch(
      local_batch_size(global_batch_size, process_count), drop_remainder=True
  )
  if process_count > 1:
    ds = ds[: len(ds) // process_count * process_count]
    ds = ds[process_index::process_count]
  iter_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
  )
  if worker_count > 0:
    iter_ds = iter_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=worker_count)
    )
  return iter(iter_ds)


def _view_rank(row: Mapping[str, Any]) -> tuple[bool, str, int]:
  """Which views of a case come first under a view cap: by view position
  (DICOM ViewPosition, e.g. 'AP' < 'LL' < 'OBL'; views without one last), then
  by file name (view_index is the file's rank in its case, sorted by name)."""
  position = row['view_position']
  return (not position, position, row['view_index'])


def eval_order(source, max_views_per_case: int = 0) -> list[int]:
  """Record indices ordered by (case_id, view_index).

  Args:
    source: a data source from `load_split`.
    max_views_per_case: 0 keeps every view; N > 0 keeps the first N views of
      each case by (view position, file name) (`_view_rank`).
  """
  if max_views_per_case < 0:
    raise ValueError(f'max_views_per_case={max_views_per_case} must be >= 0')
  meta = metadata(source)
  indices = range(len(meta))
  if max_views_per_case:
    by_case: dict[str, list[int]] = {}
    for i in indices:
      by_case.setdefault(meta[i]['case_id'], []).append(i)
    indices = [
        i
        for rows in by_case.values()
        for i in sorted(rows, key=lambda i: _view_rank(meta[i]))[
            :max_views_per_case
        ]
    ]
  return sorted(
      indices, key=lambda i: (meta[i]['case_id'], meta[i]['view_index'])
  )


def view_features(source) -> tuple[str, ...]:
  """The VIEW_FEATURES the records of `source` have (none when empty)."""
  if not len(source):
    return ()
  first = source[0]
  return tuple(name for name in VIEW_FEATURES if name in first)


def process_blocks(
    items: Sequence[Any],
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[Sequence[Any]]:
  """This process's block of every global batch of `items`: global batch k is
  items[k * G : (k + 1) * G] (G = global_batch_size; the last one may be
  short), and process p's block of it is its p-th slice of G / process_count.
  Every process gets the same number of blocks; blocks at a ragged end may be
  short or empty (to be padded).

  Raises:
    ValueError: global_batch_size does not split over process_count.
  """
  local = local_batch_size(global_batch_size, process_count)
  first = process_index * local
  return [
      items[start + first : start + first + local]
      for start in range(0, len(items), global_batch_size)
  ]


def iterate_eval_batches(
    source,
    *,
    batch_size: int,
    image_size: int,
    max_views_per_case: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    as_wire: bool = False,
) -> Iterator[dict]:
  """Yields every view once (or the first `max_views_per_case` of each case),
  ordered by (case_id, view_index), in fixed-size padded batches.

  Args:
    source: a data source from `load_split`.
    batch_size: rows per (global) batch; the last batch is padded to it.
    image_size: output side.
    max_views_per_case: 0 = every view; else `eval_order`'s cap.
    process_index, process_count: a multi-process run's process and number of
      processes: the batches are this process's blocks of the global ones
      (`process_blocks`), B = batch_size / process_count rows each; every
      process yields the same number of batches.
    as_wire: images as the train batches carry them (`to_wire_image`: uint16
      unless resized; the eval step converts), not float32.

  Yields:
    {'image': float32 [B, S, S, 1], 'label': int32 [B], 'case_id': object [B] of
    str,
     'view_index': int32 [B], 'mask': bool [B]} (padding rows: mask False, image
     0, label 0, case_id '', view_index -1), and one key per VIEW_FEATURES
     field the records have (`view_features`): 'view_position' object [B] of
     str (padding ''), the others int32 [B] (padding -1).
  """
  order = eval_order(source, max_views_per_case)
  features = view_features(source)
  blocks = process_blocks(order, batch_size, process_index, process_count)
  batch_size = local_batch_size(batch_size, process_count)
  dtype = wire_dtype(source, image_size) if as_wire else np.float32
  to_batch_image = to_wire_image if as_wire else to_image
  for rows in blocks:
    batch = {
        'image': np.zeros((batch_size, image_size, image_size, 1), dtype),
        'label': np.zeros((batch_size,), np.int32),
        'case_id': np.full((batch_size,), '', dtype=object),
        'view_index': np.full((batch_size,), -1, np.int32),
        'mask': np.zeros((batch_size,), bool),
    }
    for name in features:
      batch[name] = (
          np.full((batch_size,), '', dtype=object)
          if name == 'view_position'
          else np.full((batch_size,), -1, np.int32)
      )
    for j, i in enumerate(rows):
      ex = source[i]
      batch['image'][j] = to_batch_image(ex['image'], image_size)
      batch['label'][j] = int(ex['label'])
      batch['case_id'][j] = to_str(ex['case_id'])
      batch['view_index'][j] = int(ex['view_index'])
      batch['mask'][j] = True
      for name in features:
        value = ex[name]
        batch[name][j] = (
            to_str(value) if name == 'view_position' else int(value)
        )
    yield batch


def iterate_eval_indices(
    source,
    *,
    batch_size: int,
    max_views_per_case: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
  """`iterate_eval_batches` for a split resident on the device: the same
  rows, with record indices in place of images and no view features (what
  validation reads), from the cached metadata alone.

  Yields:
    {'index': int32 [B] (padding 0), 'label': int32 [B], 'case_id': object
    [B] of str, 'view_index': int32 [B], 'mask': bool [B]}, with
    `iterate_eval_batches`'s padding values.
  """
  meta = metadata(source)
  order = eval_order(source, max_views_per_case)
  blocks = process_blocks(order, batch_size, process_index, process_count)
  batch_size = local_batch_size(batch_size, process_count)
  for rows in blocks:
    batch = {
        'index': np.zeros((batch_size,), np.int32),
        'label': np.zeros((batch_size,), np.int32),
        'case_id': np.full((batch_size,), '', dtype=object),
        'view_index': np.full((batch_size,), -1, np.int32),
        'mask': np.zeros((batch_size,), bool),
    }
    for j, i in enumerate(rows):
      batch['index'][j] = i
      batch['label'][j] = meta[i]['label']
      batch['case_id'][j] = meta[i]['case_id']
      batch['view_index'][j] = meta[i]['view_index']
      batch['mask'][j] = True
    yield batch

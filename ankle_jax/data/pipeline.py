"""Input pipelines over the built `radiograph_studies` dataset: tfds.data_source
+ grain.

Training: `make_train_loader` shuffles (per epoch), repeats, optionally
resamples by per-label weights (balanced sampling), converts and batches on the
host; the returned grain iterator's `get_state()` / `set_state()` give an exact
resume. Images are float32 in [0, 1], not standardized and not augmented (that
happens on device in the train step).

Evaluation: `iterate_eval_batches` walks a split ordered by (case_id,
view_index), so all views of a case are adjacent, and pads the last batch (mask
False) to a fixed batch size. `max_views_per_case` (config.data.max_eval_views)
keeps the first N views of each case, ordered by view position, then file name
(`eval_order`): the paper scored exactly three views per case.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import contextlib
import os
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from ankle_jax.data import dicom
from ankle_jax.data import prepare


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


def split_size(source) -> int:
  """Number of views in a source."""
  return len(source)


def _metadata(source) -> list[dict[str, Any]]:
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
            'case_id': _to_str(ex['case_id']),
            'view_index': int(ex['view_index']),
            'view_position': _to_str(ex.get('view_position', b'')),
        }
    )
  with contextlib.suppress(AttributeError):
    source._ankle_jax_metadata = rows
  return rows


def _to_str(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _to_image(image_u16: np.ndarray, image_size: int) -> np.ndarray:
  """uint16 [S, S, 1] -> float32 [image_size, image_size, 1] in [0, 1]."""
  image = np.asarray(image_u16, np.float32) * np.float32(1.0 / 65535.0)
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = dicom.resize_image(image[..., 0], image_size)[..., None]
  return image


class _ToTrainExample(grain.transforms.Map):
  """Record -> {'image': float32 [S, S, 1], 'label': int32}."""

  def __init__(self, image_size: int):
    self.image_size = image_size

  def map(self, element):
    return {
        'image': _to_image(element['image'], self.image_size),
        'label': np.int32(element['label']),
    }


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

  Returns:
    A grain DatasetIterator yielding {'image': float32 [B, S, S, 1], 'label':
    int32 [B]}, with `get_state()` / `set_state(state)` for an exact resume.
  """
  if len(source) == 0:
    raise ValueError('make_train_loader: the source is empty')
  if sample_weights_by_label is not None:
    weights = (
        dict(enumerate(sample_weights_by_label))
        if not isinstance(sample_weights_by_label, Mapping)
        else dict(sample_weights_by_label)
    )
    labels = np.array([m['label'] for m in _metadata(source)])
    probs = np.array([float(weights.get(int(l), 0.0)) for l in labels])
    if probs.sum() <= 0:
      raise ValueError(
          f'sample_weights_by_label {sample_weights_by_label} gives zero weight '
          'to every record'
      )
    indices = _WeightedIndices(probs / probs.sum(), seed, num_epochs)
    ds = indices.map(lambda i: source[i])
  else:
    ds = grain.MapDataset.source(source)
    if shuffle:
      ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
  ds = ds.map(_ToTrainExample(image_size))
  ds = ds.batch(global_batch_size, drop_remainder=True)
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
  meta = _metadata(source)
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


def iterate_eval_batches(
    source, *, batch_size: int, image_size: int, max_views_per_case: int = 0
) -> Iterator[dict]:
  """Yields every view once (or the first `max_views_per_case` of each case),
  ordered by (case_id, view_index), in fixed-size padded batches.

  Args:
    source: a data source from `load_split`.
    batch_size: rows per batch; the last batch is padded to it.
    image_size: output side.
    max_views_per_case: 0 = every view; else `eval_order`'s cap.

  Yields:
    {'image': float32 [B, S, S, 1], 'label': int32 [B], 'case_id': object [B] of
    str,
     'view_index': int32 [B], 'mask': bool [B]} (padding rows: mask False, image
     0, label 0, case_id '', view_index -1).
  """
  order = eval_order(source, max_views_per_case)
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    batch = {
        'image': np.zeros((batch_size, image_size, image_size, 1), np.float32),
        'label': np.zeros((batch_size,), np.int32),
        'case_id': np.full((batch_size,), '', dtype=object),
        'view_index': np.full((batch_size,), -1, np.int32),
        'mask': np.zeros((batch_size,), bool),
    }
    for j, i in enumerate(rows):
      ex = source[i]
      batch['image'][j] = _to_image(ex['image'], image_size)
      batch['label'][j] = int(ex['label'])
      batch['case_id'][j] = _to_str(ex['case_id'])
      batch['view_index'][j] = int(ex['view_index'])
      batch['mask'][j] = True
    yield batch

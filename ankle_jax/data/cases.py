"""Case-level input pipelines over the built dataset, for multi-view models.

Multi-view models read all views of a case at once. `make_case_train_loader`
and `iterate_case_batches` are the counterparts of `pipeline.make_train_loader`
and `pipeline.iterate_eval_batches` (the same shuffling, balanced sampling,
exact resume and per-process blocks), with one row per case: images
[B, V, S, S, 1] plus a view mask [B, V] (True = a real view; real views first,
padding after, padded slots all 0). `case_groups` lists each case's record
indices (the views `pipeline.eval_order` keeps), `num_cases` and
`max_case_views` count cases and views.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import grain
import numpy as np

from ankle_jax.data import pipeline


def case_groups(
    source, max_views_per_case: int = 0
) -> list[tuple[str, list[int]]]:
  """(case_id, record indices) of every case, cases sorted by case_id.

  Args:
    source: a data source from `load_split`.
    max_views_per_case: 0 keeps every view; else `eval_order`'s cap.

  Returns:
    Exactly the records `eval_order(source, max_views_per_case)` keeps, grouped
    by case; each case's indices in view_index order.
  """
  meta = pipeline.metadata(source)
  groups: dict[str, list[int]] = {}
  for i in pipeline.eval_order(source, max_views_per_case):
    groups.setdefault(meta[i]['case_id'], []).append(i)
  return list(groups.items())


def case_images(
    source, record_indices: Sequence[int], image_size: int
) -> np.ndarray:
  """float32 [V, S, S, 1] in [0, 1]: the records' images (e.g. one case's
  views from `case_groups`), in the order given."""
  return np.stack(
      [
          pipeline.to_image(source[i]['image'], image_size)
          for i in record_indices
      ]
  )


def num_cases(source) -> int:
  """Number of distinct case_ids in a source (from the cached metadata)."""
  return len({row['case_id'] for row in pipeline.metadata(source)})


def max_case_views(source, max_views_per_case: int = 0) -> int:
  """The largest number of kept views of any case (0 for an empty source)."""
  groups = case_groups(source, max_views_per_case)
  return max((len(indices) for _, indices in groups), default=0)


def _case_views(
    source,
    record_indices: Sequence[int],
    image_size: int,
    num_slots: int,
    as_wire: bool = False,
) -> dict[str, np.ndarray]:
  """One case's views in `num_slots` slots, real views first.

  Args:
    source: a data source from `load_split`.
    record_indices: the case's records, at most `num_slots` of them, in slot
      order.
    image_size: output side S.
    num_slots: V.
    as_wire: images as a training batch carries them
      (`pipeline.to_wire_image`: uint16 unless resized), not float32.

  Returns:
    {'image': float32 [V, S, S, 1] in [0, 1] (padded slots 0), 'view_mask':
    bool [V], 'view_index': int32 [V] (-1 at padding), 'label': int32 (the
    label of the case's first record; a case has one label)}.
  """
  dtype = pipeline.wire_dtype(source, image_size) if as_wire else np.float32
  to_image = pipeline.to_wire_image if as_wire else pipeline.to_image
  case = {
      'image': np.zeros((num_slots, image_size, image_size, 1), dtype),
      'view_mask': np.zeros((num_slots,), bool),
      'view_index': np.full((num_slots,), -1, np.int32),
      'label': np.int32(0),
  }
  for slot, i in enumerate(record_indices):
    ex = source[i]
    case['image'][slot] = to_image(ex['image'], image_size)
    case['view_mask'][slot] = True
    case['view_index'][slot] = int(ex['view_index'])
    if slot == 0:
      case['label'] = np.int32(ex['label'])
  return case


def case_index_views(
    meta: Sequence[Mapping[str, object]],
    record_indices: Sequence[int],
    num_slots: int,
) -> dict[str, np.ndarray]:
  """One case's slots as record indices (the split is on the device):
  {'index': int32 [V] (0 at padding), 'view_mask': bool [V], 'view_index':
  int32 [V] (-1 at padding), 'label': int32 (the first record's)}.

  meta: `pipeline.metadata` of the source.
  """
  count = len(record_indices)
  index = np.zeros((num_slots,), np.int32)
  index[:count] = record_indices
  view_index = np.full((num_slots,), -1, np.int32)
  view_index[:count] = [meta[i]['view_index'] for i in record_indices]
  return {
      'index': index,
      'view_mask': np.arange(num_slots) < count,
      'view_index': view_index,
      'label': np.int32(meta[record_indices[0]]['label']),
  }


class _ToCaseTrainExample(grain.transforms.RandomMap):
  """Case number -> {'image': uint16 (float32 where resized) [V, S, S, 1],
  'view_mask': bool [V], 'label': int32}, or with indices_only {'index':
  int32 [V], 'view_mask', 'label'}; a case with more than V views gets a
  random subset of V (kept in view_index order), drawn with the generator
  grain passes in (the same draws either way)."""

  def __init__(
      self,
      source,
      groups: Sequence[Sequence[int]],
      image_size: int,
      slots: int,
      indices_only: bool = False,
  ):
    self.source = source
    self.groups = groups
    self.image_size = image_size
    self.slots = slots
    self.meta = pipeline.metadata(source) if indices_only else None

  def random_map(self, element, rng: np.random.Generator):
    indices = self.groups[int(element)]
    if len(indices) > self.slots:
      chosen = np.sort(rng.choice(len(indices), self.slots, replace=False))
      indices = [indices[k] for k in chosen]
    if self.meta is None:
      case = _case_views(
          self.source, indices, self.image_size, self.slots, as_wire=True
      )
    else:
      case = case_index_views(self.meta, indices, self.slots)
    del case['view_index']
    return case


def make_case_train_loader(
    source,
    *,
    global_batch_size: int,
    max_views: int,
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
  """A resumable grain iterator of training batches of whole cases.

  Like `make_train_loader`, with cases in place of views: shuffled per epoch,
  repeated, optionally drawn by case label (`sample_weights_by_label`, same
  meaning), batched on the host. A case with more than `max_views` views gets
  a random subset of `max_views` of them, drawn afresh every time the case is
  drawn: grain's `random_map` seeds the generator from (`seed`, the position in
  the stream), so the subset is deterministic and `set_state` resumes exactly.

  Args:
    source: a data source from `load_split`.
    global_batch_size: cases per batch (the remainder of the last epoch is
      dropped).
    max_views: V, view slots per case.
    image_size: output side S.
    seed: shuffling/sampling/view-subset seed (0 <= seed < 2**32).
    shuffle: shuffle (a new permutation every epoch).
    num_epochs: None repeats forever.
    worker_count: grain worker processes (0 = in this process).
    sample_weights_by_label: optional weight per label ([w_normal, w_fracture]
      or {label: w}); cases are then drawn with replacement with probability
      proportional to their label's weight; `shuffle` is implied.
    process_index, process_count: as for `make_train_loader`; B below is then
      this process's block, global_batch_size / process_count.
    indices_only: record indices in place of images (the split is on the
      device): the same cases, views and order.

  Returns:
    A grain DatasetIterator yielding {'image': uint16 (float32 where resized)
    [B, V, S, S, 1] (padded slots 0), 'view_mask': bool [B, V] (True = a real
    view, real views first; every case has >= 1), 'label': int32 [B]} (with
    indices_only 'index': int32 [B, V], 0 at padded slots, in place of
    'image'), with `get_state()` / `set_state(state)` for an exact resume.

  Raises:
    ValueError: on an empty source or max_views < 1.
  """
  if len(source) == 0:
    raise ValueError('make_case_train_loader: the source is empty')
  if max_views < 1:
    raise ValueError(f'make_case_train_loader: max_views={max_views} < 1')
  groups = [indices for _, indices in case_groups(source)]
  meta = pipeline.metadata(source)
  probs = None
  if sample_weights_by_label is not None:
    labels = [meta[indices[0]]['label'] for indices in groups]
    probs = pipeline.label_probs(labels, sample_weights_by_label)
  ds = pipeline.epoch_indices(len(groups), seed, shuffle, num_epochs, probs)
  ds = ds.random_map(
      _ToCaseTrainExample(source, groups, image_size, max_views, indices_only),
      seed=seed,
  )
  return pipeline.batched_iterator(
      ds, global_batch_size, worker_count, process_index, process_count
  )


def iterate_case_batches(
    source,
    *,
    batch_size: int,
    image_size: int,
    max_views_per_case: int = 0,
    num_view_slots: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    indices_only: bool = False,
    as_wire: bool = False,
) -> Iterator[dict]:
  """Yields every case once, in case_id order, in fixed-size padded batches.

  Each case holds the views `eval_order(source, max_views_per_case)` keeps (so
  the real views of all batches are exactly `iterate_eval_batches`'s with the
  same cap), in view_index order, real views first.

  Args:
    source: a data source from `load_split`.
    batch_size: cases per batch B; the last batch is padded to it.
    image_size: output side S.
    max_views_per_case: 0 = every view; else `eval_order`'s cap.
    num_view_slots: V; None = `max_case_views(source, max_views_per_case)`.
    process_index, process_count: as for `iterate_eval_batches`; B below is
      then batch_size / process_count.
    indices_only: 'index' int32 [B, V] (record indices, 0 at padding) in
      place of 'image', read from the metadata alone (the split is on the
      device).
    as_wire: images as the train batches carry them (uint16 unless resized;
      the eval step converts), not float32.

  Yields:
    {'image': float32 [B, V, S, S, 1] (padding 0), 'view_mask': bool [B, V],
    'label': int32 [B], 'case_id': object [B] of str ('' for padding),
    'view_index': int32 [B, V] (-1 at padding), 'mask': bool [B] (False for
    padding cases)}.

  Raises:
    ValueError: (when called) if a case keeps more views than num_view_slots.
  """
  groups = case_groups(source, max_views_per_case)
  slots = num_view_slots
  if slots is None:
    slots = max_case_views(source, max_views_per_case)
  for case_id, indices in groups:
    if len(indices) > slots:
      raise ValueError(
          f'iterate_case_batches: case {case_id!r} has {len(indices)} views '
          f'(max_views_per_case={max_views_per_case}) but num_view_slots='
          f'{slots}; raise num_view_slots or set max_views_per_case'
      )
  blocks = pipeline.process_blocks(
      groups, batch_size, process_index, process_count
  )
  return _case_batches(
      source,
      blocks,
      pipeline.local_batch_size(batch_size, process_count),
      image_size,
      slots,
      indices_only,
      as_wire,
  )


def _case_batches(
    source,
    blocks: Sequence[Sequence[tuple[str, Sequence[int]]]],
    batch_size: int,
    image_size: int,
    slots: int,
    indices_only: bool = False,
    as_wire: bool = False,
) -> Iterator[dict]:
  """`iterate_case_batches`'s generator, after its checks: one padded batch
  of `batch_size` per block of (case_id, record indices)."""
  meta = pipeline.metadata(source) if indices_only else None
  for rows in blocks:
    batch = {
        'view_mask': np.zeros((batch_size, slots), bool),
        'label': np.zeros((batch_size,), np.int32),
        'case_id': np.full((batch_size,), '', dtype=object),
        'view_index': np.full((batch_size, slots), -1, np.int32),
        'mask': np.zeros((batch_size,), bool),
    }
    if meta is None:
      dtype = pipeline.wire_dtype(source, image_size) if as_wire else np.float32
      batch['image'] = np.zeros(
          (batch_size, slots, image_size, image_size, 1), dtype
      )
    else:
      batch['index'] = np.zeros((batch_size, slots), np.int32)
    for j, (case_id, indices) in enumerate(rows):
      case = (
          _case_views(source, indices, image_size, slots, as_wire)
          if meta is None
          else case_index_views(meta, indices, slots)
      )
      for key, value in case.items():
        batch[key][j] = value
      batch['case_id'][j] = case_id
      batch['mask'][j] = True
    yield batch

"""Where `evaluate` reads its views: the dataset to evaluate on (the runs'
own by default, or another one: an external test set), its splits (with
validation from the runs' own dataset when the evaluated one lacks it),
their eval batches, and a case's images for the error gallery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import functools
import os
import sys
from typing import Any

from etils import epath
import numpy as np

from ankle_jax import console
from ankle_jax import inference
from ankle_jax.data import cases
from ankle_jax.data import folds
from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.evaluation.predictions import VALIDATION

# batches_fn(split) -> batches_for(image_size) -> iterator of eval batches, or
# None when the split does not exist.
BatchesFn = Callable[[str], Callable[[int], Iterator] | None]
# (case_id, image_size) -> float32 [V, S, S, 1] in [0, 1]: the case's
# evaluated views in view_index order.
CaseImagesFn = Callable[[str, int], np.ndarray]


def own_dataset(run: inference.Run) -> tuple[epath.Path, str]:
  """(data_dir, dataset_config) a run was trained and validated on."""
  data = run.config.data
  data_dir, _ = prepare.resolve_data_dirs(
      data.get('data_dir', ''), data.get('manual_dir', ''), run.workdir
  )
  return data_dir, data.get('dataset_config', 'dicom_cases')


def load_run_split(
    location: tuple[epath.Path, str],
    name: str,
    cv_fold: tuple[int, int] | None = None,
):
  """A split's data source; with cv_fold = (K, k) (a cross-validation run on
  this dataset) 'train' and 'validation' are that fold run's
  (`folds.fold_sources`).

  Raises:
    FileNotFoundError, prepare.DatasetMissingError: the split is missing.
    console.UserError: the fold cannot be made.
  """
  if cv_fold is None or name not in folds.FOLD_SPLITS:
    return pipeline.load_split(location[0], name, location[1])
  try:
    train, validation = folds.fold_sources(*location, *cv_fold)
  except folds.FoldError as e:
    raise console.UserError(str(e)) from None
  return validation if name == VALIDATION else train


def _load_split(
    location: tuple[epath.Path, str], name: str, cv_fold=None
) -> Any:
  """The split's data source, or None when it (or the dataset) is missing."""
  if not prepare.dataset_exists(*location):
    return None
  try:
    return load_run_split(location, name, cv_fold)
  except (prepare.DatasetMissingError, FileNotFoundError):
    return None


def _same_dataset(a: tuple[epath.Path, str], b: tuple[epath.Path, str]):
  return (os.path.realpath(a[0]), a[1]) == (os.path.realpath(b[0]), b[1])


def validation_split_source(
    asked: tuple[epath.Path, str],
    own: tuple[epath.Path, str],
    cv_fold: tuple[int, int] | None = None,
) -> tuple[Any, str | None]:
  """(validation data source or None, the run's own data_dir when validation
  comes from there, else None).

  On another dataset than the run's own (an external test set), or one
  without a validation split, validation comes from the run's own dataset
  when it has one (the temperature, the operating points and the honest
  protocol's choice need it), else from the asked dataset's. A
  cross-validation run's (cv_fold = (K, k)) validation is its fold.
  """
  if not _same_dataset(asked, own):
    source = _load_split(own, VALIDATION, cv_fold)
    if source is not None:
      return source, str(own[0])
    return _load_split(asked, VALIDATION), None
  return _load_split(asked, VALIDATION, cv_fold), None


def dataset_location(
    runs: Sequence[inference.Run],
    data_dir: str | None,
    dataset_config: str | None,
) -> tuple[epath.Path, str]:
  """(data_dir, dataset_config) to evaluate on (default: the first run's).

  Raises:
    console.UserError: no such built dataset.
  """
  first = runs[0]
  data = first.config.data
  own = own_dataset(first)
  _, manual_dir = prepare.resolve_data_dirs(
      data.get('data_dir', ''), data.get('manual_dir', ''), first.workdir
  )
  data_dir = epath.Path(data_dir or own[0])
  dataset_config = dataset_config or own[1]
  if not prepare.dataset_exists(data_dir, dataset_config):
    manual_dir = str(manual_dir) if manual_dir.exists() else ''
    error = prepare.missing_dataset_error(data_dir, dataset_config, manual_dir)
    raise console.UserError(str(error))
  for run in runs[1:]:
    other = run.config.data
    if (other.get('data_dir'), other.get('dataset_config')) != (
        data.get('data_dir'),
        data.get('dataset_config'),
    ):
      print(
          f'note: run {run.name} was trained on another dataset than '
          f'{first.name}; all runs are evaluated on {data_dir} '
          f'({dataset_config}).',
          file=sys.stderr,
      )
  return data_dir, dataset_config


def split_loader(
    split: str,
    location: tuple[epath.Path, str],
    own: tuple[epath.Path, str],
    cv_fold: tuple[int, int] | None = None,
) -> tuple[Callable[[str], Any], str | None]:
  """(load(name) -> the TFDS source of a split, the validation source).

  On an external test set validation comes from the runs' own dataset
  (validation_split_source); the validation source is then its data_dir,
  else None. cv_fold: the first run's (K, k) when it is a cross-validation
  run (its train and validation splits are its fold's). load raises
  FileNotFoundError for a missing split.
  """
  fold_here = cv_fold if _same_dataset(location, own) else None
  validation, validation_source = None, None
  if split != VALIDATION:
    validation, validation_source = validation_split_source(
        location, own, cv_fold
    )
  if validation_source:
    print(
        f'note: {location[0]} is not the dataset the runs were trained on: '
        'validation (temperature, operating points, honest protocol) comes '
        f'from their own, {validation_source}.',
        file=sys.stderr,
    )

  def load(name: str) -> Any:
    if name == VALIDATION and name != split:
      if validation is None:
        raise FileNotFoundError(f'no {name!r} split')
      return validation
    return load_run_split(location, name, fold_here)

  return load, validation_source


def _split_batches(
    load: Callable[[str], Any],
    split: str,
    data_dir: epath.Path,
    batch_size: int,
    max_eval_views: int,
) -> BatchesFn:
  """batches_fn over the sources `load(name)` returns."""

  def batches_fn(name: str) -> Callable[[int], Iterator] | None:
    try:
      source = load(name)
    except (prepare.DatasetMissingError, FileNotFoundError) as e:
      if name == split:
        raise console.UserError(str(e)) from e
      print(
          f"note: no {name!r} split in {data_dir} nor in the runs' own "
          'dataset: no honest protocol, no operating points, no temperature.',
          file=sys.stderr,
      )
      return None
    return lambda image_size: pipeline.iterate_eval_batches(
        source,
        batch_size=batch_size,
        image_size=image_size,
        max_views_per_case=max_eval_views,
    )

  return batches_fn


def source_case_images(
    load_source: Callable[[], Any], max_eval_views: int
) -> CaseImagesFn:
  """A case's evaluated views (cases.case_groups), read by record index
  from the TFDS source `load_source()` returns (loaded on first use)."""
  found = {}

  def case_images(case_id: str, image_size: int) -> np.ndarray:
    if not found:
      found['source'] = load_source()
      found['groups'] = dict(cases.case_groups(found['source'], max_eval_views))
    return cases.case_images(
        found['source'], found['groups'][case_id], image_size
    )

  return case_images


def batches_case_images(batches_fn: BatchesFn, split: str) -> CaseImagesFn:
  """A case's views found by walking the split's eval batches (for injected
  batches_fn; the TFDS path reads records directly)."""

  def case_images(case_id: str, image_size: int) -> np.ndarray:
    views = []
    for batch in batches_fn(split)(image_size):
      mask = np.asarray(batch.get('mask', np.ones(len(batch['label']), bool)))
      for j in np.flatnonzero(mask):
        found = batch['case_id'][j]
        found = found.decode() if isinstance(found, bytes) else str(found)
        if found == case_id:
          views.append((int(batch['view_index'][j]), batch['image'][j]))
    return np.stack([image for _, image in sorted(views, key=lambda v: v[0])])

  return case_images


@dataclasses.dataclass(frozen=True)
class EvaluationInputs:
  """Where evaluate_runs reads its views and the gallery its images.

  Attributes:
    batches_fn: (split) -> batches_for(image_size) or None.
    case_images: (case_id, image_size) -> a case's evaluated views.
    location: (data_dir, dataset_config) of the TFDS dataset, None for an
      injected batches_fn.
    validation_source: the runs' own data_dir when validation comes from
      there (an external test set), else None.
  """

  batches_fn: BatchesFn
  case_images: CaseImagesFn
  location: tuple[epath.Path, str] | None = None
  validation_source: str | None = None

  @classmethod
  def of(
      cls,
      runs: Sequence[inference.Run],
      split: str,
      *,
      batches_fn: BatchesFn | None,
      data_dir: str | None,
      dataset_config: str | None,
      batch_size: int,
      max_eval_views: int,
  ) -> EvaluationInputs:
    """The TFDS dataset's inputs (each split loaded once, shared by the
    forward and the gallery), or an injected batches_fn's."""
    if batches_fn is not None:
      return cls(batches_fn, batches_case_images(batches_fn, split))
    location = dataset_location(runs, data_dir, dataset_config)
    loader, validation_source = split_loader(
        split,
        location,
        own_dataset(runs[0]),
        folds.cv_fold_of(runs[0].config.data),
    )
    load = functools.cache(loader)
    return cls(
        _split_batches(load, split, location[0], batch_size, max_eval_views),
        source_case_images(lambda: load(split), max_eval_views),
        location,
        validation_source,
    )

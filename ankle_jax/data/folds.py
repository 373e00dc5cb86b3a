"""Grouped, stratified k-fold cross-validation over a built dataset
(data.cv_folds = K, data.cv_fold = k; -1 = off).

The K folds partition the cases of the train and validation splits together;
the test split is never read. Cases that must stay together (one split unit
of the builder: a MURA patient's studies, cases joined by near-duplicate
views; `build_report.json`'s `split_units`, or its near-duplicate groups for
datasets built before those were recorded) form one unit, and a unit lies in
one fold. A unit's label is its highest case label. Per label, units are
placed largest first, equal sizes in the order of a hash of their first case
id, each into the fold holding the fewest cases of that label so far (ties:
fewer cases in all, then the lower fold): so folds hold their label's cases
within one case of each other wherever single-case units fill the gaps, and
the assignment depends only on the cases, their labels, their units and K.
Nothing is stored: a dataset built once serves any K.

Fold run k trains on the other K - 1 folds and validates on fold k.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.data.radiograph_studies import build_report

OFF = -1
# The splits whose cases the folds partition.
FOLD_SPLITS = ('train', 'validation')


def cv_fold_of(data: Any) -> tuple[int, int] | None:
  """(data.cv_folds, data.cv_fold) of a config's `data`, None when off."""
  fold = data.get('cv_fold', OFF)
  return None if fold == OFF else (data.get('cv_folds', 5), fold)


class FoldError(ValueError):
  """A fold that cannot be made from the dataset (message names the field)."""


@dataclasses.dataclass(frozen=True)
class FoldUnit:
  """Cases that share a fold.

  case_ids: sorted case ids.
  label: the highest label of its cases (1 = fracture).
  """

  case_ids: tuple[str, ...]
  label: int

  @property
  def rank(self) -> str:
    return hashlib.sha256(f'fold:{self.case_ids[0]}'.encode()).hexdigest()


def fold_units(
    case_labels: Mapping[str, int], groups: Iterable[Sequence[str]]
) -> list[FoldUnit]:
  """The units of the cases in case_labels (case_id -> label): each group
  (case ids that must stay together; ids absent from case_labels, e.g. test
  cases, are ignored; overlapping groups merge) is one unit, every other case
  is a unit of its own."""
  parent = {c: c for c in case_labels}

  def root(c: str) -> str:
    while parent[c] != c:
      parent[c] = parent[parent[c]]
      c = parent[c]
    return c

  for group in groups:
    members = [c for c in group if c in parent]
    for other in members[1:]:
      parent[root(other)] = root(members[0])
  members_of: dict[str, list[str]] = {}
  for c in case_labels:
    members_of.setdefault(root(c), []).append(c)
  return [
      FoldUnit(tuple(sorted(m)), max(case_labels[c] for c in m))
      for m in members_of.values()
  ]


def assign_folds(units: Sequence[FoldUnit], num_folds: int) -> dict[str, int]:
  """case_id -> fold in [0, num_folds) (the rule in the module docstring)."""
  if num_folds < 2:
    raise FoldError(f'data.cv_folds={num_folds}; expected 2 or more folds')
  fold_of: dict[str, int] = {}
  total = np.zeros(num_folds, np.int64)
  for label in sorted({u.label for u in units}):
    of_label = np.zeros(num_folds, np.int64)
    ordered = sorted(
        (u for u in units if u.label == label),
        key=lambda u: (-len(u.case_ids), u.rank),
    )
    for unit in ordered:
      fold = min(range(num_folds), key=lambda f: (of_label[f], total[f], f))
      of_label[fold] += len(unit.case_ids)
      total[fold] += len(unit.case_ids)
      fold_of.update((c, fold) for c in unit.case_ids)
  return fold_of


def stored_groups(data_dir: os.PathLike | str, dataset_config: str):
  """The multi-case split units recorded in the dataset's build_report.json
  (`split_units`; before those were recorded, its near-duplicate groups)."""
  versions = prepare.built_versions(data_dir, dataset_config)
  if not versions:
    raise prepare.missing_dataset_error(data_dir, dataset_config)
  path = versions[-1] / build_report.REPORT_JSON
  if not path.exists():
    return []
  report = json.loads(path.read_text())
  if report.get('split_units') is not None:
    return report['split_units']
  if report.get('layout') == 'mura':
    raise FoldError(
        f'{path} predates recorded split units, and MURA patients must stay '
        'in one fold: rebuild the dataset (python -m ankle_jax.data.build).'
    )
  near = report.get('near_duplicates') or {}
  return [g['cases'] for g in near.get('groups', [])]


def _case_labels(sources: Sequence[Any]) -> dict[str, int]:
  labels: dict[str, int] = {}
  for source in sources:
    for row in pipeline.metadata(source):
      labels[row['case_id']] = max(labels.get(row['case_id'], 0), row['label'])
  return labels


def _fold_split_sources(data_dir, dataset_config) -> list[Any]:
  return [
      pipeline.load_split(data_dir, split, dataset_config)
      for split in FOLD_SPLITS
  ]


def case_folds(
    data_dir: os.PathLike | str, dataset_config: str, num_folds: int
) -> dict[str, int]:
  """case_id -> fold of every train and validation case of a built dataset."""
  sources = _fold_split_sources(data_dir, dataset_config)
  return _folds_of(_case_labels(sources), data_dir, dataset_config, num_folds)


def _folds_of(labels, data_dir, dataset_config, num_folds) -> dict[str, int]:
  units = fold_units(labels, stored_groups(data_dir, dataset_config))
  return assign_folds(units, num_folds)


class FoldSource(Sequence):
  """The views of some records of several data sources, as one
  random-access source: record i is `parts[j][0][indices[i]]`, records in
  the order of the parts, then of their indices."""

  def __init__(self, parts: Sequence[tuple[Any, np.ndarray]]):
    self._sources = [source for source, _ in parts]
    self._part = np.concatenate(
        [np.full(len(idx), j, np.int64) for j, (_, idx) in enumerate(parts)]
    )
    self._index = np.concatenate(
        [np.asarray(idx, np.int64) for _, idx in parts]
    )
    # pipeline.metadata's cache, from the parts' (already read for the folds):
    # no second pass over the images.
    self._ankle_jax_metadata = [
        pipeline.metadata(source)[int(i)] for source, idx in parts for i in idx
    ]

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[k] for k in range(*i.indices(len(self)))]
    i = int(i)
    if i < 0:
      i += len(self)
    return self._sources[self._part[i]][int(self._index[i])]

  def __getitems__(self, indices):
    return [self[i] for i in indices]


def fold_sources(
    data_dir: os.PathLike | str,
    dataset_config: str,
    num_folds: int,
    fold: int,
) -> tuple[FoldSource, FoldSource]:
  """(train, validation) of fold run `fold`: the views of the other folds'
  cases and of fold `fold`'s cases, drawn from the train and validation
  splits.

  Raises:
    FoldError: fold outside [0, num_folds), fewer than 2 folds, or a fold with
      no fracture case or no normal case (the message names data.cv_folds).
  """
  if not 0 <= fold < num_folds:
    raise FoldError(
        f'data.cv_fold={fold} with data.cv_folds={num_folds}; expected '
        f'0..{num_folds - 1} (or -1: no cross-validation)'
    )
  sources = _fold_split_sources(data_dir, dataset_config)
  labels = _case_labels(sources)
  fold_of = _folds_of(labels, data_dir, dataset_config, num_folds)
  _check_both_labels(fold_of, labels, num_folds)
  picked = {True: [], False: []}
  for source in sources:
    in_fold = np.array(
        [fold_of[r['case_id']] == fold for r in pipeline.metadata(source)],
        bool,
    )
    picked[False].append((source, np.flatnonzero(~in_fold)))
    picked[True].append((source, np.flatnonzero(in_fold)))
  return FoldSource(picked[False]), FoldSource(picked[True])


def _check_both_labels(fold_of, labels, num_folds) -> None:
  for fold in range(num_folds):
    in_fold = [labels[c] for c, f in fold_of.items() if f == fold]
    for label, name in ((1, 'fracture'), (0, 'normal')):
      if label not in in_fold:
        have = sum(v == label for v in labels.values())
        raise FoldError(
            f'data.cv_folds={num_folds}: fold {fold} has no {name} case (the '
            f'train and validation splits hold {have}); use fewer folds.'
        )

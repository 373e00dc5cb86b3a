"""Metrics per subgroup: does the model hold for lateral views, for the leg,
for images with implants, for cases with one view?

For the headline members (each single run, and the honest protocol's chosen
ensembles: results.reported_members) on the reported split, per value of
each field the prediction rows carry (`partitions`):
  * image level, the per-view fields (SplitPredictions.features_v, from
    predictions.csv's feature columns): view position ('unknown' where a view
    has none), body part (FracAtlas' hand/leg/hip/shoulder/mixed flags joined,
    e.g. 'leg' or 'leg+mixed'), hardware and multiscan ('yes'/'no'/'unknown'
    for the flags 1/0/-1), and any other feature column;
  * case level: the number of views per case (the views evaluated, as
    case_predictions.csv's num_views) and, where some case has more than one
    view, each per-view field but the view position (a property of a
    view): a case's value where all its views share it, else 'varies' (none
    for a field that varies within every case).
A subgroup's rows are exactly the views (image level) or the cases, with all
their views (case level), that have its value; its entries are
results.evaluate_subsets' on those rows alone (the main entries' metrics and
intervals, hard and soft voting). A subgroup with fewer than MIN_CLASS_COUNT
fractures or normals is kept and flagged `small`, with its counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import numpy as np

from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import results
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.predictions import SplitPredictions

MIN_CLASS_COUNT = 10
VIEW_POSITION = 'view_position'
NUM_VIEWS = 'num_views'
BODY_PART = 'body_part'
BODY_PART_FLAGS = ('hand', 'leg', 'hip', 'shoulder', 'mixed')
UNKNOWN = 'unknown'
VARIES = 'varies'
FLAG_VALUES = {'1': 'yes', '0': 'no', '-1': UNKNOWN}


@dataclasses.dataclass(frozen=True)
class Subgroup:
  """Which rows an entry is about, and how many of each class.

  Attributes:
    field: e.g. 'view_position', 'body_part', 'hardware', 'num_views'.
    value: its human-readable value ('lateral', 'yes', '2', 'unknown').
    positives: fracture rows (views at image level, cases at case level).
    negatives: normal rows.
  """

  field: str
  value: str
  positives: int
  negatives: int

  @property
  def small(self) -> bool:
    """Fewer than MIN_CLASS_COUNT fractures or normals: wide intervals."""
    return min(self.positives, self.negatives) < MIN_CLASS_COUNT

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), 'small': self.small}


@dataclasses.dataclass(frozen=True)
class SubgroupEntry:
  """A results.json entry of one subgroup: the members' metrics on its rows."""

  entry: results.ResultEntry
  subgroup: Subgroup

  def to_json(self) -> dict[str, Any]:
    return {**self.entry.to_json(), 'subgroup': self.subgroup.to_json()}


@dataclasses.dataclass(frozen=True)
class Partition:
  """One field's value for every view of a split, at one level.

  Attributes:
    field: the field's name. level: 'image' or 'case'.
    values_v: str [views]; at case level, the value of the view's case.
  """

  field: str
  level: str
  values_v: np.ndarray

  def values(self) -> list[str]:
    """Its distinct values: numbers in numeric order, then words,
    'unknown' and 'varies' last."""

    def rank(value: str) -> tuple[bool, float, str]:
      number = float(value) if value.lstrip('-').isdigit() else np.inf
      return (value in (UNKNOWN, VARIES), number, value)

    return sorted(set(self.values_v.tolist()), key=rank)


# ------------------------------------------------------------- partitions
def readable(field: str, values_v: np.ndarray) -> np.ndarray:
  """str [views]: 'yes'/'no'/'unknown' for a flag (values in 1/0/-1), else
  the values, '' as 'unknown'."""
  values_v = np.asarray(values_v).astype(str)
  if field != VIEW_POSITION and set(values_v.tolist()) <= set(FLAG_VALUES):
    return np.array([FLAG_VALUES[v] for v in values_v], dtype=object)
  return np.where(values_v == '', UNKNOWN, values_v).astype(object)


def body_parts(features_v: Mapping[str, np.ndarray]) -> np.ndarray | None:
  """str [views]: the body-part flags set on each view joined by '+' ('leg',
  'leg+mixed'; 'none' when none is, 'unknown' when one is unknown), or None
  without body-part flags."""
  names = [k for k in BODY_PART_FLAGS if k in features_v]
  if not names:
    return None
  flags_fv = np.stack([np.asarray(features_v[k]).astype(str) for k in names])
  out = []
  for flags in flags_fv.T:
    if not set(flags.tolist()) <= {'0', '1'}:
      out.append(UNKNOWN)
    else:
      out.append(
          '+'.join(n for n, f in zip(names, flags) if f == '1') or 'none'
      )
  return np.array(out, dtype=object)


def view_partitions(preds: SplitPredictions) -> list[Partition]:
  """The image-level partitions of the per-view fields preds carries."""
  features = preds.features_v or {}
  out = []
  if VIEW_POSITION in features:
    out.append(
        Partition(
            VIEW_POSITION,
            'image',
            readable(VIEW_POSITION, features[VIEW_POSITION]),
        )
    )
  parts = body_parts(features)
  if parts is not None:
    out.append(Partition(BODY_PART, 'image', parts))
  for name, values_v in features.items():
    if name not in (VIEW_POSITION, NUM_VIEWS, *BODY_PART_FLAGS):
      out.append(Partition(name, 'image', readable(name, values_v)))
  return out


def case_values(values_v: np.ndarray, cases: voting.CaseIndex) -> np.ndarray:
  """str [views]: each view's case value, where all its views share one,
  else 'varies'."""
  values_v = np.asarray(values_v).astype(object)
  _, first_c = np.unique(cases.case_index_v, return_index=True)
  value_c = values_v[first_c]
  same_c = np.ones(cases.num_cases, bool)
  np.logical_and.at(
      same_c, cases.case_index_v, values_v == value_c[cases.case_index_v]
  )
  value_c = np.where(same_c, value_c, VARIES)
  return value_c[cases.case_index_v]


def partitions(preds: SplitPredictions) -> list[Partition]:
  """Image-level partitions of the per-view fields, then the case-level
  ones: views per case and, where a case has several views, the per-view
  fields' case values (but the view position's, a property of a view, and
  those of fields that vary within every case)."""
  views = view_partitions(preds)
  cases = preds.cases()
  num_views_v = cases.views_per_case_c[cases.case_index_v].astype(str)
  out = views + [Partition(NUM_VIEWS, 'case', num_views_v.astype(object))]
  if cases.num_views > cases.num_cases:
    for p in views:
      values_v = case_values(p.values_v, cases)
      if p.field != VIEW_POSITION and (values_v != VARIES).any():
        out.append(Partition(p.field, 'case', values_v))
  return out


# -------------------------------------------------------------- entries
def select_views(
    preds: SplitPredictions, keep_v: np.ndarray
) -> SplitPredictions:
  """The views where keep_v (bool [views]) holds; case_probs_rc keeps the
  columns of the cases left (whole cases at case level)."""
  keep_v = np.asarray(keep_v, bool)
  case_probs_rc = preds.case_probs_rc
  if case_probs_rc is not None:
    kept_c = np.unique(preds.cases().case_index_v[keep_v])
    case_probs_rc = case_probs_rc[:, kept_c]
  return SplitPredictions(
      case_ids_v=preds.case_ids_v[keep_v],
      view_index_v=preds.view_index_v[keep_v],
      labels_v=preds.labels_v[keep_v],
      probs_rv=preds.probs_rv[:, keep_v],
      case_probs_rc=case_probs_rc,
      multiview_r=preds.multiview_r,
      features_v=(
          None
          if preds.features_v is None
          else {k: v[keep_v] for k, v in preds.features_v.items()}
      ),
  )


def class_counts(preds: SplitPredictions, level: str) -> tuple[int, int]:
  """(fracture, normal) views (image level) or cases (case level)."""
  labels = preds.labels_v if level == 'image' else preds.cases().labels_c
  return int((labels == 1).sum()), int((labels == 0).sum())


def compute_subgroups(
    preds: SplitPredictions,
    split: str,
    run_names: Sequence[str],
    members_list: Sequence[Sequence[int]],
    evaluator: metrics_lib.BinaryEvaluator,
) -> list[SubgroupEntry]:
  """Every partition's values x members x voting on one split's preds."""
  out = []
  for part in partitions(preds):
    for value in part.values():
      sub = select_views(preds, part.values_v == value)
      subgroup = Subgroup(part.field, value, *class_counts(sub, part.level))
      entries = results.evaluate_subsets(
          sub, split, run_names, members_list, evaluator, levels=(part.level,)
      )
      out += [SubgroupEntry(e, subgroup) for e in entries]
  return out

"""The predictions of an evaluation: every run's fracture probability per
view and per case of each split (`SplitPredictions`), and the reading of
predictions.csv and case_predictions.csv back (`read_predictions`, the
files reporting.files writes).

predictions.csv holds one row per run and view (a multi-view run's rows: its
case head on each view alone); case_predictions.csv one row per run and case:
the run's case probability (a multi-view run's own, a per-view run's soft
vote) and its own hard case vote (voting.run_case_hard_votes). Without a
multi-view run, case_predictions.csv is read for nothing (everything follows
from predictions.csv, exactly as before multi-view runs existed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import dataclasses
import os

import numpy as np

from ankle_jax.evaluation import voting

PREDICTION_COLUMNS = (
    'run',
    'case_id',
    'view_index',
    'label',
    'probability',
    'split',
)
# The first five columns are the interface; kind is 'per_view' or
# 'multi_view', hard_vote (0/1) the run's own case vote, num_views the views
# the case had.
CASE_PREDICTION_COLUMNS = (
    'run',
    'case_id',
    'label',
    'probability',
    'split',
    'kind',
    'hard_vote',
    'num_views',
)
PREDICTIONS_FILE = 'predictions.csv'
CASE_PREDICTIONS_FILE = 'case_predictions.csv'
KINDS = ('per_view', 'multi_view')
VALIDATION = 'validation'
CALIBRATED_COLUMN = 'probability_calibrated'


@dataclasses.dataclass
class SplitPredictions:
  """Every run's probability for every view (and case) of one split.

  Attributes:
    case_ids_v: str [views]. view_index_v: int [views]. labels_v: int [views].
    probs_rv: float64 [runs, views] fracture probabilities. A multi-view
      run's view probability is its case head on that view alone
      (models.multiview).
    case_probs_rc: float64 [runs, cases], cases in `cases().case_ids_c`
      order: a multi-view run's fused case probability; a per-view run's row
      is its soft vote (the mean of its view probabilities). None when no
      run is multi-view (then every case probability is a soft vote).
    multiview_r: bool [runs], which runs are multi-view (None: none).
    features_v: {field: str [views]} the views' VIEW_FEATURES fields
      (data.pipeline: view_position, num_views, FracAtlas flags), as the
      batches carried them; None when they carried none.
  """

  case_ids_v: np.ndarray
  view_index_v: np.ndarray
  labels_v: np.ndarray
  probs_rv: np.ndarray
  case_probs_rc: np.ndarray | None = None
  multiview_r: np.ndarray | None = None
  features_v: dict[str, np.ndarray] | None = None

  def cases(self) -> voting.CaseIndex:
    return voting.index_cases(self.case_ids_v, self.labels_v)


def multiview_of(preds: SplitPredictions) -> np.ndarray:
  """bool [runs]: which runs are multi-view (all False when none is)."""
  if preds.multiview_r is None:
    return np.zeros(len(preds.probs_rv), dtype=bool)
  return np.asarray(preds.multiview_r, dtype=bool)


def feature_columns(header: Sequence[str]) -> list[str]:
  """The per-view feature columns of a predictions.csv header: those after
  PREDICTION_COLUMNS but the further probabilities (probability_...)."""
  return [
      c
      for c in header[len(PREDICTION_COLUMNS) :]
      if c not in PREDICTION_COLUMNS and not c.startswith('probability')
  ]


def _features_from_rows(
    rows: Sequence[dict[str, str]], view_pos: Mapping[tuple[str, int], int]
) -> dict[str, np.ndarray] | None:
  """{field: str [views]} of the feature columns with a value in `rows`."""
  names = feature_columns(list(rows[0]))
  features = {k: np.full(len(view_pos), '', dtype=object) for k in names}
  for r in rows:
    v = view_pos[(r['case_id'], int(r['view_index']))]
    for k in names:
      features[k][v] = r[k] or ''
  kept = {k: f.astype(str) for k, f in features.items() if any(f)}
  return kept or None


def _split_from_rows(
    path: str, split: str, rows: Sequence[dict], run_names: Sequence[str]
) -> SplitPredictions:
  views = list(
      dict.fromkeys((r['case_id'], int(r['view_index'])) for r in rows)
  )
  view_pos = {k: i for i, k in enumerate(views)}
  run_index = {n: i for i, n in enumerate(run_names)}
  probs_rv = np.full((len(run_names), len(views)), np.nan)
  labels_v = np.zeros(len(views), np.int64)
  for r in rows:
    v = view_pos[(r['case_id'], int(r['view_index']))]
    probs_rv[run_index[r['run']], v] = float(r['probability'])
    labels_v[v] = int(r['label'])
  if np.isnan(probs_rv).any():
    raise ValueError(f'{path}: split {split!r} lacks some run/view rows.')
  return SplitPredictions(
      case_ids_v=np.array([c for c, _ in views], dtype=str),
      view_index_v=np.array([v for _, v in views], np.int64),
      labels_v=labels_v,
      probs_rv=probs_rv,
      features_v=_features_from_rows(rows, view_pos),
  )


def _read_rows(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f'{path} has no rows.')
  missing = set(columns) - set(rows[0])
  if missing:
    raise ValueError(f'{path} lacks the column(s) {sorted(missing)}.')
  return rows


def _with_case_rows(
    path: str,
    split: str,
    preds: SplitPredictions,
    rows: Sequence[dict[str, str]],
    run_names: Sequence[str],
) -> SplitPredictions:
  """preds with case_probs_rc and multiview_r from one split's rows."""
  case_ids_c = preds.cases().case_ids_c
  case_pos = {c: i for i, c in enumerate(case_ids_c)}
  run_index = {n: i for i, n in enumerate(run_names)}
  case_probs_rc = np.full((len(run_names), len(case_ids_c)), np.nan)
  multiview_r = np.zeros(len(run_names), dtype=bool)
  for row in rows:
    if row['case_id'] not in case_pos or row['run'] not in run_index:
      raise ValueError(
          f'{path}: split {split!r} lists run {row["run"]!r} / case '
          f'{row["case_id"]!r}, which predictions.csv lacks.'
      )
    r = run_index[row['run']]
    case_probs_rc[r, case_pos[row['case_id']]] = float(row['probability'])
    multiview_r[r] = row['kind'] == 'multi_view'
  if np.isnan(case_probs_rc).any():
    raise ValueError(f'{path}: split {split!r} lacks some run/case rows.')
  return dataclasses.replace(
      preds, case_probs_rc=case_probs_rc, multiview_r=multiview_r
  )


def read_case_predictions_csv(
    path: str,
    run_names: Sequence[str],
    by_split: Mapping[str, SplitPredictions],
) -> dict[str, SplitPredictions]:
  """by_split with case_probs_rc and multiview_r read from `path`.

  When no run there is multi-view, by_split comes back as it was (every case
  probability is then a soft vote of predictions.csv).
  """
  rows = _read_rows(path, CASE_PREDICTION_COLUMNS[:6])
  unknown = {r['kind'] for r in rows} - set(KINDS)
  if unknown:
    raise ValueError(f'{path}: unknown kind(s) {sorted(unknown)}.')
  if all(r['kind'] == 'per_view' for r in rows):
    return dict(by_split)
  out = {}
  for split, preds in by_split.items():
    split_rows = [r for r in rows if r['split'] == split]
    out[split] = _with_case_rows(path, split, preds, split_rows, run_names)
  return out


def read_predictions_csv(
    path: str,
) -> tuple[list[str], dict[str, SplitPredictions]]:
  """Reads predictions.csv back: (run names, {split: SplitPredictions}).

  Feature columns (`feature_columns`), where present, fill features_v.
  A case_predictions.csv next to it fills case_probs_rc and multiview_r
  when a run is multi-view (read_case_predictions_csv); without one (older
  evaluations), every run is per-view.
  """
  rows = _read_rows(path, PREDICTION_COLUMNS[:5])
  run_names = list(dict.fromkeys(r['run'] for r in rows))
  by_split = {}
  for split in dict.fromkeys(r.get('split', 'test') for r in rows):
    split_rows = [r for r in rows if r.get('split', 'test') == split]
    by_split[split] = _split_from_rows(path, split, split_rows, run_names)
  case_path = os.path.join(os.path.dirname(path), CASE_PREDICTIONS_FILE)
  if os.path.exists(case_path):
    by_split = read_case_predictions_csv(case_path, run_names, by_split)
  return run_names, by_split


def read_predictions(
    out_dir: str,
) -> tuple[list[str], dict[str, SplitPredictions]]:
  """OUT/predictions.csv (and its case_predictions.csv) read back once."""
  return read_predictions_csv(os.path.join(out_dir, PREDICTIONS_FILE))

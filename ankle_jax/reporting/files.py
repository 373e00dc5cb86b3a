"""The evaluation's data files, each written once: predictions.csv and
case_predictions.csv (both ending with probability_calibrated: the
probability by the run's own calibrator at that level, the raw one where
it is not applied, empty without one),
results.json and summary.json. Probabilities are written exactly (repr).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import math
import os

import numpy as np

from ankle_jax.evaluation import voting
from ankle_jax.evaluation.calibrators import Calibrator
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.predictions import CALIBRATED_COLUMN
from ankle_jax.evaluation.predictions import CASE_PREDICTION_COLUMNS
from ankle_jax.evaluation.predictions import CASE_PREDICTIONS_FILE
from ankle_jax.evaluation.predictions import KINDS
from ankle_jax.evaluation.predictions import PREDICTION_COLUMNS
from ankle_jax.evaluation.predictions import PREDICTIONS_FILE
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.predictions import multiview_of
from ankle_jax.reporting.context import ReportContext
from ankle_jax.reporting.format import write_csv

RESULTS_FILE = 'results.json'
SUMMARY_FILE = 'summary.json'
FILES = (RESULTS_FILE, SUMMARY_FILE, PREDICTIONS_FILE, CASE_PREDICTIONS_FILE)


def _prediction_rows(
    run_names: Sequence[str], by_split: Mapping[str, SplitPredictions]
) -> tuple[list[str], list[list]]:
  """(header, rows) of predictions.csv: one row per run and view.

  After PREDICTION_COLUMNS, one column per feature of the views
  (SplitPredictions.features_v: view_position, num_views, FracAtlas flags),
  named after it; '' in a split without it. None without features.
  """
  features = list(
      dict.fromkeys(k for p in by_split.values() for k in p.features_v or {})
  )
  rows = []
  for split, preds in by_split.items():
    columns = [
        (preds.features_v or {}).get(k, [''] * len(preds.labels_v))
        for k in features
    ]
    for r, run in enumerate(run_names):
      for v in range(len(preds.labels_v)):
        rows.append(
            [
                run,
                preds.case_ids_v[v],
                int(preds.view_index_v[v]),
                int(preds.labels_v[v]),
                repr(float(preds.probs_rv[r, v])),
                split,
                *(column[v] for column in columns),
            ]
        )
  return [*PREDICTION_COLUMNS, *features], rows


def case_rows(
    preds: SplitPredictions,
) -> tuple[voting.CaseIndex, np.ndarray, np.ndarray]:
  """(cases, float64 [runs, cases] case probabilities, bool [runs, cases]
  each run's own hard case vote) of one split."""
  cases = preds.cases()
  probs_rc = voting.run_case_probs(preds.probs_rv, cases, preds.case_probs_rc)
  votes_rc = voting.run_case_hard_votes(
      preds.probs_rv, cases, preds.case_probs_rc, preds.multiview_r
  )
  return cases, probs_rc, votes_rc


def _case_prediction_rows(
    run_names: Sequence[str], by_split: Mapping[str, SplitPredictions]
) -> tuple[list[str], list[list]]:
  """(header, rows) of case_predictions.csv: one row per run and case
  (CASE_PREDICTION_COLUMNS), cases sorted by id."""
  rows = []
  for split, preds in by_split.items():
    cases, probs_rc, votes_rc = case_rows(preds)
    kinds = [KINDS[int(m)] for m in multiview_of(preds)]
    for r, run in enumerate(run_names):
      for c, case_id in enumerate(cases.case_ids_c):
        rows.append(
            [
                run,
                case_id,
                int(cases.labels_c[c]),
                repr(float(probs_rc[r, c])),
                split,
                kinds[r],
                int(votes_rc[r, c]),
                int(cases.views_per_case_c[c]),
            ]
        )
  return list(CASE_PREDICTION_COLUMNS), rows


def _calibrated(
    rows: Sequence[Sequence],
    column: int,
    calibrator_of: Mapping[str, Calibrator | None],
) -> list[str]:
  """Each row's probability (rows[:, column]) by its run's (column 0)
  calibrator, repr; '' where the run has none (calibrated = raw where it
  is not applied)."""
  out = []
  for r in rows:
    cal = calibrator_of.get(r[0])
    p = math.nan if cal is None else float(cal.apply(float(r[column])))
    out.append(repr(p) if math.isfinite(p) else '')
  return out


def write_prediction_csvs(
    out_dir: str,
    run_names: Sequence[str],
    predictions: Mapping[str, SplitPredictions],
    calibrators: Mapping[tuple[tuple[str, ...], str], Calibrator],
) -> None:
  """OUT/predictions.csv and OUT/case_predictions.csv, each ending with
  CALIBRATED_COLUMN: by the run's own calibrator (calibrators[((run,),
  level)], image / case level; '' where there is none)."""
  for name, rows_of, level in (
      (PREDICTIONS_FILE, _prediction_rows, 'image'),
      (CASE_PREDICTIONS_FILE, _case_prediction_rows, 'case'),
  ):
    header, rows = rows_of(run_names, predictions)
    calibrator_of = {r: calibrators.get(((r,), level)) for r in run_names}
    calibrated = _calibrated(rows, header.index('probability'), calibrator_of)
    write_csv(
        os.path.join(out_dir, name),
        [*header, CALIBRATED_COLUMN],
        [[*row, p] for row, p in zip(rows, calibrated)],
    )


def write_predictions(out_dir: str, ev: Evaluation) -> None:
  """The evaluation's predictions CSVs (write_prediction_csvs)."""
  write_prediction_csvs(
      out_dir, ev.run_names, ev.predictions, ev.calibration.calibrators
  )


def write_json(out_dir: str, ev: Evaluation) -> None:
  """results.json (a list of entries) and summary.json."""
  for name, data in (
      (RESULTS_FILE, ev.results_json()),
      (SUMMARY_FILE, ev.summary_json()),
  ):
    with open(os.path.join(out_dir, name), 'w') as f:
      json.dump(data, f, indent=1)


def write(out_dir: str, ev: Evaluation, context: ReportContext) -> None:
  """Every file of FILES (OUT created)."""
  del context  # The files hold the evaluation only.
  os.makedirs(out_dir, exist_ok=True)
  write_predictions(out_dir, ev)
  write_json(out_dir, ev)

"""Out-of-fold (OOF) evaluation of a K-fold cross-validation (numpy only).

Each train+validation case is predicted once, by the fold model that did not
see it (fold k's run on its own 'validation' split, which is fold k). The
union of these predictions (`OofPredictions`) is scored like one model's
validation split:

  * `evaluate_oof`: ROC AUC (DeLong, clustered by case at image level) and
    the other metrics at the 0.5 vote threshold (Wilson intervals), image
    and case level (soft vote); the operating points (metrics.
    OPERATING_POINTS) chosen on the OOF case-level soft vote, with their
    sensitivity and specificity there (in sample, Wilson); each fold's
    case-level metrics and their spread (mean, sd, min, max); a calibrator
    (evaluation.calibrators) fitted on the OOF case-level soft vote, and its
    calibration block (calibration.calibration_block, in sample).
  * `as_validation`: the OOF predictions as the 'validation' split of a fold
    ensemble (every member's row the OOF probability), so that its
    thresholds, calibration and the honest protocol's choice come from OOF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import dataclasses
import math
from typing import Any

import numpy as np

from ankle_jax.evaluation import calibration as calibration_lib
from ankle_jax.evaluation import calibrators as calibrators_lib
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import predictions as predictions_lib
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.results import SplitCounts

OOF_RUN = 'oof'
# The files of DIR/cv (reporting.crossval writes them).
OOF_FILE = 'oof_predictions.csv'
RESULTS_FILE = 'results.json'
OOF_LEVEL = 'case'
OOF_VOTING = 'soft'
# The per-fold metrics whose spread is reported (case level, soft vote).
FOLD_METRICS = ('roc_auc', 'accuracy', 'sensitivity', 'specificity')


@dataclasses.dataclass(frozen=True)
class OofPredictions:
  """Every train+validation view, predicted by the fold that held it out.

  Attributes:
    preds: SplitPredictions with one run (OOF_RUN): probs_rv [1, views].
    fold_v: int [views], the fold (= the fold model) of each view.
    fold_names: the fold runs' names, fold k at index k.
  """

  preds: SplitPredictions
  fold_v: np.ndarray
  fold_names: tuple[str, ...]

  @property
  def num_folds(self) -> int:
    return len(self.fold_names)

  def fold_of_case(self) -> dict[str, int]:
    """{case_id: fold}."""
    return dict(zip(self.preds.case_ids_v.tolist(), self.fold_v.tolist()))

  def fold(self, k: int) -> SplitPredictions:
    """Fold k's views alone (its model's validation predictions)."""
    return _subset(self.preds, self.fold_v == k)


def _case_probs(preds: SplitPredictions) -> dict[str, float] | None:
  """{case_id: case probability} of a one-run split with case_probs_rc."""
  if preds.case_probs_rc is None:
    return None
  return dict(zip(preds.cases().case_ids_c, preds.case_probs_rc[0]))


def _subset(preds: SplitPredictions, keep_v: np.ndarray) -> SplitPredictions:
  """The views keep_v (bool [views]) of a one-run split (whole cases)."""
  case_probs = _case_probs(preds)
  out = SplitPredictions(
      case_ids_v=preds.case_ids_v[keep_v],
      view_index_v=preds.view_index_v[keep_v],
      labels_v=preds.labels_v[keep_v],
      probs_rv=preds.probs_rv[:, keep_v],
      multiview_r=preds.multiview_r,
      features_v=(
          {k: f[keep_v] for k, f in preds.features_v.items()}
          if preds.features_v
          else None
      ),
  )
  return _with_case_probs(out, case_probs)


def _with_case_probs(
    preds: SplitPredictions, case_probs: Mapping[str, float] | None
) -> SplitPredictions:
  if case_probs is None:
    return preds
  ids_c = preds.cases().case_ids_c
  row = np.array([[case_probs[c] for c in ids_c]], np.float64)
  return dataclasses.replace(preds, case_probs_rc=row)


def _merged_features(
    per_fold: Sequence[SplitPredictions],
) -> dict[str, np.ndarray] | None:
  names = list(dict.fromkeys(k for p in per_fold for k in p.features_v or {}))
  if not names:
    return None
  return {
      k: np.concatenate(
          [
              (p.features_v or {}).get(k, np.full(len(p.labels_v), ''))
              for p in per_fold
          ]
      ).astype(str)
      for k in names
  }


def merge_folds(
    per_fold: Sequence[SplitPredictions], fold_names: Sequence[str]
) -> OofPredictions:
  """The OOF predictions from each fold run's predictions on its own
  validation split (per_fold[k]: fold k's run, one run each).

  Raises:
    ValueError: a fold without views, or a case in two folds.
  """
  seen: dict[str, int] = {}
  for k, p in enumerate(per_fold):
    if not len(p.labels_v):
      raise ValueError(f'fold {fold_names[k]} predicted no case.')
    for case_id in np.unique(p.case_ids_v).tolist():
      if case_id in seen:
        raise ValueError(
            f'case {case_id} is in the validation of both '
            f'{fold_names[seen[case_id]]} and {fold_names[k]}: the runs are '
            'not the folds of one cross-validation.'
        )
      seen[case_id] = k
  multiview = [bool(voting_multiview(p)) for p in per_fold]
  case_probs = None
  if any(multiview):
    case_probs = {}
    for p in per_fold:
      cases = p.cases()
      probs_c = voting.run_case_probs(p.probs_rv, cases, p.case_probs_rc)[0]
      case_probs.update(zip(cases.case_ids_c, probs_c))
  preds = SplitPredictions(
      case_ids_v=np.concatenate([p.case_ids_v for p in per_fold]).astype(str),
      view_index_v=np.concatenate([p.view_index_v for p in per_fold]),
      labels_v=np.concatenate([p.labels_v for p in per_fold]),
      probs_rv=np.concatenate([p.probs_rv for p in per_fold], axis=1),
      multiview_r=np.array([any(multiview)]) if any(multiview) else None,
      features_v=_merged_features(per_fold),
  )
  fold_v = np.concatenate(
      [np.full(len(p.labels_v), k) for k, p in enumerate(per_fold)]
  )
  return OofPredictions(
      _with_case_probs(preds, case_probs), fold_v, tuple(fold_names)
  )


def voting_multiview(preds: SplitPredictions) -> bool:
  """Whether the (one-run) predictions are a multi-view run's."""
  return preds.multiview_r is not None and bool(np.any(preds.multiview_r))


def as_validation(oof: OofPredictions, num_runs: int) -> SplitPredictions:
  """The OOF predictions as a `num_runs`-run 'validation' split: every run's
  row is the OOF probability (a fold ensemble's stand-in validation)."""
  p = oof.preds
  return dataclasses.replace(
      p,
      probs_rv=np.repeat(p.probs_rv, num_runs, axis=0),
      case_probs_rc=(
          None
          if p.case_probs_rc is None
          else np.repeat(p.case_probs_rc, num_runs, axis=0)
      ),
      multiview_r=(
          None if p.multiview_r is None else np.repeat(p.multiview_r, num_runs)
      ),
  )


# ------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class Spread:
  """A metric's spread over the folds (sd: sample sd, ddof=1; None below
  two finite values)."""

  mean: float | None
  sd: float | None
  min: float | None
  max: float | None

  @classmethod
  def of(cls, values: Sequence[float]) -> Spread:
    x = np.array([v for v in values if v is not None and math.isfinite(v)])
    if not x.size:
      return cls(None, None, None, None)
    sd = float(x.std(ddof=1)) if x.size > 1 else None
    return cls(float(x.mean()), sd, float(x.min()), float(x.max()))


@dataclasses.dataclass(frozen=True)
class FoldMetrics:
  """One fold's case-level soft-vote metrics on its own validation fold."""

  fold: int
  run: str
  counts: SplitCounts
  metrics: dict[str, float | None]


@dataclasses.dataclass(frozen=True)
class OofEvaluation:
  """Everything `evaluate_oof` computes (module docstring).

  Attributes:
    num_folds: K. fold_names: the fold runs, fold k at index k.
    counts: the OOF cases and views by class.
    estimates: {level: Estimates} at the 0.5 threshold, soft vote.
    operating_points: {name: metrics.operating_point dict} chosen on OOF
      (case level, soft vote).
    per_fold: each fold's FoldMetrics. spread: {metric: Spread}.
    calibration: the calibration block of the OOF case-level soft vote
      (calibrator fitted on OOF; in sample).
    num_bootstrap, seed: the calibration intervals' resamples and seed.
  """

  num_folds: int
  fold_names: tuple[str, ...]
  counts: SplitCounts
  estimates: dict[str, metrics_lib.Estimates]
  operating_points: dict[str, dict[str, Any]]
  per_fold: tuple[FoldMetrics, ...]
  spread: dict[str, Spread]
  calibration: dict[str, Any]
  num_bootstrap: int
  seed: int

  @property
  def roc_auc(self) -> float:
    """The OOF case-level ROC AUC (soft vote)."""
    return self.estimates[OOF_LEVEL].point['roc_auc']

  def to_json(self) -> dict[str, Any]:
    """results.json of DIR/cv (keys documented in README 'Cross-validation')."""
    return {
        'num_folds': self.num_folds,
        'folds': list(self.fold_names),
        'counts': self.counts.to_json(),
        'oof': {
            level: _estimates_json(e) for level, e in self.estimates.items()
        },
        'oof_roc_auc': _finite(self.roc_auc),
        'oof_roc_auc_ci95': [
            _finite(x) for x in self.estimates[OOF_LEVEL].ci95['roc_auc']
        ],
        'operating_points': {
            name: {'level': OOF_LEVEL, 'chosen_on': 'oof', **op}
            for name, op in self.operating_points.items()
        },
        'per_fold': [
            {
                'fold': f.fold,
                'run': f.run,
                'counts': f.counts.to_json(),
                **{m: _finite(f.metrics[m]) for m in FOLD_METRICS},
            }
            for f in self.per_fold
        ],
        'per_fold_spread': {
            m: dataclasses.asdict(s) for m, s in self.spread.items()
        },
        'calibration': {**self.calibration, 'fitted_on': 'oof'},
        'num_bootstrap': self.num_bootstrap,
        'seed': self.seed,
        'vote_threshold': voting.THRESHOLD,
    }


def _finite(x: float | None) -> float | None:
  return float(x) if x is not None and math.isfinite(x) else None


def _estimates_json(e: metrics_lib.Estimates) -> dict[str, Any]:
  return {
      'metrics': {k: _finite(v) for k, v in e.point.items()},
      'ci95': {k: [_finite(x) for x in v] for k, v in e.ci95.items()},
      'interval_methods': dict(e.methods),
  }


def _soft(preds: SplitPredictions, level: str) -> voting.Decisions:
  return results_lib.decide_split(preds, [0], level, OOF_VOTING)


def _fold_metrics(oof: OofPredictions, k: int, evaluator) -> FoldMetrics:
  preds = oof.fold(k)
  d = _soft(preds, OOF_LEVEL)
  point = evaluator(d.labels, d.preds, d.scores).point
  return FoldMetrics(
      k,
      oof.fold_names[k],
      SplitCounts.of(preds),
      {m: _finite(point[m]) for m in FOLD_METRICS},
  )


def _operating_points(d: voting.Decisions) -> dict[str, dict[str, Any]]:
  if len(np.unique(d.labels)) < 2:
    return {}
  return {
      name: metrics_lib.operating_point(
          d.labels,
          d.scores,
          metrics_lib.choose_threshold(name, d.labels, d.scores),
      )
      for name in metrics_lib.OPERATING_POINTS
  }


def oof_calibration(
    d: voting.Decisions, *, num_resamples: int, seed: int
) -> dict[str, Any]:
  """The calibration block of OOF decisions d, calibrator fitted on them."""
  cal = calibrators_lib.fit_calibrator(d.scores, d.labels)
  w = metrics_lib.bootstrap_weights(
      d.clusters, num_resamples=num_resamples, seed=seed + 1
  )
  maps = calibrators_lib.bootstrap_maps(cal, d.scores, d.labels, w)
  fitted = calibration_lib.FittedCalibrator(cal, *maps)
  block = calibration_lib.calibration_block(
      d.scores,
      d.labels,
      d.clusters,
      fitted,
      num_resamples=num_resamples,
      seed=seed,
  )
  return {**block, 'in_sample': True, 'probability': 'soft vote'}


def evaluate_oof(
    oof: OofPredictions, *, num_bootstrap: int = 2000, seed: int = 0
) -> OofEvaluation:
  """The OOF evaluation (module docstring)."""
  evaluator = metrics_lib.BinaryEvaluator()
  estimates = {}
  for level in voting.LEVELS:
    d = _soft(oof.preds, level)
    estimates[level] = evaluator(d.labels, d.preds, d.scores, d.clusters)
  case = _soft(oof.preds, OOF_LEVEL)
  per_fold = tuple(
      _fold_metrics(oof, k, evaluator) for k in range(oof.num_folds)
  )
  return OofEvaluation(
      num_folds=oof.num_folds,
      fold_names=oof.fold_names,
      counts=SplitCounts.of(oof.preds),
      estimates=estimates,
      operating_points=_operating_points(case),
      per_fold=per_fold,
      spread={
          m: Spread.of([f.metrics[m] for f in per_fold]) for m in FOLD_METRICS
      },
      calibration=oof_calibration(case, num_resamples=num_bootstrap, seed=seed),
      num_bootstrap=num_bootstrap,
      seed=seed,
  )


# ------------------------------------------------------------------ files
def _fold_rows_predictions(
    path: str, rows: Sequence[Mapping[str, str]]
) -> SplitPredictions:
  """One fold's rows of an OOF predictions file as a one-run split."""
  features = predictions_lib.feature_columns(list(rows[0]))
  return SplitPredictions(
      case_ids_v=np.array([r['case_id'] for r in rows], dtype=str),
      view_index_v=np.array([int(r['view_index']) for r in rows], np.int64),
      labels_v=np.array([int(r['label']) for r in rows], np.int64),
      probs_rv=np.array([[float(r['probability']) for r in rows]]),
      features_v={
          k: np.array([r[k] or '' for r in rows], dtype=str) for k in features
      }
      or None,
  )


def read_oof_csv(path: str, fold_names: Sequence[str]) -> OofPredictions:
  """An oof_predictions.csv (predictions.csv's columns; `run` is the fold
  run that predicted the view) read back, folds in fold_names order.

  Raises:
    ValueError: the file's runs are not fold_names, or merge_folds fails.
  """
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  missing = set(predictions_lib.PREDICTION_COLUMNS) - set(
      rows[0] if rows else ()
  )
  if missing:
    raise ValueError(f'{path} lacks the column(s) {sorted(missing)}.')
  runs = list(dict.fromkeys(r['run'] for r in rows))
  if sorted(runs) != sorted(fold_names):
    raise ValueError(
        f'{path} holds the predictions of {runs}, not of the folds '
        f'{list(fold_names)}.'
    )
  per_fold = [
      _fold_rows_predictions(path, [r for r in rows if r['run'] == name])
      for name in fold_names
  ]
  return merge_folds(per_fold, fold_names)


def oof_rows(oof: OofPredictions, calibrator_level: str = 'image'):
  """(header, rows) of oof_predictions.csv: predictions.csv's columns (run:
  the fold run that predicted the view; split 'validation'), its feature
  columns, and probability_calibrated (the OOF image-level calibrator;
  `calibrator_level` names which)."""
  p = oof.preds
  features = list(p.features_v or {})
  d = _soft(p, calibrator_level)
  cal = calibrators_lib.fit_calibrator(d.scores, d.labels)
  calibrated = cal.apply(p.probs_rv[0])
  rows = [
      [
          oof.fold_names[int(oof.fold_v[v])],
          p.case_ids_v[v],
          int(p.view_index_v[v]),
          int(p.labels_v[v]),
          repr(float(p.probs_rv[0, v])),
          predictions_lib.VALIDATION,
          *(p.features_v[k][v] for k in features),
          repr(float(calibrated[v])),
      ]
      for v in range(len(p.labels_v))
  ]
  header = [
      *predictions_lib.PREDICTION_COLUMNS,
      *features,
      predictions_lib.CALIBRATED_COLUMN,
  ]
  return header, rows

"""Case aggregations beyond the fixed votes, and the honest choice among them.

The fixed case votes of per-view probabilities (hard, soft, max, noisy_or)
live in evaluation.voting. Here:

* `stacked`: a small L2 logistic regression (scikit-learn, C = 1) from
  STACKED_FEATURES of each case, computed on the ensemble's per-view
  probabilities (the members' mean per view): the mean, max and min of the
  views' logits and the number of views. The features are standardized with
  validation's mean and standard deviation. It is fitted on the `validation`
  cases only and applied unchanged to the reported split; its validation
  entry is out of fold (STACKED_FOLDS stratified folds of validation cases,
  each scored by a model fitted on the others), so that choosing on
  validation does not reward its fit to validation. No stacked entries when
  validation holds fewer than 2 cases of a class, for ensembles with a
  multi-view member (they have their own case probability), nor on the
  pooled split (it holds validation).
* `choose_aggregation`: the honest protocol's choice of case aggregation,
  made as it chooses ensembles: for each aggregation of AGGREGATIONS, its
  honest ensemble (the best validation entry by the selection metric); then
  the aggregation whose ensemble has the highest validation case ROC AUC
  (CHOICE_METRIC), ties to the simpler one (AGGREGATIONS' order). Hard voting
  is not a candidate: its ROC AUC is the soft vote's score, so on that metric
  it can only tie with soft. The paper protocol does not choose: it keeps
  hard voting, as the paper did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import numpy as np
from scipy import special
from sklearn import linear_model
from sklearn import model_selection

from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.predictions import multiview_of
from ankle_jax.evaluation.results import ResultEntry
from ankle_jax.evaluation.results import Results
from ankle_jax.evaluation.results import Selection
from ankle_jax.evaluation.results import SelectionKey

STACKED = 'stacked'
STACKED_FEATURES = ('mean_logit', 'max_logit', 'min_logit', 'num_views')
STACKED_C = 1.0  # inverse L2 strength of the logistic regression
STACKED_FOLDS = 5
# Candidates of the honest choice, simplest first (ties go to the first).
AGGREGATIONS = ('soft', 'max', 'noisy_or', STACKED)
CHOICE_METRIC = 'roc_auc'
_EPS = 1e-6  # probabilities clipped to [eps, 1 - eps] before the logit


def case_features(probs_v: np.ndarray, cases: voting.CaseIndex) -> np.ndarray:
  """STACKED_FEATURES of each case. float64 [cases, 4].

  Args:
    probs_v: float [views] fracture probabilities.
    cases: the CaseIndex of the views.
  """
  p = np.clip(np.asarray(probs_v, dtype=np.float64), _EPS, 1.0 - _EPS)
  logits_v = np.log(p) - np.log1p(-p)
  return np.stack(
      [
          voting.case_means(logits_v, cases),
          voting.case_max_probs(logits_v, cases),
          -voting.case_max_probs(-logits_v, cases),
          cases.views_per_case_c.astype(np.float64),
      ],
      axis=1,
  )


@dataclasses.dataclass(frozen=True)
class StackedAggregator:
  """A fitted stacked aggregator: sigmoid(coef . (x - mean) / scale + b).

  Attributes:
    coef: one weight per STACKED_FEATURES (on standardized features).
    intercept: b.
    feature_mean, feature_scale: the standardization, from the fit's cases
      (a constant feature gets scale 1).
    num_cases: cases it was fitted on.
  """

  coef: tuple[float, ...]
  intercept: float
  feature_mean: tuple[float, ...]
  feature_scale: tuple[float, ...]
  num_cases: int

  def probs(self, features_cf: np.ndarray) -> np.ndarray:
    """Fracture probability of each case. float64 [cases]."""
    x = (np.asarray(features_cf) - self.feature_mean) / self.feature_scale
    return special.expit(x @ np.asarray(self.coef) + self.intercept)

  def to_json(self) -> dict[str, Any]:
    return {'features': list(STACKED_FEATURES), **dataclasses.asdict(self)}


def fit_stacked(
    features_cf: np.ndarray, labels_c: np.ndarray
) -> StackedAggregator | None:
  """The L2 logistic regression of labels on features (None: one class)."""
  labels_c = np.asarray(labels_c, dtype=np.int64)
  if np.unique(labels_c).size < 2:
    return None
  mean = features_cf.mean(axis=0)
  scale = features_cf.std(axis=0)
  scale = np.where(scale > 0, scale, 1.0)
  model = linear_model.LogisticRegression(C=STACKED_C)
  model.fit((features_cf - mean) / scale, labels_c)
  return StackedAggregator(
      coef=tuple(float(c) for c in model.coef_[0]),
      intercept=float(model.intercept_[0]),
      feature_mean=tuple(float(m) for m in mean),
      feature_scale=tuple(float(s) for s in scale),
      num_cases=len(labels_c),
  )


def out_of_fold_probs(
    features_cf: np.ndarray, labels_c: np.ndarray, seed: int
) -> np.ndarray | None:
  """Each case scored by a stacked aggregator fitted on the other folds
  (stratified, at most STACKED_FOLDS, seeded). float64 [cases], or None with
  fewer than 2 cases of a class."""
  labels_c = np.asarray(labels_c, dtype=np.int64)
  rarer = min(np.sum(labels_c == 0), np.sum(labels_c == 1))
  if rarer < 2:
    return None
  folds = model_selection.StratifiedKFold(
      n_splits=int(min(STACKED_FOLDS, rarer)), shuffle=True, random_state=seed
  )
  out = np.zeros(len(labels_c))
  for fit_idx, held_idx in folds.split(features_cf, labels_c):
    model = fit_stacked(features_cf[fit_idx], labels_c[fit_idx])
    out[held_idx] = model.probs(features_cf[held_idx])
  return out


def _decisions(
    preds: SplitPredictions, scores_c: np.ndarray
) -> voting.Decisions:
  """Case-level decisions (score >= THRESHOLD) of stacked scores."""
  cases = preds.cases()
  return voting.Decisions(
      labels=cases.labels_c,
      preds=voting.image_votes(scores_c),
      scores=scores_c,
      clusters=np.arange(cases.num_cases),
  )


def stacked_decisions(
    validation: SplitPredictions,
    reported: SplitPredictions,
    members: Sequence[int],
    seed: int,
) -> tuple[voting.Decisions, voting.Decisions, StackedAggregator] | None:
  """(validation decisions out of fold, reported split's decisions, the
  aggregator fitted on all validation cases), or None (module docstring).

  Only validation's labels are read; the reported split's are carried into
  its decisions, never into the fit.
  """
  members = list(members)
  if any(multiview_of(p)[members].any() for p in (validation, reported)):
    return None
  val_cases = validation.cases()
  val_features_cf = case_features(
      voting.ensemble_soft_probs(validation.probs_rv, members), val_cases
  )
  oof_c = out_of_fold_probs(val_features_cf, val_cases.labels_c, seed)
  if oof_c is None:
    return None
  model = fit_stacked(val_features_cf, val_cases.labels_c)
  reported_features_cf = case_features(
      voting.ensemble_soft_probs(reported.probs_rv, members), reported.cases()
  )
  return (
      _decisions(validation, oof_c),
      _decisions(reported, model.probs(reported_features_cf)),
      model,
  )


def evaluate_stacked(
    validation: SplitPredictions,
    reported: SplitPredictions,
    split: str,
    run_names: Sequence[str],
    subsets: Sequence[Sequence[int]],
    evaluator: metrics_lib.BinaryEvaluator,
    seed: int,
) -> tuple[list[ResultEntry], dict[tuple[str, ...], StackedAggregator]]:
  """The stacked case-level entries of every subset on validation (out of
  fold) and on `split`, and each subset's aggregator (fitted on all of
  validation)."""
  entries, aggregators = [], {}
  for members in subsets:
    out = stacked_decisions(validation, reported, members, seed)
    if out is None:
      continue
    names = tuple(run_names[i] for i in members)
    for name, d in ((VALIDATION, out[0]), (split, out[1])):
      entries.append(
          results_lib.entry_of(d, names, 'case', STACKED, name, evaluator)
      )
    aggregators[names] = out[2]
  return entries, aggregators


@dataclasses.dataclass(frozen=True)
class AggregationChoice:
  """The honest protocol's case aggregation (module docstring).

  Attributes:
    voting: the chosen aggregation (one of AGGREGATIONS).
    members: its ensemble (run names).
    metric: what chose it on validation (CHOICE_METRIC).
    chosen_on, reported_on: 'validation' and the reported split.
    validation_values: {aggregation: its ensemble's validation metric} of
      every candidate that had entries (None where undefined).
    stacked: the chosen ensemble's stacked aggregator, when there is one.
  """

  voting: str
  members: tuple[str, ...]
  metric: str
  chosen_on: str
  reported_on: str
  validation_values: dict[str, float | None]
  stacked: StackedAggregator | None = None

  def reported_key(self) -> results_lib.ResultKey:
    return results_lib.ResultKey(
        self.members, self.reported_on, 'case', self.voting
    )

  def to_json(self) -> dict[str, Any]:
    return {
        'voting': self.voting,
        'members': list(self.members),
        'level': 'case',
        'metric': self.metric,
        'chosen_on': self.chosen_on,
        'reported_on': self.reported_on,
        'candidates': list(self.validation_values),
        'validation_values': dict(self.validation_values),
        'stacked': self.stacked.to_json() if self.stacked else None,
    }


def choose_aggregation(
    results: Results,
    split: str,
    selection_metric: str,
    stacked: Mapping[tuple[str, ...], StackedAggregator],
) -> tuple[AggregationChoice, dict[SelectionKey, Selection]]:
  """(the choice, the honest Selections of each candidate aggregation).

  results must hold validation's case-level entries of the candidates
  (those without any, e.g. stacked without a fit, are left out).
  """
  present = {(k.split, k.level, k.voting) for k in results}
  selections, values = {}, {}
  for vote in AGGREGATIONS:
    if (VALIDATION, 'case', vote) not in present:
      continue
    best = results_lib.select_best(
        results, VALIDATION, 'case', vote, selection_metric
    )
    selections[('honest', 'case', vote)] = Selection(
        'honest', 'case', vote, best.members, VALIDATION, split
    )
    values[vote] = best.metrics[CHOICE_METRIC]
  # max() keeps the first of equal values: the simpler aggregation.
  chosen = max(
      values, key=lambda v: -np.inf if values[v] is None else values[v]
  )
  members = selections[('honest', 'case', chosen)].members
  return (
      AggregationChoice(
          voting=chosen,
          members=members,
          metric=CHOICE_METRIC,
          chosen_on=VALIDATION,
          reported_on=split,
          validation_values=values,
          stacked=stacked.get(members) if chosen == STACKED else None,
      ),
      selections,
  )

"""Calibration of the fracture probability: its metrics before and after the
calibrator (ankle_jax.evaluation.calibrators, fitted on validation), with
intervals that carry the calibrator's own uncertainty.

What is calibrated (`compute_calibration`): for each members x level, the
soft-voted probability (ankle_jax.evaluation.voting: a single run's view
probability or case probability; an ensemble's mean of its members'), which
is also the score of ROC AUC. The hard- and soft-voting entries of the same
members and level share this calibration block.

Metrics of probabilities p [n] and labels y [n] (1 = fracture):
  * ece_debiased (the headline): Kumar et al. 2019's debiased estimate of
    the binned L2 calibration error over adaptive_num_bins(n) equal-mass
    bins: sqrt(max(0, sum_k (n_k / n) [(ybar_k - pbar_k)^2 -
    ybar_k (1 - ybar_k) / (n_k - 1)])); the subtracted term removes the
    sampling noise that makes a calibrated model's plain ECE look large on
    few cases;
  * ece: the plain ECE over 15 equal-width bins of p on [0, 1]: sum over
    bins of (n_k / n) |ybar_k - pbar_k| (biased upwards on small sets; kept
    for comparison);
  * ece_adaptive: the same over 15 equal-mass bins;
  * brier: mean (p - y)^2;
  * slope, intercept: the logistic regression y ~ sigmoid(slope * z +
    intercept), z = logit(p) ((1, 0) when calibrated; slope < 1: over-
    confident).
Intervals (95%): normal bootstrap intervals, point -+ z * SE of the case
bootstrap (ankle_jax.evaluation.metrics.bootstrap_weights, resampling cases),
clipped at 0 for the errors; they contain their point estimate by
construction (ece_debiased's on the squared scale, then the root). The
calibrated metrics' resamples pair each resample of the reported split with
the calibrator refitted on an independent resample of validation
(calibrators.bootstrap_maps); '<metric>_change' (calibrated - raw) is paired
on the same resamples. Within a resample the bins keep the equal-mass edges
of the evaluated items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import numpy as np
from scipy import stats

from ankle_jax.evaluation import calibrators as calibrators_lib
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation.calibrators import Calibrator
from ankle_jax.evaluation.calibrators import logit
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.predictions import SplitPredictions

NUM_BINS = 15
# Below these, calibration is not judged (the documents say TOO_FEW_CASES).
MIN_CASES = 100
MIN_RARER_CLASS_CASES = 20
TOO_FEW_CASES = 'too few cases to judge calibration'
METRICS = ('ece_debiased', 'ece', 'ece_adaptive', 'brier', 'slope', 'intercept')
CHANGES = ('ece_debiased', 'ece', 'brier')
NONNEGATIVE = ('ece', 'ece_adaptive', 'brier')
INTERVAL = (
    'normal bootstrap, point -+ z * SE (case resamples; calibrated: the '
    'calibrator refitted on each validation resample)'
)


# ------------------------------------------------------------- binning
def adaptive_num_bins(num_items: int) -> int:
  """Equal-mass bins for n items: about n / 15 (at least 1, at most
  NUM_BINS), so that each bin holds some 15 or more items."""
  return int(min(NUM_BINS, max(1, num_items // 15)))


def equal_width_bins(probs, num_bins: int = NUM_BINS) -> np.ndarray:
  """int [...]: bin k of [k / num_bins, (k + 1) / num_bins); p = 1 in the
  last bin."""
  p = np.asarray(probs, np.float64)
  return np.clip(np.floor(p * num_bins).astype(np.int64), 0, num_bins - 1)


def equal_mass_bins(probs, num_bins: int = NUM_BINS) -> np.ndarray:
  """int [n]: bins of (nearly) equal counts of the sorted probabilities
  (ties in sort order)."""
  p = np.asarray(probs, np.float64).ravel()
  bins = np.empty(p.size, np.int64)
  bins[np.argsort(p, kind='stable')] = (
      np.arange(p.size) * num_bins // max(p.size, 1)
  )
  return bins


def bin_sums(weights_bn, probs, labels, bins, num_bins: int):
  """(count, sum of p, sum of y), each float [B, num_bins], of the rows of
  weights [B, n]; probs and bins [n] or [B, n] (one per row)."""
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  p = np.broadcast_to(np.asarray(probs, np.float64), w.shape)
  y = np.broadcast_to(np.asarray(labels, np.float64), w.shape)
  rows = np.arange(len(w))[:, None] * num_bins
  flat = (np.broadcast_to(bins, w.shape) + rows).ravel()
  size = len(w) * num_bins
  sums = [
      np.bincount(flat, v.ravel(), minlength=size).reshape(len(w), num_bins)
      for v in (w, w * p, w * y)
  ]
  return tuple(sums)


# ------------------------------------------------------------- metrics
def weighted_binned_ece(
    weights_bn, probs, labels, bins, num_bins: int = NUM_BINS
) -> np.ndarray:
  """float [B]: sum over bins of |sum w (y - p)| / sum w, for each row of
  weights (bootstrap counts [B, n]; unit weights: the plain ECE)."""
  count, sum_p, sum_y = bin_sums(weights_bn, probs, labels, bins, num_bins)
  return np.abs(sum_y - sum_p).sum(axis=1) / count.sum(axis=1)


def weighted_debiased_sq_ece(
    weights_bn, probs, labels, bins, num_bins: int
) -> np.ndarray:
  """float [B]: Kumar et al.'s debiased squared binned calibration error
  (module docstring; may be negative) of each row of weights [B, n]."""
  count, sum_p, sum_y = bin_sums(weights_bn, probs, labels, bins, num_bins)
  with np.errstate(invalid='ignore', divide='ignore'):
    ybar, pbar = sum_y / count, sum_p / count
    noise = ybar * (1.0 - ybar) / np.maximum(count - 1.0, 1.0)
    term = np.where(count > 0, (ybar - pbar) ** 2 - noise, 0.0)
  return (count * term).sum(axis=1) / count.sum(axis=1)


def weighted_brier(weights_bn, probs, labels) -> np.ndarray:
  """float [B]: weighted mean (p - y)^2 for each row of weights [B, n]
  (probs [n] or [B, n])."""
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  sq = (np.asarray(probs, np.float64) - np.asarray(labels, np.float64)) ** 2
  return (w * sq).sum(axis=1) / w.sum(axis=1)


def weighted_slope_intercept(
    weights_bn, probs, labels, *, iterations: int = 60
) -> tuple[np.ndarray, np.ndarray]:
  """Weighted logistic regressions y ~ sigmoid(a z + b), z = logit(p), for
  all rows of weights [B, n] at once (calibrators.logistic_fits; with unit
  weights, scikit-learn's unpenalized fit). Returns (a [B], b [B]); NaN
  where a fit does not converge (e.g. a resample with separable classes)."""
  return calibrators_lib.logistic_fits(
      weights_bn, logit(probs), labels, intercept=True, iterations=iterations
  )


def ece(probs, labels, num_bins: int = NUM_BINS) -> float:
  """Expected calibration error over equal-width bins (see the module)."""
  p = np.asarray(probs, np.float64)
  bins = equal_width_bins(p, num_bins)
  return float(
      weighted_binned_ece(np.ones(p.size), p, labels, bins, num_bins)[0]
  )


def ece_adaptive(probs, labels, num_bins: int = NUM_BINS) -> float:
  """Expected calibration error over equal-mass bins."""
  p = np.asarray(probs, np.float64)
  bins = equal_mass_bins(p, num_bins)
  return float(
      weighted_binned_ece(np.ones(p.size), p, labels, bins, num_bins)[0]
  )


def ece_debiased(probs, labels) -> float:
  """Kumar et al.'s debiased binned calibration error (the module)."""
  p = np.asarray(probs, np.float64).ravel()
  k = adaptive_num_bins(p.size)
  sq = weighted_debiased_sq_ece(
      np.ones(p.size), p, labels, equal_mass_bins(p, k), k
  )[0]
  return math.sqrt(max(0.0, float(sq)))


def brier(probs, labels) -> float:
  """Brier score: mean (p - y)^2 (0 = perfect)."""
  return float(weighted_brier(np.ones(np.size(probs)), probs, labels)[0])


def slope_intercept(probs, labels) -> tuple[float, float]:
  """Calibration (slope, intercept): the unpenalized logistic regression of
  the labels on logit(p); (NaN, NaN) with one class or separable ones."""
  a, b = weighted_slope_intercept(np.ones(np.size(probs)), probs, labels)
  return float(a[0]), float(b[0])


def calibration_metrics(probs, labels) -> dict[str, float]:
  """{name: value} of METRICS for probabilities [n] and labels [n]."""
  slope, intercept = slope_intercept(probs, labels)
  return {
      'ece_debiased': ece_debiased(probs, labels),
      'ece': ece(probs, labels),
      'ece_adaptive': ece_adaptive(probs, labels),
      'brier': brier(probs, labels),
      'slope': slope,
      'intercept': intercept,
  }


def metric_draws(
    weights_bn, probs, labels, maps=None, raw_fit=None
) -> dict[str, np.ndarray]:
  """{name: float [B]} of METRICS (and 'ece_debiased_sq') for each row of
  weights [B, n] of probabilities [n]: raw, or with maps = (slope [B],
  intercept [B]) each row's calibrated sigmoid(slope z + intercept).

  raw_fit: the (a [B], b [B]) of y ~ sigmoid(a z + b) on the raw logits
  (weighted_slope_intercept; computed when None). The calibrated slope and
  intercept follow from it: a / slope and b - a * intercept / slope.
  """
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  p = np.asarray(probs, np.float64)
  a, b = raw_fit or weighted_slope_intercept(w, p, labels)
  q, s, t = p, np.ones(len(w)), np.zeros(len(w))
  if maps is not None:
    s, t = (np.asarray(m, np.float64) for m in maps)
    q = calibrators_lib.apply_map(p, s[:, None], t[:, None])
  k = adaptive_num_bins(p.size)
  # A calibrator keeps the order (slope > 0): the raw equal-mass bins hold.
  sq = weighted_debiased_sq_ece(w, q, labels, equal_mass_bins(p, k), k)
  return {
      'ece_debiased_sq': sq,
      'ece_debiased': np.sqrt(np.maximum(sq, 0.0)),
      'ece': weighted_binned_ece(w, q, labels, equal_width_bins(q)),
      'ece_adaptive': weighted_binned_ece(w, q, labels, equal_mass_bins(p)),
      'brier': weighted_brier(w, q, labels),
      'slope': a / s,
      'intercept': b - a * t / s,
  }


def normal_interval(
    point: float, draws_b, confidence: float = 0.95, lower: float = -math.inf
) -> tuple[float, float]:
  """point -+ z * SE (SE: the standard deviation of the finite bootstrap
  draws), the lower end clipped at `lower`; (NaN, NaN) when the point or
  the SE is not finite. Contains the point (when >= lower) by
  construction."""
  v = np.asarray(draws_b, np.float64)
  v = v[np.isfinite(v)]
  if not math.isfinite(point) or v.size < 2:
    return (math.nan, math.nan)
  half = float(stats.norm.ppf(0.5 + confidence / 2.0)) * float(v.std(ddof=1))
  return (max(lower, point - half), point + half)


def metric_interval(
    name: str, point: Mapping[str, np.ndarray], draws: Mapping[str, np.ndarray]
) -> tuple[float, float]:
  """The interval of METRICS[name] from point (each [1]) and draws ([B])."""
  if name == 'ece_debiased':
    lo, hi = normal_interval(
        float(point['ece_debiased_sq'][0]), draws['ece_debiased_sq']
    )
    return (math.sqrt(max(lo, 0.0)), math.sqrt(max(hi, 0.0)))
  lower = 0.0 if name in NONNEGATIVE else -math.inf
  return normal_interval(float(point[name][0]), draws[name], lower=lower)


# ---------------------------------------------------------- evaluation
def _finite_or_none(x: float | None) -> float | None:
  return float(x) if x is not None and math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class FittedCalibrator:
  """A calibrator fitted on validation and its refits on validation
  resamples (calibrators.bootstrap_maps: slope [B], intercept [B])."""

  calibrator: Calibrator
  slopes_b: np.ndarray
  intercepts_b: np.ndarray


def case_counts(labels, clusters) -> tuple[int, int]:
  """(cases, cases of the rarer class) of items with labels and clusters
  [n] (a case's views share its label)."""
  y, c = np.asarray(labels), np.asarray(clusters)
  per_class = [np.unique(c[y == k]).size for k in (0, 1)]
  return int(np.unique(c).size), int(min(per_class))


def too_few_cases(cases: int, rarer_class_cases: int) -> bool:
  """Below MIN_CASES cases or MIN_RARER_CLASS_CASES of the rarer class."""
  return cases < MIN_CASES or rarer_class_cases < MIN_RARER_CLASS_CASES


def _metrics_entries(point_raw, draws_raw, point_cal, draws_cal):
  """(values, ci95) of METRICS, '<metric>_calibrated' and
  '<metric>_change' (CHANGES; paired on the same resamples)."""
  values, ci95 = {}, {}
  for name in METRICS:
    for suffix, point, draws in (
        ('', point_raw, draws_raw),
        ('_calibrated', point_cal, draws_cal),
    ):
      values[name + suffix] = _finite_or_none(float(point[name][0]))
      ci95[name + suffix] = [
          _finite_or_none(x) for x in metric_interval(name, point, draws)
      ]
  for name in CHANGES:
    change = float(point_cal[name][0] - point_raw[name][0])
    values[name + '_change'] = _finite_or_none(change)
    # No calibrator applied: the change is 0 by definition, no interval.
    ci = (math.nan, math.nan)
    if point_cal is not point_raw:
      ci = normal_interval(change, draws_cal[name] - draws_raw[name])
    ci95[name + '_change'] = [_finite_or_none(x) for x in ci]
  return values, ci95


def calibration_block(
    probs,
    labels,
    clusters,
    fitted: FittedCalibrator,
    *,
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
  """results.json's "calibration" block of probabilities [n] (labels,
  clusters [n]) before and after the fitted calibrator (module docstring).

  Keys: each of METRICS, '<metric>_calibrated' (= the raw value when the
  calibrator is not applied), '<metric>_change' of CHANGES, ci95 {name:
  [lo, hi]} of all of them, temperature (T of an applied temperature, else
  None), calibrator (Calibrator.to_json), cases, rarer_class_cases,
  too_few_cases, num_bins, num_bins_debiased, interval.
  """
  p, y = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
  cal = fitted.calibrator
  w = metrics_lib.bootstrap_weights(
      clusters, num_resamples=num_resamples, seed=seed
  )
  ones = np.ones((1, p.size))
  fit_point = weighted_slope_intercept(ones, p, y)
  fit_draws = weighted_slope_intercept(w, p, y)
  point_raw = metric_draws(ones, p, y, raw_fit=fit_point)
  draws_raw = metric_draws(w, p, y, raw_fit=fit_draws)
  point_cal, draws_cal = point_raw, draws_raw
  if cal.applied:
    maps = (np.array([cal.slope]), np.array([cal.intercept]))
    point_cal = metric_draws(ones, p, y, maps, fit_point)
    maps_b = (fitted.slopes_b, fitted.intercepts_b)
    draws_cal = metric_draws(w, p, y, maps_b, fit_draws)
  values, ci95 = _metrics_entries(point_raw, draws_raw, point_cal, draws_cal)
  cases, rarer = case_counts(y, clusters)
  return {
      'temperature': cal.temperature,
      'calibrator': cal.to_json(),
      **values,
      'ci95': ci95,
      'cases': cases,
      'rarer_class_cases': rarer,
      'too_few_cases': too_few_cases(cases, rarer),
      'num_bins': NUM_BINS,
      'num_bins_debiased': adaptive_num_bins(p.size),
      'interval': INTERVAL,
  }


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Every entry's calibration block and the fitted calibrators.

  Attributes:
    blocks: {results key: block} for every entry of the evaluation (hard and
      soft entries of the same members, level and split share one).
    calibrators: {(members, level): Calibrator} fitted on validation.
  """

  blocks: dict[results_lib.ResultKey, dict[str, Any]]
  calibrators: dict[tuple[tuple[str, ...], str], Calibrator]

  @property
  def temperatures(self) -> dict[tuple[tuple[str, ...], str], float | None]:
    """{(members, level): T of an applied temperature, else None}."""
    return {k: c.temperature for k, c in self.calibrators.items()}


def _soft_decisions(
    run_names: Sequence[str],
    preds: SplitPredictions,
    members: Sequence[str],
    level: str,
    cases,
):
  idx = [run_names.index(m) for m in members]
  return results_lib.decide_split(preds, idx, level, 'soft', cases)


def fit_calibrators(
    keys: Sequence[results_lib.ResultKey],
    run_names: Sequence[str],
    validation: SplitPredictions | None,
    *,
    num_resamples: int,
    seed: int,
) -> dict[tuple[tuple[str, ...], str], FittedCalibrator]:
  """{(members, level): FittedCalibrator} of every members x level of
  `keys`, fitted on the soft-voted probability on validation (and refitted
  on its case resamples, seed + 1: independent of the reported split's);
  not applied without validation."""
  pairs = dict.fromkeys((k.members, k.level) for k in keys)
  identity = (np.ones(num_resamples), np.zeros(num_resamples))
  if validation is None:
    none = Calibrator(
        calibrators_lib.NONE, reason=calibrators_lib.NO_VALIDATION
    )
    return {pair: FittedCalibrator(none, *identity) for pair in pairs}
  cases = validation.cases()
  out = {}
  for members, level in pairs:
    d = _soft_decisions(run_names, validation, members, level, cases)
    cal = calibrators_lib.fit_calibrator(d.scores, d.labels)
    w = metrics_lib.bootstrap_weights(
        d.clusters, num_resamples=num_resamples, seed=seed + 1
    )
    maps = calibrators_lib.bootstrap_maps(cal, d.scores, d.labels, w)
    out[(members, level)] = FittedCalibrator(cal, *maps)
  return out


def compute_calibration(
    keys: Sequence[results_lib.ResultKey],
    run_names: Sequence[str],
    splits: Mapping[str, SplitPredictions],
    *,
    split: str,
    num_resamples: int,
    seed: int,
) -> Calibration:
  """Calibrators fitted on validation, and the block of every entry (keys)
  on its own split (splits: every split the keys name, the pooled one
  included; fitted_on 'validation'; in_sample when the split holds the
  validation cases: validation itself and the pooled split)."""
  fitted = fit_calibrators(
      keys,
      run_names,
      splits.get(VALIDATION),
      num_resamples=num_resamples,
      seed=seed,
  )
  has_validation = VALIDATION in splits
  cases, blocks = {}, {}
  for key in keys:
    shared = (key.members, key.split, key.level)
    if shared in blocks:
      continue
    preds = splits[key.split]
    cases.setdefault(key.split, preds.cases())
    d = _soft_decisions(
        run_names, preds, key.members, key.level, cases[key.split]
    )
    block = calibration_block(
        d.scores,
        d.labels,
        d.clusters,
        fitted[(key.members, key.level)],
        num_resamples=num_resamples,
        seed=seed,
    )
    block['fitted_on'] = VALIDATION if has_validation else None
    block['in_sample'] = has_validation and (
        key.split != split or split == VALIDATION
    )
    block['probability'] = 'soft vote'
    blocks[shared] = block
  return Calibration(
      blocks={k: blocks[(k.members, k.split, k.level)] for k in keys},
      calibrators={k: f.calibrator for k, f in fitted.items()},
  )

"""Calibration of the fracture probability: temperature scaling and its
metrics (ECE, adaptive ECE, Brier score, calibration slope and intercept).

Temperature scaling rescales the fracture logit z = log(p / (1 - p)) (p
clipped to [1e-12, 1 - 1e-12]): p_T = sigmoid(z / T), with T > 0 fitted by
minimizing the negative log-likelihood on the validation split and applied,
never refitted, to the reported split. T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one; the ranking (ROC AUC) and the
0.5 decisions do not change.

What is calibrated (`calibrate`): for each members x level, the soft-voted
probability (ankle_jax.evaluation.voting: a single run's view probability or case
probability; an ensemble's mean of its members'), which is also the score of
ROC AUC. The hard- and soft-voting entries of the same members and level
share this calibration block: hard votes have no probability of their own.

Metrics of probabilities p [n] and labels y [n] (1 = fracture):
  * ece: expected calibration error over 15 equal-width bins of p on [0, 1]:
    sum over bins of (n_bin / n) * |mean(y) - mean(p)| in the bin;
  * ece_adaptive: the same over 15 equal-mass bins (sorted p cut into equal
    counts);
  * brier: mean (p - y)^2;
  * slope, intercept: the logistic regression y ~ sigmoid(slope * z +
    intercept) without penalty ((1, 0) when calibrated; slope < 1: over-
    confident).
Their 95% intervals: percentile intervals of the case-level bootstrap of
ankle_jax.evaluation.metrics (the same resamples as ROC AUC's). Within a resample the
bins keep the edges of the evaluated items (for ece_adaptive: their
equal-mass edges).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import numpy as np
from scipy import optimize
from scipy import special
from sklearn import linear_model

from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.predictions import SplitPredictions

NUM_BINS = 15
PROB_CLIP = 1e-12
# Temperatures searched: 0.01 .. 100 (a bounded search; separable data would
# otherwise drive T to 0).
LOG_TEMPERATURE_BOUNDS = (math.log(1e-2), math.log(1e2))
METRICS = ('ece', 'ece_adaptive', 'brier', 'slope', 'intercept')


# ------------------------------------------------------------- scaling
def logit(probs) -> np.ndarray:
  """float64 [...]: log(p / (1 - p)) of probabilities clipped to
  [1e-12, 1 - 1e-12] (finite for p = 0 or 1)."""
  p = np.clip(np.asarray(probs, np.float64), PROB_CLIP, 1.0 - PROB_CLIP)
  return np.log(p) - np.log1p(-p)


def temperature_nll(log_temperature: float, logits, labels) -> float:
  """Mean negative log-likelihood (nats per item) of sigmoid(z / T).

  Args:
    log_temperature: log T.
    logits: float [n] fracture logits z. labels: int [n], 1 = fracture.
  """
  s = np.asarray(logits, np.float64) / math.exp(log_temperature)
  y = np.asarray(labels, np.float64)
  return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(probs, labels) -> float | None:
  """The temperature T minimizing the NLL of sigmoid(logit(p) / T).

  Args:
    probs: float [n] fracture probabilities (validation).
    labels: int [n], 1 = fracture.

  Returns:
    T in [0.01, 100] (a bounded scalar search over log T); None when the
    labels hold one class only (nothing to fit).
  """
  labels = np.asarray(labels)
  if np.unique(labels).size < 2:
    return None
  z = logit(probs)
  res = optimize.minimize_scalar(
      temperature_nll,
      bounds=LOG_TEMPERATURE_BOUNDS,
      args=(z, labels),
      method='bounded',
      options={'xatol': 1e-8},
  )
  return float(math.exp(res.x))


def apply_temperature(probs, temperature: float) -> np.ndarray:
  """float64 [...]: sigmoid(logit(p) / T)."""
  return special.expit(logit(probs) / temperature)


# ------------------------------------------------------------- metrics
def equal_width_bins(probs, num_bins: int = NUM_BINS) -> np.ndarray:
  """int [n]: bin k of [k / num_bins, (k + 1) / num_bins); p = 1 in the
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


def weighted_binned_ece(
    weights_bn, probs, labels, bins_n, num_bins: int = NUM_BINS
) -> np.ndarray:
  """float [B]: sum over bins of |sum w (y - p)| / sum w, for each row of
  weights (bootstrap counts [B, n]; unit weights: the plain ECE)."""
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  p = np.asarray(probs, np.float64)
  y = np.asarray(labels, np.float64)
  onehot_nk = np.zeros((p.size, num_bins))
  onehot_nk[np.arange(p.size), bins_n] = 1.0
  gap_bk = w @ (onehot_nk * (y - p)[:, None])
  return np.abs(gap_bk).sum(axis=1) / w.sum(axis=1)


def weighted_brier(weights_bn, probs, labels) -> np.ndarray:
  """float [B]: weighted mean (p - y)^2 for each row of weights [B, n]."""
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  sq = (np.asarray(probs, np.float64) - np.asarray(labels, np.float64)) ** 2
  return (w @ sq) / w.sum(axis=1)


def weighted_slope_intercept(
    weights_bn, probs, labels, *, iterations: int = 60
) -> tuple[np.ndarray, np.ndarray]:
  """Weighted logistic regressions y ~ sigmoid(a z + b), z = logit(p), for
  all rows of weights [B, n] at once (Newton's method from a = 0, each step
  capped at 2 per coordinate; with unit weights, scikit-learn's unpenalized
  fit). Returns (a [B], b [B]); NaN where a fit does not converge (e.g. a
  resample with separable classes)."""
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  z, y = logit(probs), np.asarray(labels, np.float64)
  rate = np.clip((w @ y) / w.sum(axis=1), 1e-6, 1 - 1e-6)
  a, b = np.zeros(len(w)), np.log(rate) - np.log1p(-rate)
  converged = np.zeros(len(w), bool)
  active = np.arange(len(w))  # the fits still moving
  with np.errstate(all='ignore'):
    for _ in range(iterations):
      wa = w[active]
      p = special.expit(a[active, None] * z + b[active, None])
      r, s = wa * (y - p), wa * p * (1.0 - p)
      g_a, g_b = r @ z, r.sum(axis=1)
      h_aa, h_ab, h_bb = s @ (z * z), s @ z, s.sum(axis=1)
      det = h_aa * h_bb - h_ab * h_ab
      d_a = np.clip((h_bb * g_a - h_ab * g_b) / det, -2.0, 2.0)
      d_b = np.clip((h_aa * g_b - h_ab * g_a) / det, -2.0, 2.0)
      a[active], b[active] = a[active] + d_a, b[active] + d_b
      step = np.maximum(np.abs(d_a), np.abs(d_b))
      converged[active] = step < 1e-10
      # Coefficients past 1e3 only grow: separable classes, no finite fit.
      bounded = (np.abs(a[active]) < 1e3) & (np.abs(b[active]) < 1e3)
      active = active[~(step <= 1e-10) & np.isfinite(step) & bounded]
      if not active.size:
        break
  return np.where(converged, a, np.nan), np.where(converged, b, np.nan)


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


def brier(probs, labels) -> float:
  """Brier score: mean (p - y)^2 (0 = perfect)."""
  return float(weighted_brier(np.ones(np.size(probs)), probs, labels)[0])


def slope_intercept(probs, labels) -> tuple[float, float]:
  """Calibration (slope, intercept): the unpenalized logistic regression of
  the labels on logit(p) (scikit-learn); (NaN, NaN) with one class."""
  y = np.asarray(labels, np.int64).ravel()
  if np.unique(y).size < 2:
    return (math.nan, math.nan)
  # C = inf: no penalty (scikit-learn >= 1.8 spells penalty=None this way).
  fit = linear_model.LogisticRegression(C=math.inf, tol=1e-10, max_iter=1000)
  fit.fit(logit(probs).reshape(-1, 1), y)
  return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def calibration_metrics(probs, labels) -> dict[str, float]:
  """{name: value} of METRICS for probabilities [n] and labels [n]."""
  slope, intercept = slope_intercept(probs, labels)
  return {
      'ece': ece(probs, labels),
      'ece_adaptive': ece_adaptive(probs, labels),
      'brier': brier(probs, labels),
      'slope': slope,
      'intercept': intercept,
  }


def bootstrap_calibration_ci(
    probs,
    labels,
    clusters,
    *,
    num_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
  """Case-bootstrap percentile intervals {name: (lo, hi)} of METRICS.

  Args:
    probs: float [n]. labels: int [n]. clusters: int [n] the case of each
      item (metrics.bootstrap_weights: the same resamples as ROC AUC's).
    num_resamples, seed: of the bootstrap. confidence: the coverage.
  """
  p = np.asarray(probs, np.float64)
  w = metrics_lib.bootstrap_weights(
      clusters, num_resamples=num_resamples, seed=seed
  )
  slope, intercept = weighted_slope_intercept(w, p, labels)
  values = {
      'ece': weighted_binned_ece(w, p, labels, equal_width_bins(p)),
      'ece_adaptive': weighted_binned_ece(w, p, labels, equal_mass_bins(p)),
      'brier': weighted_brier(w, p, labels),
      'slope': slope,
      'intercept': intercept,
  }
  alpha = (1.0 - confidence) / 2.0
  out = {}
  for name, v in values.items():
    v = v[np.isfinite(v)]
    lo, hi = np.quantile(v, [alpha, 1 - alpha]) if v.size else (np.nan,) * 2
    out[name] = (float(lo), float(hi))
  return out


# ---------------------------------------------------------- evaluation
def _finite_or_none(x: float | None) -> float | None:
  return float(x) if x is not None and math.isfinite(x) else None


def calibration_block(
    probs,
    labels,
    clusters,
    temperature: float | None,
    *,
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
  """results.json's "calibration" block of probabilities [n] before and
  after the temperature (fitted elsewhere; None: no '_calibrated' values).

  Keys: temperature, each of METRICS and '<metric>_calibrated', ci95
  {name: [lo, hi]} of all of them, num_bins.
  """
  p = np.asarray(probs, np.float64)
  variants = {'': p}
  if temperature is not None:
    variants['_calibrated'] = apply_temperature(p, temperature)
  values, ci95 = {}, {}
  for suffix, q in variants.items():
    point = calibration_metrics(q, labels)
    ci = bootstrap_calibration_ci(
        q, labels, clusters, num_resamples=num_resamples, seed=seed
    )
    for name in METRICS:
      values[name + suffix] = _finite_or_none(point[name])
      ci95[name + suffix] = [_finite_or_none(x) for x in ci[name]]
  block: dict[str, Any] = {'temperature': temperature}
  for name in METRICS:
    for suffix in ('', '_calibrated'):
      block[name + suffix] = values.get(name + suffix)
  block['ci95'] = ci95
  block['num_bins'] = NUM_BINS
  return block


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Every entry's calibration block and the fitted temperatures.

  Attributes:
    blocks: {results key: block} for every entry of the evaluation (hard and
      soft entries of the same members, level and split share one).
    temperatures: {(members, level): T or None} fitted on validation.
  """

  blocks: dict[results_lib.ResultKey, dict[str, Any]]
  temperatures: dict[tuple[tuple[str, ...], str], float | None]


def _soft_decisions(
    run_names: Sequence[str],
    preds: SplitPredictions,
    members: Sequence[str],
    level: str,
    cases,
):
  idx = [run_names.index(m) for m in members]
  return results_lib.decide_split(preds, idx, level, 'soft', cases)


def fit_temperatures(
    keys: Sequence[results_lib.ResultKey],
    run_names: Sequence[str],
    validation: SplitPredictions | None,
) -> dict[tuple[tuple[str, ...], str], float | None]:
  """{(members, level): T} of every members x level of `keys`, fitted on the
  soft-voted probability on validation (None without validation)."""
  pairs = dict.fromkeys((k.members, k.level) for k in keys)
  if validation is None:
    return dict.fromkeys(pairs)
  cases = validation.cases()
  out = {}
  for members, level in pairs:
    d = _soft_decisions(run_names, validation, members, level, cases)
    out[(members, level)] = fit_temperature(d.scores, d.labels)
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
  """Temperatures fitted on validation, and the block of every entry (keys)
  on its own split (splits: every split the keys name, the pooled one
  included; fitted_on 'validation'; in_sample when the split holds the
  validation cases: validation itself and the pooled split)."""
  temperatures = fit_temperatures(keys, run_names, splits.get(VALIDATION))
  cases = {}
  blocks = {}
  for key in keys:
    shared = (key.members, key.split, key.level)
    if shared in blocks:
      continue
    preds = splits[key.split]
    cases.setdefault(key.split, preds.cases())
    d = _soft_decisions(
        run_names, preds, key.members, key.level, cases[key.split]
    )
    temperature = temperatures[(key.members, key.level)]
    block = calibration_block(
        d.scores,
        d.labels,
        d.clusters,
        temperature,
        num_resamples=num_resamples,
        seed=seed,
    )
    fitted = temperature is not None
    block['fitted_on'] = VALIDATION if fitted else None
    block['in_sample'] = fitted and (key.split != split or split == VALIDATION)
    block['probability'] = 'soft vote'
    blocks[shared] = block
  return Calibration(
      blocks={k: blocks[(k.members, k.split, k.level)] for k in keys},
      temperatures=temperatures,
  )

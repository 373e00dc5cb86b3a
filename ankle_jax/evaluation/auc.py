"""ROC AUC intervals and paired AUC differences by DeLong's method.

DeLong, DeLong & Clarke-Pearson (1988) write the AUC as the mean of
structural components (placements): each positive's fraction of negatives
it outscores and each negative's fraction of positives that outscore it
(ties count 1/2). Their variance gives the AUC's:
  * items independent (case level, or no clusters): DeLong's estimate,
    S10 / M + S01 / N with S10, S01 the sample variances of the M positive
    and N negative placements;
  * items clustered (image level: the views of a case are one cluster):
    Obuchowski's (1997) clustered estimate, K / (K - 1) * sum_k z_k^2 over
    the K clusters, z_k the cluster's summed centred placements, positive
    ones / M plus negative ones / N.
The 95% interval is computed on the logit scale, logit(A) +- z * se / (A (1 -
A)), and mapped back: it stays inside (0, 1) and is asymmetric near 1, where
the plain interval overshoots and under-covers.

At AUC 1.0 (perfect separation) the logit is infinite and every placement is
1: the interval is one-sided, [L, 1], with L exact under the equal-variance
binormal model: the AUC below which m fracture and n normal CASES (clusters,
not views, so conservative at image level) separate perfectly with
probability < 2.5%. AUC 0.0 mirrors it, [0, 1 - L].

Paired differences (two score sets on the same items) use the same variance
on the differences of the two sets' placements (DeLong's paired test),
clustered the same way; where both AUCs are 1.0 (or both sets rank the items
identically) the variance is 0 and the difference is reported as not
measurable instead of as a zero-width interval.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats

DELONG = 'delong_logit'
DELONG_CLUSTERED = 'delong_logit_clustered'
EXACT_LOWER = 'binormal_exact_lower'
EXACT_UPPER = 'binormal_exact_upper'
METHODS = {
    DELONG: 'DeLong, logit scale',
    DELONG_CLUSTERED: 'DeLong clustered by case (Obuchowski), logit scale',
    EXACT_LOWER: (
        'AUC 1.0: one-sided exact binormal lower bound (perfect separation of '
        'the cases has probability < 2.5% below it)'
    ),
    EXACT_UPPER: 'AUC 0.0: one-sided exact binormal upper bound',
}


@dataclasses.dataclass(frozen=True)
class Placements:
  """DeLong's structural components of one or more score sets.

  Attributes:
    pos_bm: float [B, M] per positive, the fraction of negatives it outscores
      (ties 1/2). neg_bn: float [B, N] per negative, the fraction of
      positives that outscore it. Their row means are the B AUCs.
    pos_clusters: int [M], neg_clusters: int [N] the cluster (0..K-1) of each
      positive and negative; None: every item its own (plain DeLong).
  """

  pos_bm: np.ndarray
  neg_bn: np.ndarray
  pos_clusters: np.ndarray | None
  neg_clusters: np.ndarray | None

  @property
  def auc_b(self) -> np.ndarray:
    return self.pos_bm.mean(axis=1)

  def variance_b(self) -> np.ndarray:
    """float [B]: the variance of each row's mean (module docstring)."""
    d_pos = self.pos_bm - self.pos_bm.mean(axis=1, keepdims=True)
    d_neg = self.neg_bn - self.neg_bn.mean(axis=1, keepdims=True)
    m, n = d_pos.shape[1], d_neg.shape[1]
    if self.pos_clusters is None:
      # One positive (or negative) leaves its variance term unestimated: 0.
      var_pos = (d_pos**2).sum(1) / (m * max(m - 1, 1))
      return var_pos + (d_neg**2).sum(1) / (n * max(n - 1, 1))
    k = int(max(self.pos_clusters.max(), self.neg_clusters.max())) + 1
    z_bk = d_pos @ _onehot(self.pos_clusters, k) / m
    z_bk += d_neg @ _onehot(self.neg_clusters, k) / n
    return k / max(k - 1, 1) * (z_bk**2).sum(1)

  def num_clusters(self) -> tuple[int, int]:
    """(clusters with a positive, clusters with a negative)."""
    if self.pos_clusters is None:
      return self.pos_bm.shape[1], self.neg_bn.shape[1]
    return (
        np.unique(self.pos_clusters).size,
        np.unique(self.neg_clusters).size,
    )


def _onehot(index: np.ndarray, size: int) -> np.ndarray:
  out = np.zeros((index.size, size))
  out[np.arange(index.size), index] = 1.0
  return out


def is_clustered(clusters) -> bool:
  """Whether some cluster holds more than one item."""
  if clusters is None:
    return False
  clusters = np.asarray(clusters).ravel()
  return np.unique(clusters).size < clusters.size


def placements(labels, scores_bn, clusters=None) -> Placements:
  """DeLong's placements of B score sets on the same labelled items.

  Args:
    labels: int [n], 1 = positive; both classes present.
    scores_bn: float [B, n] or [n] scores (higher = more likely positive).
    clusters: int [n] the case of each item; None, or all distinct: plain
      DeLong.
  """
  labels = np.asarray(labels).astype(np.int64).ravel()
  scores_bn = np.atleast_2d(np.asarray(scores_bn, np.float64))
  pos, neg = labels == 1, labels == 0
  m, n = int(pos.sum()), int(neg.sum())
  if m == 0 or n == 0:
    raise ValueError(f'DeLong needs both classes, got {m} and {n}.')
  rank_all = stats.rankdata(scores_bn, axis=1)
  # Midranks: a positive's rank among all minus its rank among positives is
  # the number of negatives below it, ties counting 1/2 (and vice versa).
  below_pos = rank_all[:, pos] - stats.rankdata(scores_bn[:, pos], axis=1)
  below_neg = rank_all[:, neg] - stats.rankdata(scores_bn[:, neg], axis=1)
  pos_clusters = neg_clusters = None
  if is_clustered(clusters):
    _, index = np.unique(np.asarray(clusters).ravel(), return_inverse=True)
    pos_clusters, neg_clusters = index[pos], index[neg]
  return Placements(
      pos_bm=below_pos / n,
      neg_bn=(m - below_neg) / m,
      pos_clusters=pos_clusters,
      neg_clusters=neg_clusters,
  )


def _log_separation_probability(delta: float, m: int, n: int) -> float:
  """log P(all m positives outscore all n negatives) when positives are
  N(delta, 1) and negatives N(0, 1): the integral over the negatives'
  maximum u of n phi(u) Phi(u)^(n-1) Phi(delta - u)^m."""
  u = np.linspace(-12.0, 12.0 + max(delta, 0.0), 8001)
  log_f = (
      math.log(n)
      + stats.norm.logpdf(u)
      + (n - 1) * special.log_ndtr(u)
      + m * special.log_ndtr(delta - u)
  )
  return float(special.logsumexp(log_f) + math.log(u[1] - u[0]))


@functools.lru_cache(maxsize=256)  # Pure; many entries share their counts.
def perfect_separation_lower_bound(
    num_pos: int, num_neg: int, confidence: float = 0.95
) -> float:
  """The binormal AUC below which perfect separation of num_pos positives
  and num_neg negatives has probability < (1 - confidence) / 2.

  Equal-variance binormal model: AUC = Phi(delta / sqrt(2)). The probability
  of perfect separation rises with delta; the bound is where it equals
  alpha. E.g. 40 + 40 cases: about 0.98.
  """
  log_alpha = math.log((1.0 - confidence) / 2.0)
  delta = optimize.brentq(
      lambda d: _log_separation_probability(d, num_pos, num_neg) - log_alpha,
      -20.0,
      40.0,
      xtol=1e-6,
  )
  return float(stats.norm.cdf(delta / math.sqrt(2.0)))


@dataclasses.dataclass(frozen=True)
class AucInterval:
  """An AUC and its interval (lo, hi) by `method` (a key of METHODS)."""

  auc: float
  lo: float
  hi: float
  method: str


def _logit_interval(auc_b, variance_b, floor_b, confidence):
  """(lo_b, hi_b) of logit(auc) +- z se / (auc (1 - auc)); the variance is
  at least floor_b (0 only when every placement is equal)."""
  z = float(stats.norm.ppf(0.5 + confidence / 2.0))
  with np.errstate(divide='ignore', invalid='ignore'):
    se_b = np.sqrt(np.maximum(variance_b, floor_b)) / (auc_b * (1 - auc_b))
    logit_b = special.logit(auc_b)
  return special.expit(logit_b - z * se_b), special.expit(logit_b + z * se_b)


def delong_intervals(
    labels, scores_bn, clusters=None, confidence: float = 0.95
) -> list[AucInterval]:
  """The AUC interval of each of B score sets (module docstring).

  Args:
    labels: int [n] with both classes. scores_bn: float [B, n] or [n].
    clusters: int [n] the case of each item (None: independent items).
    confidence: the two-sided coverage; at AUC 0 or 1 the one bound leaves
      (1 - confidence) / 2 beyond it.

  Returns:
    B AucIntervals.
  """
  p = placements(labels, scores_bn, clusters)
  auc_b, variance_b = p.auc_b, p.variance_b()
  m, n = p.pos_bm.shape[1], p.neg_bn.shape[1]
  # Where all placements tie (e.g. one score for all), a floor keeps the
  # interval from collapsing: the first term of Hanley & McNeil's variance.
  lo_b, hi_b = _logit_interval(
      auc_b, variance_b, auc_b * (1 - auc_b) / (m * n), confidence
  )
  method = DELONG_CLUSTERED if p.pos_clusters is not None else DELONG
  num_pos, num_neg = p.num_clusters()
  out = []
  for auc, lo, hi in zip(auc_b, lo_b, hi_b):
    if auc >= 1.0:
      bound = perfect_separation_lower_bound(num_pos, num_neg, confidence)
      out.append(AucInterval(1.0, bound, 1.0, EXACT_LOWER))
    elif auc <= 0.0:
      bound = perfect_separation_lower_bound(num_neg, num_pos, confidence)
      out.append(AucInterval(0.0, 0.0, 1.0 - bound, EXACT_UPPER))
    else:
      out.append(AucInterval(float(auc), float(lo), float(hi), method))
  return out


def delong_interval(
    labels, scores, clusters=None, confidence: float = 0.95
) -> AucInterval:
  """The AUC interval of one score set (delong_intervals)."""
  return delong_intervals(labels, scores, clusters, confidence)[0]


@dataclasses.dataclass(frozen=True)
class AucDifference:
  """AUC(a) - AUC(b) on the same items, DeLong's paired test.

  Attributes:
    auc_a, auc_b: the two AUCs. difference: auc_a - auc_b.
    lo, hi: its interval (NaN when not measurable).
    p_not_better: one-sided p-value of 'a is not better than b' (NaN when
      not measurable). method: 'delong_paired' or 'delong_paired_clustered'.
    not_measurable: why there is no interval ('' when there is one).
  """

  auc_a: float
  auc_b: float
  difference: float
  lo: float
  hi: float
  p_not_better: float
  method: str
  not_measurable: str = ''

  def describe(self) -> str:
    """'+0.012 [-0.03, +0.05]', or the reason it cannot be measured."""
    if self.not_measurable:
      return f'not measurable ({self.not_measurable})'
    return f'{self.difference:+.3f} [{self.lo:+.2f}, {self.hi:+.2f}]'

  def to_json(self) -> dict[str, Any]:
    nan_to_none = (
        lambda x: None if isinstance(x, float) and math.isnan(x) else x
    )
    return {k: nan_to_none(v) for k, v in dataclasses.asdict(self).items()}


def _paired_moments(labels, scores_a, scores_b, clusters=None):
  """(AUC(a), AUC(b), DeLong variance of their difference, method)."""
  p = placements(labels, np.stack([scores_a, scores_b]), clusters)
  auc_a, auc_b = (float(x) for x in p.auc_b)
  diff = dataclasses.replace(
      p, pos_bm=p.pos_bm[:1] - p.pos_bm[1:], neg_bn=p.neg_bn[:1] - p.neg_bn[1:]
  )
  method = 'delong_paired' + (
      '_clustered' if p.pos_clusters is not None else ''
  )
  return auc_a, auc_b, float(diff.variance_b()[0]), method


def _difference(auc_a, auc_b, variance, method, confidence) -> AucDifference:
  """The AucDifference of a difference with this variance (normal)."""
  if variance <= 1e-15:
    reason = (
        f'both AUCs are {auc_a:.3f}'
        if auc_a == auc_b and auc_a in (0.0, 1.0)
        else 'both rank every positive-negative pair alike'
    )
    nan = float('nan')
    return AucDifference(
        auc_a, auc_b, auc_a - auc_b, nan, nan, nan, method, reason
    )
  se = math.sqrt(variance)
  z = float(stats.norm.ppf(0.5 + confidence / 2.0))
  d = auc_a - auc_b
  return AucDifference(
      auc_a,
      auc_b,
      d,
      max(-1.0, d - z * se),
      min(1.0, d + z * se),
      float(stats.norm.sf(d / se)),
      method,
  )


def paired_difference(
    labels, scores_a, scores_b, clusters=None, confidence: float = 0.95
) -> AucDifference:
  """DeLong's paired interval and test of AUC(a) - AUC(b).

  Args:
    labels: int [n] with both classes. scores_a, scores_b: float [n], two
      models' scores on the same items.
    clusters: int [n] the case of each item (None: independent items).
    confidence: the interval's coverage.
  """
  moments = _paired_moments(labels, scores_a, scores_b, clusters)
  return _difference(*moments, confidence)


def stratified_paired_difference(
    labels, scores_a, scores_b, strata, confidence: float = 0.95
) -> AucDifference:
  """The mean over strata of the within-stratum AUC(a) - AUC(b), DeLong.

  For out-of-fold scores (strata = folds): each fold's AUC compares only
  the scores of one fold model, so a shift of scale between fold models
  does not count, unlike the AUC of the pooled scores. The strata hold
  disjoint items, so their paired DeLong variances add: variance =
  sum_k var_k / K^2 (equal weights, as the mean per-fold AUC).

  Args:
    labels: int [n]. scores_a, scores_b: float [n] on the same items.
    strata: int [n] the stratum (fold) of each item; each has both classes.
  """
  strata = np.asarray(strata)
  labels, scores_a, scores_b = (
      np.asarray(x) for x in (labels, scores_a, scores_b)
  )
  moments = [
      _paired_moments(labels[m], scores_a[m], scores_b[m])
      for m in (strata == k for k in np.unique(strata))
  ]
  auc_a, auc_b, var_sum = (sum(m[i] for m in moments) for i in range(3))
  k = len(moments)
  return _difference(
      auc_a / k,
      auc_b / k,
      var_sum / k**2,
      'delong_paired_stratified',
      confidence,
  )

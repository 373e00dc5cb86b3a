"""Binary classification metrics, their 95% intervals and operating points.

Point estimates come from scikit-learn. Intervals (`BinaryEvaluator`, see
`INTERVALS`):
  * accuracy, sensitivity, specificity, PPV, NPV: Wilson score intervals of
    the proportion (k of n items). Unlike a percentile bootstrap they are not
    [1, 1] at 100% or [0, 0] at 0%.
  * ROC AUC (and the ROC band of `bootstrap_roc_band`): a case-level
    percentile bootstrap. It resamples CASES (a cluster bootstrap: at image
    level, all views of a drawn case come along) and is vectorized: each
    resample is a row of case counts, and every metric is computed for all
    resamples at once from weighted counts. With unit weights those weighted
    formulas equal scikit-learn exactly (a test checks it).

An undefined metric (e.g. PPV with no positive decision, AUC with one class)
is NaN, and so is its interval.

Operating points: thresholds are chosen on one split and lie halfway between
two distinct scores of it, so that a decision `score >= threshold` does not
hinge on a score equal to the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

METRIC_NAMES = (
    'accuracy',
    'sensitivity',
    'specificity',
    'ppv',
    'npv',
    'roc_auc',
)
PROPORTIONS = METRIC_NAMES[:5]
INTERVALS: Mapping[str, str] = {
    **{name: 'Wilson score' for name in PROPORTIONS},
    'roc_auc': 'case-level percentile bootstrap',
}


def _as_arrays(labels, preds, scores=None):
  labels = np.asarray(labels).astype(np.int64).ravel()
  preds = np.asarray(preds).astype(np.int64).ravel()
  if labels.shape != preds.shape:
    raise ValueError(f'labels {labels.shape} and preds {preds.shape} differ.')
  if scores is not None:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.shape != labels.shape:
      raise ValueError(
          f'labels {labels.shape} and scores {scores.shape} differ.'
      )
  return labels, preds, scores


def classification_metrics(labels, preds, scores) -> dict[str, float]:
  """The six metrics with scikit-learn.

  Args:
    labels: int [n], 1 = fracture (positive).
    preds: bool/int [n] decisions.
    scores: float [n] soft scores for ROC AUC.

  Returns:
    {metric name: value}, NaN where undefined.
  """
  labels, preds, scores = _as_arrays(labels, preds, scores)
  nan = np.nan
  out = {
      'accuracy': sk_metrics.accuracy_score(labels, preds),
      'sensitivity': sk_metrics.recall_score(
          labels, preds, pos_label=1, zero_division=nan
      ),
      'specificity': sk_metrics.recall_score(
          labels, preds, pos_label=0, zero_division=nan
      ),
      'ppv': sk_metrics.precision_score(
          labels, preds, pos_label=1, zero_division=nan
      ),
      'npv': sk_metrics.precision_score(
          labels, preds, pos_label=0, zero_division=nan
      ),
  }
  if np.unique(labels).size == 2:
    out['roc_auc'] = sk_metrics.roc_auc_score(labels, scores)
  else:
    out['roc_auc'] = nan
  return {k: float(out[k]) for k in METRIC_NAMES}


def _safe_divide(num, den):
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_metrics(
    weights_bn: np.ndarray, labels, preds, scores
) -> dict[str, np.ndarray]:
  """The six metrics under many weightings of the items at once.

  Args:
    weights_bn: float [B, n] non-negative weights (bootstrap counts).
    labels: int [n]. preds: bool [n]. scores: float [n].

  Returns:
    {metric name: float [B]}, NaN where undefined.
  """
  labels, preds, scores = _as_arrays(labels, preds, scores)
  w = np.atleast_2d(np.asarray(weights_bn, dtype=np.float64))
  pos, prd = labels == 1, preds == 1
  tp = w @ (pos & prd)
  fn = w @ (pos & ~prd)
  tn = w @ (~pos & ~prd)
  fp = w @ (~pos & prd)
  out = {
      'accuracy': _safe_divide(tp + tn, tp + tn + fp + fn),
      'sensitivity': _safe_divide(tp, tp + fn),
      'specificity': _safe_divide(tn, tn + fp),
      'ppv': _safe_divide(tp, tp + fp),
      'npv': _safe_divide(tn, tn + fn),
  }
  # Weighted ROC AUC = P(score_pos > score_neg) + P(tie) / 2 (the trapezoid
  # rule of roc_auc_score), with scores grouped into their distinct values.
  _, group_n = np.unique(scores, return_inverse=True)
  num_groups = group_n.max() + 1 if group_n.size else 0
  onehot_nk = np.zeros((labels.size, num_groups))
  onehot_nk[np.arange(labels.size), group_n] = 1.0
  pos_bk = (w * pos) @ onehot_nk
  neg_bk = (w * ~pos) @ onehot_nk
  neg_below_bk = np.cumsum(neg_bk, axis=1) - neg_bk
  pairs_won = (pos_bk * (neg_below_bk + 0.5 * neg_bk)).sum(axis=1)
  out['roc_auc'] = _safe_divide(pairs_won, pos_bk.sum(1) * neg_bk.sum(1))
  return out


def bootstrap_weights(
    clusters: np.ndarray, *, num_resamples: int, seed: int
) -> np.ndarray:
  """Case-level bootstrap weights of the items.

  Args:
    clusters: int [n], the case (0..C-1) of each item; at case level,
      arange(C).
    num_resamples: B.
    seed: the resamples depend only on (seed, C), so entries on the same split
      share them (a paired bootstrap).

  Returns:
    float [B, n]: how often each item's case was drawn in each resample.
  """
  clusters = np.asarray(clusters, dtype=np.int64).ravel()
  _, clusters = np.unique(clusters, return_inverse=True)
  num_clusters = int(clusters.max()) + 1 if clusters.size else 0
  rng = np.random.default_rng(seed)
  draws_bc = rng.integers(0, num_clusters, size=(num_resamples, num_clusters))
  offsets = np.arange(num_resamples)[:, None] * num_clusters
  counts_bc = np.bincount(
      (draws_bc + offsets).ravel(), minlength=num_resamples * num_clusters
  )
  counts_bc = counts_bc.reshape(num_resamples, num_clusters).astype(np.float64)
  return counts_bc[:, clusters]


def bootstrap_ci(
    labels,
    preds,
    scores,
    clusters=None,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
  """Percentile bootstrap CIs of the six metrics, resampling cases.

  Args:
    labels, preds, scores: [n] as for classification_metrics.
    clusters: int [n] the case of each item (None: each item is its own case).
    num_resamples: number of bootstrap resamples.
    seed: seed of the resamples.
    confidence: the CI's coverage.

  Returns:
    {metric name: (lo, hi)}, NaN where the metric is never defined.
  """
  labels, preds, scores = _as_arrays(labels, preds, scores)
  if clusters is None:
    clusters = np.arange(labels.size)
  weights_bn = bootstrap_weights(
      clusters, num_resamples=num_resamples, seed=seed
  )
  values = weighted_metrics(weights_bn, labels, preds, scores)
  alpha = (1.0 - confidence) / 2.0
  out = {}
  for name in METRIC_NAMES:
    v = values[name][np.isfinite(values[name])]
    if v.size == 0:
      out[name] = (np.nan, np.nan)
    else:
      lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
      out[name] = (float(lo), float(hi))
  return out


def paired_auc_difference(
    labels,
    scores_a,
    scores_b,
    clusters=None,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
  """ROC AUC of scores_a minus that of scores_b on the same items, with a
  paired case bootstrap (each resample draws cases once for both).

  Args:
    labels: int [n]. scores_a, scores_b: float [n] (e.g. two models' case
      probabilities on the same cases).
    clusters: int [n] the case of each item (None: each item its own case).

  Returns:
    {'difference', 'lo', 'hi', 'p_not_better'}: the observed AUC(a) -
    AUC(b), its percentile interval, and the fraction of resamples where
    a's AUC is not above b's (a one-sided bootstrap p-value).
  """
  labels = np.asarray(labels, np.int64).ravel()
  if clusters is None:
    clusters = np.arange(labels.size)
  weights_bn = bootstrap_weights(
      clusters, num_resamples=num_resamples, seed=seed
  )
  ones = np.ones((1, labels.size))
  preds = np.zeros(labels.size, bool)
  auc = lambda w, s: weighted_metrics(w, labels, preds, s)['roc_auc']
  observed = float(auc(ones, scores_a)[0] - auc(ones, scores_b)[0])
  diffs = auc(weights_bn, scores_a) - auc(weights_bn, scores_b)
  diffs = diffs[np.isfinite(diffs)]
  alpha = (1.0 - confidence) / 2.0
  return {
      'difference': observed,
      'lo': float(np.quantile(diffs, alpha)),
      'hi': float(np.quantile(diffs, 1.0 - alpha)),
      'p_not_better': float(np.mean(diffs <= 0.0)),
  }


def proportion_counts(labels, preds) -> dict[str, tuple[int, int]]:
  """(successes k, trials n) of the five proportions.

  Args:
    labels: int [n], 1 = fracture (positive).
    preds: bool/int [n] decisions.

  Returns:
    {metric: (k, n)}: accuracy = correct of all, sensitivity = TP of
    positives, specificity = TN of negatives, PPV = TP of positive decisions,
    NPV = TN of negative decisions.
  """
  labels, preds, _ = _as_arrays(labels, preds)
  pos, prd = labels == 1, preds == 1
  tp, fn = int((pos & prd).sum()), int((pos & ~prd).sum())
  tn, fp = int((~pos & ~prd).sum()), int((~pos & prd).sum())
  return {
      'accuracy': (tp + tn, labels.size),
      'sensitivity': (tp, tp + fn),
      'specificity': (tn, tn + fp),
      'ppv': (tp, tp + fp),
      'npv': (tn, tn + fn),
  }


def wilson_interval(
    successes: int, trials: int, confidence: float = 0.95
) -> tuple[float, float]:
  """Wilson score interval of a proportion k/n; (NaN, NaN) when n = 0.

  (k + z^2/2) / (n + z^2) -+ z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4),
  with z the normal quantile of (1 + confidence) / 2. At k = 0 it is
  [0, z^2 / (n + z^2)], at k = n [n / (n + z^2), 1].
  """
  if trials <= 0:
    return (np.nan, np.nan)
  z = float(stats.norm.ppf(0.5 + confidence / 2.0))
  k, n = float(successes), float(trials)
  center = (k + z * z / 2.0) / (n + z * z)
  half = z / (n + z * z) * np.sqrt(k * (n - k) / n + z * z / 4.0)
  return (max(0.0, center - half), min(1.0, center + half))


def proportion_intervals(
    labels, preds, confidence: float = 0.95
) -> dict[str, tuple[float, float]]:
  """Wilson intervals of the five proportions {metric: (lo, hi)}."""
  return {
      name: wilson_interval(k, n, confidence)
      for name, (k, n) in proportion_counts(labels, preds).items()
  }


@dataclasses.dataclass(frozen=True)
class BinaryEvaluator:
  """Metrics and their 95% intervals for one set of decisions.

  Wilson intervals for the proportions, a case-level bootstrap for ROC AUC
  (see INTERVALS).

  Attributes:
    num_resamples: bootstrap resamples (2000 by default).
    seed: bootstrap seed.
  """

  num_resamples: int = 2000
  seed: int = 0

  def __call__(self, labels, preds, scores, clusters=None):
    """Returns ({metric: value}, {metric: (lo, hi)})."""
    point = classification_metrics(labels, preds, scores)
    ci = proportion_intervals(labels, preds)
    ci['roc_auc'] = bootstrap_ci(
        labels,
        preds,
        scores,
        clusters,
        num_resamples=self.num_resamples,
        seed=self.seed,
    )['roc_auc']
    return point, ci


def bootstrap_roc_band(
    labels,
    scores,
    clusters=None,
    *,
    fpr_grid: np.ndarray,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
  """Pointwise case-bootstrap band of the ROC curve (sensitivity at each FPR).

  Args:
    labels: int [n]. scores: float [n].
    clusters: int [n] the case of each item (None: each item its own case).
    fpr_grid: float [g] false-positive rates (1 - specificity) in [0, 1].
    num_resamples: bootstrap resamples; seed: their seed (as bootstrap_ci).
    confidence: the band's pointwise coverage.

  Returns:
    (lo_g, hi_g): float [g] sensitivity percentiles; NaN when no resample has
    both classes.
  """
  labels, _, scores = _as_arrays(labels, labels, scores)
  if clusters is None:
    clusters = np.arange(labels.size)
  w = bootstrap_weights(clusters, num_resamples=num_resamples, seed=seed)
  _, group_n = np.unique(-scores, return_inverse=True)  # high scores first
  onehot_nk = np.zeros((labels.size, int(group_n.max()) + 1))
  onehot_nk[np.arange(labels.size), group_n] = 1.0
  tp_bk = np.cumsum((w * (labels == 1)) @ onehot_nk, axis=1)
  fp_bk = np.cumsum((w * (labels == 0)) @ onehot_nk, axis=1)
  ok = (tp_bk[:, -1] > 0) & (fp_bk[:, -1] > 0)
  if not ok.any():
    nan = np.full(len(fpr_grid), np.nan)
    return nan, nan
  tpr_bk = np.pad(tp_bk[ok] / tp_bk[ok, -1:], ((0, 0), (1, 0)))
  fpr_bk = np.pad(fp_bk[ok] / fp_bk[ok, -1:], ((0, 0), (1, 0)))
  curves_bg = np.stack(
      [np.interp(fpr_grid, f, t) for f, t in zip(fpr_bk, tpr_bk)]
  )
  alpha = (1.0 - confidence) / 2.0
  lo, hi = np.quantile(curves_bg, [alpha, 1.0 - alpha], axis=0)
  return lo, hi


# ---------------------------------------------------------------- operating
def midpoint_below(scores, threshold: float) -> float:
  """Halfway between `threshold` (a score) and the next lower distinct score.

  `score >= result` decides exactly as `score >= threshold` on these scores.
  Below the lowest score (every item positive): half the gap to the next
  higher score below it, but not below half of it (scores are probabilities).
  """
  scores = np.asarray(scores, np.float64)
  lower, higher = scores[scores < threshold], scores[scores > threshold]
  if lower.size:
    return float((lower.max() + threshold) / 2.0)
  gap = (higher.min() - threshold) if higher.size else abs(threshold)
  return float(max(threshold - gap / 2.0, threshold / 2.0))


def youden_threshold(labels, scores) -> float:
  """Threshold maximizing Youden's J = sensitivity + specificity - 1.

  Decisions are `score >= threshold`. Among equal J, the highest; the
  threshold lies halfway to the next lower score (midpoint_below).
  """
  labels, _, scores = _as_arrays(labels, labels, scores)
  fpr, tpr, thresholds = sk_metrics.roc_curve(
      labels, scores, drop_intermediate=False
  )
  finite = np.isfinite(thresholds)
  j = np.where(finite, tpr - fpr, -np.inf)
  return midpoint_below(scores, float(thresholds[int(np.argmax(j))]))


def sensitivity_threshold(
    labels, scores, min_sensitivity: float = 0.9
) -> float:
  """Highest threshold whose sensitivity is >= min_sensitivity.

  The highest such threshold gives the best specificity at that sensitivity.
  Decisions are `score >= threshold`; the threshold lies halfway to the next
  lower score (midpoint_below).
  """
  labels, _, scores = _as_arrays(labels, labels, scores)
  _, tpr, thresholds = sk_metrics.roc_curve(
      labels, scores, drop_intermediate=False
  )
  ok = np.isfinite(thresholds) & (tpr >= min_sensitivity - 1e-12)
  return midpoint_below(scores, float(thresholds[ok].max()))


def operating_point(labels, scores, threshold: float) -> dict:
  """Sensitivity and specificity at a fixed threshold, with Wilson intervals.

  Returns:
    {'threshold', 'sensitivity', 'specificity', 'ci95': {name: [lo, hi]}}.
  """
  labels, _, scores = _as_arrays(labels, labels, scores)
  preds = scores >= threshold
  point = classification_metrics(labels, preds, scores)
  ci = proportion_intervals(labels, preds)
  names = ('sensitivity', 'specificity')
  return {
      'threshold': float(threshold),
      **{n: point[n] for n in names},
      'ci95': {n: list(ci[n]) for n in names},
  }


OPERATING_POINTS: Mapping[str, str] = {
    'youden': 'maximum Youden J',
    'sens90': 'highest threshold with sensitivity >= 0.90',
}


def choose_threshold(name: str, labels, scores) -> float:
  """The threshold of a named operating point (see OPERATING_POINTS)."""
  if name == 'youden':
    return youden_threshold(labels, scores)
  if name == 'sens90':
    return sensitivity_threshold(labels, scores, 0.9)
  raise ValueError(
      f'Unknown operating point {name!r}; expected one of '
      f'{list(OPERATING_POINTS)}.'
  )

"""Binary classification metrics, their 95% intervals and operating points.

Point estimates come from scikit-learn. Intervals (`BinaryEvaluator`, see
`INTERVALS`; the method of each in `INTERVAL_METHODS`):
  * accuracy, sensitivity, specificity, PPV, NPV: Wilson score intervals of
    the proportion (k of n items); unlike a percentile bootstrap they are
    not [1, 1] at 100% or [0, 0] at 0%. Where items are clustered (image
    level: the views of a case) and some case holds more than one of the
    proportion's items, the Wilson interval uses the effective n = n / deff,
    deff >= 1 the design effect of the ratio estimator over the case
    clusters (`design_effect`).
  * ROC AUC: DeLong's interval on the logit scale, clustered by case at image
    level, with an exact one-sided bound at AUC 1.0 (ankle_jax.evaluation.auc).
  * The ROC band of `bootstrap_roc_band`: a case-level percentile bootstrap.
    It resamples CASES (a cluster bootstrap: at image level, all views of a
    drawn case come along) and is vectorized: each resample is a row of case
    counts, and every metric is computed for all resamples at once from
    weighted counts. With unit weights those weighted formulas equal
    scikit-learn exactly (a test checks it).

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

from ankle_jax.evaluation import auc as auc_lib

METRIC_NAMES = (
    'accuracy',
    'sensitivity',
    'specificity',
    'ppv',
    'npv',
    'roc_auc',
)
PROPORTIONS = METRIC_NAMES[:5]
WILSON = 'wilson'
WILSON_DEFF = 'wilson_design_effect'
INTERVALS: Mapping[str, str] = {
    **{
        name: 'Wilson score; where views of a case are clustered, with '
        'n / design effect of the case clusters'
        for name in PROPORTIONS
    },
    'roc_auc': 'DeLong on the logit scale, clustered by case at image level; '
    'at AUC 1.0 a one-sided exact binormal lower bound',
}
# What the method keys of an entry's ci95_method mean (results.json).
INTERVAL_METHODS: Mapping[str, str] = {
    WILSON: 'Wilson score',
    WILSON_DEFF: 'Wilson score with n / design effect of the case clusters',
    **auc_lib.METHODS,
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


def _proportion_items(labels, preds) -> dict[str, tuple[np.ndarray, ...]]:
  """{metric: (successes, trials)}, bool [n] masks of the items: accuracy =
  correct of all, sensitivity = TP of positives, specificity = TN of
  negatives, PPV = TP of positive decisions, NPV = TN of negative
  decisions."""
  labels, preds, _ = _as_arrays(labels, preds)
  pos, prd = labels == 1, preds == 1
  correct = pos == prd
  return {
      'accuracy': (correct, np.ones_like(pos)),
      'sensitivity': (pos & prd, pos),
      'specificity': (~pos & ~prd, ~pos),
      'ppv': (pos & prd, prd),
      'npv': (~pos & ~prd, ~prd),
  }


def proportion_counts(labels, preds) -> dict[str, tuple[int, int]]:
  """(successes k, trials n) of the five proportions.

  Args:
    labels: int [n], 1 = fracture (positive).
    preds: bool/int [n] decisions.

  Returns:
    {metric: (k, n)} (see _proportion_items).
  """
  return {
      name: (int(k.sum()), int(n.sum()))
      for name, (k, n) in _proportion_items(labels, preds).items()
  }


def wilson_interval(
    successes: float, trials: float, confidence: float = 0.95
) -> tuple[float, float]:
  """Wilson score interval of a proportion k/n; (NaN, NaN) when n = 0.

  (k + z^2/2) / (n + z^2) -+ z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4),
  with z the normal quantile of (1 + confidence) / 2. At k = 0 it is
  [0, z^2 / (n + z^2)], at k = n [n / (n + z^2), 1]. k and n may be
  effective (non-integer) counts.
  """
  if trials <= 0:
    return (np.nan, np.nan)
  z = float(stats.norm.ppf(0.5 + confidence / 2.0))
  k, n = float(successes), float(trials)
  center = (k + z * z / 2.0) / (n + z * z)
  half = z / (n + z * z) * np.sqrt(max(k * (n - k), 0.0) / n + z * z / 4.0)
  return (max(0.0, center - half), min(1.0, center + half))


def design_effect(successes_n, trials_n, clusters) -> float:
  """The design effect (>= 1) of a proportion over clustered items.

  The ratio estimator p = sum_k y_k / sum_k t_k over the K clusters holding
  trials (y_k successes of t_k trials, n = sum t_k) has the linearized
  variance K / (K - 1) sum_k (y_k - p t_k)^2 / n^2; deff is its ratio to the
  binomial p (1 - p) / n, at least 1. Where no cluster holds two trials
  (case level) it is 1; at p = 0 or 1, where the spread cannot show, n / K
  (each case counts as one trial).

  Args:
    successes_n: bool [n] successes (among the trials).
    trials_n: bool [n] the items of the proportion's denominator.
    clusters: int [n] the case of each item.
  """
  _, index = np.unique(np.asarray(clusters).ravel(), return_inverse=True)
  t_k = np.bincount(index, weights=trials_n.astype(float))
  y_k = np.bincount(index, weights=(successes_n & trials_n).astype(float))
  t_k, y_k = t_k[t_k > 0], y_k[t_k > 0]
  n, k = t_k.sum(), t_k.size
  if n == 0 or t_k.max() <= 1:
    return 1.0
  p = y_k.sum() / n
  if p in (0.0, 1.0) or k < 2:
    return float(n / k)
  cluster_variance = k / (k - 1) * ((y_k - p * t_k) ** 2).sum() / n**2
  return float(max(1.0, cluster_variance / (p * (1.0 - p) / n)))


def proportion_intervals(
    labels, preds, confidence: float = 0.95, *, clusters=None
) -> dict[str, tuple[tuple[float, float], str]]:
  """{metric: ((lo, hi), method)} of the five proportions.

  Wilson intervals (method WILSON); where clusters (int [n], the case of each
  item) put two of a proportion's items in one case, Wilson with the
  effective counts k / deff of n / deff (method WILSON_DEFF, design_effect).
  """
  out = {}
  for name, (k_n, n_n) in _proportion_items(labels, preds).items():
    deff = 1.0 if clusters is None else design_effect(k_n, n_n, clusters)
    k, n = (k_n & n_n).sum() / deff, n_n.sum() / deff
    interval = wilson_interval(k, n, confidence)
    out[name] = (interval, WILSON if deff == 1.0 else WILSON_DEFF)
  return out


@dataclasses.dataclass(frozen=True)
class Estimates:
  """The six metrics of one set of decisions, with their 95% intervals.

  Attributes:
    point: {metric: value}, NaN where undefined.
    ci95: {metric: (lo, hi)}, NaN where undefined.
    methods: {metric: key of INTERVAL_METHODS}, '' where undefined.
  """

  point: dict[str, float]
  ci95: dict[str, tuple[float, float]]
  methods: dict[str, str]


@dataclasses.dataclass(frozen=True)
class BinaryEvaluator:
  """Metrics and their intervals for one set of decisions (INTERVALS).

  Attributes:
    confidence: the intervals' coverage (0.95).
  """

  confidence: float = 0.95

  def __call__(self, labels, preds, scores, clusters=None) -> Estimates:
    """Estimates of labels, preds, scores (int/bool/float [n]); clusters:
    int [n] the case of each item (image level), None: independent."""
    point = classification_metrics(labels, preds, scores)
    ci, methods = {}, {}
    proportions = proportion_intervals(
        labels, preds, self.confidence, clusters=clusters
    )
    for name, (interval, method) in proportions.items():
      ci[name], methods[name] = interval, method
    if np.isfinite(point['roc_auc']):
      auc = auc_lib.delong_interval(labels, scores, clusters, self.confidence)
      ci['roc_auc'], methods['roc_auc'] = (auc.lo, auc.hi), auc.method
    else:
      ci['roc_auc'], methods['roc_auc'] = (np.nan, np.nan), ''
    for name in PROPORTIONS:
      if not np.isfinite(point[name]):
        methods[name] = ''
    return Estimates(point, ci, methods)


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
    num_resamples: bootstrap resamples; seed: their seed (bootstrap_weights).
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


def operating_point(labels, scores, threshold: float, clusters=None) -> dict:
  """Sensitivity and specificity at a fixed threshold, with Wilson intervals
  (design-effect adjusted where clusters, int [n] the case of each item,
  group items: proportion_intervals).

  Returns:
    {'threshold', 'sensitivity', 'specificity', 'ci95': {name: [lo, hi]}}.
  """
  labels, _, scores = _as_arrays(labels, labels, scores)
  preds = scores >= threshold
  point = classification_metrics(labels, preds, scores)
  ci = {
      name: interval
      for name, (interval, _) in proportion_intervals(
          labels, preds, clusters=clusters
      ).items()
  }
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

"""Tests of ankle_jax.evaluation.auc: DeLong intervals that never collapse."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from ankle_jax.evaluation import auc
from ankle_jax.evaluation import metrics
from ankle_jax.reporting.format import format_value


def _binormal(seed, num_models, num_pos, num_neg, true_auc):
  """(labels [n], scores [models, n]): equal-variance binormal scores."""
  rng = np.random.default_rng(seed)
  labels = np.r_[np.ones(num_pos, int), np.zeros(num_neg, int)]
  scores = rng.normal(size=(num_models, labels.size))
  scores[:, :num_pos] += math.sqrt(2.0) * stats.norm.ppf(true_auc)
  return labels, scores


def _jackknife_variance(labels, scores):
  """The two-sample jackknife variance of sklearn's AUC (leave one positive,
  then one negative, out), brute force."""
  total = 0.0
  for cls in (0, 1):
    idx = np.flatnonzero(labels == cls)
    aucs = np.array(
        [
            sk.roc_auc_score(np.delete(labels, i), np.delete(scores, i))
            for i in idx
        ]
    )
    total += (idx.size - 1) / idx.size * ((aucs - aucs.mean()) ** 2).sum()
  return total


def test_delong_variance_equals_the_two_sample_jackknife():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 40)
  scores = np.round(labels + rng.normal(size=40), 1)  # with ties
  p = auc.placements(labels, scores)
  assert p.auc_b[0] == pytest.approx(sk.roc_auc_score(labels, scores))
  assert p.variance_b()[0] == pytest.approx(
      _jackknife_variance(labels, scores), rel=1e-10
  )
  # The paired variance: that of the difference of the two AUCs.
  other = np.round(labels + 2 * rng.normal(size=40), 1)
  diff = auc.paired_difference(labels, scores, other)
  z = stats.norm.ppf(0.975)
  placements = auc.placements(labels, np.stack([scores, other]))
  brute = 0.0
  for cls in (0, 1):
    idx = np.flatnonzero(labels == cls)
    d = np.array(
        [
            sk.roc_auc_score(np.delete(labels, i), np.delete(scores, i))
            - sk.roc_auc_score(np.delete(labels, i), np.delete(other, i))
            for i in idx
        ]
    )
    brute += (idx.size - 1) / idx.size * ((d - d.mean()) ** 2).sum()
  assert (diff.hi - diff.lo) / (2 * z) == pytest.approx(
      math.sqrt(brute), rel=1e-9
  )
  assert diff.difference == pytest.approx(
      placements.auc_b[0] - placements.auc_b[1]
  )


def test_clustered_variance_matches_a_case_bootstrap():
  # 60 cases of 1-3 correlated views; the clustered (Obuchowski) variance
  # against the variance of 4000 case-bootstrap AUCs.
  rng = np.random.default_rng(1)
  views = rng.integers(1, 4, 60)
  clusters = np.repeat(np.arange(60), views)
  case_labels = rng.integers(0, 2, 60)
  case_effect = rng.normal(size=60) + 1.2 * case_labels
  labels = case_labels[clusters]
  scores = case_effect[clusters] + 0.5 * rng.normal(size=clusters.size)
  variance = auc.placements(labels, scores, clusters).variance_b()[0]
  w = metrics.bootstrap_weights(clusters, num_resamples=4000, seed=0)
  boot = metrics.weighted_metrics(w, labels, labels, scores)['roc_auc']
  assert variance == pytest.approx(np.nanvar(boot), rel=0.15)
  # Ignoring the clusters understates it.
  assert auc.placements(labels, scores).variance_b()[0] < 0.8 * variance


def test_auc_interval_covers_the_true_auc():
  # 200 simulated models on 80 cases (40 + 40) at true AUC 0.95.
  labels, scores = _binormal(0, 200, 40, 40, 0.95)
  intervals = auc.delong_intervals(labels, scores)
  covered = [i.lo <= 0.95 <= i.hi for i in intervals]
  assert np.mean(covered) >= 0.9
  assert all(0.0 < i.lo < i.auc < i.hi <= 1.0 for i in intervals if i.auc < 1)


def test_perfect_separation_gives_a_one_sided_nonzero_interval():
  labels = np.r_[np.ones(10, int), np.zeros(10, int)]
  scores = np.r_[np.linspace(0.6, 0.9, 10), np.linspace(0.1, 0.4, 10)]
  interval = auc.delong_interval(labels, scores)
  assert interval.auc == interval.hi == 1.0
  assert 0.5 < interval.lo < 1.0
  assert interval.method == auc.EXACT_LOWER
  # The bound is where perfect separation has probability 2.5%: simulate it.
  labels, sims = _binormal(2, 40000, 10, 10, interval.lo)
  separated = sims[:, :10].min(1) > sims[:, 10:].max(1)
  assert separated.mean() == pytest.approx(0.025, abs=0.003)
  # Exact at AUC 0.5: every ordering equally likely, 1 / C(m + n, m).
  log_p = auc._log_separation_probability(0.0, 3, 4)
  assert math.exp(log_p) == pytest.approx(1 / math.comb(7, 3), rel=1e-6)
  # Mirrored at AUC 0; clustered: the cases count, not the views.
  flipped = auc.delong_interval(1 - labels[:20], scores)
  assert (flipped.lo, flipped.hi) == (0.0, pytest.approx(1 - interval.lo))
  copies = auc.delong_interval(
      np.repeat(labels[:20], 2), np.repeat(scores, 2), np.repeat(range(20), 2)
  )
  assert copies.lo == pytest.approx(interval.lo)


def test_tied_scores_never_give_a_zero_width_interval():
  interval = auc.delong_interval([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5])
  assert interval.auc == 0.5 and interval.lo < 0.5 < interval.hi


def test_paired_difference():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  good = labels + rng.normal(0, 0.6, 200)
  poor = labels + rng.normal(0, 1.5, 200)
  result = auc.paired_difference(labels, good, poor)
  expected = sk.roc_auc_score(labels, good) - sk.roc_auc_score(labels, poor)
  assert result.difference == pytest.approx(expected, abs=1e-12)
  assert 0 < result.lo < result.difference < result.hi
  assert result.p_not_better < 0.01 and not result.not_measurable
  # Paired: a noisy copy of `good` differs little, with a narrower interval
  # than two independent models' AUCs would allow.
  near = good + rng.normal(0, 0.05, 200)
  paired = auc.paired_difference(labels, good, near)
  singles = auc.delong_intervals(labels, np.stack([good, near]))
  assert paired.hi - paired.lo < 0.3 * (singles[0].hi - singles[0].lo)
  # Clustered: identical copies of the views widen it back to the cases'.
  rep, clusters = lambda x: np.repeat(x, 3), np.repeat(np.arange(200), 3)
  copies = auc.paired_difference(rep(labels), rep(good), rep(poor), clusters)
  assert copies.hi - copies.lo == pytest.approx(result.hi - result.lo, rel=0.01)
  assert copies.method == 'delong_paired_clustered'


def test_paired_difference_of_two_perfect_models_is_not_measurable():
  labels = np.r_[np.ones(10, int), np.zeros(10, int)]
  a = np.r_[np.linspace(0.6, 0.9, 10), np.linspace(0.1, 0.4, 10)]
  result = auc.paired_difference(labels, a, a**2)
  assert result.difference == 0.0 and math.isnan(result.lo)
  assert result.describe() == 'not measurable (both AUCs are 1.000)'
  assert result.to_json()['lo'] is None
  same = auc.paired_difference(labels, a[::-1], a[::-1])
  assert same.not_measurable and '+0.000 [' not in same.describe()


def test_stratified_paired_difference_ignores_shifts_between_folds():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 300)
  folds = np.arange(300) % 3
  good = labels + rng.normal(0, 0.8, 300)
  poor = labels + rng.normal(0, 1.4, 300)
  # Fold 2's model of `good` outputs scores 3 higher: its pooled AUC drops,
  # the per-fold AUCs do not change.
  shifted = good + 3.0 * (folds == 2)
  pooled = auc.paired_difference(labels, shifted, poor)
  by_fold = auc.stratified_paired_difference(labels, shifted, poor, folds)
  unshifted = auc.stratified_paired_difference(labels, good, poor, folds)
  assert pooled.difference < unshifted.difference - 0.05
  assert by_fold.difference == pytest.approx(unshifted.difference, abs=1e-12)
  assert by_fold.method == 'delong_paired_stratified'
  # The mean of the per-fold differences; the folds' variances add.
  per_fold = [
      auc.paired_difference(labels[m], good[m], poor[m])
      for m in (folds == k for k in range(3))
  ]
  z = stats.norm.ppf(0.975)
  variances = [((d.hi - d.lo) / (2 * z)) ** 2 for d in per_fold]
  assert by_fold.difference == pytest.approx(
      np.mean([d.difference for d in per_fold]), abs=1e-12
  )
  assert (by_fold.hi - by_fold.lo) / (2 * z) == pytest.approx(
      math.sqrt(sum(variances)) / 3, rel=1e-9
  )


def test_printed_intervals_never_read_as_collapsed():
  assert format_value(1.0, (0.9865, 1.0)) == '1.000 [0.99, 1.00]'
  assert format_value(1.0, (0.996, 1.0)) == '1.000 [0.996, 1.000]'
  assert format_value(0.8, (0.7, 0.9)) == '0.800 [0.70, 0.90]'

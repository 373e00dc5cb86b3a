"""Tests of ankle_jax.evaluation.metrics against scikit-learn and bootstrap properties."""

import numpy as np
import pytest
from sklearn import metrics as sk

from ankle_jax.evaluation import auc
from ankle_jax.evaluation import metrics
from ankle_jax.evaluation import results
from ankle_jax.evaluation.predictions import SplitPredictions


def _random_predictions(seed, n=200):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  scores = np.clip(0.5 * labels + rng.normal(0.25, 0.3, n), 0, 1)
  scores = np.round(scores, 2)  # ties, to exercise the AUC tie rule
  return labels, scores >= 0.5, scores


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_metrics_equal_sklearn(seed):
  labels, preds, scores = _random_predictions(seed)
  tn, fp, fn, tp = sk.confusion_matrix(labels, preds).ravel()
  expected = {
      'accuracy': sk.accuracy_score(labels, preds),
      'sensitivity': sk.recall_score(labels, preds),
      'specificity': tn / (tn + fp),
      'ppv': sk.precision_score(labels, preds),
      'npv': tn / (tn + fn),
      'roc_auc': sk.roc_auc_score(labels, scores),
  }
  got = metrics.classification_metrics(labels, preds, scores)
  assert set(got) == set(metrics.METRIC_NAMES)
  # The vectorized formulas of the bootstrap, with unit weights, too.
  got_weighted = metrics.weighted_metrics(
      np.ones((1, labels.size)), labels, preds, scores
  )
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got_weighted[name][0] == pytest.approx(value, abs=1e-12), name


def test_weighted_metrics_equal_sklearn_sample_weight():
  labels, preds, scores = _random_predictions(5, n=60)
  w = np.random.default_rng(0).integers(0, 4, labels.size).astype(float)
  got = metrics.weighted_metrics(w[None], labels, preds, scores)
  assert got['roc_auc'][0] == pytest.approx(
      sk.roc_auc_score(labels, scores, sample_weight=w)
  )
  assert got['sensitivity'][0] == pytest.approx(
      sk.recall_score(labels, preds, sample_weight=w)
  )
  assert got['accuracy'][0] == pytest.approx(
      sk.accuracy_score(labels, preds, sample_weight=w)
  )


def test_undefined_metrics_are_nan():
  got = metrics.classification_metrics([1, 1], [1, 1], [0.7, 0.8])
  assert np.isnan(got['specificity']) and np.isnan(got['roc_auc'])
  assert got['accuracy'] == 1.0


def test_bootstrap_weights_resample_whole_cases():
  clusters = np.array([0, 0, 0, 1, 1, 2])
  w = metrics.bootstrap_weights(clusters, num_resamples=50, seed=0)
  assert w.shape == (50, 6)
  # All views of a case carry the same weight; each resample draws 3 cases.
  np.testing.assert_array_equal(w[:, 0], w[:, 1])
  np.testing.assert_array_equal(w[:, 3], w[:, 4])
  np.testing.assert_array_equal(w[:, [0, 3, 5]].sum(1), 3)
  np.testing.assert_array_equal(
      w, metrics.bootstrap_weights(clusters, num_resamples=50, seed=0)
  )


def test_ci_contains_point_estimate_and_narrows_with_more_cases():
  widths = {}
  for n in (80, 800):
    labels, preds, scores = _random_predictions(7, n=n)
    est = metrics.BinaryEvaluator()(labels, preds, scores)
    point, ci = est.point, est.ci95
    for name in metrics.METRIC_NAMES:
      lo, hi = ci[name]
      assert lo <= point[name] <= hi, (n, name)
    widths[n] = {k: ci[k][1] - ci[k][0] for k in metrics.METRIC_NAMES}
  for name in metrics.METRIC_NAMES:
    assert widths[800][name] < widths[80][name], name
  # Roughly +-9-11 points on accuracy at 80 cases.
  assert 0.12 < widths[80]['accuracy'] < 0.25


def test_clustered_intervals_are_wider_for_correlated_views():
  # Three identical views per case: the intervals must not pretend to have
  # 3x as many independent items (the design effect, the clustered DeLong).
  labels, preds, scores = _random_predictions(3, n=60)
  rep = lambda x: np.repeat(x, 3)
  clusters = np.repeat(np.arange(60), 3)
  evaluate = metrics.BinaryEvaluator()
  clustered = evaluate(rep(labels), rep(preds), rep(scores), clusters)
  independent = evaluate(rep(labels), rep(preds), rep(scores))
  by_case = evaluate(labels, preds, scores, np.arange(60))
  width = lambda est, k: est.ci95[k][1] - est.ci95[k][0]
  for name in metrics.METRIC_NAMES:
    assert width(clustered, name) > 1.4 * width(independent, name), name
    # Identical copies carry the information of one view: the case's width.
    assert width(clustered, name) == pytest.approx(
        width(by_case, name), rel=0.1
    ), name
  assert clustered.methods['accuracy'] == metrics.WILSON_DEFF
  assert clustered.methods['roc_auc'] == 'delong_logit_clustered'
  assert by_case.methods == {
      **{k: metrics.WILSON for k in metrics.PROPORTIONS},
      'roc_auc': 'delong_logit',
  }


def test_design_effect():
  trials = np.ones(6, bool)
  # Independent items (one per case): 1, whatever the spread.
  assert metrics.design_effect(trials, trials, np.arange(6)) == 1.0
  # Cases (0, 0), (1, 1), (0, 0): every case agrees with itself; by hand,
  # p = 1/3, cluster variance 3/2 * (4/9 + 16/9 + 4/9) / 36 = 1/9, binomial
  # (1/3)(2/3)/6 = 1/27: deff 3 (2 views per case, times K / (K - 1)).
  successes = np.array([0, 0, 1, 1, 0, 0], bool)
  clusters = np.array([0, 0, 1, 1, 2, 2])
  assert metrics.design_effect(successes, trials, clusters) == pytest.approx(
      3.0
  )
  # 100%: the spread cannot show; each case counts once (n / K = 2).
  assert metrics.design_effect(trials, trials, clusters) == 2.0
  # Views that disagree within every case: no inflation below 1.
  mixed = np.array([0, 1, 0, 1, 0, 1], bool)
  assert metrics.design_effect(mixed, trials, clusters) == 1.0


def test_image_level_operating_point_intervals_use_the_clusters():
  labels, _, scores = _random_predictions(8, n=50)
  rep = lambda x: np.repeat(x, 2)
  clusters = np.repeat(np.arange(50), 2)
  op = metrics.operating_point(rep(labels), rep(scores), 0.5, clusters)
  case = metrics.operating_point(labels, scores, 0.5)
  views = metrics.operating_point(rep(labels), rep(scores), 0.5)
  width = lambda o, k: o['ci95'][k][1] - o['ci95'][k][0]
  for name in ('sensitivity', 'specificity'):
    # Two identical views count as one case (up to K / (K - 1)).
    np.testing.assert_allclose(op['ci95'][name], case['ci95'][name], rtol=0.03)
    assert width(op, name) > 1.3 * width(views, name)


def test_operating_points():
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
  scores = np.array(
      [
          0.1,
          0.2,
          0.3,
          0.6,
          0.15,
          0.35,
          0.5,
          0.55,
          0.7,
          0.8,
          0.85,
          0.9,
          0.95,
          0.99,
      ]
  )
  # Youden: J at threshold .5 = 8/10 - 1/4 = .55; at .35 = .9 - .25 = .65;
  # at .7 = .6 - 0 = .6; at .15: 1 - .75 = .25. Best: .35, and the threshold
  # lies halfway to the next lower score, .3: .325.
  assert metrics.youden_threshold(labels, scores) == pytest.approx(0.325)
  # Sensitivity >= .9 needs 9 of 10 positives: the highest such is .35.
  t90 = metrics.sensitivity_threshold(labels, scores, 0.9)
  assert t90 == pytest.approx(0.325)
  op = metrics.operating_point(labels, scores, t90)
  assert op['sensitivity'] == pytest.approx(0.9)
  assert op['specificity'] == pytest.approx(0.75)
  # Wilson intervals of 9/10 and 3/4.
  np.testing.assert_allclose(
      op['ci95']['sensitivity'], metrics.wilson_interval(9, 10)
  )
  np.testing.assert_allclose(
      op['ci95']['specificity'], metrics.wilson_interval(3, 4)
  )
  assert metrics.choose_threshold('sens90', labels, scores) == t90
  with pytest.raises(ValueError, match='youden'):
    metrics.choose_threshold('f1', labels, scores)


def test_sensitivity_threshold_on_random_data_reaches_target():
  labels, _, scores = _random_predictions(11, n=300)
  t = metrics.sensitivity_threshold(labels, scores, 0.9)
  sens = ((scores >= t) & (labels == 1)).sum() / (labels == 1).sum()
  assert sens >= 0.9
  # t lies between two distinct scores; thresholding at the second score above
  # it would fall below 0.9.
  assert not np.isin(t, scores)
  higher = np.unique(scores[scores > t])
  lower = scores[scores < t]
  assert t == pytest.approx((lower.max() + higher[0]) / 2)
  if higher.size > 1:
    t2 = higher[1]
    assert ((scores >= t2) & (labels == 1)).sum() / (labels == 1).sum() < 0.9


def test_thresholds_below_every_score_and_between_ties():
  labels = np.array([0, 1, 1, 1])
  scores = np.array([0.4, 0.6, 1.0, 1.0])
  # Sensitivity >= .9 needs every positive: threshold below 0.6, above 0.4.
  assert metrics.sensitivity_threshold(labels, scores) == pytest.approx(0.5)
  # Youden: 0.6 separates perfectly -> halfway to 0.4.
  assert metrics.youden_threshold(labels, scores) == pytest.approx(0.5)
  # Every item positive: below the lowest score, by half the gap above it.
  assert metrics.midpoint_below(scores, 0.4) == pytest.approx(0.3)
  assert 0 < metrics.midpoint_below([0.2, 0.9], 0.2) < 0.2


def test_wilson_interval_closed_form():
  z = 1.959963984540054
  # k = 5 of n = 10: the textbook (0.2366, 0.7634).
  np.testing.assert_allclose(
      metrics.wilson_interval(5, 10), (0.236593, 0.763407), atol=1e-6
  )
  # 0 of n and n of n: [0, z^2 / (n + z^2)] and [n / (n + z^2), 1], not a
  # degenerate [0, 0] or [1, 1].
  lo, hi = metrics.wilson_interval(0, 10)
  assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z)) and hi > 0.25
  lo, hi = metrics.wilson_interval(10, 10)
  assert hi == 1.0 and lo == pytest.approx(10 / (10 + z * z)) and lo < 0.75
  # By hand for k = 3 of 4.
  center = (3 + z * z / 2) / (4 + z * z)
  half = z / (4 + z * z) * np.sqrt(3 * 1 / 4 + z * z / 4)
  np.testing.assert_allclose(
      metrics.wilson_interval(3, 4), (center - half, center + half)
  )
  assert np.isnan(metrics.wilson_interval(0, 0)).all()


def test_evaluator_uses_wilson_for_proportions_and_delong_for_auc():
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
  preds = np.array([0, 0, 0, 1, 1, 1, 1, 1])  # perfect: every proportion 1
  scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95])
  est = metrics.BinaryEvaluator()(labels, preds, scores)
  point, ci = est.point, est.ci95
  assert point['accuracy'] == point['sensitivity'] == 1.0
  assert ci['accuracy'] == metrics.wilson_interval(8, 8)
  assert ci['sensitivity'] == metrics.wilson_interval(5, 5)
  assert ci['specificity'] == metrics.wilson_interval(3, 3)
  for name in metrics.PROPORTIONS:
    assert ci[name][0] < 1.0 and ci[name][1] == 1.0, name
  assert point['roc_auc'] == 1.0
  assert ci['roc_auc'] == (auc.perfect_separation_lower_bound(5, 3), 1.0)
  assert est.methods['roc_auc'] == auc.EXACT_LOWER
  assert set(metrics.INTERVALS) == set(metrics.METRIC_NAMES)
  assert set(est.methods.values()) <= set(metrics.INTERVAL_METHODS)


def test_bootstrap_roc_band_brackets_the_curve():
  labels, _, scores = _random_predictions(4, n=200)
  grid = np.linspace(0, 1, 21)
  lo, hi = metrics.bootstrap_roc_band(
      labels, scores, fpr_grid=grid, num_resamples=300, seed=0
  )
  fpr, tpr, _ = sk.roc_curve(labels, scores)
  curve = np.interp(grid, fpr, tpr)
  assert lo.shape == hi.shape == (21,)
  assert (lo <= curve + 1e-9).all() and (curve <= hi + 1e-9).all()
  assert (hi - lo)[5:15].min() > 0.01


def test_image_level_operating_points_count_the_case_clusters():
  # Every case twice, two identical views: the image-level operating points'
  # intervals are those of the cases, not of twice as many items.
  def split(seed):
    labels, _, scores = _random_predictions(seed, n=60)
    ids = np.repeat([f'c{i:02d}' for i in range(60)], 2)
    return SplitPredictions(
        ids,
        np.tile([0, 1], 60),
        np.repeat(labels, 2),
        np.repeat(scores, 2)[None],
    )

  by_split = {'validation': split(1), 'test': split(2)}
  ops = results.compute_operating_points(by_split, ['run'], [(0,)], 'test')
  by_level = {(op.name, op.level): op for op in ops}
  for name in metrics.OPERATING_POINTS:
    image, case = by_level[(name, 'image')], by_level[(name, 'case')]
    assert image.threshold == case.threshold
    for k in ('sensitivity', 'specificity'):
      np.testing.assert_allclose(image.ci95[k], case.ci95[k], rtol=0.05)

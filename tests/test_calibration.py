"""Tests of ankle_jax.evaluation.calibration: temperature scaling, ECE,
adaptive ECE, Brier score, calibration slope and intercept and their
bootstrap intervals (the CSV column: tests/test_reporting.py)."""

import numpy as np
import pytest
from scipy import special
from sklearn import metrics as sk

from ankle_jax.evaluation import calibration


def _synthetic(n, seed, scale=1.0):
  """(p, labels): labels ~ Bernoulli(sigmoid(z)), p = sigmoid(scale * z)
  (scale 1: calibrated; > 1: over-confident)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(0.0, 2.0, n)
  labels = (rng.uniform(size=n) < special.expit(z)).astype(np.int64)
  return special.expit(scale * z), labels


@pytest.mark.parametrize('true_temperature', [0.5, 2.0])
def test_temperature_recovers_a_known_temperature(true_temperature):
  # p = sigmoid(z) of a model whose true risk is sigmoid(z / T_true).
  probs, labels = _synthetic(20000, 0, scale=true_temperature)
  fitted = calibration.fit_temperature(probs, labels)
  assert fitted == pytest.approx(true_temperature, rel=0.08)
  scaled = calibration.apply_temperature(probs, fitted)
  assert calibration.ece(scaled, labels) < calibration.ece(probs, labels) / 2


def test_temperature_needs_both_classes_and_one_is_identity():
  assert calibration.fit_temperature([0.2, 0.9], [1, 1]) is None
  p = np.array([0.0, 0.3, 0.5, 1.0])
  np.testing.assert_allclose(
      calibration.apply_temperature(p, 1.0), p, atol=1e-12
  )


def test_ece_by_hand():
  # Equal-width bins of 1/15: 0.02 and 0.04 share bin 0, 0.6 is bin 9,
  # 0.95 bin 14.
  p, y = [0.02, 0.04, 0.6, 0.95], [0, 1, 0, 1]
  expected = 2 / 4 * abs(0.5 - 0.03) + 1 / 4 * 0.6 + 1 / 4 * 0.05
  assert calibration.ece(p, y) == pytest.approx(expected, abs=1e-12)
  # Two equal-mass bins: {0.02, 0.04} and {0.6, 0.95}.
  adaptive = 2 / 4 * abs(0.5 - 0.03) + 2 / 4 * abs(0.5 - 0.775)
  assert calibration.ece_adaptive(p, y, num_bins=2) == pytest.approx(
      adaptive, abs=1e-12
  )
  # p = 1 falls in the last bin, p = 0 in the first.
  assert calibration.ece([0.0, 1.0], [0, 1]) == 0.0
  np.testing.assert_array_equal(
      calibration.equal_width_bins([0.0, 1 / 15, 0.999, 1.0]), [0, 1, 14, 14]
  )


def test_brier_equals_scikit_learn():
  probs, labels = _synthetic(500, 1, scale=2.0)
  assert calibration.brier(probs, labels) == pytest.approx(
      sk.brier_score_loss(labels, probs), rel=1e-12
  )


def test_slope_and_intercept():
  probs, labels = _synthetic(20000, 2)
  slope, intercept = calibration.slope_intercept(probs, labels)
  assert slope == pytest.approx(1.0, abs=0.06)
  assert intercept == pytest.approx(0.0, abs=0.06)
  # Over-confident (logits 3x too large): slope about 1/3, and the
  # temperature brings it back to 1.
  probs, labels = _synthetic(20000, 3, scale=3.0)
  slope, _ = calibration.slope_intercept(probs, labels)
  assert slope == pytest.approx(1 / 3, abs=0.03)
  t = calibration.fit_temperature(probs, labels)
  slope, _ = calibration.slope_intercept(
      calibration.apply_temperature(probs, t), labels
  )
  assert slope == pytest.approx(1.0, abs=0.05)


def test_weighted_metrics_equal_the_metrics_of_repeated_items():
  """Bootstrap weights = counts: each weighted metric equals the plain one
  on the items repeated that often (and unit weights: scikit-learn's fit)."""
  probs, labels = _synthetic(60, 5, scale=1.5)
  counts = np.random.default_rng(6).integers(0, 4, size=(3, 60))
  counts[:, :2] = 1  # both classes stay (labels[:2] differ below)
  labels[:2] = [0, 1]
  bins = calibration.equal_width_bins(probs)
  ece_b = calibration.weighted_binned_ece(counts, probs, labels, bins)
  brier_b = calibration.weighted_brier(counts, probs, labels)
  slope_b, intercept_b = calibration.weighted_slope_intercept(
      counts, probs, labels
  )
  for i, c in enumerate(counts):
    p, y = np.repeat(probs, c), np.repeat(labels, c)
    assert ece_b[i] == pytest.approx(calibration.ece(p, y), rel=1e-9)
    assert brier_b[i] == pytest.approx(calibration.brier(p, y), rel=1e-9)
    slope, intercept = calibration.slope_intercept(p, y)
    assert slope_b[i] == pytest.approx(slope, rel=1e-5)
    assert intercept_b[i] == pytest.approx(intercept, rel=1e-5, abs=1e-7)


def test_bootstrap_intervals_hold_the_point_estimates():
  probs, labels = _synthetic(300, 7, scale=2.0)
  clusters = np.arange(300) // 3
  ci = calibration.bootstrap_calibration_ci(
      probs, labels, clusters, num_resamples=300, seed=0
  )
  point = calibration.calibration_metrics(probs, labels)
  for name in calibration.METRICS:
    lo, hi = ci[name]
    assert lo < point[name] < hi, name

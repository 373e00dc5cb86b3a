"""Tests of ankle_jax.evaluation.calibration and .calibrators: the
calibrators (temperature, Platt, the AIC choice, when not to apply one),
the metrics (debiased ECE, ECE, adaptive ECE, Brier score, slope and
intercept), their intervals and where the calibrator is fitted (the CSV
column: tests/test_reporting.py; the documents: tests/test_html_report.py).
"""

import math

import numpy as np
import pytest
from scipy import special
from sklearn import metrics as sk

from ankle_jax.evaluation import calibration
from ankle_jax.evaluation import calibrators
from ankle_jax.evaluation.evaluation import Settings
from ankle_jax.evaluation.evaluation import compute
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting import document
from ankle_jax.reporting import format as format_lib


def _synthetic(n, seed, scale=1.0, shift=0.0):
  """(p, labels): labels ~ Bernoulli(sigmoid(z)), p = sigmoid(scale * z +
  shift) (scale 1, shift 0: calibrated; scale > 1: over-confident)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(0.0, 2.0, n)
  labels = (rng.uniform(size=n) < special.expit(z)).astype(np.int64)
  return special.expit(scale * z + shift), labels


def _no_calibrator(num_resamples):
  return calibration.FittedCalibrator(
      calibrators.Calibrator(calibrators.NONE),
      np.ones(num_resamples),
      np.zeros(num_resamples),
  )


# --------------------------------------------------------- calibrators
@pytest.mark.parametrize('true_temperature', [0.5, 2.0])
def test_temperature_recovers_a_known_temperature(true_temperature):
  # p = sigmoid(z) of a model whose true risk is sigmoid(z / T_true): no
  # shift, so the AIC keeps the one-parameter temperature.
  probs, labels = _synthetic(20000, 0, scale=true_temperature)
  cal = calibrators.fit_calibrator(probs, labels)
  assert (cal.kind, cal.applied) == (calibrators.TEMPERATURE, True)
  assert cal.temperature == pytest.approx(true_temperature, rel=0.08)
  assert cal.aic[calibrators.TEMPERATURE] < cal.aic[calibrators.PLATT]
  scaled = cal.apply(probs)
  assert calibration.ece(scaled, labels) < calibration.ece(probs, labels) / 2


def test_one_class_and_identity():
  cal = calibrators.fit_calibrator([0.2, 0.9], [1, 1])
  assert not cal.applied and cal.reason == calibrators.ONE_CLASS
  np.testing.assert_array_equal(cal.apply([0.2, 0.9]), [0.2, 0.9])
  p = np.array([0.0, 0.3, 0.5, 1.0])
  np.testing.assert_allclose(
      calibrators.apply_temperature(p, 1.0), p, atol=1e-12
  )


def test_separable_validation_is_not_calibrated_and_says_why():
  # The finding: a separable validation set drove T to its 0.01 floor,
  # turning 0.52 into 0.9997 and 0.40 into 2e-18, with no flag.
  probs = np.array([0.30, 0.40, 0.45, 0.52, 0.60, 0.70])
  labels = np.array([0, 0, 0, 1, 1, 1])
  cal = calibrators.fit_calibrator(probs, labels)
  assert not cal.applied and cal.reason == calibrators.SEPARABLE
  np.testing.assert_array_equal(cal.apply([0.52, 0.40]), [0.52, 0.40])
  assert cal.temperature is None
  assert format_lib.calibrator_label(cal.to_json()) == (
      f'not applied: {calibrators.SEPARABLE}'
  )


def test_a_temperature_at_its_bound_is_not_applied():
  # Almost separable logits squeezed near 0: the best slope is far beyond
  # 1 / 0.05, so T would sit at its lower bound.
  rng = np.random.default_rng(3)
  labels = np.arange(200) % 2
  z = 0.01 * (2 * labels - 1) + rng.normal(0, 0.002, 200)
  z[:2] = [0.02, -0.02]  # one normal above, one fracture below: not separable
  cal = calibrators.fit_calibrator(special.expit(z), labels)
  assert not cal.applied and 'hit its bounds' in cal.reason
  assert cal.slope > calibrators.SLOPE_BOUNDS[1]


def test_class_weighted_shift_needs_platt():
  """Class weights (1, 7.6) shift every logit by log(7.6): a temperature
  only rescales logits and cannot remove it; the AIC picks Platt, whose
  intercept does, on held-out cases."""
  shift = math.log(7.6)
  probs, labels = _synthetic(1600, 11, shift=shift)
  val, test = slice(0, 800), slice(800, None)
  raw_ece = calibration.ece(probs[test], labels[test])
  assert raw_ece > 0.15
  slope, _ = calibrators.logistic_fits(
      np.ones(800), calibrators.logit(probs[val]), labels[val], intercept=False
  )
  t_only = calibrators.apply_map(probs[test], slope[0], 0.0)
  assert calibration.ece(t_only, labels[test]) > 0.1
  cal = calibrators.fit_calibrator(probs[val], labels[val])
  assert (cal.kind, cal.applied) == (calibrators.PLATT, True)
  assert cal.intercept == pytest.approx(-shift, abs=0.35)
  calibrated = cal.apply(probs[test])
  assert calibration.ece(calibrated, labels[test]) < raw_ece / 3
  assert calibration.ece_debiased(calibrated, labels[test]) < 0.05


def test_bootstrap_refits_carry_the_calibrators_uncertainty():
  probs, labels = _synthetic(60, 4, scale=2.0)
  cal = calibrators.fit_calibrator(probs, labels)
  assert cal.applied
  w = np.random.default_rng(0).multinomial(60, np.full(60, 1 / 60), 200)
  slopes, intercepts = calibrators.bootstrap_maps(cal, probs, labels, w)
  assert slopes.std() > 0.05  # refitted, not the point fit repeated
  assert np.median(slopes) == pytest.approx(cal.slope, rel=0.25)
  if cal.kind == calibrators.TEMPERATURE:
    np.testing.assert_array_equal(intercepts, 0.0)
  # The calibrated interval with the refits is wider than with the point
  # map held fixed.
  clusters = np.arange(60)
  refit = calibration.FittedCalibrator(cal, slopes, intercepts)
  fixed = calibration.FittedCalibrator(
      cal, np.full(200, cal.slope), np.full(200, cal.intercept)
  )
  widths = []
  for fitted in (refit, fixed):
    block = calibration.calibration_block(
        probs, labels, clusters, fitted, num_resamples=200, seed=1
    )
    lo, hi = block['ci95']['brier_calibrated']
    widths.append(hi - lo)
  assert widths[0] > widths[1]


# ------------------------------------------------------------- metrics
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


def test_debiased_ece_by_hand():
  # 30 items: 2 equal-mass bins of 15 (adaptive_num_bins(30) = 2).
  p = np.r_[np.full(15, 0.2), np.full(15, 0.7)]
  y = np.r_[np.ones(6), np.zeros(9), np.ones(9), np.zeros(6)]
  assert calibration.adaptive_num_bins(30) == 2
  sq = 0.0
  for ybar, pbar in ((6 / 15, 0.2), (9 / 15, 0.7)):
    sq += 0.5 * ((ybar - pbar) ** 2 - ybar * (1 - ybar) / 14)
  assert calibration.ece_debiased(p, y) == pytest.approx(math.sqrt(sq))
  # A calibrated-looking bin gives a negative estimate: clipped at 0.
  p2 = np.full(30, 0.5)
  y2 = np.arange(30) % 2
  assert calibration.ece_debiased(p2, y2) == 0.0
  assert calibration.adaptive_num_bins(10) == 1
  assert calibration.adaptive_num_bins(5000) == calibration.NUM_BINS


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
  # calibrator brings it back to 1.
  probs, labels = _synthetic(20000, 3, scale=3.0)
  slope, _ = calibration.slope_intercept(probs, labels)
  assert slope == pytest.approx(1 / 3, abs=0.03)
  cal = calibrators.fit_calibrator(probs, labels)
  slope, _ = calibration.slope_intercept(cal.apply(probs), labels)
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
  # Unit weights: scikit-learn's unpenalized logistic regression.
  from sklearn import linear_model

  fit = linear_model.LogisticRegression(C=math.inf, tol=1e-10, max_iter=1000)
  fit.fit(calibrators.logit(probs).reshape(-1, 1), labels)
  slope, intercept = calibration.slope_intercept(probs, labels)
  assert slope == pytest.approx(fit.coef_[0, 0], rel=1e-5)
  assert intercept == pytest.approx(fit.intercept_[0], rel=1e-5, abs=1e-7)


# ----------------------------------------------------------- intervals
@pytest.mark.parametrize(
    'n, seed, scale', [(12, 0, 3.0), (80, 1, 1.0), (300, 2, 2.0)]
)
def test_every_interval_contains_its_point_estimate(n, seed, scale):
  """By construction (point -+ z SE), for every metric, before and after
  the calibrator and for the paired change; the percentile intervals of
  before could put the point outside (18% of runs in the finding)."""
  probs, labels = _synthetic(n, seed, scale=scale)
  labels[:2] = [0, 1]
  cal = calibrators.fit_calibrator(probs, labels)
  w = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), 100)
  fitted = calibration.FittedCalibrator(
      cal, *calibrators.bootstrap_maps(cal, probs, labels, w)
  )
  block = calibration.calibration_block(
      probs, labels, np.arange(n) // 2, fitted, num_resamples=100, seed=seed
  )
  names = [m + s for m in calibration.METRICS for s in ('', '_calibrated')]
  names += [m + '_change' for m in calibration.CHANGES]
  for name in names:
    lo, hi = block['ci95'][name]
    if block[name] is None or (name.endswith('_change') and not cal.applied):
      continue
    assert lo <= block[name] <= hi, (name, lo, block[name], hi)
  for name in calibration.CHANGES:
    assert block[name + '_change'] == pytest.approx(
        block[name + '_calibrated'] - block[name]
    )


def test_ece_interval_covers_a_calibrated_models_true_ece():
  """200 perfectly calibrated models on 80 cases each (true calibration
  error 0): the debiased ECE's interval covers 0 in >= 90% of them. The
  plain 15-bin ECE's percentile interval never did (mean 0.129)."""
  rng = np.random.default_rng(0)
  covered, plain = 0, []
  for i in range(200):
    z = rng.normal(0.0, 2.0, 80)
    labels = (rng.uniform(size=80) < special.expit(z)).astype(np.int64)
    block = calibration.calibration_block(
        special.expit(z),
        labels,
        np.arange(80),
        _no_calibrator(200),
        num_resamples=200,
        seed=i,
    )
    lo, hi = block['ci95']['ece_debiased']
    covered += lo <= 0.0 <= hi
    plain.append(block['ece'])
    assert block['too_few_cases']  # 80 < MIN_CASES
  assert covered >= 0.9 * 200
  assert np.mean(plain) > 0.08  # the sampling noise the plain ECE measures


def test_too_few_cases():
  assert calibration.too_few_cases(99, 40)
  assert calibration.too_few_cases(400, 19)
  assert not calibration.too_few_cases(100, 20)
  # Counted in cases: 3 views of each of 50 cases are 50 cases.
  labels = np.repeat(np.arange(50) % 2, 3)
  assert calibration.case_counts(labels, np.repeat(np.arange(50), 3)) == (
      50,
      25,
  )


# ----------------------------------------------- where it is fitted
def _split(prefix, n, seed, scale):
  """One run's single-view predictions of n cases, over-confident by
  `scale` (1: calibrated)."""
  probs, labels = _synthetic(n, seed, scale=scale)
  return SplitPredictions(
      case_ids_v=np.array([f'{prefix}{i:04d}' for i in range(n)]),
      view_index_v=np.zeros(n, np.int64),
      labels_v=labels,
      probs_rv=probs[None],
  )


def test_the_calibrator_is_fitted_on_validation_not_on_the_reported_split():
  """Validation over-confident (logits x 3), test calibrated: the fitted
  parameters differ by split, and the evaluation's are validation's. Fails
  if the calibrator is fitted on the reported split."""
  by_split = {
      'validation': _split('v', 300, 20, 3.0),
      'test': _split('t', 300, 21, 1.0),
  }
  ev = compute(by_split, ['run'], Settings(split='test', num_bootstrap=50))
  on_val = calibrators.fit_calibrator(
      by_split['validation'].probs_rv[0], by_split['validation'].labels_v
  )
  on_test = calibrators.fit_calibrator(
      by_split['test'].probs_rv[0], by_split['test'].labels_v
  )
  assert abs(on_val.slope - on_test.slope) > 0.3
  for level in ('image', 'case'):
    cal = ev.calibration.calibrators[(('run',), level)]
    assert cal.slope == pytest.approx(on_val.slope, rel=1e-9)
    block = ev.calibration.blocks[ResultKey(('run',), 'test', level, 'soft')]
    assert block['calibrator']['slope'] == pytest.approx(on_val.slope)
    assert not block['in_sample'] and not block['too_few_cases']
    # Test was calibrated already: a calibrator from validation makes it
    # under-confident, and the numbers say so (no fit on test hides it).
    assert block['slope_calibrated'] > 1.5


def test_separable_validation_in_an_evaluation_keeps_the_raw_probability():
  val = _split('v', 40, 22, 1.0)
  val.probs_rv = np.where(val.labels_v == 1, 0.6, 0.4)[None]
  by_split = {'validation': val, 'test': _split('t', 40, 23, 1.0)}
  ev = compute(by_split, ['run'], Settings(split='test', num_bootstrap=50))
  block = ev.calibration.blocks[ResultKey(('run',), 'test', 'case', 'soft')]
  assert block['calibrator']['reason'] == calibrators.SEPARABLE
  assert block['temperature'] is None
  for name in calibration.METRICS:
    assert block[name + '_calibrated'] == block[name]
  report = document.markdown_lines(document.sections(ev)['Calibration'])
  text = '\n'.join(
      '|'.join(format_lib.markdown_table(b)) if not isinstance(b, str) else b
      for b in report
  )
  assert calibrators.SEPARABLE in text
  assert calibration.TOO_FEW_CASES in text  # 40 cases


def test_same_cases_is_stated_for_split_validation():
  by_split = {
      'validation': _split('v', 60, 24, 2.0),
      'test': _split('t', 60, 25, 1.0),
  }
  on_test = compute(by_split, ['run'], Settings(split='test', num_bootstrap=20))
  assert format_lib.SAME_CASES not in str(document.sections(on_test))
  on_val = compute(
      by_split, ['run'], Settings(split='validation', num_bootstrap=20)
  )
  assert format_lib.SAME_CASES in str(document.sections(on_val))
  block = on_val.calibration.blocks[
      ResultKey(('run',), 'validation', 'case', 'soft')
  ]
  assert block['in_sample']
  alone = compute(
      {'test': by_split['test']},
      ['run'],
      Settings(split='test', num_bootstrap=20),
  )
  assert format_lib.SAME_CASES in str(document.sections(alone))


def test_reliability_bins_have_counts_and_wilson_intervals():
  from ankle_jax.evaluation import metrics as metrics_lib
  from ankle_jax.reporting import plots

  probs, labels = _synthetic(80, 9)
  k = calibration.adaptive_num_bins(80)
  assert k == 5  # fewer bins for small n: 80 / 15
  bins = calibration.equal_mass_bins(probs, k)
  mean_p, rate, lo, hi, count = plots._reliability_bins(probs, labels, bins, k)
  np.testing.assert_array_equal(count, [16] * 5)
  for b in range(k):
    in_bin = bins == b
    assert mean_p[b] == pytest.approx(probs[in_bin].mean())
    assert rate[b] == pytest.approx(labels[in_bin].mean())
    want = metrics_lib.wilson_interval(int(labels[in_bin].sum()), 16)
    assert (lo[b], hi[b]) == pytest.approx(want)

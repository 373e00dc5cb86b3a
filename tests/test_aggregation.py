"""Tests of ankle_jax.evaluation.aggregation: the stacked aggregator and the
honest protocol's choice of case aggregation (issue 27, item 2)."""

import dataclasses
import subprocess
import sys

import numpy as np
from sklearn import metrics as sk_metrics

from ankle_jax.evaluation import aggregation
from ankle_jax.evaluation import evaluation
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.results import ResultEntry
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.prediction import single

EVALUATOR = metrics_lib.BinaryEvaluator()


def _split(rng, num_cases, spread=0.05):
  """3 views per case, 1 or 2 runs. A fracture shows in ONE view of three
  (p ~ 0.9, the others ~ 0.2); a normal case's views all sit at ~ 0.45: the
  mean ranks normals above fractures, max and noisy-OR do not."""
  labels_c = np.arange(num_cases) % 2
  probs = []
  for label in labels_c:
    probs += [0.9, 0.2, 0.2] if label else [0.45, 0.45, 0.45]
  probs_v = np.clip(np.array(probs) + rng.normal(0, spread, len(probs)), 0, 1)
  return SplitPredictions(
      case_ids_v=np.repeat([f'c{i:03d}' for i in range(num_cases)], 3),
      view_index_v=np.tile([0, 1, 2], num_cases),
      labels_v=np.repeat(labels_c, 3),
      probs_rv=probs_v[None],
  )


def _with_labels(preds, labels_c):
  return dataclasses.replace(preds, labels_v=np.repeat(labels_c, 3))


def test_case_features_by_hand():
  cases = voting.index_cases(['a', 'a', 'a', 'b'], [1, 1, 1, 0])
  probs = np.array([0.5, 0.9, 0.1, 0.2])
  logit = lambda p: np.log(p / (1 - p))  # noqa: E731
  np.testing.assert_allclose(
      aggregation.case_features(probs, cases),
      [
          [(0 + logit(0.9) + logit(0.1)) / 3, logit(0.9), logit(0.1), 3],
          [logit(0.2), logit(0.2), logit(0.2), 1],
      ],
  )


def test_stacked_is_fitted_on_validation_only():
  rng = np.random.default_rng(0)
  val, test = _split(rng, 20, spread=0.1), _split(rng, 16, spread=0.1)
  val_d, test_d, model = aggregation.stacked_decisions(val, test, [0], seed=0)
  flipped = _with_labels(test, 1 - test.cases().labels_c)
  val_f, test_f, model_f = aggregation.stacked_decisions(
      val, flipped, [0], seed=0
  )
  # Changing the test labels changes neither the aggregator nor any score.
  assert model_f == model
  np.testing.assert_array_equal(test_f.scores, test_d.scores)
  np.testing.assert_array_equal(val_f.scores, val_d.scores)
  np.testing.assert_array_equal(test_f.labels, 1 - test_d.labels)
  # Changing validation's labels does change it (it is fitted there).
  labels_c = val.cases().labels_c.copy()
  labels_c[:4] = 1 - labels_c[:4]
  _, _, model_v = aggregation.stacked_decisions(
      _with_labels(val, labels_c), test, [0], seed=0
  )
  assert model_v.coef != model.coef
  # It learned the one-positive-view rule: test cases ranked perfectly.
  assert sk_metrics.roc_auc_score(test_d.labels, test_d.scores) == 1.0


def test_stacked_needs_two_cases_of_each_class_on_validation():
  rng = np.random.default_rng(0)
  val, test = _split(rng, 3), _split(rng, 6)  # validation: 1 fracture
  assert aggregation.stacked_decisions(val, test, [0], seed=0) is None
  entries, fitted = aggregation.evaluate_stacked(
      val, test, 'test', ['r'], [(0,)], EVALUATOR, seed=0
  )
  assert entries == [] and fitted == {}


def _entry(vote, members, auc, accuracy=0.5):
  metrics = {k: 0.5 for k in metrics_lib.METRIC_NAMES}
  metrics.update(roc_auc=auc, accuracy=accuracy)
  return ResultEntry(members, 'case', vote, 'validation', metrics, {}, {})


def test_choose_aggregation_best_validation_auc_ties_to_simpler():
  entries = [
      _entry('hard', ('a',), 0.99),  # no candidate: it scores with soft
      _entry('soft', ('a',), 0.80),
      _entry('max', ('a',), 0.70),
      _entry('max', ('a', 'b', 'c'), 0.90, accuracy=0.9),  # max's ensemble
      _entry('noisy_or', ('a',), 0.90),  # ties with max: max is simpler
      _entry('stacked', ('a',), 0.85),
  ]
  results = {e.key: e for e in entries}
  choice, selections = aggregation.choose_aggregation(
      results, 'test', 'accuracy', {}
  )
  assert (choice.voting, choice.members) == ('max', ('a', 'b', 'c'))
  assert choice.validation_values == {
      'soft': 0.80,
      'max': 0.90,
      'noisy_or': 0.90,
      'stacked': 0.85,
  }
  assert choice.reported_key() == ResultKey(
      ('a', 'b', 'c'), 'test', 'case', 'max'
  )
  assert set(selections) == {
      ('honest', 'case', v) for v in ('soft', 'max', 'noisy_or', 'stacked')
  }
  del results[ResultKey(('a',), 'validation', 'case', 'noisy_or')]
  results[ResultKey(('a',), 'validation', 'case', 'stacked')] = _entry(
      'stacked', ('a',), 0.95
  )
  choice, _ = aggregation.choose_aggregation(results, 'test', 'accuracy', {})
  assert (
      choice.voting == 'stacked' and 'noisy_or' not in choice.validation_values
  )


def _compute(preds, split='test'):
  return evaluation.compute(
      preds, ['r'], evaluation.Settings(split=split, num_bootstrap=20)
  )


def test_honest_protocol_chooses_the_aggregation_on_validation():
  rng = np.random.default_rng(1)
  ev = _compute({'validation': _split(rng, 24), 'test': _split(rng, 24)})
  val = {
      v: ev.results[ResultKey(('r',), 'validation', 'case', v)].metrics[
          'roc_auc'
      ]
      for v in aggregation.AGGREGATIONS
  }
  # The mean ranks the normals (0.45) above the fractures (0.43).
  assert val['soft'] < 0.5 and val['max'] == val['noisy_or'] == 1.0
  assert ev.aggregation.voting == 'max'  # ties with noisy_or: the simpler
  assert ev.aggregation.validation_values == val
  summary = ev.summary_json()['case_aggregation']
  test_max = ev.results[ResultKey(('r',), 'test', 'case', 'max')]
  assert summary['voting'] == 'max' and summary['reported_on'] == 'test'
  assert summary['reported_metrics'] == test_max.metrics
  # Its thresholds are chosen on validation's max scores, not fixed at 0.5.
  youden = {op['name']: op for op in summary['operating_points']}['youden']
  assert youden['voting'] == 'max' and youden['chosen_on'] == 'validation'
  dv = results_lib.decide_split(
      ev.predictions['validation'], [0], 'case', 'max'
  )
  threshold = metrics_lib.choose_threshold('youden', dv.labels, dv.scores)
  assert youden['threshold'] == threshold
  dt = ev.decisions(('r',), 'case', 'max')
  called = dt.scores >= threshold
  assert youden['sensitivity'] == called[dt.labels == 1].mean()
  assert youden['specificity'] == (~called[dt.labels == 0]).mean()
  assert ev.summary_json()['protocols']['honest']['case_max']['members'] == [
      'r'
  ]
  # The paper protocol does not choose: the same hard and soft selections.
  assert {k for k in ev.protocols if k[0] == 'paper'} == {
      ('paper', level, vote)
      for level in voting.LEVELS
      for vote in voting.VOTINGS
  }
  # The stacked entries: validation (out of fold) and test, not pooled.
  assert {k.split for k in ev.results if k.voting == 'stacked'} == {
      'validation',
      'test',
  }


def test_paper_protocol_still_hard_votes_without_validation():
  rng = np.random.default_rng(2)
  test = _split(rng, 12)
  ev = _compute({'test': test})
  assert ev.aggregation is None
  assert ev.summary_json()['case_aggregation'] is None
  assert set(ev.protocols) == {
      ('paper', level, vote)
      for level in voting.LEVELS
      for vote in voting.VOTINGS
  }
  hard = ev.results[ev.protocols[('paper', 'case', 'hard')].reported_key()]
  # Every case has 1 of 3 views >= 0.5 (fractures) or none: majority normal.
  assert hard.metrics['sensitivity'] == 0.0
  assert hard.metrics['specificity'] == 1.0
  # max and noisy_or are still listed (no choice made among them).
  assert ResultKey(('r',), 'test', 'case', 'noisy_or') in ev.results


def test_predict_vote_lines_by_hand():
  probs_rv = np.array([[0.9, 0.1, 0.1], [0.3, 0.1, 0.1]])
  files = ['a.dcm', 'b.dcm', 'c.dcm']
  plain = single.format_predictions(['r0', 'r1'], files, probs_rv)
  assert 'max vote' not in plain  # default: as before
  lines = single.format_predictions(
      ['r0', 'r1'], files, probs_rv, vote='max'
  ).splitlines()
  assert lines[5] == '  case, max vote: p(fracture)=0.9000 fracture'
  assert lines[-1] == '  case, max vote: p(fracture)=0.6000 fracture'
  text = single.format_predictions(['r0'], files, probs_rv[:1], vote='noisy_or')
  assert text.splitlines()[-1] == (
      '  case, noisy_or vote: p(fracture)=0.9190 fracture'
  )
  text = single.format_predictions(['r0'], files, probs_rv[:1], vote='hard')
  assert text.splitlines()[-1] == '  case, hard vote: normal'


def test_predict_vote_flag():
  """--vote takes the case votes and nothing else (one subprocess: the flags
  are global)."""
  code = (
      'from absl import flags; from ankle_jax import predict;'
      'predict.define_flags(); flags.FLAGS(["predict", "--vote=noisy_or"]);'
      'print("vote", flags.FLAGS.vote)\n'
      'try:\n  flags.FLAGS(["predict", "--vote=mean"])\n'
      'except flags.IllegalFlagValueError as e:\n  print("refused", e)'
  )
  proc = subprocess.run(
      [sys.executable, '-c', code], capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'vote noisy_or' in proc.stdout
  assert (
      'refused flag --vote=mean: value should be one of <hard|soft|max|noisy_or>'
      in proc.stdout
  )

"""ankle_jax.evaluation.subgroups and the feature columns of predictions.csv
(fast; the end-to-end checks against predictions.csv are in
tests/test_evaluate.py)."""

import csv
import os

import numpy as np

from ankle_jax import inference
from ankle_jax.evaluation import metrics
from ankle_jax.evaluation import predictions as predictions_lib
from ankle_jax.evaluation import subgroups
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Settings
from ankle_jax.evaluation.evaluation import compute
from ankle_jax.reporting import document
from ankle_jax.reporting import files


def _preds(num_cases=30, seed=0, features=True):
  """1-3 views per case, 2 runs, view_position and hardware per view."""
  rng = np.random.default_rng(seed)
  case_ids, view_index = [], []
  for c in range(num_cases):
    for v in range(1 + c % 3):
      case_ids.append(f'c{c:03d}')
      view_index.append(v)
  labels = np.array([int(c[1:]) % 2 for c in case_ids])
  probs = np.clip(rng.uniform(size=(2, len(labels))) + 0.3 * labels, 0, 1)
  preds = predictions_lib.SplitPredictions(
      np.array(case_ids), np.array(view_index), labels, probs
  )
  if features:
    preds.features_v = {
        'view_position': np.array(['AP', 'LL', ''])[np.array(view_index)],
        'num_views': np.array([str(1 + int(c[1:]) % 3) for c in case_ids]),
        'leg': np.array(['1'] * len(labels)),
        'mixed': np.where(np.arange(len(labels)) < 3, '1', '0'),
        'hardware': np.where(np.arange(len(labels)) % 7 == 0, '1', '0'),
    }
  return preds


def test_values_are_human_readable():
  np.testing.assert_array_equal(
      subgroups.readable('hardware', np.array(['1', '0', '-1'])),
      ['yes', 'no', 'unknown'],
  )
  np.testing.assert_array_equal(
      subgroups.readable('view_position', np.array(['AP', '', '1'])),
      ['AP', 'unknown', '1'],
  )
  parts = subgroups.body_parts(
      {
          'leg': np.array(['1', '1', '-1', '0']),
          'hip': np.array(['0', '1', '0', '0']),
          'mixed': np.array(['0', '1', '0', '0']),
      }
  )
  np.testing.assert_array_equal(
      parts, ['leg', 'leg+hip+mixed', 'unknown', 'none']
  )
  assert subgroups.body_parts({'hardware': np.array(['1'])}) is None


def test_case_values_only_where_the_views_agree():
  cases = voting.index_cases(np.array(['a', 'a', 'b', 'b', 'c']), np.zeros(5))
  values = subgroups.case_values(np.array(['x', 'x', 'x', 'y', 'z']), cases)
  np.testing.assert_array_equal(values, ['x', 'x', 'varies', 'varies', 'z'])


def test_partitions_of_the_fields():
  parts = subgroups.partitions(_preds())
  assert [(p.level, p.field) for p in parts] == [
      ('image', 'view_position'),
      ('image', 'body_part'),
      ('image', 'hardware'),
      ('case', 'num_views'),
      ('case', 'body_part'),
      ('case', 'hardware'),
  ]  # no case-level view position: it varies within every multi-view case
  by_field = {(p.level, p.field): p for p in parts}
  assert by_field[('image', 'view_position')].values() == [
      'AP',
      'LL',
      'unknown',
  ]
  assert by_field[('case', 'num_views')].values() == ['1', '2', '3']
  assert by_field[('image', 'body_part')].values() == ['leg', 'leg+mixed']
  # No features (older predictions.csv): only the views per case.
  bare = subgroups.partitions(_preds(features=False))
  assert [(p.level, p.field) for p in bare] == [('case', 'num_views')]


def _evaluation(preds):
  return compute(
      {'test': preds},
      ['run_a', 'run_b'],
      Settings(split='test', num_bootstrap=30),
  )


def test_small_subgroups_are_kept_flagged_and_counted():
  ev = _evaluation(_preds())
  tiny = [
      s
      for s in ev.subgroups
      if (s.entry.level, s.subgroup.field, s.subgroup.value)
      == ('image', 'body_part', 'leg+mixed')
  ]
  # 3 views (c000 view 0, c001 views 0-1): 2 fractures, 1 normal.
  assert len(tiny) == 2 * 2  # 2 single runs x 2 votings (no honest protocol)
  assert {(s.subgroup.positives, s.subgroup.negatives) for s in tiny} == {
      (2, 1)
  }
  assert all(s.subgroup.small for s in tiny)
  assert tiny[0].to_json()['subgroup'] == {
      'field': 'body_part',
      'value': 'leg+mixed',
      'positives': 2,
      'negatives': 1,
      'small': True,
  }
  big = [s for s in ev.subgroups if s.subgroup.value == 'AP']
  assert big and not any(s.subgroup.small for s in big)
  entries = ev.results_json()
  main = [e for e in entries if e['subgroup'] is None]
  assert len(main) == len(ev.results)
  assert len(entries) == len(main) + len(ev.subgroups)
  lines = document.markdown_lines(document.sections(ev)['Subgroups'])
  assert (
      '| run_a | single view | body_part = leg+mixed † | 2 / 1 |'
      in '\n'.join(lines)
  )
  assert any(line.startswith('† Fewer than 10') for line in lines)


def test_feature_columns_round_trip(tmp_path):
  preds = _preds()
  path = str(tmp_path / 'predictions.csv')
  files.write_predictions(str(tmp_path), _evaluation(preds))
  with open(path, newline='') as f:
    header = next(csv.reader(f))
  assert header == [
      *predictions_lib.PREDICTION_COLUMNS,
      'view_position',
      'num_views',
      'leg',
      'mixed',
      'hardware',
      predictions_lib.CALIBRATED_COLUMN,  # a probability, no feature
  ]
  _, by_split = predictions_lib.read_predictions(str(tmp_path))
  assert set(by_split['test'].features_v) == set(preds.features_v)
  for name, values in preds.features_v.items():
    np.testing.assert_array_equal(by_split['test'].features_v[name], values)
  # Without features: the six columns and the calibrated one, read back
  # without features.
  os.remove(path)
  files.write_predictions(str(tmp_path), _evaluation(_preds(features=False)))
  with open(path, newline='') as f:
    assert next(csv.reader(f)) == [
        *predictions_lib.PREDICTION_COLUMNS,
        predictions_lib.CALIBRATED_COLUMN,
    ]
  _, by_split = predictions_lib.read_predictions(str(tmp_path))
  assert by_split['test'].features_v is None
  assert [p.field for p in subgroups.partitions(by_split['test'])] == [
      'num_views'
  ]


def test_case_batches_carry_the_features_of_each_view():
  """Multi-view runs regroup views into cases; each view keeps its
  features, and predict_case_group puts them back per view."""
  view_batches = [
      {
          'image': np.zeros((3, 4, 4, 1), np.float32),
          'label': np.array([1, 1, 0]),
          'case_id': np.array(['a', 'a', 'b'], object),
          'view_index': np.array([0, 1, 0]),
          'mask': np.array([True, True, True]),
          'view_position': np.array(['AP', 'LL', 'AP'], object),
      }
  ]
  (batch,) = inference.case_batches(view_batches, cases_per_batch=2)
  assert batch['features']['view_position'].tolist() == [
      ['AP', 'LL'],
      ['AP', ''],
  ]

  def forward(variables_r, images_bvhw1, view_mask_bv):
    b, v = view_mask_bv.shape
    return np.zeros((1, b)) - 1.0, np.zeros((1, b, v)) - 1.0

  preds = inference.predict_case_group(forward, None, [batch])
  assert preds.features_v['view_position'].tolist() == ['AP', 'LL', 'AP']


def test_image_level_subgroup_intervals_count_the_case_clusters():
  # body_part 'leg' (all views but the first 3): the image-level entry's
  # intervals are the clustered ones of its views, case level plain Wilson.
  preds = _preds()
  ev = _evaluation(preds)
  leg = subgroups.body_parts(preds.features_v) == 'leg'
  sub = subgroups.select_views(preds, leg)
  cases = sub.cases()
  checked = set()
  for s in ev.subgroups:
    if s.subgroup.value != 'leg' or s.entry.members != ('run_a',):
      continue
    d = voting.decide(
        sub.probs_rv, sub.labels_v, cases, [0], s.entry.level, s.entry.voting
    )
    est = metrics.BinaryEvaluator()(d.labels, d.preds, d.scores, d.clusters)
    for name in metrics.METRIC_NAMES:
      np.testing.assert_allclose(s.entry.ci95[name], est.ci95[name])
    expected = {'image': metrics.WILSON_DEFF, 'case': metrics.WILSON}[
        s.entry.level
    ]
    assert s.entry.ci95_method['accuracy'] == expected
    assert s.entry.ci95_method['roc_auc'].startswith('delong_logit')
    checked.add(s.entry.level)
  assert checked == {'image', 'case'}

"""Cross-validation folds (ankle_jax.data.folds): a partition of the train and
validation cases by split unit, stratified by label, and the sources of a
fold run."""

import collections
import json
import random

import numpy as np
import pytest

from ankle_jax import console
from ankle_jax import evaluation_inputs
from ankle_jax.data import folds
from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.training import config_checks
from configs import default
from tests import run_helpers


def _cases(num_normal: int, num_fracture: int) -> dict[str, int]:
  labels = {f'n{i:03d}': 0 for i in range(num_normal)}
  labels.update({f'f{i:03d}': 1 for i in range(num_fracture)})
  return labels


# Near-duplicate groups and patients of several sizes, some mixing labels.
GROUPS = (
    ('n000', 'n001'),
    ('n002', 'n003', 'n004', 'n005', 'n006'),
    ('f000', 'f001', 'f002'),
    ('f003', 'n007'),
    ('n008', 'n009', 'n010'),
    ('n010', 'n011'),  # overlaps the group above: one unit of four.
    ('t000', 'n012'),  # t000 is a test case: not partitioned.
)


@pytest.mark.parametrize('num_folds', [2, 3, 5])
def test_folds_partition_units_whole_and_stratified(num_folds):
  labels = _cases(120, 23)
  fold_of = folds.assign_folds(folds.fold_units(labels, GROUPS), num_folds)
  assert set(fold_of) == set(labels)  # every case in exactly one fold.
  assert set(fold_of.values()) == set(range(num_folds))
  for group in GROUPS:
    assert len({fold_of[c] for c in group if c in labels}) == 1, group
  assert fold_of['n008'] == fold_of['n011']
  for label in (0, 1):
    counts = collections.Counter(
        fold_of[c] for c, lab in labels.items() if lab == label
    )
    # A unit counts under its highest label (f003 + n007 both as fracture).
    spread = max(counts.values()) - min(counts.values())
    assert spread <= 2, (label, counts)
  units = folds.fold_units(labels, GROUPS)
  for label in (0, 1):
    per_fold = collections.Counter()
    for unit in units:
      if unit.label == label:
        per_fold[fold_of[unit.case_ids[0]]] += len(unit.case_ids)
    assert max(per_fold.values()) - min(per_fold.values()) <= 1, per_fold


def test_folds_do_not_depend_on_case_order():
  labels = _cases(60, 12)
  shuffled = list(labels.items())
  random.Random(3).shuffle(shuffled)
  a = folds.assign_folds(folds.fold_units(labels, GROUPS), 4)
  b = folds.assign_folds(folds.fold_units(dict(shuffled), GROUPS[::-1]), 4)
  assert a == b


def test_a_unit_takes_its_highest_label():
  units = folds.fold_units({'a': 0, 'b': 1, 'c': 0}, [('a', 'b')])
  by_cases = {u.case_ids: u.label for u in units}
  assert by_cases == {('a', 'b'): 1, ('c',): 0}


def test_too_few_folds_is_an_error_naming_the_field():
  with pytest.raises(folds.FoldError, match='data.cv_folds=1'):
    folds.assign_folds(folds.fold_units(_cases(4, 4), ()), 1)


def test_fold_source_reads_the_picked_records_in_order():
  first = [{'case_id': f'a{i}', 'label': 0, 'view_index': 0} for i in range(4)]
  second = [{'case_id': f'b{i}', 'label': 1, 'view_index': 0} for i in range(3)]
  source = folds.FoldSource(
      [(first, np.array([3, 1])), (second, np.array([0, 2]))]
  )
  assert len(source) == 4
  assert [source[i]['case_id'] for i in range(4)] == ['a3', 'a1', 'b0', 'b2']
  assert source[-1]['case_id'] == 'b2'
  assert [r['case_id'] for r in pipeline.metadata(source)] == [
      'a3',
      'a1',
      'b0',
      'b2',
  ]


def _cv_config(cv_folds, cv_fold, **data):
  config = default.get_config()
  config.data.cv_folds = cv_folds
  config.data.cv_fold = cv_fold
  config.data.update(data)
  return config


@pytest.mark.parametrize(
    'cv_folds, cv_fold, data, message',
    [
        (1, 0, {}, 'data.cv_folds=1'),
        (3, 3, {}, 'data.cv_fold=3 with data.cv_folds=3'),
        (3, -2, {}, 'data.cv_fold=-2'),
        (3, 0, {'eval_split': 'test'}, "'test'"),
    ],
)
def test_fold_config_errors_name_the_field(cv_folds, cv_fold, data, message):
  with pytest.raises(console.UserError, match=message):
    config_checks.validate_config(_cv_config(cv_folds, cv_fold, **data))


def test_cv_off_by_default():
  config = default.get_config()
  assert folds.cv_fold_of(config.data) is None
  config_checks.validate_config(config)
  assert folds.cv_fold_of(_cv_config(4, 2).data) == (4, 2)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return run_helpers.tiny_dataset(tmp_path_factory)


def _case_labels(source):
  return {r['case_id']: r['label'] for r in pipeline.metadata(source)}


def test_fold_runs_split_train_and_validation_never_test(tiny):
  data_dir, name = str(tiny.data_dir), 'dicom_cases'
  pooled = {}
  for split in folds.FOLD_SPLITS:
    pooled.update(_case_labels(pipeline.load_split(data_dir, split, name)))
  test_cases = set(_case_labels(pipeline.load_split(data_dir, 'test', name)))
  fold_of = folds.case_folds(data_dir, name, 3)
  assert fold_of.keys() == pooled.keys()
  seen = set()
  for k in range(3):
    train, validation = folds.fold_sources(data_dir, name, 3, k)
    train_cases, val_cases = _case_labels(train), _case_labels(validation)
    assert not set(train_cases) & set(val_cases)
    assert set(train_cases) | set(val_cases) == set(pooled)
    assert not (set(train_cases) | set(val_cases)) & test_cases
    assert {fold_of[c] for c in val_cases} == {k}
    assert sorted(set(val_cases.values())) == [0, 1]
    assert len(train) + len(validation) == sum(
        len(pipeline.load_split(data_dir, s, name)) for s in folds.FOLD_SPLITS
    )
    seen |= set(val_cases)
  assert seen == set(pooled)


def test_a_fold_without_a_fracture_case_is_an_error(tiny):
  # 6 fracture cases in train+validation: 7 folds leave one without.
  with pytest.raises(folds.FoldError, match='data.cv_folds=7: fold .* no'):
    folds.fold_sources(str(tiny.data_dir), 'dicom_cases', 7, 0)
  with pytest.raises(folds.FoldError, match='data.cv_fold=3'):
    folds.fold_sources(str(tiny.data_dir), 'dicom_cases', 3, 3)


def test_stored_groups_prefer_split_units(tmp_path, monkeypatch):
  monkeypatch.setattr(
      prepare, 'built_versions', lambda d, c: [tmp_path / 'v'], raising=True
  )
  (tmp_path / 'v').mkdir()
  near = {'groups': [{'cases': ['a', 'b']}]}
  report = tmp_path / 'v' / 'build_report.json'
  report.write_text(json.dumps({'near_duplicates': near, 'layout': 'x'}))
  assert folds.stored_groups(tmp_path, 'x') == [['a', 'b']]
  report.write_text(
      json.dumps({'split_units': [['a', 'b', 'c']], 'near_duplicates': near})
  )
  assert folds.stored_groups(tmp_path, 'x') == [['a', 'b', 'c']]
  report.write_text(json.dumps({'layout': 'mura', 'near_duplicates': near}))
  with pytest.raises(folds.FoldError, match='rebuild'):
    folds.stored_groups(tmp_path, 'x')


def test_builds_record_their_split_units(tiny):
  versions = prepare.built_versions(tiny.data_dir, 'dicom_cases')
  report = json.loads((versions[-1] / 'build_report.json').read_text())
  assert isinstance(report['split_units'], list)
  assert all(len(unit) > 1 for unit in report['split_units'])


def test_evaluate_reads_a_fold_runs_fold_as_its_validation(tiny):
  location = (tiny.data_dir, 'dicom_cases')
  fold_of = folds.case_folds(str(tiny.data_dir), 'dicom_cases', 3)
  load, _ = evaluation_inputs.split_loader('test', location, location, (3, 1))
  validation = _case_labels(load('validation'))
  assert {fold_of[c] for c in validation} == {1}
  plain_test = pipeline.load_split(str(tiny.data_dir), 'test', 'dicom_cases')
  assert _case_labels(load('test')) == _case_labels(plain_test)
  load_val, _ = evaluation_inputs.split_loader(
      'validation', location, location, (3, 1)
  )
  assert _case_labels(load_val('validation')) == validation

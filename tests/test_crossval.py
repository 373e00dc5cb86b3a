"""Tests of K-fold cross-validation: ankle_jax.crossval (the fold loop and
the out-of-fold evaluation), ankle_jax.crossval_runs, evaluation.oof, and
the fold ensemble in ankle_jax.evaluate.

The fold runs are fake (test_evaluate's TinyNet with real orbax
checkpoints) and output their fold: fold k's model gives every view the
fracture probability PROBS[k], whatever the image. Each fold's validation
split lives in its own stand-in dataset (pipeline / prepare patched), so
the real path by which `evaluate` reads a run's 'validation' split is used.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import special
from test_evaluate import fake_split
from test_evaluate import tiny_config
from test_evaluate import tiny_create_model

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import crossval
from ankle_jax import crossval_runs
from ankle_jax import evaluate
from ankle_jax import inference
from ankle_jax import models
from ankle_jax import writers
from ankle_jax.evaluation import auc as auc_lib
from ankle_jax.evaluation import calibrators
from ankle_jax.evaluation import metrics
from ankle_jax.evaluation import oof as oof_lib
from ankle_jax.evaluation.predictions import SplitPredictions

NUM_FOLDS = 3
PROBS = (0.2, 0.5, 0.8)  # fold k's model: p(fracture) = PROBS[k] everywhere.
NUM_CASES = 15
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fold_config(num_folds=NUM_FOLDS, fold=-1, data_dir=''):
  config = tiny_config()
  config.data.data_dir = data_dir
  config.data.cv_folds = num_folds
  config.data.cv_fold = fold
  config.num_train_steps = 4
  return config


def _finished(workdir, final_step=4, num_train_steps=4, stopped_early=False):
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(
        {
            'final_step': final_step,
            'num_train_steps': num_train_steps,
            'stopped_early': stopped_early,
        },
        f,
    )


def make_fold_run(
    workdir, fold, data_dir, num_folds=NUM_FOLDS, latest_prob=None
):
  """A finished fold run whose model outputs PROBS[fold] for every view (its
  best checkpoint; with latest_prob, a latest checkpoint outputs that)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  config = fold_config(num_folds, fold, data_dir)
  os.makedirs(workdir, exist_ok=True)
  writers.write_config(workdir, config)
  variables = tiny_create_model(config).init(
      jax.random.key(fold), jnp.zeros((1, 32, 32, 1))
  )
  variables = jax.tree.map(np.array, variables)
  dense = variables['params']['ClassifierHead_0']['dense']
  dense['kernel'][...] = 0.0
  dense['bias'][...] = [0.0, special.logit(PROBS[fold % len(PROBS)])]
  ckpt = checkpoint.RunCheckpoints(workdir)
  ckpt.save_best(4, variables, {'val_accuracy': 0.5})
  if latest_prob is not None:
    dense['bias'][...] = [0.0, special.logit(latest_prob)]
    ckpt.save_latest(4, {'step': np.int32(4), **variables}, [None], {})
  ckpt.close()
  _finished(workdir)
  return workdir


def fold_of(case_index):
  return case_index % NUM_FOLDS


def fold_datasets(root):
  """{data_dir: {split: fake_split}}: fold k's validation holds the cases
  c with c % K == k of one 15-case split; every fold shares one test."""
  case_ids, view_index, labels, images = fake_split('validation', NUM_CASES, 1)
  case_index = np.array([int(c[3:6]) for c in case_ids])
  test = fake_split('test', 9, 0)
  out = {}
  for k in range(NUM_FOLDS):
    keep = np.array([fold_of(c) == k for c in case_index])
    out[os.path.join(root, f'data_{k}')] = {
        'validation': (
            case_ids[keep],
            view_index[keep],
            labels[keep],
            images[keep],
        ),
        'test': test,
    }
  return out


def patch_datasets(monkeypatch, datasets):
  """pipeline/prepare stand-ins over {data_dir: {split: fake_split}}."""
  from test_evaluate import _patch_datasets  # noqa: PLC0415

  from ankle_jax.data import folds  # noqa: PLC0415

  _patch_datasets(monkeypatch, datasets)
  monkeypatch.setattr(models, 'from_run_config', tiny_create_model)
  # A fold run's validation: its own stand-in dataset's validation split.
  monkeypatch.setattr(
      folds,
      'fold_sources',
      lambda data_dir, config, num_folds, fold: (
          None,
          datasets[str(data_dir)]['validation'],
      ),
  )


@pytest.fixture
def cv_workdir(tmp_path, monkeypatch):
  """A cross-validation workdir of 3 finished fake fold runs."""
  datasets = fold_datasets(str(tmp_path))
  patch_datasets(monkeypatch, datasets)
  workdir = str(tmp_path / 'cv')
  for k in range(NUM_FOLDS):
    make_fold_run(
        crossval_runs.fold_dir(workdir, k), k, str(tmp_path / f'data_{k}')
    )
  return workdir


def _never_train(config, workdir, started):
  raise AssertionError(f'{workdir} was retrained')


def _text(path):
  with open(path) as f:
    return f.read()


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_oof_predictions_come_from_the_fold_that_held_each_case_out(
    cv_workdir,
):
  configs = crossval.fold_configs(fold_config(), cv_workdir, NUM_FOLDS)
  status = crossval.run_crossval(
      configs, cv_workdir, _never_train, num_bootstrap=50
  )
  assert status == 0
  cv_dir = crossval_runs.cv_dir(cv_workdir)
  rows = _rows(os.path.join(cv_dir, 'oof_predictions.csv'))
  ids, view_index, _, _ = fake_split('validation', NUM_CASES, 1)
  assert sorted((r['case_id'], int(r['view_index'])) for r in rows) == sorted(
      zip(ids.tolist(), view_index.tolist())
  )
  for r in rows:
    fold = fold_of(int(r['case_id'][3:6]))
    assert r['run'] == f'fold_{fold}', r
    assert float(r['probability']) == pytest.approx(PROBS[fold], abs=1e-6)
    assert r['split'] == 'validation'
  results = json.loads(_text(os.path.join(cv_dir, 'results.json')))
  assert results['num_folds'] == NUM_FOLDS
  assert [f['counts']['cases'] for f in results['per_fold']] == [5, 5, 5]
  assert results['counts']['cases'] == NUM_CASES
  # One probability per fold: no fold ranks its cases, AUC 0.5 in each.
  assert results['per_fold_spread']['roc_auc']['mean'] == pytest.approx(0.5)
  labels = np.array([c % 2 for c in range(NUM_CASES)])
  scores = np.array([PROBS[fold_of(c)] for c in range(NUM_CASES)])
  auc = metrics.classification_metrics(labels, scores >= 0.5, scores)
  assert results['oof_roc_auc'] == pytest.approx(auc['roc_auc'])
  assert results['calibration']['fitted_on'] == 'oof'
  report = _text(os.path.join(cv_dir, 'report.md'))
  for heading in ('Out-of-fold metrics', 'Per-fold metrics', 'Calibration'):
    assert f'## {heading}' in report
  assert '<table>' in _text(os.path.join(cv_dir, 'report.html'))


def test_the_fold_loop_skips_finished_folds_and_resumes_unfinished(
    tmp_path, capsys
):
  workdir = str(tmp_path / 'cv')
  configs = [crossval_runs.fold_config(fold_config(), 4, k) for k in range(4)]
  for k, stopped_early in ((0, False), (3, True)):  # finished
    os.makedirs(crossval_runs.fold_dir(workdir, k))
    writers.write_config(crossval_runs.fold_dir(workdir, k), configs[k])
    _finished(
        crossval_runs.fold_dir(workdir, k),
        final_step=2 if stopped_early else 4,
        stopped_early=stopped_early,
    )
  unfinished = crossval_runs.fold_dir(workdir, 1)
  os.makedirs(os.path.join(unfinished, 'checkpoints'))
  writers.write_config(unfinished, configs[1])
  _finished(unfinished, final_step=2)  # an older, shorter launch's summary
  calls = []

  def train_fn(config, run_dir, started):
    calls.append((config.data.cv_folds, config.data.cv_fold, run_dir))
    return 0

  crossval_runs.check_workdir(workdir, 4)
  assert crossval.train_folds(configs, workdir, train_fn) == 0
  assert calls == [
      (4, 1, unfinished),
      (4, 2, crossval_runs.fold_dir(workdir, 2)),
  ]
  out = capsys.readouterr().out
  assert 'fold 1 of 4' in out and 'finished, skipped' in out
  assert f'fold 2 of 4 ({unfinished}): resuming' in out
  assert 'fold 3 of 4' in out and ': training' in out
  # A fold that fails stops the loop with its status.
  calls.clear()
  assert crossval.train_folds(configs, workdir, lambda *a: 1) == 1


def test_fold_ensemble_takes_thresholds_and_calibration_from_oof(
    cv_workdir, tmp_path
):
  # Without DIR/cv: the OOF comes from the fold runs' own validation folds.
  out = evaluate.evaluate_runs(
      [cv_workdir],
      split='test',
      out_dir=str(tmp_path / 'eval'),
      num_bootstrap=50,
      html=False,
  )
  folds = tuple(f'fold_{k}' for k in range(NUM_FOLDS))
  assert out.run_names == folds
  assert out.oof_source == "the fold runs' own validation folds"
  val = out.predictions['validation']
  expected = [PROBS[fold_of(int(c[3:6]))] for c in val.case_ids_v]
  np.testing.assert_allclose(val.probs_rv, [expected] * NUM_FOLDS, atol=1e-6)
  labels = np.array([c % 2 for c in range(NUM_CASES)])
  scores = np.array([PROBS[fold_of(c)] for c in range(NUM_CASES)])
  ops = {
      op.name: op.threshold
      for op in out.operating_points
      if op.members == folds and op.level == 'case'
  }
  assert ops == pytest.approx(
      {n: metrics.choose_threshold(n, labels, scores) for n in ops}, abs=1e-5
  )
  assert ops
  cal = out.calibration.calibrators[(folds, 'case')]
  assert _numbers(cal) == pytest.approx(
      _numbers(calibrators.fit_calibrator(scores, labels)), abs=1e-4
  )
  assert out.headline.members == folds  # every subset ties on OOF
  report = _text(tmp_path / 'eval' / 'report.md')
  assert 'Fold ensemble' in report and 'out-of-fold' in report
  # With DIR/cv: read from oof_predictions.csv (the same numbers).
  crossval.evaluate_folds(cv_workdir, NUM_FOLDS, num_bootstrap=50)
  again = evaluate.evaluate_runs(
      [crossval_runs.fold_dir(cv_workdir, k) for k in (2, 0, 1)],
      split='test',
      out_dir=str(tmp_path / 'eval2'),
      num_bootstrap=50,
      html=False,
  )
  assert again.oof_source.endswith(os.path.join('cv', 'oof_predictions.csv'))
  assert again.run_names == folds
  assert _numbers(
      again.calibration.calibrators[(folds, 'case')]
  ) == pytest.approx(_numbers(cal), abs=1e-6)


def _numbers(calibrator):
  """A calibrator's JSON numbers (applied as 0/1)."""
  return {
      k: float(v)
      for k, v in calibrator.to_json().items()
      if isinstance(v, (int, float)) and v is not None
  }


def _run(tmp_path, *args):
  return subprocess.run(
      [sys.executable, '-m', *args],
      cwd=REPO_ROOT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )


def test_a_workdir_whose_folds_disagree_exits_with_status_2(tmp_path):
  workdir = tmp_path / 'cv'
  os.makedirs(workdir / 'fold_0')  # a fold trained as one of 5
  writers.write_config(str(workdir / 'fold_0'), fold_config(5, 0))
  result = _run(
      tmp_path,
      'ankle_jax.crossval',
      '--config=configs/local.py',
      f'--workdir={workdir}',
      '--folds=3',
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'disagree with --folds=3' in result.stderr
  assert not (workdir / 'fold_1').exists()


def test_fewer_than_two_folds_is_refused(tmp_path):
  with pytest.raises(console.UserError, match='at least 2 folds'):
    crossval.fold_configs(fold_config(), str(tmp_path / 'cv'), 1)
  assert not (tmp_path / 'cv').exists()


def test_a_workdir_whose_folds_disagree_on_k_is_refused(tmp_path):
  workdir = str(tmp_path / 'cv')
  os.makedirs(crossval_runs.fold_dir(workdir, 0))
  writers.write_config(
      crossval_runs.fold_dir(workdir, 0), fold_config(num_folds=5, fold=0)
  )
  with pytest.raises(console.UserError, match=r'data.cv_folds=5.*--folds=3'):
    crossval.fold_configs(fold_config(), workdir, 3)
  os.makedirs(crossval_runs.fold_dir(workdir, 7))  # k >= K, no config
  with pytest.raises(console.UserError, match='fold_7'):
    crossval_runs.check_workdir(workdir, 5)
  no_fields = tiny_config()
  with pytest.raises(console.UserError, match='data.cv_folds'):
    crossval.fold_configs(no_fields, str(tmp_path / 'x'), 3)


def test_evaluate_refuses_folds_that_disagree_with_status_2(tmp_path):
  workdir = tmp_path / 'cv'
  make_fold_run(str(workdir / 'fold_0'), 0, '', num_folds=3)
  make_fold_run(str(workdir / 'fold_1'), 1, '', num_folds=5)
  result = _run(
      tmp_path,
      'ankle_jax.evaluate',
      f'--runs={workdir}',
      f'--out={tmp_path / "out"}',
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'disagree on data.cv_folds ([3, 5])' in result.stderr


def _runs(*specs):
  return [
      inference.Run(f'r{i}', f'/r{i}', fold_config(*spec), None, 0)
      for i, spec in enumerate(specs)
  ]


def test_check_fold_ensemble():
  assert crossval_runs.check_fold_ensemble(_runs((3, -1), (3, -1))) is None
  assert crossval_runs.check_fold_ensemble(_runs((3, 1))) is None  # alone
  assert crossval_runs.check_fold_ensemble(_runs((2, 1), (2, 0))) == 2
  for specs, message in (
      (((3, 0), (3, -1)), 'mixes fold runs'),
      (((3, 0), (3, 1)), 'each of the 3 folds once'),
      (((2, 0), (2, 0)), 'each of the 2 folds once'),
  ):
    with pytest.raises(console.UserError, match=message):
      crossval_runs.check_fold_ensemble(_runs(*specs))


def _one_run(case_ids, probs):
  return SplitPredictions(
      case_ids_v=np.array(case_ids),
      view_index_v=np.zeros(len(case_ids), np.int64),
      labels_v=np.arange(len(case_ids)) % 2,
      probs_rv=np.array([probs], np.float64),
  )


def test_merge_folds_refuses_a_case_in_two_folds():
  a, b = _one_run(['x', 'y'], [0.1, 0.2]), _one_run(['y', 'z'], [0.3, 0.4])
  with pytest.raises(ValueError, match='case y is in the validation of both'):
    oof_lib.merge_folds([a, b], ['fold_0', 'fold_1'])
  merged = oof_lib.merge_folds(
      [a, _one_run(['z', 'w'], [0.3, 0.4])], ['fold_0', 'fold_1']
  )
  assert merged.fold_of_case() == {'x': 0, 'y': 0, 'z': 1, 'w': 1}
  assert oof_lib.as_validation(merged, 3).probs_rv.shape == (3, 4)


def _write_oof(workdir, case_probs, labels, which='best'):
  """A crossval workdir's cv/oof_predictions.csv (one view per case, case
  c in fold c % 2) and results.json's checkpoints (`which` kind)."""
  ids = [f'case{c:02d}' for c in range(len(labels))]
  per_fold = [
      SplitPredictions(
          case_ids_v=np.array(ids[k::2]),
          view_index_v=np.zeros(len(ids[k::2]), np.int64),
          labels_v=np.array(labels[k::2]),
          probs_rv=np.array([case_probs[k::2]], np.float64),
      )
      for k in range(2)
  ]
  oof = oof_lib.merge_folds(per_fold, ['fold_0', 'fold_1'])
  header, rows = oof_lib.oof_rows(oof)
  os.makedirs(crossval_runs.cv_dir(workdir))
  with open(
      os.path.join(crossval_runs.cv_dir(workdir), crossval_runs.OOF_FILE),
      'w',
      newline='',
  ) as f:
    csv.writer(f).writerows([header, *rows])
  checkpoints = {f'fold_{k}': {'which': which, 'step': 4} for k in range(2)}
  results = os.path.join(crossval_runs.cv_dir(workdir), 'results.json')
  with open(results, 'w') as f:
    json.dump({'checkpoints': checkpoints}, f)


def test_recipe_search_pairs_oof_aucs_by_case(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, 'benchmarks'))
  import recipe_search  # noqa: PLC0415

  rng = np.random.default_rng(0)
  labels = [(c // 2) % 2 for c in range(30)]  # both classes in each fold
  scores = {
      (name, seed): np.clip(
          np.array(labels) * gain + rng.normal(0, 0.3, 30), 0, 1
      )
      for name, gain in (('a', 0.5), ('b', 0.1))
      for seed in (0, 1)
  }
  for (name, seed), s in scores.items():
    _write_oof(str(tmp_path / name / f'seed_{seed}'), s.tolist(), labels)
  status = recipe_search.main(
      [
          f'--root={tmp_path}',
          '--recipe=a=configs/demo.py',
          '--recipe=b=configs/demo.py:image_size=96',
          '--seeds=0,1',
          '--folds=2',
          '--no_train',
      ]
  )
  assert status == 0
  summary = json.loads(_text(tmp_path / 'recipe_search.json'))
  pair = next(p for p in summary['pairs'] if p['seed'] == 1)
  # Cases are sorted by id in both files: the pairing is by case.
  expected = auc_lib.paired_difference(
      np.array(labels), scores[('a', 1)], scores[('b', 1)]
  )
  assert pair['difference'] == pytest.approx(expected.difference)
  assert pair['lo'] == pytest.approx(expected.lo)
  by_fold = auc_lib.stratified_paired_difference(
      np.array(labels), scores[('a', 1)], scores[('b', 1)], np.arange(30) % 2
  )
  assert pair['fold_stratified']['lo'] == pytest.approx(by_fold.lo)
  assert summary['recipes']['b']['overrides'] == ['image_size=96']
  assert set(summary['recipes']['a']['oof_roc_auc_per_seed']) == {'0', '1'}
  assert 'a - b' in _text(tmp_path / 'recipe_search.md')
  assert summary['checkpoint'] == 'best'


def test_recipe_search_refuses_oof_of_different_checkpoints(
    tmp_path, monkeypatch, capsys
):
  monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, 'benchmarks'))
  import recipe_search  # noqa: PLC0415

  labels = [c % 2 for c in range(8)]
  for name, which in (('a', 'best'), ('b', 'latest')):
    _write_oof(str(tmp_path / name / 'seed_0'), [0.3] * 8, labels, which)
  with pytest.raises(SystemExit) as e:
    recipe_search.main(
        [
            f'--root={tmp_path}',
            '--recipe=a=configs/demo.py',
            '--recipe=b=configs/demo.py:image_size=96',
            '--folds=2',
            '--no_train',
        ]
    )
  assert e.value.code == 2
  assert 'different checkpoints' in capsys.readouterr().err


def test_oof_from_the_last_checkpoints_when_asked(tmp_path, monkeypatch):
  datasets = fold_datasets(str(tmp_path))
  patch_datasets(monkeypatch, datasets)
  workdir = str(tmp_path / 'cv')
  latest = (0.3, 0.6, 0.9)
  for k in range(NUM_FOLDS):
    make_fold_run(
        crossval_runs.fold_dir(workdir, k),
        k,
        str(tmp_path / f'data_{k}'),
        latest_prob=latest[k],
    )
  crossval.evaluate_folds(
      workdir, NUM_FOLDS, num_bootstrap=50, checkpoint='latest'
  )
  cv_dir = crossval_runs.cv_dir(workdir)
  for r in _rows(os.path.join(cv_dir, 'oof_predictions.csv')):
    fold = fold_of(int(r['case_id'][3:6]))
    assert float(r['probability']) == pytest.approx(latest[fold], abs=1e-6)
  results = json.loads(_text(os.path.join(cv_dir, 'results.json')))
  assert {c['which'] for c in results['checkpoints'].values()} == {'latest'}
  assert 'nothing was chosen on the OOF cases' in _text(
      os.path.join(cv_dir, 'report.md')
  )
  # The default (config.eval_checkpoint = 'best') says what it costs.
  crossval.evaluate_folds(workdir, NUM_FOLDS, num_bootstrap=50)
  assert 'makes OOF optimistic' in _text(os.path.join(cv_dir, 'report.md'))


def test_saved_oof_only_when_made_from_the_checkpoints_restored(tmp_path):
  workdir = str(tmp_path / 'cv')
  runs = [
      inference.Run(
          f'fold_{k}',
          crossval_runs.fold_dir(workdir, k),
          fold_config(2, k),
          None,
          step=10 + k,
      )
      for k in range(2)
  ]
  assert crossval_runs.saved_oof(runs) is None  # no DIR/cv yet
  _write_oof(workdir, [0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1])
  results = os.path.join(crossval_runs.cv_dir(workdir), 'results.json')
  for steps, found in (((10, 11), True), ((10, 12), False)):
    checkpoints = {
        f'fold_{k}': {'which': 'best', 'step': s} for k, s in enumerate(steps)
    }
    with open(results, 'w') as f:
      json.dump({'checkpoints': checkpoints}, f)
    path = crossval_runs.saved_oof(runs)
    assert (path is not None) == found, steps

"""Tests of ankle_jax.evaluate.

Most tests use a tiny stand-in model (a conv, BatchNorm and the real
ClassifierHead) and fake run directories with real orbax checkpoints, so they
run in seconds; the end-to-end tests train two tiny real runs.
"""

import csv
import glob
import json
import os
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
from scipy import special
from sklearn import metrics as sk

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import evaluate
from ankle_jax import inference
from ankle_jax import models
from ankle_jax import writers
from ankle_jax.data import augment
from ankle_jax.evaluation import calibration
from ankle_jax.evaluation import calibrators
from ankle_jax.evaluation import metrics
from ankle_jax.evaluation import predictions as predictions_lib
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Settings
from ankle_jax.evaluation.evaluation import compute
from ankle_jax.models import layers
from ankle_jax.reporting import files
from ankle_jax.reporting import tensorboard


class TinyNet(nn.Module):
  """A stand-in with the models' calling convention."""

  features: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.features, (3, 3), strides=(2, 2))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    return layers.ModelOutputs(
        layers.ClassifierHead(num_classes=2)(x, train), None
    )


def tiny_config(name='tiny', image_size=32, features=4):
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(
      {
          'name': name,
          'aux_head': False,
          'dropout_rate': 0.0,
          'width_multiplier': 1.0,
          'kwargs': {'features': features},
      }
  )
  config.image_size = image_size
  config.dtype = 'float32'
  config.data = ml_collections.ConfigDict(
      {'data_dir': '', 'dataset_config': 'dicom_cases'}
  )
  config.best_metric = 'val_accuracy'
  return config


def tiny_create_model(config):
  return TinyNet(features=config.model.kwargs.features)


def make_fake_run(workdir, seed, **config_kwargs):
  """A run directory with config.json and a 'best' checkpoint."""
  config = tiny_config(**config_kwargs)
  os.makedirs(workdir, exist_ok=True)
  writers.write_config(workdir, config)
  module = tiny_create_model(config)
  variables = module.init(
      jax.random.key(seed),
      jnp.zeros((1, config.image_size, config.image_size, 1)),
  )
  # Non-trivial BatchNorm statistics, so that restoring them matters.
  variables = jax.tree.map(np.array, variables)
  variables['batch_stats']['BatchNorm_0']['mean'] += 0.1 * seed
  variables['params']['ClassifierHead_0']['dense']['bias'] += np.array(
      [0.0, 0.05 * seed], np.float32
  )
  ckpt = checkpoint.RunCheckpoints(workdir)
  ckpt.save_best(7, variables, {'val_accuracy': 0.5})
  ckpt.close()
  return workdir


def fake_split(split, num_cases, seed, two_view_every=4):
  """Views of a fake split: (case_ids, view_index, labels, images at 64 px)."""
  rng = np.random.default_rng(seed)
  case_ids, view_index, labels, images = [], [], [], []
  for c in range(num_cases):
    label = c % 2
    views = 2 if c % two_view_every == 0 else 3
    for v in range(views):
      case_ids.append(f'{split[:3]}{c:03d}hash')
      view_index.append(v)
      labels.append(label)
      img = rng.uniform(0, 0.5, (64, 64, 1)).astype(np.float32)
      img[16:40, 16:40] += 0.4 * label * rng.uniform(0.5, 1.0)
      images.append(img)
  return (
      np.array(case_ids, object),
      np.array(view_index, np.int32),
      np.array(labels, np.int32),
      np.stack(images),
  )


def fake_batches_fn(splits, batch_size=8, features=None):
  """batches_fn(split) -> batches_for(image_size), with padding and masks;
  features: {split: {field: object [views]}} extra per-view keys (padding
  '')."""

  def batches_fn(split):
    if split not in splits:
      return None
    case_ids, view_index, labels, images = splits[split]
    extra = (features or {}).get(split, {})

    def batches_for(image_size):
      resized = np.asarray(
          jax.image.resize(
              images, (len(images), image_size, image_size, 1), 'linear'
          )
      )
      for start in range(0, len(labels), batch_size):
        sl = slice(start, start + batch_size)
        n = len(labels[sl])
        pad = batch_size - n
        yield {
            'image': np.concatenate(
                [resized[sl], np.zeros((pad,) + resized.shape[1:], np.float32)]
            ),
            'label': np.concatenate([labels[sl], np.zeros(pad, np.int32)]),
            'case_id': np.concatenate(
                [case_ids[sl], np.array([''] * pad, object)]
            ),
            'view_index': np.concatenate(
                [view_index[sl], np.zeros(pad, np.int32)]
            ),
            'mask': np.arange(batch_size) < n,
            **{
                k: np.concatenate([v[sl], np.array([''] * pad, object)])
                for k, v in extra.items()
            },
        }

    return batches_for

  return batches_fn


# --------------------------------------------------------------- forward
def test_vmapped_apply_over_stacked_runs_equals_python_loop():
  module = TinyNet()
  images = jax.random.uniform(jax.random.key(1), (5, 32, 32, 1))
  variables_list = []
  for seed in range(3):
    v = jax.tree.map(np.array, module.init(jax.random.key(seed), images))
    v['batch_stats']['BatchNorm_0']['var'] += seed
    variables_list.append(v)
  log_probs_rb = inference.make_forward(module)(
      inference.stack_variables(variables_list), images
  )
  probs_rb = inference.probability_from_log(log_probs_rb)
  std_images = augment.standardize_per_image(images)
  expected = np.stack(
      [
          jax.nn.softmax(module.apply(v, std_images, train=False).logits)[:, 1]
          for v in variables_list
      ]
  )
  assert probs_rb.shape == (3, 5)
  np.testing.assert_allclose(probs_rb, expected, rtol=1e-5, atol=1e-6)
  # The runs really differ, so the test can fail.
  assert np.abs(expected[0] - expected[2]).max() > 1e-4


def test_group_runs_by_architecture_and_shape():
  configs = [
      tiny_config(),
      tiny_config(image_size=48),
      tiny_config(),
      tiny_config(features=8),
  ]
  configs[2].model.dropout_rate = 0.5  # dropout does not split a group
  groups = inference.group_runs(configs)
  assert sorted(groups.values()) == [[0, 2], [1], [3]]


def test_stack_variables_rejects_different_trees():
  with pytest.raises(ValueError, match='different variable trees'):
    inference.stack_variables([{'a': np.zeros(2)}, {'b': np.zeros(2)}])


def test_unique_run_names():
  assert inference.unique_run_names(['/x/a/', '/y/a', '/z/b']) == [
      'a',
      'a~2',
      'b',
  ]


def _set_config(workdir, **fields):
  """Rewrites a run's config.json with `fields` ('data.x' for nested)."""
  config = checkpoint.load_run_config(workdir)
  for field, value in fields.items():
    *parents, last = field.split('.')
    target = config
    for part in parents:
      target = target[part]
    target[last] = value
  writers.write_config(workdir, config)


def _add_latest_checkpoint(workdir, step):
  variables = checkpoint.restore_variables(workdir, 'best')[0]
  ckpt = checkpoint.RunCheckpoints(workdir)
  ckpt.save_latest(step, {'step': np.int32(step), **variables}, [None], {})
  ckpt.close()


def test_each_run_restores_the_checkpoint_its_config_names(tmp_path):
  """config.eval_checkpoint picks the checkpoint ('best' when a run was saved
  without the field); --checkpoint overrides it for every run."""
  old = make_fake_run(str(tmp_path / 'old'), 0)  # best at step 7
  paper = make_fake_run(str(tmp_path / 'paper'), 1)
  _set_config(paper, eval_checkpoint='latest')
  _add_latest_checkpoint(paper, 11)
  runs = inference.load_runs([old, paper])
  assert [(r.which, r.step) for r in runs] == [('best', 7), ('latest', 11)]
  runs = inference.load_runs([old, paper], 'best')
  assert [(r.which, r.step) for r in runs] == [('best', 7), ('best', 7)]
  assert inference.load_runs([paper], 'latest')[0].step == 11
  with pytest.raises(console.UserError, match="no 'latest' checkpoint"):
    inference.load_runs([old], 'latest')
  _set_config(paper, eval_checkpoint='last')
  with pytest.raises(console.UserError, match='--checkpoint=best|latest'):
    inference.load_runs([paper])


def test_views_per_case_comes_from_the_first_run_unless_given(tmp_path, capsys):
  paper = make_fake_run(str(tmp_path / 'paper'), 0)
  _set_config(paper, **{'data.max_eval_views': 3})
  old = make_fake_run(str(tmp_path / 'old'), 1)  # saved without the field
  runs = inference.load_runs([paper, old])
  assert evaluate.views_per_case(runs, None) == 3
  assert 'all runs are evaluated with 3' in capsys.readouterr().err
  assert evaluate.views_per_case(runs[1:], None) == 0
  assert evaluate.views_per_case(runs, 0) == 0
  with pytest.raises(console.UserError, match='--max_eval_views=-2'):
    evaluate.views_per_case(runs, -2)


# ------------------------------------------------- fake runs end to end
@pytest.fixture(scope='module')
def fake_evaluation(tmp_path_factory):
  root = tmp_path_factory.mktemp('fake_eval')
  run_dirs = [
      make_fake_run(str(root / 'run_a'), 0),
      make_fake_run(str(root / 'run_b'), 1),
      make_fake_run(str(root / 'run_c'), 2, image_size=48),  # its own group
  ]
  splits = {
      'test': fake_split('test', 13, 0),
      'validation': fake_split('validation', 11, 1),
  }
  out_dir = str(root / 'out')
  mp = pytest.MonkeyPatch()
  mp.setattr(models, 'from_run_config', tiny_create_model)
  try:
    out = evaluate.evaluate_runs(
        run_dirs,
        split='test',
        out_dir=out_dir,
        num_bootstrap=300,
        seed=3,
        batches_fn=fake_batches_fn(splits),
    )
  finally:
    mp.undo()
  return {
      'out_dir': out_dir,
      'out': out,
      'splits': splits,
      'run_dirs': run_dirs,
  }


def _read_csv(path):
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = next(reader)
    return header, list(reader)


def test_outputs_exist(fake_evaluation):
  out_dir = fake_evaluation['out_dir']
  for name in (
      'predictions.csv',
      'case_predictions.csv',
      'results.json',
      'summary.json',
      'report.md',
      'roc.png',
      'confusion.png',
  ):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
  assert glob.glob(os.path.join(out_dir, 'events.out.tfevents.*'))
  report = pathlib.Path(os.path.join(out_dir, 'report.md')).read_text()
  for text in (
      'Paper protocol',
      'Honest protocol',
      'Operating points',
      'run_a',
      'ROC AUC',
      'ties',
  ):
    assert text in report, text


def test_predictions_csv_rows_and_columns(fake_evaluation):
  header, rows = _read_csv(
      os.path.join(fake_evaluation['out_dir'], 'predictions.csv')
  )
  assert header[:5] == ['run', 'case_id', 'view_index', 'label', 'probability']
  assert header[:6] == list(predictions_lib.PREDICTION_COLUMNS)
  assert header[-1] == 'probability_calibrated'
  splits = fake_evaluation['splits']
  num_views = sum(len(s[2]) for s in splits.values())
  assert len(rows) == 3 * num_views  # one row per run and view
  assert {r[0] for r in rows} == {'run_a', 'run_b', 'run_c'}
  assert {r[5] for r in rows} == {'test', 'validation'}
  # Padding rows were dropped; labels and view indices match the split.
  test_rows = [r for r in rows if r[0] == 'run_a' and r[5] == 'test']
  case_ids, view_index, labels, _ = splits['test']
  assert [(r[1], int(r[2]), int(r[3])) for r in test_rows] == list(
      zip(case_ids, view_index.tolist(), labels.tolist())
  )


def test_predictions_match_a_direct_forward(fake_evaluation):
  """The grouped, vmapped, batched forward gives each run's own outputs."""
  _, rows = _read_csv(
      os.path.join(fake_evaluation['out_dir'], 'predictions.csv')
  )
  _, _, _, images = fake_evaluation['splits']['test']
  for run_dir, size in zip(fake_evaluation['run_dirs'], (32, 32, 48)):
    name = os.path.basename(run_dir)
    config = checkpoint.load_run_config(run_dir)
    variables, _ = checkpoint.restore_variables(run_dir)
    x = jax.image.resize(images, (len(images), size, size, 1), 'linear')
    logits = (
        tiny_create_model(config)
        .apply(variables, augment.standardize_per_image(x), train=False)
        .logits
    )
    expected = np.asarray(jax.nn.softmax(logits)[:, 1])
    got = [float(r[4]) for r in rows if r[0] == name and r[5] == 'test']
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _load_predictions(out_dir):
  """{split: (run_names, case_ids_v, labels_v, probs_rv)} read with csv."""
  _, rows = _read_csv(os.path.join(out_dir, 'predictions.csv'))
  out = {}
  for split in {r[5] for r in rows}:
    runs = list(dict.fromkeys(r[0] for r in rows if r[5] == split))
    views = list(dict.fromkeys((r[1], r[2]) for r in rows if r[5] == split))
    probs = np.zeros((len(runs), len(views)))
    labels = np.zeros(len(views), int)
    for r in rows:
      if r[5] == split:
        v = views.index((r[1], r[2]))
        probs[runs.index(r[0]), v] = float(r[4])
        labels[v] = int(r[3])
    out[split] = (runs, [f'{split}/{c}' for c, _ in views], labels, probs)
  return out


def _independent_decisions(runs, case_ids, labels, probs, members, level, vote):
  """Re-derives an entry's (labels, preds, scores, clusters) by hand."""
  idx = [runs.index(m) for m in members]
  soft_v = probs[idx].mean(0)
  hard_v = (probs[idx] >= 0.5).sum(0) * 2 > len(idx)
  cases = sorted(set(case_ids))
  clusters_v = np.array([cases.index(c) for c in case_ids])
  if level == 'image':
    preds = hard_v if vote == 'hard' else soft_v >= 0.5
    return labels, preds, soft_v, clusters_v
  lab_c, pred_c, score_c = [], [], []
  for k in range(len(cases)):
    in_case = clusters_v == k
    lab_c.append(labels[in_case][0])
    score_c.append(soft_v[in_case].mean())
    if vote == 'max':  # issue 27: the largest view probability
      score_c[-1] = soft_v[in_case].max()
    elif vote == 'noisy_or':  # 1 - prod(1 - p) over the views
      score_c[-1] = 1 - np.prod(1 - soft_v[in_case])
    if vote == 'hard':  # majority of views, ties to fracture
      pred_c.append(2 * hard_v[in_case].sum() >= in_case.sum())
    else:
      pred_c.append(score_c[-1] >= 0.5)
  return (
      np.array(lab_c),
      np.array(pred_c),
      np.array(score_c),
      np.arange(len(cases)),
  )


def _with_pooled(by_split):
  """_load_predictions' splits and the pooled 'validation+test'."""
  if 'validation' in by_split:
    v, t = by_split['validation'], by_split['test']
    by_split['validation+test'] = (
        v[0],
        v[1] + t[1],
        np.concatenate([v[2], t[2]]),
        np.concatenate([v[3], t[3]], axis=1),
    )
  return by_split


def main_entries(results):
  """results.json's entries but the subgroups' (ankle_jax.evaluation.subgroups)."""
  return [e for e in results if e['subgroup'] is None]


def check_results_recomputable(out_dir, num_bootstrap, seed):
  """Every results.json number but the subgroups' from predictions.csv
  alone."""
  by_split = _with_pooled(_load_predictions(out_dir))
  results = main_entries(
      json.loads(
          pathlib.Path(os.path.join(out_dir, 'results.json')).read_text()
      )
  )
  assert results
  for e in results:
    assert {
        'members',
        'level',
        'voting',
        'split',
        'metrics',
        'ci95',
        'subgroup',
    } <= set(e)
    assert set(e['metrics']) == set(metrics.METRIC_NAMES)
    if e['voting'] == 'stacked':  # a fit on validation: test_aggregation.py
      continue
    runs, case_ids, labels, probs = by_split[e['split']]
    decisions = _independent_decisions(
        runs, case_ids, labels, probs, e['members'], e['level'], e['voting']
    )
    _check_entry(e, *decisions, num_bootstrap, seed)
  return results


def _check_entry(e, y, pred, score, clusters, num_bootstrap, seed):
  """An entry's metrics and intervals equal those of (y, pred, score)."""
  tn, fp, fn, tp = sk.confusion_matrix(
      y, pred.astype(int), labels=[0, 1]
  ).ravel()
  expected = {
      'accuracy': sk.accuracy_score(y, pred.astype(int)),
      'sensitivity': tp / (tp + fn) if tp + fn else None,
      'specificity': tn / (tn + fp) if tn + fp else None,
      'ppv': tp / (tp + fp) if tp + fp else None,
      'npv': tn / (tn + fn) if tn + fn else None,
      'roc_auc': sk.roc_auc_score(y, score) if 0 < y.sum() < len(y) else None,
  }
  for k, value in expected.items():
    if value is None:
      assert e['metrics'][k] is None, (e, k)
    else:
      assert e['metrics'][k] == pytest.approx(value, abs=1e-9), (e, k)
  # Wilson intervals (design-effect adjusted at image level) for the
  # proportions, DeLong (clustered by case at image level) for ROC AUC.
  est = metrics.BinaryEvaluator()(y, pred, score, clusters)
  ci = est.ci95
  assert e['ci95_method'] == est.methods
  for k in metrics.METRIC_NAMES:
    if e['ci95'][k][0] is not None:
      np.testing.assert_allclose(e['ci95'][k], ci[k], atol=1e-9)
    else:
      assert e['metrics'][k] is None, (e, k)


def test_results_recomputable_from_predictions_csv(fake_evaluation):
  results = check_results_recomputable(fake_evaluation['out_dir'], 300, 3)
  # 3 runs -> 4 subsets x (image: hard, soft; case: hard, soft, max,
  # noisy_or) x 3 splits, and stacked on validation and test.
  assert len(results) == 4 * (2 + 4) * 3 + 4 * 2
  assert {e['split'] for e in results} == {
      'test',
      'validation',
      'validation+test',
  }


def _load_case_predictions(out_dir):
  """{split: (runs, case ids, labels_c, probs_rc, votes_rc, multiview)} read
  with csv from case_predictions.csv alone; cases sorted by '<split>/<id>',
  the pooled split 'validation+test' as both splits together."""
  header, rows = _read_csv(os.path.join(out_dir, 'case_predictions.csv'))
  assert header[-1] == 'probability_calibrated'
  assert header[:8] == [
      'run',
      'case_id',
      'label',
      'probability',
      'split',
      'kind',
      'hard_vote',
      'num_views',
  ]
  col = {name: i for i, name in enumerate(header)}
  runs = list(dict.fromkeys(r[col['run']] for r in rows))
  splits = {r[col['split']]: [r[col['split']]] for r in rows}
  if 'validation' in splits:
    splits['validation+test'] = ['validation', 'test']
  out = {}
  for name, parts in splits.items():
    mine = [r for r in rows if r[col['split']] in parts]
    ids = sorted({f'{r[col["split"]]}/{r[col["case_id"]]}' for r in mine})
    probs, votes = np.zeros((2, len(runs), len(ids)))
    labels, multiview = np.zeros(len(ids), int), np.zeros(len(runs), bool)
    for r in mine:
      i, c = runs.index(r[col['run']]), ids.index(f'{r[4]}/{r[1]}')
      probs[i, c] = float(r[col['probability']])
      votes[i, c] = int(r[col['hard_vote']])
      labels[c] = int(r[col['label']])
      multiview[i] = r[col['kind']] == 'multi_view'
    out[name] = (runs, ids, labels, probs, votes, multiview)
  return out


def check_case_results_from_case_csv(out_dir, num_bootstrap, seed):
  """Every case-level results.json entry from case_predictions.csv alone,
  but hard votes of per-view-only ensembles (from predictions.csv)."""
  by_split = _load_case_predictions(out_dir)
  results = main_entries(json.loads(_read_text(out_dir, 'results.json')))
  checked = {'csv': 0, 'predictions.csv': 0}
  for e in results:
    if e['level'] != 'case' or e['voting'] not in ('hard', 'soft'):
      continue  # max, noisy_or, stacked: from the views (predictions.csv)
    runs, ids, labels, probs, votes, multiview = by_split[e['split']]
    idx = [runs.index(m) for m in e['members']]
    scores = probs[idx].mean(axis=0)
    if e['voting'] == 'soft':
      preds = scores >= 0.5
    elif len(idx) == 1 or multiview[idx].any():
      preds = 2 * votes[idx].sum(axis=0) >= len(idx)  # ties to fracture
    else:  # members first, then views: needs predictions.csv
      view_split = _with_pooled(_load_predictions(out_dir))
      _, preds, _, _ = _independent_decisions(
          *view_split[e['split']], e['members'], 'case', 'hard'
      )
      checked['predictions.csv'] += 1
    checked['csv'] += 1
    _check_entry(
        e, labels, preds, scores, np.arange(len(ids)), num_bootstrap, seed
    )
  return checked


def test_case_predictions_csv_of_per_view_runs(fake_evaluation):
  """Per-view runs: probability = soft vote, hard_vote = majority of the
  view votes; every case-level entry follows from the CSV files."""
  out_dir = fake_evaluation['out_dir']
  by_case = _load_case_predictions(out_dir)
  by_view = _load_predictions(out_dir)
  for split in ('test', 'validation'):
    runs, ids, labels, probs, votes, multiview = by_case[split]
    assert not multiview.any()
    for m in runs:
      _, _, score, _ = _independent_decisions(
          *by_view[split], [m], 'case', 'soft'
      )
      _, hard, _, _ = _independent_decisions(
          *by_view[split], [m], 'case', 'hard'
      )
      np.testing.assert_allclose(probs[runs.index(m)], score, rtol=1e-12)
      np.testing.assert_array_equal(votes[runs.index(m)], hard)
  checked = check_case_results_from_case_csv(out_dir, 300, 3)
  # 4 subsets x 2 votings x 3 splits; 1 ensemble x 3 splits from the views.
  assert checked == {'csv': 24, 'predictions.csv': 3}


def check_num_views_subgroups(out_dir, num_bootstrap, seed):
  """Every case-level subgroup entry by number of views, by hand: the cases
  of case_predictions.csv with that num_views (hard votes of per-view-only
  ensembles: their views in predictions.csv)."""
  by_case = _load_case_predictions(out_dir)
  by_view = _load_predictions(out_dir)
  _, rows = _read_csv(os.path.join(out_dir, 'case_predictions.csv'))
  num_views = {f'{r[4]}/{r[1]}': int(r[7]) for r in rows}
  results = json.loads(_read_text(out_dir, 'results.json'))
  checked = set()
  for e in results:
    sub = e['subgroup']
    if sub is None or sub['field'] != 'num_views':
      continue
    assert e['level'] == 'case' and e['split'] == 'test'
    runs, ids, labels, probs, votes, multiview = by_case['test']
    keep = np.array([num_views[c] == int(sub['value']) for c in ids])
    idx = [runs.index(m) for m in e['members']]
    scores = probs[idx][:, keep].mean(axis=0)
    if e['voting'] == 'soft':
      preds = scores >= 0.5
    elif len(idx) == 1 or multiview[idx].any():
      preds = 2 * votes[idx][:, keep].sum(axis=0) >= len(idx)
    else:
      view_runs, view_ids, view_labels, view_probs = by_view['test']
      kept_ids = set(np.array(ids)[keep])
      kv = np.array([c in kept_ids for c in view_ids])
      _, preds, _, _ = _independent_decisions(
          view_runs,
          list(np.array(view_ids)[kv]),
          view_labels[kv],
          view_probs[:, kv],
          e['members'],
          'case',
          'hard',
      )
    y = labels[keep]
    counts = (int((y == 1).sum()), int((y == 0).sum()))
    assert (sub['positives'], sub['negatives']) == counts
    assert sub['small'] == (min(counts) < 10)
    _check_entry(
        e, y, preds, scores, np.arange(keep.sum()), num_bootstrap, seed
    )
    checked.add((tuple(e['members']), sub['value'], e['voting']))
  return checked


def test_case_subgroups_by_number_of_views(fake_evaluation, mixed_evaluation):
  """The headline members (single runs, honest ensembles) per number of
  views per case, equal to the metrics of those cases alone; small ones
  (fewer than 10 fractures or normals) kept and flagged."""
  checked = check_num_views_subgroups(fake_evaluation['out_dir'], 300, 3)
  singles = {(m,) for m in ('run_a', 'run_b', 'run_c')}
  assert {c[0] for c in checked} >= singles
  assert {c[1] for c in checked} == {'2', '3'}
  assert {c[2] for c in checked} == {'hard', 'soft'}
  # The 2-view test cases are all normal: kept, with no sensitivity.
  two = [s for s in fake_evaluation['out'].subgroups if s.subgroup.value == '2']
  assert two and all(
      s.subgroup.positives == 0 and s.subgroup.small for s in two
  )
  assert all(s.entry.metrics['sensitivity'] is None for s in two)
  mixed = check_num_views_subgroups(mixed_evaluation['out_dir'], 100, 1)
  assert {c[1] for c in mixed} == {'2', '3'}
  assert ('run_mv',) in {c[0] for c in mixed}  # multi-view runs too
  report = _read_text(fake_evaluation['out_dir'], 'report.md')
  assert '| run_a | all views (case) | num_views = 2 † | 0 / 4 |' in report
  assert '† Fewer than 10 fractures or 10 normals' in report


def _fake_features(split_views):
  """view_position cycling AP/LAT/'' per view; hardware 1/0/-1 per case,
  but the last case's views disagree."""
  case_ids, view_index, _, _ = split_views
  cases = sorted(set(case_ids))
  case_v = np.array([cases.index(c) for c in case_ids])
  hardware = np.array([1, 0, -1])[case_v % 3]
  last = case_v == len(cases) - 1
  hardware[last] = np.arange(last.sum()) % 2
  return {
      'view_position': np.array(['AP', 'LAT', ''], object)[view_index % 3],
      'hardware': hardware.astype(object),
  }


@pytest.fixture(scope='module')
def featured_evaluation(tmp_path_factory):
  """Two fake runs whose batches carry view_position and hardware."""
  root = tmp_path_factory.mktemp('featured')
  run_dirs = [
      make_fake_run(str(root / f'run_{k}'), i) for i, k in enumerate('ab')
  ]
  splits = {
      'test': fake_split('test', 40, 5, two_view_every=3),
      'validation': fake_split('validation', 12, 6),
  }
  features = {k: _fake_features(v) for k, v in splits.items()}
  out_dir = str(root / 'out')
  mp = pytest.MonkeyPatch()
  mp.setattr(models, 'from_run_config', tiny_create_model)
  try:
    out = evaluate.evaluate_runs(
        run_dirs,
        split='test',
        out_dir=out_dir,
        num_bootstrap=50,
        seed=2,
        batches_fn=fake_batches_fn(splits, features=features),
    )
  finally:
    mp.undo()
  return {'out_dir': out_dir, 'out': out, 'features': features}


def test_view_features_reach_predictions_csv_and_read_back(
    featured_evaluation,
):
  out_dir = featured_evaluation['out_dir']
  header, rows = _read_csv(os.path.join(out_dir, 'predictions.csv'))
  assert header == [
      *predictions_lib.PREDICTION_COLUMNS,
      'view_position',
      'hardware',
      'probability_calibrated',
  ]
  for split, features in featured_evaluation['features'].items():
    mine = [r for r in rows if r[0] == 'run_b' and r[5] == split]
    assert [r[6] for r in mine] == list(features['view_position'])
    assert [r[7] for r in mine] == [str(h) for h in features['hardware']]
  _, by_split = predictions_lib.read_predictions_csv(
      os.path.join(out_dir, 'predictions.csv')
  )
  assert by_split['test'].features_v['hardware'].tolist() == [
      str(h) for h in featured_evaluation['features']['test']['hardware']
  ]


def test_subgroups_equal_the_metrics_of_their_rows(featured_evaluation):
  """Image level per view position and hardware, case level per hardware
  (where the case's views agree, else 'varies'): each entry equals the
  metrics of exactly those rows of predictions.csv, computed by hand."""
  out_dir = featured_evaluation['out_dir']
  _, rows = _read_csv(os.path.join(out_dir, 'predictions.csv'))
  runs, case_ids, labels, probs = _load_predictions(out_dir)['test']
  test_rows = [r for r in rows if r[0] == 'run_a' and r[5] == 'test']
  position = np.array([r[6] or 'unknown' for r in test_rows])
  hardware = np.array(
      [{'1': 'yes', '0': 'no', '-1': 'unknown'}[r[7]] for r in test_rows]
  )
  by_case = {}
  for c, h in zip(case_ids, hardware):
    by_case.setdefault(c, set()).add(h)
  case_value = {
      c: min(h) if len(h) == 1 else 'varies' for c, h in by_case.items()
  }
  case_hardware = np.array([case_value[c] for c in case_ids])
  values = {
      ('image', 'view_position'): position,
      ('image', 'hardware'): hardware,
      ('case', 'hardware'): case_hardware,
  }
  results = json.loads(_read_text(out_dir, 'results.json'))
  checked = set()
  for e in results:
    sub = e['subgroup']
    if sub is None or sub['field'] == 'num_views':
      continue
    keep = values[(e['level'], sub['field'])] == sub['value']
    decisions = _independent_decisions(
        runs,
        list(np.array(case_ids)[keep]),
        labels[keep],
        probs[:, keep],
        e['members'],
        e['level'],
        e['voting'],
    )
    _check_entry(e, *decisions, 50, 2)
    y = decisions[0]
    assert (sub['positives'], sub['negatives']) == (
        (y == 1).sum(),
        (y == 0).sum(),
    )
    assert sub['small'] == (min(sub['positives'], sub['negatives']) < 10)
    checked.add((e['level'], sub['field'], sub['value']))
  assert checked == {
      ('image', 'view_position', 'AP'),
      ('image', 'view_position', 'LAT'),
      ('image', 'view_position', 'unknown'),
      ('image', 'hardware', 'yes'),
      ('image', 'hardware', 'no'),
      ('image', 'hardware', 'unknown'),
      ('case', 'hardware', 'yes'),
      ('case', 'hardware', 'no'),
      ('case', 'hardware', 'unknown'),
      ('case', 'hardware', 'varies'),
  }  # no case-level view position: it varies within every case
  report = _read_text(out_dir, 'report.md')
  assert '## Subgroups' in report
  assert '| run_a | single view | view_position = AP | 20 / 20 |' in report
  assert 'hardware = varies †' in report


def test_protocols_and_operating_points(fake_evaluation):
  out_dir = fake_evaluation['out_dir']
  results = json.loads(
      pathlib.Path(os.path.join(out_dir, 'results.json')).read_text()
  )
  summary = json.loads(
      pathlib.Path(os.path.join(out_dir, 'summary.json')).read_text()
  )
  honest = summary['protocols']['honest']['case_hard']
  paper = summary['protocols']['paper']['case_hard']
  assert honest['chosen_on'] == 'validation' and honest['reported_on'] == 'test'
  assert paper['chosen_on'] == paper['reported_on'] == 'validation+test'

  results = main_entries(results)
  by_key = {
      (tuple(e['members']), e['split'], e['level'], e['voting']): e
      for e in results
  }

  def acc(split, members):
    key = (tuple(members), split, 'case', 'hard')
    return by_key[key]['metrics']['accuracy']

  subsets = {tuple(e['members']) for e in results}
  best_val = max(acc('validation', list(s)) for s in subsets)
  assert acc('validation', honest['members']) == best_val
  best_pooled = max(acc('validation+test', list(s)) for s in subsets)
  assert acc('validation+test', paper['members']) == best_pooled
  assert summary['checkpoints']['run_a'] == {'which': 'best', 'step': 7}

  # Operating points: thresholds from validation, applied to test.
  ops = summary['operating_points']
  assert {op['name'] for op in ops} == {'youden', 'sens90'}
  by_split = _load_predictions(out_dir)
  for op in ops:
    yv, _, sv, _ = _independent_decisions(
        *by_split['validation'], op['members'], op['level'], 'soft'
    )
    yt, _, st, _ = _independent_decisions(
        *by_split['test'], op['members'], op['level'], 'soft'
    )
    if op['name'] == 'sens90':
      assert ((sv >= op['threshold']) & (yv == 1)).sum() >= 0.9 * yv.sum()
    pred = st >= op['threshold']
    assert op['sensitivity'] == pytest.approx(
        sk.recall_score(yt, pred, zero_division=np.nan), nan_ok=True
    )
    assert op['specificity'] == pytest.approx(
        sk.recall_score(yt, pred, pos_label=0, zero_division=np.nan),
        nan_ok=True,
    )


def test_no_validation_split_skips_honest_protocol(tmp_path, monkeypatch):
  monkeypatch.setattr(models, 'from_run_config', tiny_create_model)
  run_dir = make_fake_run(str(tmp_path / 'only'), 0)
  out = evaluate.evaluate_runs(
      [run_dir],
      split='test',
      out_dir=str(tmp_path / 'out'),
      num_bootstrap=50,
      batches_fn=fake_batches_fn({'test': fake_split('test', 6, 0)}),
  )
  assert {protocol for protocol, _, _ in out.protocols} == {'paper'}
  assert out.operating_points == ()
  # image: hard, soft; case: also max, noisy_or (no stacked: no validation).
  assert len(out.results) == 1 * (2 + 4) * 1
  check_results_recomputable(str(tmp_path / 'out'), 50, 0)
  # No validation: no calibrator (and why), calibrated = raw.
  block = next(iter(out.calibration.blocks.values()))
  assert block['temperature'] is None and block['fitted_on'] is None
  assert not block['calibrator']['applied']
  assert block['calibrator']['reason'] == calibrators.NO_VALIDATION
  assert block['ece'] is not None and block['ece_calibrated'] == block['ece']
  assert block['ece_debiased_change'] == 0.0


# ------------------------------------------------------------ calibration
def check_calibration_from_the_csvs(out_dir):
  """Each single run's ECE and Brier, before and after scaling, recomputed
  from predictions.csv (image level) and case_predictions.csv (case level)
  alone; returns how many entries were checked."""
  results = json.loads(_read_text(out_dir, 'results.json'))
  files = {'image': 'predictions.csv', 'case': 'case_predictions.csv'}
  rows_of = {}
  for level, name in files.items():
    header, rows = _read_csv(os.path.join(out_dir, name))
    assert header[-1] == 'probability_calibrated'
    col = {h: i for i, h in enumerate(header)}
    rows_of[level] = [
        (r[col['run']], r[col['split']], int(r[col['label']]))
        + (float(r[col['probability']]), float(r[-1]))
        for r in rows
    ]
  checked = 0
  for e in main_entries(results):
    block = e['calibration']
    twin = next(
        o
        for o in results
        if (o['members'], o['level'], o['split'])
        == (e['members'], e['level'], e['split'])
        and o['voting'] != e['voting']
    )
    assert twin['calibration'] == block  # hard and soft share it
    if len(e['members']) > 1:
      continue
    parts = e['split'].split('+')
    mine = [
        r
        for r in rows_of[e['level']]
        if r[0] == e['members'][0] and r[1] in parts
    ]
    y, p, p_cal = (np.array([r[i] for r in mine]) for i in (2, 3, 4))
    cal = block['calibrator']
    want = p
    if cal['applied']:
      want = special.expit(
          cal['slope'] * calibrators.logit(p) + cal['intercept']
      )
    np.testing.assert_allclose(p_cal, want, rtol=1e-12)
    for name, q in (('', p), ('_calibrated', p_cal)):
      assert block['ece' + name] == pytest.approx(calibration.ece(q, y))
      assert block['brier' + name] == pytest.approx(sk.brier_score_loss(y, q))
      for metric in ('ece', 'ece_debiased', 'brier'):
        lo, hi = block['ci95'][metric + name]
        assert lo <= block[metric + name] <= hi
      assert block['ece_debiased' + name] == pytest.approx(
          calibration.ece_debiased(q, y)
      )
    assert block['fitted_on'] == 'validation'
    assert block['in_sample'] == (e['split'] != 'test')
    checked += 1
  return checked


def test_calibration_recomputable_from_the_csvs(fake_evaluation):
  out_dir = fake_evaluation['out_dir']
  # 3 runs x 2 levels x 2 votings x 3 splits.
  # 3 runs x (image: 2 votings, case: 4) x 3 splits, and stacked x 2 splits.
  assert check_calibration_from_the_csvs(out_dir) == 3 * ((2 + 4) * 3 + 2)
  assert os.path.getsize(os.path.join(out_dir, 'reliability.png')) > 0
  report = _read_text(out_dir, 'report.md')
  assert '## Calibration' in report and 'ECE debiased calibrated' in report


def _patch_datasets(monkeypatch, datasets):
  """pipeline/prepare stand-ins over {data_dir: {split: fake_split}}."""
  from ankle_jax.data import pipeline
  from ankle_jax.data import prepare

  def load_split(data_dir, split, dataset_config='dicom_cases'):
    if split not in datasets[str(data_dir)]:
      raise FileNotFoundError(f'no {split} in {data_dir}')
    return datasets[str(data_dir)][split]

  def iterate(source, *, batch_size, image_size, max_views_per_case=0):
    return fake_batches_fn({'s': source}, batch_size)('s')(image_size)

  monkeypatch.setattr(
      prepare, 'dataset_exists', lambda d, c: str(d) in datasets
  )
  monkeypatch.setattr(pipeline, 'load_split', load_split)
  monkeypatch.setattr(pipeline, 'iterate_eval_batches', iterate)


@pytest.mark.parametrize('external_has_validation', [False, True])
def test_external_test_set_takes_validation_from_the_runs_own_dataset(
    tmp_path, monkeypatch, external_has_validation
):
  monkeypatch.setattr(models, 'from_run_config', tiny_create_model)
  own, other = str(tmp_path / 'own'), str(tmp_path / 'other')
  run_dir = make_fake_run(str(tmp_path / 'run'), 0)
  _set_config(run_dir, **{'data.data_dir': own})
  external = {'test': fake_split('test', 7, 5)}
  if external_has_validation:
    ids, *rest = fake_split('validation', 8, 6)
    external['validation'] = (np.char.add('ext', ids.astype(str)), *rest)
  _patch_datasets(
      monkeypatch,
      {
          own: {
              'test': fake_split('test', 9, 0),
              'validation': fake_split('validation', 10, 1),
          },
          other: external,
      },
  )
  out_dir = str(tmp_path / 'out')
  # html=False: the gallery would read images from these stand-in sources.
  out = evaluate.evaluate_runs(
      [run_dir],
      split='test',
      out_dir=out_dir,
      data_dir=other,
      num_bootstrap=50,
      html=False,
  )
  _, rows = _read_csv(os.path.join(out_dir, 'predictions.csv'))
  own_val = set(fake_split('validation', 10, 1)[0])
  assert {r[1] for r in rows if r[5] == 'validation'} == own_val
  assert out.counts['test'].cases == 7  # the external test split
  assert out.validation_source == own and out.operating_points
  assert ('honest', 'case', 'hard') in out.protocols
  summary = json.loads(_read_text(out_dir, 'summary.json'))
  assert summary['validation_source'] == own
  assert f"runs' own dataset, {own}" in _read_text(out_dir, 'report.md')
  results = json.loads(_read_text(out_dir, 'results.json'))
  assert all(
      e['calibration']['fitted_on'] == 'validation'
      for e in main_entries(results)
  )
  # On the run's own dataset nothing changes: no validation_source.
  out = evaluate.evaluate_runs(
      [run_dir], split='test', out_dir=out_dir, num_bootstrap=50, html=False
  )
  assert out.validation_source is None and out.counts['test'].cases == 9


# ------------------------------------------------ multi-view runs
def mixed_split(split, num_cases, seed, multiview=(False, True, False, False)):
  """Hand-made SplitPredictions of per-view and multi-view runs (2- and
  3-view cases, views in a shuffled case order)."""
  rng = np.random.default_rng(seed)
  case_ids, view_index = [], []
  for c in rng.permutation(num_cases):
    for v in range(2 + c % 2):
      case_ids.append(f'{split[:3]}{c:03d}hash')
      view_index.append(v)
  labels = np.array([int(c[3:6]) % 3 == 0 for c in case_ids], np.int64)
  probs_rv = np.clip(
      rng.uniform(size=(len(multiview), len(case_ids))) + 0.25 * labels, 0, 1
  )
  preds = predictions_lib.SplitPredictions(
      np.array(case_ids), np.array(view_index), labels, probs_rv
  )
  cases = preds.cases()
  case_probs_rc = voting.run_case_probs(probs_rv, cases)
  multiview_r = np.array(multiview)
  own = np.clip(rng.uniform(size=cases.num_cases) + 0.3 * cases.labels_c, 0, 1)
  case_probs_rc[multiview_r] = own
  preds.case_probs_rc, preds.multiview_r = case_probs_rc, multiview_r
  return preds


MIXED_RUNS = ['run_a', 'run_mv', 'run_c', 'run_d']


@pytest.fixture(scope='module')
def mixed_evaluation(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp('mixed'))
  by_split = {
      'test': mixed_split('test', 17, 0),
      'validation': mixed_split('validation', 15, 1),
  }
  files.write_prediction_csvs(out_dir, MIXED_RUNS, by_split, {})
  out = evaluate.evaluate_predictions(
      out_dir, Settings(split='test', num_bootstrap=100, seed=1)
  )
  return {'out_dir': out_dir, 'out': out, 'by_split': by_split}


def test_mixed_evaluation_recomputable_from_the_csv_files(mixed_evaluation):
  out_dir = mixed_evaluation['out_dir']
  checked = check_case_results_from_case_csv(out_dir, 100, 1)
  # 8 subsets x 2 votings x 3 splits; the hard votes of run_a+run_c+run_d
  # (per-view runs only) from the views.
  assert checked == {'csv': 48, 'predictions.csv': 3}
  # 4 runs x (image: 2 votings, case: 4) x 3 splits, case level: each run's
  # own; stacked (validation, test) of the 3 per-view runs.
  assert check_calibration_from_the_csvs(out_dir) == 4 * 6 * 3 + 3 * 2
  # Image level: every run's per-view probabilities (predictions.csv).
  by_view = _with_pooled(_load_predictions(out_dir))
  results = main_entries(json.loads(_read_text(out_dir, 'results.json')))
  # 8 subsets x (image: 2 votings, case: 4) x 3 splits; stacked (validation
  # and test) of the 4 subsets without the multi-view run_b.
  assert len(results) == 8 * (2 + 4) * 3 + 4 * 2
  for e in results:
    if e['level'] == 'image':
      decisions = _independent_decisions(
          *by_view[e['split']], e['members'], 'image', e['voting']
      )
      _check_entry(e, *decisions, 100, 1)


def test_mixed_case_csv_holds_the_multiview_runs_own_probability(
    mixed_evaluation,
):
  by_case = _load_case_predictions(mixed_evaluation['out_dir'])
  runs, ids, _, probs, votes, multiview = by_case['test']
  preds = mixed_evaluation['by_split']['test']
  np.testing.assert_array_equal(multiview, [False, True, False, False])
  assert ids == [f'test/{c}' for c in preds.cases().case_ids_c]
  assert (probs == preds.case_probs_rc).all()  # written exactly
  np.testing.assert_array_equal(votes[1], preds.case_probs_rc[1] >= 0.5)
  # The multi-view run's case probability is not its soft vote.
  soft = voting.run_case_probs(preds.probs_rv, preds.cases())[1]
  assert np.abs(probs[1] - soft).max() > 0.05
  _, by_split = predictions_lib.read_predictions_csv(
      os.path.join(mixed_evaluation['out_dir'], 'predictions.csv')
  )
  np.testing.assert_array_equal(by_split['test'].multiview_r, multiview)
  assert (by_split['test'].case_probs_rc == preds.case_probs_rc).all()


def test_mixed_report_marks_multiview_runs(mixed_evaluation):
  out_dir = mixed_evaluation['out_dir']
  report = _read_text(out_dir, 'report.md')
  assert 'Runs: run_a, run_mv (multi-view), run_c, run_d.' in report
  assert '| run_mv (multi-view) | all views (case) |' in report
  assert '| run_a (multi-view)' not in report
  assert 'each member votes once per case' in report
  summary = json.loads(_read_text(out_dir, 'summary.json'))
  assert summary['multiview_runs'] == ['run_mv']


def test_per_view_results_unchanged_by_case_predictions_csv(tmp_path):
  """Per-view runs only: the same results.json with case_predictions.csv,
  without it (older evaluations), and from memory."""
  by_split = {
      'test': mixed_split('test', 13, 2, multiview=(False,) * 4),
      'validation': mixed_split('validation', 11, 3, multiview=(False,) * 4),
  }
  for preds in by_split.values():
    preds.case_probs_rc = preds.multiview_r = None
  settings = Settings(split='test', num_bootstrap=50)
  expected = compute(by_split, MIXED_RUNS, settings).results_json()
  written = []
  for with_case_csv in (True, False):
    out_dir = str(tmp_path / f'case_csv_{with_case_csv}')
    os.makedirs(out_dir)
    files.write_prediction_csvs(out_dir, MIXED_RUNS, by_split, {})
    if not with_case_csv:
      os.remove(os.path.join(out_dir, 'case_predictions.csv'))
    evaluate.evaluate_predictions(out_dir, settings)
    written.append(json.loads(_read_text(out_dir, 'results.json')))
    assert written[-1] == expected
  assert written[0] == written[1]  # the subgroups' entries too


def test_pool_splits_orders_case_probabilities_by_pooled_case_id():
  """Validation first, test second; case ids interleave across the splits
  (b, d / a, c, e); the pooled rows follow the sorted pooled ids."""

  def split_of(case_ids, probs_c):
    n = len(case_ids)
    return predictions_lib.SplitPredictions(
        case_ids_v=np.repeat(case_ids, 2),
        view_index_v=np.tile([0, 1], n),
        labels_v=np.zeros(2 * n, np.int64),
        probs_rv=np.full((2, 2 * n), 0.5),
        case_probs_rc=np.array([probs_c, np.full(n, 0.5)]),
        multiview_r=np.array([True, False]),
    )

  pooled = results_lib.pool_splits(
      {
          'validation': split_of(['d', 'b'], [0.4, 0.2]),  # by view order
          'test': split_of(['e', 'a', 'c'], [0.5, 0.1, 0.3]),
      }
  )
  cases = pooled.cases()
  np.testing.assert_array_equal(
      cases.case_ids_c,
      ['test/a', 'test/c', 'test/e', 'validation/b', 'validation/d'],
  )
  # Each split's case_probs_rc is in its sorted case order: validation
  # (b, d) = (0.4, 0.2), test (a, c, e) = (0.5, 0.1, 0.3).
  np.testing.assert_array_equal(
      pooled.case_probs_rc[0], [0.5, 0.1, 0.3, 0.4, 0.2]
  )
  np.testing.assert_array_equal(pooled.multiview_r, [True, False])
  d = results_lib.decide_split(pooled, [0], 'case', 'soft')
  np.testing.assert_array_equal(d.scores, [0.5, 0.1, 0.3, 0.4, 0.2])


def test_case_predictions_csv_missing_rows_is_an_error(tmp_path):
  by_split = {'test': mixed_split('test', 5, 0)}
  pred_path = str(tmp_path / 'predictions.csv')
  case_path = str(tmp_path / 'case_predictions.csv')
  files.write_prediction_csvs(str(tmp_path), MIXED_RUNS, by_split, {})
  lines = pathlib.Path(case_path).read_text().splitlines()
  pathlib.Path(case_path).write_text('\n'.join(lines[:-1]) + '\n')
  with pytest.raises(ValueError, match='lacks some run/case rows'):
    predictions_lib.read_predictions_csv(pred_path)


# ------------------------------------ trained runs, real data, end to end
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """Two tiny runs trained on a built synthetic dataset, and a 2nd dataset."""
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if repo not in sys.path:
    sys.path.insert(0, repo)
  from ankle_jax import train
  from ankle_jax.data import prepare
  from ankle_jax.data import synthetic
  from configs import local as local_config

  root = tmp_path_factory.mktemp('trained')
  data_dirs = []
  for seed in (0, 1):
    manual = root / f'studies{seed}'
    synthetic.generate_studies(
        manual,
        num_normal=42,
        num_fracture=42,
        seed=seed,
        min_size=96,
        max_size=128,
        views_probs=(0.0, 0.1, 0.9),
    )
    data_dir = str(root / f'tfds{seed}')
    prepare.build_dataset(manual, data_dir, num_workers=1, progress=False)
    data_dirs.append(data_dir)
  run_dirs = []
  for seed in (0, 1):
    config = local_config.get_config()
    config.data.data_dir = data_dirs[0]
    config.seed = seed
    config.learning_rate = 1e-2
    config.num_train_steps = 4
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.image_summary_every_steps = 0
    workdir = str(root / f'run{seed}')
    train.train_and_evaluate(config, workdir, model=TinyNet())
    run_dirs.append(workdir)
  return {'root': root, 'run_dirs': run_dirs, 'data_dirs': data_dirs}


def _test_case_ids(data_dir, split='test'):
  from ankle_jax.data import pipeline

  source = pipeline.load_split(data_dir, split)
  return {pipeline.to_str(source[i]['case_id']) for i in range(len(source))}


def test_end_to_end_trained_runs_results_recomputable(trained, monkeypatch):
  monkeypatch.setattr(models, 'from_run_config', lambda config: TinyNet())
  out_dir = str(trained['root'] / 'eval')
  out = evaluate.evaluate_runs(
      trained['run_dirs'],
      split='test',
      out_dir=out_dir,
      num_bootstrap=200,
      seed=1,
      checkpoint='best',
      batch_size=16,
  )
  results = check_results_recomputable(out_dir, 200, 1)
  # 2 subsets (the 2 single runs) x (image: 2 votings, case: 4) x 3 splits,
  # and stacked on validation and test.
  assert len(results) == 2 * (2 + 4) * 3 + 2 * 2
  header, rows = _read_csv(os.path.join(out_dir, 'predictions.csv'))
  assert header[:5] == ['run', 'case_id', 'view_index', 'label', 'probability']
  test_ids = {r[1] for r in rows if r[5] == 'test'}
  assert test_ids == _test_case_ids(trained['data_dirs'][0])
  # The dataset's per-view fields, as columns after split.
  assert header[6:] == ['view_position', 'num_views', 'probability_calibrated']
  from ankle_jax.data import pipeline

  source = pipeline.load_split(trained['data_dirs'][0], 'test')
  records = {
      (pipeline.to_str(r['case_id']), int(r['view_index'])): r
      for r in (source[i] for i in range(len(source)))
  }
  for r in rows:
    if r[5] == 'test':
      record = records[(r[1], int(r[2]))]
      assert r[6] == pipeline.to_str(record['view_position'])
      assert int(r[7]) == int(record['num_views'])
  assert {r[6] for r in rows} - {''}
  assert any(s.subgroup.field == 'view_position' for s in out.subgroups)
  assert out.counts['test'].cases == len(test_ids) > 20
  # Case identifiers are the dataset's 16-hex salted hashes, nothing else.
  assert all(len(c) == 16 and int(c, 16) >= 0 for c in test_ids)


def test_evaluate_scores_the_first_views_of_each_case(
    trained, tmp_path, monkeypatch
):
  """--max_eval_views=2 on both splits: each case's first 2 views by view
  position, then file name (pipeline.eval_order), stated in the report."""
  from ankle_jax.data import pipeline

  monkeypatch.setattr(models, 'from_run_config', lambda config: TinyNet())
  out_dir = str(tmp_path / 'two_views')
  evaluate.evaluate_runs(
      trained['run_dirs'][:1],
      split='test',
      out_dir=out_dir,
      num_bootstrap=50,
      max_eval_views=2,
      batch_size=16,
  )
  _, rows = _read_csv(os.path.join(out_dir, 'predictions.csv'))
  for split in ('test', 'validation'):
    source = pipeline.load_split(trained['data_dirs'][0], split)
    num_views = {}
    for i in range(len(source)):
      case = pipeline.to_str(source[i]['case_id'])
      num_views[case] = num_views.get(case, 0) + 1
    assert max(num_views.values()) == 3  # so the cap removes views
    expected = {
        (pipeline.to_str(source[i]['case_id']), int(source[i]['view_index']))
        for i in pipeline.eval_order(source, 2)
    }
    assert {(r[1], int(r[2])) for r in rows if r[5] == split} == expected
    assert {c for c, _ in expected} == set(num_views)
  summary = json.loads(_read_text(out_dir, 'summary.json'))
  assert summary['max_eval_views'] == 2
  assert 'the first 2 of each case by view position' in _read_text(
      out_dir, 'report.md'
  )


def test_evaluate_with_data_dir_reads_another_dataset(trained, tmp_path):
  """The command, in a subprocess, with --data_dir and --dataset_config."""
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out_dir = str(tmp_path / 'other')
  code = (
      'import sys; sys.path.insert(0, "tests");'
      'import test_evaluate as t;'
      'from ankle_jax import console, evaluate, models;'
      'models.from_run_config = lambda config: t.TinyNet();'
      'evaluate.define_flags(); console.run(evaluate.main)'
  )
  proc = subprocess.run(
      [
          sys.executable,
          '-c',
          code,
          '--runs=' + ','.join(trained['run_dirs']),
          '--split=test',
          f'--out={out_dir}',
          '--checkpoint=latest',
          f'--data_dir={trained["data_dirs"][1]}',
          '--dataset_config=dicom_cases',
          '--num_bootstrap=100',
          '--max_subsets=2',
          '--no_html',
      ],
      capture_output=True,
      text=True,
      cwd=repo,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not os.path.exists(os.path.join(out_dir, 'report.html'))
  (wrote,) = [l for l in proc.stdout.splitlines() if 'Wrote report.md' in l]
  assert 'MODEL_CARD.md' in wrote and 'report.html' not in wrote
  assert out_dir in wrote
  assert 'Headline: run' in proc.stdout
  assert 'protocol, all views (case level):' in proc.stdout
  assert 'is illegal' not in proc.stderr  # valid TensorBoard tags
  _, rows = _read_csv(os.path.join(out_dir, 'predictions.csv'))
  other = _test_case_ids(trained['data_dirs'][1])
  assert {r[1] for r in rows if r[5] == 'test'} == other
  assert not other & _test_case_ids(trained['data_dirs'][0])
  summary = json.loads(
      pathlib.Path(os.path.join(out_dir, 'summary.json')).read_text()
  )
  assert summary['checkpoints']['run0'] == {'which': 'latest', 'step': 4}
  check_results_recomputable(out_dir, 100, 0)


# ------------------------------------- report.md, roc.png, TensorBoard
def _read_text(out_dir, name):
  return pathlib.Path(os.path.join(out_dir, name)).read_text()


def test_report_states_checkpoints_counts_threshold_intervals(
    fake_evaluation,
):
  report = _read_text(fake_evaluation['out_dir'], 'report.md')
  for name in ('run_a', 'run_b', 'run_c'):
    assert f'| {name} | best | 7 |' in report
  # Class counts of each split (fake_split: labels alternate by case).
  _, _, labels, _ = fake_evaluation['splits']['test']
  assert '| `test` | 13 (7 / 6) | ' in report
  assert f'{len(labels)} ({(labels == 0).sum()} / {labels.sum()})' in report
  assert 'p(fracture) >= 0.5' in report
  assert 'Wilson score intervals' in report
  assert 'design effect of the case clusters' in report
  assert 'ROC AUC: DeLong on the logit scale' in report
  assert 'case-level bootstrap (300 resamples)' in report
  # Operating points: chosen on validation, reported on test, per row.
  op_rows = [l for l in report.splitlines() if 'maximum Youden J' in l]
  assert op_rows and all('| `validation` | `test` |' in l for l in op_rows)


def test_thresholds_lie_strictly_between_distinct_scores(fake_evaluation):
  out_dir = fake_evaluation['out_dir']
  summary = json.loads(_read_text(out_dir, 'summary.json'))
  by_split = _load_predictions(out_dir)
  assert summary['operating_points']
  for op in summary['operating_points']:
    _, _, scores, _ = _independent_decisions(
        *by_split['validation'], op['members'], op['level'], 'soft'
    )
    t = op['threshold']
    assert not np.isclose(scores, t, rtol=0, atol=1e-12).any(), op
    below, above = scores[scores < t], scores[scores > t]
    assert above.size, op  # never above every score
    if below.size:  # halfway between the two neighbouring distinct scores
      assert t == pytest.approx((below.max() + above.min()) / 2), op


def test_roc_png_is_200_dpi(fake_evaluation):
  with Image.open(os.path.join(fake_evaluation['out_dir'], 'roc.png')) as img:
    dpi = img.info['dpi']
    width, height = img.size
  assert round(dpi[0]) == round(dpi[1]) == 200
  assert width >= 1200 and height >= 1200


def test_tensorboard_tags_are_valid_grouped_and_at_the_checkpoint_step(
    fake_evaluation,
):
  loader = pytest.importorskip(
      'tensorboard.backend.event_processing.event_file_loader'
  )
  (path,) = glob.glob(
      os.path.join(fake_evaluation['out_dir'], 'events.out.tfevents.*')
  )
  scalars = [
      (v.tag, e.step)
      for e in loader.EventFileLoader(path).Load()
      for v in e.summary.value
  ]
  tags = [tag for tag, _ in scalars]
  # The Headline's metrics only, under one group that opens after a
  # training run's train/ and val/.
  assert len(tags) == len(set(tags)) and 6 <= len(tags) <= 12, tags
  assert all(re.fullmatch(r'verdict/(image|case)_\w+', t) for t in tags), tags
  assert 'verdict/case_roc_auc' in tags and 'verdict/image_accuracy' in tags
  assert sorted(['train', 'val', tensorboard.GROUP])[-1] == 'verdict'
  assert {step for _, step in scalars} == {7}  # the checkpoints' step


def test_single_run_report_has_no_ensemble_rows(tmp_path, monkeypatch):
  monkeypatch.setattr(models, 'from_run_config', tiny_create_model)
  run_dir = make_fake_run(str(tmp_path / 'solo'), 0)
  splits = {
      'test': fake_split('test', 6, 0),
      'validation': fake_split('validation', 6, 1),
  }
  evaluate.evaluate_runs(
      [run_dir],
      split='test',
      out_dir=str(tmp_path / 'out'),
      num_bootstrap=50,
      batches_fn=fake_batches_fn(splits),
  )
  report = _read_text(str(tmp_path / 'out'), 'report.md')
  assert 'Best ensemble' not in report and 'Best by' not in report
  assert 'One run (nothing to choose); every row reported on `test`' in report
  tables = report.split('## Operating points')[0]
  assert tables.count('| solo | single view |') == 4  # 2 protocols x 2 votes


def test_probabilities_near_one_stay_distinct():
  """float32 softmax rounds p > 1 - 6e-8 to 1.0; log_softmax keeps them."""

  class Margin(nn.Module):
    """logits (0, margin) with margin = 100 * the image mean."""

    @nn.compact
    def __call__(self, x, train=False):
      margin = 100.0 * x.mean(axis=(1, 2, 3))
      return layers.ModelOutputs(
          jnp.stack([jnp.zeros_like(margin), margin], -1), None
      )

  margins = jnp.array([18.0, 20.0, 25.0, 30.0])
  images = jnp.broadcast_to(margins[:, None, None, None] / 100, (4, 4, 4, 1))
  log_p = inference.fracture_log_probability(
      Margin(), {}, images, standardize=False
  )
  probs = inference.probability_from_log(log_p)
  softmax = jax.nn.softmax(jnp.stack([0 * margins, margins], -1))[:, 1]
  assert (np.asarray(softmax) == 1.0).all()  # what float32 softmax gives
  assert (probs < 1.0).all() and (np.diff(probs) > 0).all()
  np.testing.assert_allclose(1.0 - probs, np.exp(-margins), rtol=1e-3)


# ---------------------------------------------------------- the command
def _evaluate_command(*args, cwd=None):
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run(
      [sys.executable, '-m', 'ankle_jax.evaluate', *args],
      capture_output=True,
      text=True,
      cwd=cwd or repo,
      timeout=300,
  )


def test_command_errors_are_short_and_exit_2(tmp_path):
  not_a_run = tmp_path / 'photos'
  not_a_run.mkdir()
  out = tmp_path / 'out'
  proc = _evaluate_command(f'--runs={not_a_run}', f'--out={out}')
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.splitlines() == [
      f'error: --runs: {not_a_run} is not a training run directory (no '
      'config.json and no checkpoints):',
      'a run directory holds config.json and checkpoints/ (written by python '
      'launch.py --workdir=DIR).',
  ]
  assert not out.exists()  # no empty --out folder left behind
  proc = _evaluate_command(f'--out={out}')
  assert proc.returncode == 2
  assert proc.stderr.startswith('error: --runs is required.\nusage: ')
  assert len(proc.stderr.splitlines()) == 2
  proc = _evaluate_command()
  assert proc.stderr.startswith('error: --runs and --out are required.')


def test_command_help_exits_0():
  proc = _evaluate_command('--help')
  assert proc.returncode == 0 and '--runs' in proc.stdout

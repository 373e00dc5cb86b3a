"""Multi-view runs through the real loop (case loader, view dropout, case
validation, checkpoints, exact resume) and through evaluate's forward."""

import csv
import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

import test_train  # noqa: E402

from ankle_jax import checkpoint  # noqa: E402
from ankle_jax import evaluate  # noqa: E402
from ankle_jax import inference  # noqa: E402
from ankle_jax import models  # noqa: E402
from ankle_jax import train  # noqa: E402
from ankle_jax.data import cases  # noqa: E402
from ankle_jax.data import pipeline  # noqa: E402
from ankle_jax.models import multiview  # noqa: E402
from ankle_jax.training import losses  # noqa: E402
from ankle_jax.training import state as state_lib  # noqa: E402
from ankle_jax.training import steps  # noqa: E402
from tests.models.test_multiview import TinyTrunk  # noqa: E402

compilation_cache = test_train.compilation_cache


def multiview_config(**overrides):
  config = test_train.tiny_config(batch_size=2, eval_batch_size=3, **overrides)
  config.model.multiview.enabled = True
  config.model.multiview.fusion = 'attention'
  config.model.multiview.max_views = 3
  config.model.multiview.view_dropout = 0.3
  config.model.multiview.view_loss_weight = 0.5
  config.best_metric = 'val_case_accuracy'
  return config


def sources():
  return (
      test_train.make_records(24, seed=1, views=3),
      test_train.make_records(15, seed=2, views=3)[:-1],  # A 2-view case.
  )


def run(config, workdir, monkeypatch):
  test_train._validate_stub(monkeypatch)
  model = multiview.Model(trunk=TinyTrunk(), fusion='attention')
  return train.train_and_evaluate(
      config, str(workdir), model=model, sources=sources()
  )


def records(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_multiview_run_trains_validates_and_resumes_exactly(
    tmp_path, monkeypatch
):
  config = multiview_config(num_train_steps=6)
  summary = run(config, tmp_path / 'straight', monkeypatch)
  assert summary['final_step'] == 6
  logged = records(tmp_path / 'straight')
  train_rows = [r for r in logged if 'train_loss' in r]
  assert all(np.isfinite(r['train_view_loss']) for r in train_rows)
  evals = [r for r in logged if 'val_case_accuracy' in r]
  assert [r['step'] for r in evals] == [3, 6]
  # 2 cases x 3 view slots per step.
  assert all(r['images_per_second'] > 0 for r in train_rows)

  run(multiview_config(num_train_steps=3), tmp_path / 'resumed', monkeypatch)
  run(config, tmp_path / 'resumed', monkeypatch)
  straight, _ = checkpoint.restore_variables(tmp_path / 'straight', 'latest')
  resumed, _ = checkpoint.restore_variables(tmp_path / 'resumed', 'latest')
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  losses = lambda d: [(r['step'], r.get('train_loss')) for r in records(d)]
  assert losses(tmp_path / 'straight') == losses(tmp_path / 'resumed')


def test_val_case_auc_of_a_multiview_run_is_the_case_heads_auc(
    tmp_path, monkeypatch
):
  seen = test_train.spy_on_validation(monkeypatch)
  run(multiview_config(num_train_steps=3), tmp_path, monkeypatch)
  (logged,) = [r for r in records(tmp_path) if 'val_case_auc' in r]
  (out,) = seen
  assert list(out['label']) == [0, 1, 0, 1, 0]  # 5 cases, one row each.
  expected = roc_auc_score(out['label'], out['probs'][:, -1])
  assert logged['val_case_auc'] == pytest.approx(expected, abs=1e-12)
  # The 14 views (4 cases of 3, one of 2) are val_auc's, not val_case_auc's.
  assert len(out['view_probs']) == 14


def test_view_loss_weight_enters_the_loss():
  config = multiview_config()
  model = multiview.Model(trunk=TinyTrunk(), fusion='mean')
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config),
      model,
      jax.random.PRNGKey(0),
      test_train.IMAGE_SIZE,
  )
  loader = cases.make_case_train_loader(
      sources()[0],
      global_batch_size=4,
      max_views=3,
      image_size=test_train.IMAGE_SIZE,
      seed=0,
  )
  batch = next(loader)
  views = steps.ViewSettings(max_views=3, view_dropout=0.0)
  metrics = {}
  for weight in (0.0, 2.0):
    loss_cfg = losses.LossSettings(aux_loss_weight=0.0, view_loss_weight=weight)
    _, metrics[weight] = steps.train_step(
        state,
        batch,
        learning_rate_fn=lambda step: 1e-3,
        aug=steps.AugmentSettings(),
        loss_cfg=loss_cfg,
        views=views,
    )
  m0, m2 = metrics[0.0], metrics[2.0]
  np.testing.assert_allclose(m0['loss'], m0['ce'] + m0['l2'], rtol=1e-6)
  np.testing.assert_allclose(
      m2['loss'], m2['ce'] + m2['l2'] + 2.0 * m2['view_ce'], rtol=1e-6
  )
  assert float(m2['view_ce']) > 0


def test_evaluate_forward_regroups_views_into_cases(tmp_path, monkeypatch):
  """predict_split on a multi-view run: per-view rows for every view, a case
  probability per case equal to the model applied to the whole case."""
  config = multiview_config(num_train_steps=3)
  run(config, tmp_path, monkeypatch)
  variables, step = checkpoint.restore_variables(tmp_path, 'latest')
  model = multiview.Model(trunk=TinyTrunk(), fusion='attention')
  monkeypatch.setattr(models, 'from_run_config', lambda config: model)
  loaded = inference.Run('mv', str(tmp_path), config, variables, step)
  source = sources()[1]
  batches_for = lambda size: pipeline.iterate_eval_batches(
      source, batch_size=4, image_size=size
  )
  preds = inference.predict_split([loaded], batches_for, cases_per_batch=2)
  assert len(preds.labels_v) == len(source)
  assert preds.multiview_r.tolist() == [True]
  case_index = preds.cases()
  assert preds.case_probs_rc.shape == (1, case_index.num_cases)
  # Case by case, straight from the model.
  for batch in cases.iterate_case_batches(
      source, batch_size=1, image_size=test_train.IMAGE_SIZE
  ):
    case_log, view_log = inference.case_log_fracture(
        model, variables, batch['image'], batch['view_mask']
    )
    c = list(case_index.case_ids_c).index(batch['case_id'][0])
    np.testing.assert_allclose(
        preds.case_probs_rc[0, c], np.exp(float(case_log[0])), rtol=1e-4
    )


TWO_DEVICES_SCRIPT = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import jax, numpy as np
assert jax.device_count() == 2, jax.devices()
import test_train as t
from ankle_jax import sharding
from ankle_jax.training import losses, state as state_lib, steps
from ankle_jax.data import cases
from ankle_jax.models import multiview
from tests.models.test_multiview import TinyTrunk
config = t.tiny_config(l2_alpha=0.01)
records = t.make_records(24, seed=1, views=3)[:-1]  # Padding in a case.
batch = next(cases.make_case_train_loader(
    records, global_batch_size=4, max_views=3, image_size=t.IMAGE_SIZE,
    seed=0))
assert not batch['view_mask'].all()
views = steps.ViewSettings(max_views=3, view_dropout=0.3)
aug = steps.AugmentSettings(flip_lr=True, brightness_delta=0.3)
lr_fn = state_lib.create_learning_rate_fn(
      state_lib.OptimizerSettings.from_config(config), 10)
results = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = sharding.create_mesh(devices)
  model = multiview.Model(trunk=TinyTrunk(), fusion='attention', dropout_rate=0.5)
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config), model, jax.random.PRNGKey(0), t.IMAGE_SIZE, 10, lr_fn)
  state = jax.device_put(state, sharding.replicated(mesh))
  compiled = steps.compile_steps(
      mesh, lr_fn, aug, losses.LossSettings.from_config(config), views)
  for _ in range(3):
    placed = sharding.shard_batch(batch, mesh)
    assert len(placed['view_mask'].sharding.device_set) == len(devices)
    state, metrics = compiled.train(state, placed)
  out = compiled.eval(state, sharding.shard_batch(batch, mesh))
  results.append(jax.device_get((state.params, state.batch_stats, metrics, out)))
# Adam's m / sqrt(v) turns reduction-order noise in a near-zero gradient into
# a step of about the learning rate (1e-2): atol 1e-4 over 3 steps.
jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
    results[0], results[1])
print('TWO_DEVICES_OK')
"""


def test_two_devices_match_one_for_a_multiview_run():
  """Cases sharded over two devices: the same steps, masked BatchNorm
  statistics pooled over both devices' real views."""
  test_train.run_on_two_devices(TWO_DEVICES_SCRIPT)


def test_evaluate_runs_scores_a_multiview_run_next_to_a_per_view_one(
    tmp_path, monkeypatch
):
  """The whole evaluate command's library path on a multi-view run and a
  per-view run: case_predictions.csv holds the multi-view case probability,
  and results.json's single-run case entries are computed from it."""
  mv_dir, pv_dir = tmp_path / 'mv', tmp_path / 'pv'
  run(multiview_config(num_train_steps=3), mv_dir, monkeypatch)
  test_train.run(test_train.tiny_config(num_train_steps=3), pv_dir, monkeypatch)
  trunk_model = multiview.Model(trunk=TinyTrunk(), fusion='attention')
  per_view_model = test_train.TinyNet(aux_head=True, bn_momentum=0.8)
  monkeypatch.setattr(
      models,
      'from_run_config',
      lambda config: trunk_model
      if config.model.multiview.enabled
      else per_view_model,
  )
  sources_by_split = {
      'test': test_train.make_records(15, seed=3, views=3)[:-1],
      'validation': test_train.make_records(12, seed=4, views=3),
  }

  def batches_fn(split):
    return lambda size: pipeline.iterate_eval_batches(
        sources_by_split[split], batch_size=4, image_size=size
    )

  out = tmp_path / 'eval'
  evaluate.evaluate_runs(
      [str(mv_dir), str(pv_dir)],
      split='test',
      out_dir=str(out),
      checkpoint='latest',
      num_bootstrap=50,
      batches_fn=batches_fn,
      html=False,  # The per-view TinyNet has no ClassifierHead for Grad-CAM.
  )
  with open(out / 'case_predictions.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  kinds = {r['run']: r['kind'] for r in rows}
  assert kinds == {'mv': 'multi_view', 'pv': 'per_view'}
  entries = json.loads((out / 'results.json').read_text())
  mv_case = next(
      e
      for e in entries
      if e['members'] == ['mv']
      and e['level'] == 'case'
      and e['voting'] == 'soft'
      and e['split'] == 'test'
      and not e.get('subgroup')
  )
  test_rows = [r for r in rows if r['run'] == 'mv' and r['split'] == 'test']
  labels = np.array([int(r['label']) for r in test_rows])
  probs = np.array([float(r['probability']) for r in test_rows])
  assert len(test_rows) == 5  # 5 cases, the last with 2 views.
  accuracy = float(np.mean((probs >= 0.5) == labels))
  assert mv_case['metrics']['accuracy'] == pytest.approx(accuracy)

"""Tests of ankle_jax.train: loss, steps, running statistics, resume, devices,
NaN faults.

A tiny model with the ankle_jax.models calling convention keeps these fast; the
data are in-memory records in the TFDS record format, read through the real
ankle_jax.data.pipeline.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import types
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

import test_writers  # noqa: E402

from ankle_jax import checkpoint  # noqa: E402
from ankle_jax import console  # noqa: E402
from ankle_jax import inference  # noqa: E402
from ankle_jax import models  # noqa: E402
from ankle_jax import sharding  # noqa: E402
from ankle_jax import train  # noqa: E402
from ankle_jax import writers  # noqa: E402
from ankle_jax.data import augment  # noqa: E402
from ankle_jax.training import config_checks  # noqa: E402
from ankle_jax.training import losses  # noqa: E402
from ankle_jax.training import records  # noqa: E402
from ankle_jax.training import state as state_lib  # noqa: E402
from ankle_jax.training import steps  # noqa: E402
from ankle_jax.training import validation  # noqa: E402
from configs import local as local_config  # noqa: E402

IMAGE_SIZE = 16


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """Reuses XLA compilations across the several short runs of this module."""
  cache_dir = tmp_path_factory.mktemp('jax_cache')
  previous = (
      jax.config.jax_compilation_cache_dir,
      jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  jax.config.update('jax_compilation_cache_dir', str(cache_dir))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  yield
  jax.config.update('jax_compilation_cache_dir', previous[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', previous[1])


class Outputs(NamedTuple):
  logits: jax.Array
  aux_logits: jax.Array | None


class TinyNet(nn.Module):
  """conv -> fixed affine (far from N(0,1)) -> BN -> ReLU -> pool -> Dense; optional aux."""

  aux_head: bool = False
  dropout_rate: float = 0.0
  bn_momentum: float = 0.8

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), strides=(2, 2), use_bias=False)(x)
    x = 4.0 * x + 3.0  # Running stats must move far from their init (0, 1).
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(
        x
    )
    x = nn.relu(x)
    pooled = jnp.mean(x, axis=(1, 2))
    aux = nn.Dense(2, name='aux_dense')(pooled) if self.aux_head else None
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    return Outputs(nn.Dense(2, name='head')(pooled), aux)


def make_records(num, seed=0, size=IMAGE_SIZE, views=1):
  """TFDS-format records: label 1 images carry a bright square."""
  rng = np.random.default_rng(seed)
  records = []
  for i in range(num):
    label = (i // views) % 2  # One label per case.
    image = rng.uniform(0.0, 0.4, size=(size, size, 1))
    if label:
      r, c = rng.integers(0, size - 6, size=2)
      image[r : r + 6, c : c + 6] = 1.0
    records.append(
        {
            'image': np.round(image * 65535).astype(np.uint16),
            'label': np.int64(label),
            'case_id': f'case{i // views:03d}'.encode(),
            'view_index': np.int32(i % views),
            'num_views': np.int32(views),
            'view_position': b'AP',
        }
    )
  return records


def fixed_batch(num=8, seed=0):
  records = make_records(num, seed)
  return {
      'image': np.stack([r['image'] for r in records]).astype(np.float32)
      / 65535.0,
      'label': np.array([int(r['label']) for r in records], np.int32),
  }


def tiny_config(**overrides):
  config = local_config.get_config()
  config.image_size = IMAGE_SIZE
  config.batch_size = 4
  config.eval_batch_size = 4
  config.learning_rate = 1e-2
  config.l2_alpha = 1e-3
  config.num_train_steps = 6
  config.log_every_steps = 1
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  config.image_summary_every_steps = 3
  config.progress_bar = False
  for key, value in overrides.items():
    config[key] = value
  return config


def _validate_stub(monkeypatch):
  # The tiny image size is below the real models' 75 px minimum.
  monkeypatch.setattr(config_checks, 'MIN_IMAGE_SIZE', 8)


def run(config, workdir, monkeypatch, aux_head=True, bn_momentum=0.8):
  _validate_stub(monkeypatch)
  sources = (make_records(24, seed=1), make_records(12, seed=2, views=3))
  model = TinyNet(aux_head=aux_head, bn_momentum=bn_momentum)
  return train.train_and_evaluate(
      config, str(workdir), model=model, sources=sources
  )


def jitted_train_step(config, state_lr_fn=None):
  lr_fn = state_lr_fn or state_lib.create_learning_rate_fn(
      state_lib.OptimizerSettings.from_config(config), 100
  )
  return jax.jit(
      lambda s, b: steps.train_step(
          s,
          b,
          learning_rate_fn=lr_fn,
          aug=steps.AugmentSettings(),
          loss_cfg=losses.LossSettings.from_config(config),
      )
  )


def test_loss_falls_on_a_fixed_batch():
  config = tiny_config(learning_rate=3e-2)
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config),
      TinyNet(aux_head=True),
      jax.random.PRNGKey(0),
      IMAGE_SIZE,
  )
  step = jitted_train_step(config)
  batch = jax.tree.map(jnp.asarray, fixed_batch())
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.6 * losses[0], losses
  assert int(state.step) == 25
  assert float(metrics['aux_ce']) > 0.0


@pytest.mark.slow
def test_bfloat16_trains_with_float32_params_stats_and_loss():
  """config.dtype='bfloat16': a real (tiny) Xception computes in bf16 and learns
  a fixed batch,
  while params, BatchNorm statistics, optimizer state and the loss stay float32.
  """
  config = tiny_config(dtype='bfloat16', learning_rate=1e-2, image_size=75)
  model = models.from_run_config(config)
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config),
      model,
      jax.random.PRNGKey(0),
      75,
  )
  step = jitted_train_step(config)
  batch = jax.tree.map(jnp.asarray, fixed_batch(num=8))
  batch['image'] = jax.image.resize(batch['image'], (8, 75, 75, 1), 'bilinear')
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert metrics['loss'].dtype == jnp.float32
  for tree in (state.params, state.batch_stats, state.opt_state):
    dtypes = {
        leaf.dtype
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating)
    }
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
  assert all(np.isfinite(losses)), losses
  assert min(losses[-3:]) < 0.8 * losses[0], losses
  # The forward really runs in bf16: the model's activations are bf16.
  _, inter = model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      batch['image'],
      train=False,
      mutable=['intermediates'],
  )
  assert {x.dtype for x in jax.tree.leaves(inter)} == {jnp.dtype(jnp.bfloat16)}


def test_eval_uses_running_statistics():
  config = tiny_config()
  model = TinyNet(bn_momentum=0.8)
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config),
      model,
      jax.random.PRNGKey(0),
      IMAGE_SIZE,
  )
  init_stats = state.batch_stats
  step = jitted_train_step(config)
  batch = jax.tree.map(jnp.asarray, fixed_batch())
  for _ in range(40):
    state, metrics = step(state, batch)
  train_accuracy = float(metrics['accuracy'])
  assert train_accuracy == 1.0

  out = steps.eval_step(state, batch)
  eval_accuracy = float(
      np.mean(np.argmax(out['probs'], -1) == np.asarray(batch['label']))
  )
  assert eval_accuracy >= train_accuracy - 0.125
  # Train-mode (batch statistics) and eval-mode (running statistics) outputs
  # agree...
  train_out, _ = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      augment.standardize_per_image(batch['image']),
      train=True,
      mutable=['batch_stats'],
  )
  np.testing.assert_allclose(
      out['probs'], jax.nn.softmax(train_out.logits), atol=0.1
  )
  # ...and eval does not use batch statistics: one example alone gives the same
  # output.
  single = {k: v[:1] for k, v in batch.items()}
  np.testing.assert_allclose(
      steps.eval_step(state, single)['probs'], out['probs'][:1], atol=1e-5
  )
  # The test has teeth: the freshly initialised statistics give other
  # predictions.
  stale = steps.eval_step(state.replace(batch_stats=init_stats), batch)['probs']
  assert np.max(np.abs(np.asarray(stale) - np.asarray(out['probs']))) > 0.2


def test_eval_step_and_inference_share_one_forward():
  """Training's eval step and inference's forward are one computation: the
  same per-image standardization and eval-mode apply (models.forward)."""
  config = tiny_config()
  model = TinyNet(aux_head=True, bn_momentum=0.8)
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config),
      model,
      jax.random.PRNGKey(0),
      IMAGE_SIZE,
  )
  state, _ = jitted_train_step(config)(
      state, jax.tree.map(jnp.asarray, fixed_batch())
  )  # Running statistics away from their initial values.
  batch = jax.tree.map(jnp.asarray, fixed_batch(seed=1))
  probs = steps.eval_step(state, batch)['probs'][:, 1]
  log_p = inference.fracture_log_probability(
      model, state_lib.variables_of(state), batch['image']
  )
  np.testing.assert_allclose(np.exp(log_p), probs, rtol=1e-5, atol=1e-7)
  unstandardized = inference.fracture_log_probability(
      model, state_lib.variables_of(state), batch['image'], standardize=False
  )
  assert np.max(np.abs(np.exp(unstandardized) - probs)) > 1e-3


def test_checkpoint_and_writers_are_handed_the_validation_metrics():
  """The validation metrics are listed once (training/validation.py);
  checkpoint.py and writers.py receive them and import nothing of training."""
  for module in (checkpoint, writers):
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    imported = {
        f'{node.module}.{alias.name}'
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported, module  # The check sees the imports...
    assert not {
        name
        for name in imported
        if name.startswith(('ankle_jax.training', 'ankle_jax.train'))
    }  # ...and none is of training.
  assert set(validation.METRIC_MODES) == set(validation.METRIC_NAMES)
  with pytest.raises(console.UserError, match='valid values: val_accuracy'):
    config_checks.validate_config(tiny_config(best_metric='val_f1'))


def test_l2_term_equals_hand_computation():
  params = {
      'head': {'kernel': jnp.arange(6.0).reshape(3, 2), 'bias': jnp.ones(2)},
      'conv': {'kernel': jnp.full((3, 3, 1, 2), 2.0)},
      'aux': {'dense': {'kernel': jnp.full((2, 2), -1.0)}},
  }
  dense = (np.sum(np.arange(6.0) ** 2) + 4.0) / 2
  assert float(losses.l2_sum(params, 'dense')) == pytest.approx(dense)
  assert float(losses.l2_sum(params, 'all')) == pytest.approx(
      dense + 18 * 4.0 / 2
  )

  config = tiny_config(l2_alpha=0.37, aux_loss_weight=0.0)
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config),
      TinyNet(aux_head=True),
      jax.random.PRNGKey(0),
      IMAGE_SIZE,
  )
  dense_kernels = [
      np.asarray(state.params['head']['kernel']),
      np.asarray(state.params['aux_dense']['kernel']),
  ]
  expected = (
      0.37 * sum(np.sum(k.astype(np.float64) ** 2) for k in dense_kernels) / 2
  )
  _, metrics = jitted_train_step(config)(
      state, jax.tree.map(jnp.asarray, fixed_batch())
  )
  assert float(metrics['l2']) == pytest.approx(expected, rel=1e-5)
  assert float(metrics['loss']) == pytest.approx(
      float(metrics['ce']) + float(metrics['l2']), rel=1e-5
  )


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_loss_with_aux_weight_equals_hand_computation():
  """total = CE + A * CE_aux + alpha * sum(W^2)/2 (docs/paper.md, section 2),
  each term recomputed by hand from the model's logits and params."""
  config = tiny_config(
      l2_alpha=0.7, aux_loss_weight=0.4, class_weights=(1.0, 2.5)
  )
  state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config),
      TinyNet(aux_head=True),
      jax.random.PRNGKey(3),
      IMAGE_SIZE,
  )
  batch = jax.tree.map(jnp.asarray, fixed_batch())
  _, metrics = jitted_train_step(config)(state, batch)

  # No augmentation (AugmentSettings()) and no dropout: the step's forward
  # is this one.
  outputs, _ = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      augment.standardize_per_image(batch['image']),
      train=True,
      mutable=['batch_stats'],
  )
  labels = np.asarray(batch['label'])
  assert 0 < labels.sum() < len(labels)
  weights = np.array([1.0, 2.5])[labels]
  rows = np.arange(len(labels))
  ce = np.mean(-_log_softmax(outputs.logits)[rows, labels] * weights)
  aux_ce = np.mean(-_log_softmax(outputs.aux_logits)[rows, labels] * weights)
  l2 = 0.7 * sum(
      np.sum(np.asarray(state.params[name]['kernel'], np.float64) ** 2) / 2
      for name in ('head', 'aux_dense')
  )
  assert abs(aux_ce - ce) > 1e-3  # the two heads differ: the test can tell
  assert float(metrics['ce']) == pytest.approx(ce, rel=1e-5)
  assert float(metrics['aux_ce']) == pytest.approx(aux_ce, rel=1e-5)
  assert float(metrics['l2']) == pytest.approx(l2, rel=1e-5)
  assert float(metrics['loss']) == pytest.approx(
      ce + 0.4 * aux_ce + l2, rel=1e-5
  )


def test_class_weighted_cross_entropy():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  labels = jnp.array([0, 1, 1])
  log_p = jax.nn.log_softmax(logits)
  per_example = -np.asarray(log_p)[np.arange(3), np.asarray(labels)]
  expected = np.mean(per_example * np.array([1.0, 3.0, 3.0]))
  assert float(
      losses.cross_entropy(logits, labels, (1.0, 3.0))
  ) == pytest.approx(expected)
  assert float(losses.cross_entropy(logits, labels)) == pytest.approx(
      per_example.mean()
  )


def test_resume_gives_the_same_params_as_an_uninterrupted_run(
    tmp_path, monkeypatch
):
  config = tiny_config(num_train_steps=6)
  run(config, tmp_path / 'straight', monkeypatch)

  config_a = tiny_config(num_train_steps=3)
  run(config_a, tmp_path / 'resumed', monkeypatch)
  assert checkpoint.restore_variables(tmp_path / 'resumed', 'latest')[1] == 3
  summary = run(config, tmp_path / 'resumed', monkeypatch)
  assert summary['final_step'] == 6

  straight, step_a = checkpoint.restore_variables(
      tmp_path / 'straight', 'latest'
  )
  resumed, step_b = checkpoint.restore_variables(tmp_path / 'resumed', 'latest')
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  # The logged sequence matches too (same data order, augmentation and dropout
  # keys).
  lines = lambda d: [
      json.loads(l) for l in (d / 'metrics.jsonl').read_text().splitlines()
  ]
  losses = lambda d: [(r['step'], r.get('train_loss')) for r in lines(d)]
  assert losses(tmp_path / 'straight') == losses(tmp_path / 'resumed')


def test_run_writes_records_and_best_checkpoint(tmp_path, monkeypatch):
  summary = run(tiny_config(num_train_steps=6), tmp_path, monkeypatch)
  records = [
      json.loads(l)
      for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  evals = [r for r in records if 'val_loss' in r]
  assert [r['step'] for r in evals] == [3, 6]
  for key in (
      'val_accuracy',
      'val_auc',
      'val_case_accuracy',
      'val_case_auc',
      'best_step',
  ):
    assert key in evals[-1]
  assert summary['best_step'] in (3, 6)
  variables, best_step = checkpoint.restore_variables(tmp_path, 'best')
  assert best_step == summary['best_step']
  assert set(variables) == {'params', 'batch_stats'}
  config = checkpoint.load_run_config(tmp_path)
  assert config.model.name == 'xception' and config.image_size == IMAGE_SIZE
  assert json.loads((tmp_path / 'summary.json').read_text())['final_step'] == 6


def spy_on_validation(monkeypatch):
  """Records the outputs of each validation (`validation.eval_outputs`)."""
  seen = []
  real = validation.eval_outputs

  def spy(*args, **kwargs):
    seen.append(real(*args, **kwargs))
    return seen[-1]

  monkeypatch.setattr(validation, 'eval_outputs', spy)
  return seen


def soft_votes_by_case(case_ids, labels, probs):
  """(case labels, mean p(fracture) of each case's views), computed apart
  from ankle_jax.evaluation.voting."""
  case_labels, case_probs = {}, {}
  for case_id, label, prob in zip(case_ids, labels, probs):
    case_labels[case_id] = int(label)
    case_probs.setdefault(case_id, []).append(float(prob))
  order = sorted(case_labels)
  return (
      np.array([case_labels[c] for c in order]),
      np.array([np.mean(case_probs[c]) for c in order]),
  )


def test_val_case_auc_is_the_auc_of_the_cases_soft_votes(tmp_path, monkeypatch):
  seen = spy_on_validation(monkeypatch)
  run(tiny_config(num_train_steps=6), tmp_path, monkeypatch)
  evals = [
      json.loads(l)
      for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
      if 'val_loss' in l
  ]
  assert len(seen) == len(evals) == 2
  for out, logged in zip(seen, evals):
    assert len(out['label']) == 12  # 4 cases x 3 views.
    case_labels, case_probs = soft_votes_by_case(
        out['case_id'], out['label'], out['probs'][:, -1]
    )
    assert len(case_labels) == 4 and set(case_labels) == {0, 1}
    expected = roc_auc_score(case_labels, case_probs)
    assert logged['val_case_auc'] == pytest.approx(expected, abs=1e-12)


def _validate_outputs(monkeypatch, outputs):
  monkeypatch.setattr(validation, 'eval_outputs', lambda *_: outputs)
  return validation.validate(None, None, iter(()), None)


def test_val_case_auc_scores_cases_not_views(monkeypatch):
  """Per view, by hard votes or by the highest view, the AUC differs."""
  case_ids = np.array(['a', 'a', 'b', 'b', 'c', 'c'])
  labels = np.array([1, 1, 0, 0, 1, 1])
  p_fracture = np.array([0.9, 0.1, 0.6, 0.6, 0.7, 0.7])
  probs = np.stack([1 - p_fracture, p_fracture], axis=1)
  val = _validate_outputs(
      monkeypatch,
      {'probs': probs, 'ce': np.zeros(6), 'label': labels, 'case_id': case_ids},
  )
  # Case soft votes: a 0.5, b 0.6, c 0.7 -> one of two positive pairs won.
  assert val['val_case_auc'] == 0.5
  assert val['val_auc'] == 0.75  # Per view: 6 of 8 pairs.
  # Unchanged: the hard-vote majority (b's two 0.6 votes: fracture).
  assert val['val_case_accuracy'] == pytest.approx(2 / 3)


def test_val_case_auc_of_a_multiview_run_is_the_case_heads(monkeypatch):
  case_p = np.array([0.8, 0.3, 0.4])  # Cases labelled 1, 0, 1.
  view_p = np.array([0.1, 0.2, 0.9, 0.6])  # Views of cases 0, 1, 2, 2.
  val = _validate_outputs(
      monkeypatch,
      {
          'probs': np.stack([1 - case_p, case_p], axis=1),
          'ce': np.zeros(3),
          'label': np.array([1, 0, 1]),
          'view_probs': np.stack([1 - view_p, view_p], axis=1),
          'view_label': np.array([1, 0, 1, 1]),
      },
  )
  assert val['val_case_auc'] == 1.0  # 0.8 and 0.4 above 0.3.
  assert val['val_auc'] == pytest.approx(2 / 3)  # 0.1 below 0.2.


def test_loop_state_reads_the_dict_of_older_checkpoints():
  old = {
      'best_metric_value': 0.75,
      'best_step': 4,
      'best_val_loss': 0.5,
      'best_val_loss_step': 6,
      'evals_without_improvement': 1,
      'stopped_early': False,
  }
  loop = validation.LoopState.from_json(old)
  assert loop.best_step == 4 and loop.evals_without_improvement == 1
  assert loop.to_json() == old
  after, is_best = validation.record_evaluation(
      loop, 8, {'val_loss': 0.4, 'val_accuracy': 0.75}, 'val_accuracy', 2
  )
  assert is_best  # A tie on the metric with a better val_loss: the new best.
  assert (after.best_step, after.best_val_loss_step) == (8, 8)
  assert loop.to_json() == old  # The loop state is a value: left as it was.
  loop, is_best = validation.record_evaluation(
      after, 10, {'val_loss': 0.6, 'val_accuracy': 0.5}, 'val_accuracy', 2
  )
  assert not is_best and not loop.stopped_early
  loop, _ = validation.record_evaluation(
      loop, 12, {'val_loss': 0.6, 'val_accuracy': 0.5}, 'val_accuracy', 2
  )
  assert loop.stopped_early and loop.best_step == 8


def test_early_stopping_stops_on_a_val_loss_plateau(tmp_path, monkeypatch):
  # Learning rate 0 and frozen BN statistics: val_loss never improves after the
  # first eval.
  config = tiny_config(
      num_train_steps=30,
      eval_every_steps=2,
      checkpoint_every_steps=10,
      learning_rate=0.0,
      early_stopping_patience=2,
  )
  summary = run(config, tmp_path, monkeypatch, bn_momentum=1.0)
  assert summary['stopped_early']
  assert summary['final_step'] == 6  # Best at 2, no improvement at 4 and 6.
  assert summary['best_val_loss_step'] == 2


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
  config = tiny_config(
      num_train_steps=12,
      learning_rate=1e35,
      checkpoint_every_steps=1,
      log_every_steps=4,
      eval_every_steps=100,
  )
  with pytest.raises(train.NonFiniteLossError, match=r'at step \d+') as excinfo:
    run(config, tmp_path, monkeypatch)
  bad_step = int(str(excinfo.value).split('at step ')[1].split(';')[0])
  variables, step = checkpoint.restore_variables(tmp_path, 'latest')
  assert step < bad_step
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))


def test_batch_not_divisible_by_devices_is_a_clear_error():
  sharding.check_batch_divisible(
      3, sharding.create_mesh(jax.devices()[:1]), 'batch_size'
  )
  two_devices = types.SimpleNamespace(
      devices=np.zeros(2)
  )  # Only .devices.size is read.
  with pytest.raises(
      console.UserError,
      match=r'config.eval_batch_size=3 is not divisible by the 2',
  ):
    sharding.check_batch_divisible(3, two_devices, 'eval_batch_size')


TWO_DEVICES_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 2, jax.devices()
    import test_train as t
    from ankle_jax import sharding
    from ankle_jax.training import losses, state as state_lib, steps
    config = t.tiny_config(l2_alpha=0.01)
    aug = steps.AugmentSettings(
        flip_lr=True, brightness_delta=0.3, contrast_range=(0.7, 1.3))
    lr_fn = state_lib.create_learning_rate_fn(
      state_lib.OptimizerSettings.from_config(config), 10)
    batch = t.fixed_batch(8)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = sharding.create_mesh(devices)
      state = state_lib.create_train_state(
      state_lib.OptimizerSettings.from_config(config), t.TinyNet(aux_head=True, dropout_rate=0.5),
          jax.random.PRNGKey(0), t.IMAGE_SIZE, 10, lr_fn)
      state = jax.device_put(state, sharding.replicated(mesh))
      compiled = steps.compile_steps(
          mesh, lr_fn, aug, losses.LossSettings.from_config(config))
      for _ in range(4):
        placed = sharding.shard_batch(batch, mesh)
        assert len(placed['image'].sharding.device_set) == len(devices)
        state, metrics = compiled.train(state, placed)
      probs = compiled.eval(state, sharding.shard_batch(batch, mesh))['probs']
      results.append(
          jax.device_get((state.params, state.batch_stats, metrics, probs)))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        results[0], results[1])
    print('TWO_DEVICES_OK')
""")


def run_on_two_devices(script_template: str) -> None:
  """Runs a script (with {repo} and {tests} to fill) in a CPU process with
  two forced host devices; asserts it printed TWO_DEVICES_OK."""
  env = dict(
      os.environ,
      XLA_FLAGS='--xla_force_host_platform_device_count=2',
      JAX_PLATFORMS='cpu',
  )
  script = script_template.format(
      repo=str(REPO_ROOT), tests=str(REPO_ROOT / 'tests')
  )
  result = subprocess.run(
      [sys.executable, '-c', script],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert 'TWO_DEVICES_OK' in result.stdout, (
      result.stdout[-2000:] + result.stderr[-4000:]
  )


def test_two_devices_match_one():
  run_on_two_devices(TWO_DEVICES_SCRIPT)


def test_tensorboard_groups_tags_and_hparams_show_the_best_checkpoint(
    tmp_path, monkeypatch
):
  summary = run(tiny_config(num_train_steps=6), tmp_path, monkeypatch)
  scalars, images, hparams, metric_tags = test_writers.read_events(tmp_path)
  assert set(scalars) >= {
      'train/loss',
      'train/ce',
      'train/aux_loss',
      'train/l2',
      'train/accuracy',
      'train/learning_rate',
      'train/epoch',
      'val/loss',
      'val/accuracy',
      'val/auc',
      'val/case_accuracy',
      'val/case_auc',
      'val/best_step',
      'perf/steps_per_second',
      'perf/images_per_second',
      'hparams/best_step',
      'hparams/best_val_auc',
  }
  assert {tag.split('/')[0] for tag in scalars} == {
      'train',
      'val',
      'perf',
      'hparams',
  }
  assert images == {'train/augmented_images'}
  types = hparams.pop('__types__')
  # The HParams table opens on what a run is, not on augment.* columns.
  assert list(types)[:6] == [
      'model.name',
      'model.width_multiplier',
      'image_size',
      'learning_rate',
      'batch_size',
      'dtype',
  ]
  augment_fields = {f'augment.{k}' for k in tiny_config().augment}
  assert set(hparams) == (
      set(records.HPARAM_FIELDS) | augment_fields | {'num_train_steps'}
  )
  assert hparams['image_size'] == IMAGE_SIZE and hparams['batch_size'] == 4
  assert hparams['num_train_steps'] == 6
  assert hparams['model.name'] == 'xception'
  assert hparams['model.aux_head'] is True
  assert hparams['class_weights'] == 'None'
  assert types['image_size'] == types['learning_rate'] != types['model.name']
  assert set(metric_tags) == set(
      writers.best_metric_tags(validation.METRIC_NAMES)
  )
  # The HParams metrics (each tag's last value) are the best checkpoint's.
  best = summary['best_step']
  record = next(
      json.loads(line)
      for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
      if json.loads(line)['step'] == best and 'val_auc' in line
  )
  assert scalars['hparams/best_step'][-1] == (best, best)
  for name in validation.METRIC_NAMES:
    step, value = scalars[f'hparams/best_{name}'][-1]
    assert step == best and value == pytest.approx(record[name])

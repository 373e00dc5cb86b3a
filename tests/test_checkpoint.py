"""Tests of ankle_jax.checkpoint: latest/best managers, iterator state, restore for evaluation."""

import errno
import json
import os
import shutil
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ankle_jax import checkpoint
from ankle_jax import checkpoint_digests
from ankle_jax import writers


def _state_tree(value):
  return {
      'step': jnp.asarray(value, jnp.int32),
      'params': {'dense': {'kernel': jnp.full((3, 2), float(value))}},
      'batch_stats': {'bn': {'mean': jnp.arange(2.0) + value}},
      'opt_state': ({'mu': jnp.zeros(3)}, jnp.asarray(value)),
      'rng': jax.random.PRNGKey(value),
  }


@pytest.mark.parametrize(
    'iter_state', [b'{"next_index": 7}', {'next_index': 7}, None]
)
def test_iterator_state_round_trips(iter_state):
  encoded = checkpoint.encode_iterator_state(iter_state)
  assert (
      checkpoint.decode_iterator_state(json.loads(json.dumps(encoded)))
      == iter_state
  )


def test_latest_keeps_n_and_restores_everything(tmp_path):
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=2, best_metric='val_loss')
  for step in (1, 2, 3):
    ckpts.save_latest(
        step, _state_tree(step), [{'next_index': step}], {'best_step': step}
    )
  assert ckpts.latest.all_steps() == [2, 3]
  tree, iter_states, loop = ckpts.restore_latest(_state_tree(0))
  jax.tree.map(np.testing.assert_array_equal, tree, _state_tree(3))
  assert iter_states == [{'next_index': 3}]
  assert loop == {'best_step': 3}
  ckpts.close()
  variables, step = checkpoint.restore_variables(tmp_path, 'latest')
  assert step == 3
  np.testing.assert_array_equal(
      variables['params']['dense']['kernel'], np.full((3, 2), 3.0)
  )
  assert isinstance(variables['batch_stats']['bn']['mean'], np.ndarray)


def test_best_keeps_one_and_restore_variables_reads_it(tmp_path):
  ckpts = checkpoint.RunCheckpoints(
      tmp_path, keep=3, best_metric='val_accuracy'
  )
  assert ckpts.best_mode == 'max'
  for step in (5, 9):
    tree = _state_tree(step)
    ckpts.save_best(
        step,
        {'params': tree['params'], 'batch_stats': tree['batch_stats']},
        {'val_accuracy': step / 10},
    )
  ckpts.close()
  assert ckpts.best.all_steps() == [9]
  variables, step = checkpoint.restore_variables(tmp_path, 'best')
  assert step == 9
  np.testing.assert_array_equal(
      variables['batch_stats']['bn']['mean'], [9.0, 10.0]
  )


def test_missing_checkpoints_and_config_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no 'best' checkpoint"):
    checkpoint.restore_variables(tmp_path, 'best')
  with pytest.raises(ValueError, match='which='):
    checkpoint.restore_variables(tmp_path, 'first')
  with pytest.raises(FileNotFoundError, match='config.json'):
    checkpoint.load_run_config(tmp_path)


def test_load_run_config_reads_config_json(tmp_path):
  config = ml_collections.ConfigDict(
      {
          'model': {'name': 'xception', 'kwargs': {'aux_block': 3}},
          'image_size': 128,
          'class_weights': None,
      }
  )
  writers.write_config(tmp_path, config)
  loaded = checkpoint.load_run_config(tmp_path)
  assert loaded.model.kwargs.aux_block == 3
  assert loaded.image_size == 128
  assert loaded.class_weights is None


def test_relative_workdir_is_accepted(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpts = checkpoint.RunCheckpoints('runs/relative', keep=1)
  ckpts.save_best(
      4,
      {'params': {'w': jnp.ones(2)}, 'batch_stats': {}},
      {'val_accuracy': 1.0},
  )
  ckpts.close()
  assert checkpoint.restore_variables('runs/relative', 'best')[1] == 4


def _digest_warnings(caplog):
  return [
      r.getMessage()
      for r in caplog.records
      if r.levelname == 'WARNING' and checkpoint.DIGEST_FILE in r.getMessage()
  ]


def _save_two_steps(workdir):
  ckpts = checkpoint.RunCheckpoints(workdir, keep=3)
  for step in (1, 2):
    ckpts.save_latest(step, _state_tree(step), [None], {})
  return ckpts


def test_a_run_without_digests_restores_with_one_warning(tmp_path, caplog):
  ckpts = _save_two_steps(tmp_path)
  for step in (1, 2):
    step_dir = tmp_path / checkpoint.LATEST_DIR / str(step)
    (step_dir / checkpoint.DIGEST_FILE).unlink()
    # As saved before digests: no digests item either.
    shutil.rmtree(step_dir / checkpoint_digests.DIGEST_ITEM)
  caplog.set_level('INFO')
  ckpts.restore_latest(_state_tree(0))
  ckpts.close()
  for _ in range(2):
    assert checkpoint.restore_variables(tmp_path, 'latest')[1] == 2
  step_dir = checkpoint._absolute(tmp_path) / checkpoint.LATEST_DIR / '2'
  assert _digest_warnings(caplog) == [
      f'Checkpoint {step_dir} has no sha256.json, so its arrays cannot be '
      'verified (saved before digests were written); new saves, e.g. by '
      'continuing training, write digests.'
  ]


def test_a_run_with_digests_restores_without_that_warning(tmp_path, caplog):
  ckpts = _save_two_steps(tmp_path)
  caplog.set_level('INFO')
  ckpts.restore_latest(_state_tree(0))
  ckpts.close()
  for _ in range(2):
    assert checkpoint.restore_variables(tmp_path, 'latest')[1] == 2
  assert not _digest_warnings(caplog)


def _held_digest_writes(monkeypatch):
  """Holds every digest write until the returned event is set; returns
  (release event, names of the threads the writes ran in)."""
  release, threads = threading.Event(), []
  write = checkpoint_digests.write_digests

  def held(step_dir, tree):
    threads.append(threading.current_thread().name)
    assert release.wait(timeout=60), 'the test never released the write'
    write(step_dir, tree)

  monkeypatch.setattr(checkpoint_digests, 'write_digests', held)
  return release, threads


def test_an_async_save_returns_before_its_digests_are_hashed(
    tmp_path, monkeypatch
):
  release, threads = _held_digest_writes(monkeypatch)
  ckpts = checkpoint.RunCheckpoints(tmp_path, asynchronous=True)
  ckpts.save_latest(1, _state_tree(1), [None], {})
  # Returned while the hashing is held: the step is not committed yet.
  step_dir = tmp_path / checkpoint.LATEST_DIR / '1'
  assert not step_dir.exists()
  release.set()
  ckpts.wait()
  assert threads and threading.main_thread().name not in threads
  assert (step_dir / checkpoint.DIGEST_FILE).exists()
  tree, _, _ = ckpts.restore_latest(_state_tree(0))
  jax.tree.map(np.testing.assert_array_equal, tree, _state_tree(1))
  ckpts.close()


def test_async_digests_are_of_the_saved_values_after_donation(
    tmp_path, monkeypatch
):
  release, _ = _held_digest_writes(monkeypatch)
  ckpts = checkpoint.RunCheckpoints(tmp_path, asynchronous=True)
  tree = _state_tree(3)
  ckpts.save_latest(3, tree, [None], {})
  # The train step donates the state right after a save, before the hashing.
  jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)(tree)
  assert tree['params']['dense']['kernel'].is_deleted()
  release.set()
  ckpts.close()
  expected = checkpoint_digests.array_digests(_state_tree(3))
  step_dir = tmp_path / checkpoint.LATEST_DIR / '3'
  written = json.loads((step_dir / checkpoint.DIGEST_FILE).read_text())
  assert written['arrays'] == expected
  assert checkpoint.restore_variables(tmp_path, 'latest')[1] == 3


def test_a_failed_async_save_is_raised_by_wait_and_keeps_the_last_step(
    tmp_path, monkeypatch
):
  ckpts = checkpoint.RunCheckpoints(tmp_path, asynchronous=True)
  ckpts.save_latest(1, _state_tree(1), [None], {})
  ckpts.wait()

  def no_space(step_dir, tree):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(step_dir))

  monkeypatch.setattr(checkpoint_digests, 'write_digests', no_space)
  ckpts.save_latest(2, _state_tree(2), [None], {})
  with pytest.raises(
      checkpoint.CheckpointWriteError,
      match=r'checkpoint of step 2 to .*checkpoints/latest: .*No space left',
  ):
    ckpts.wait()
  ckpts.close()
  assert not (tmp_path / checkpoint.LATEST_DIR / '2').exists()
  assert checkpoint.restore_variables(tmp_path, 'latest')[1] == 1

"""Faults a long training run meets: SIGKILL and restart, partial and corrupted
checkpoints,
a non-finite loss, an unwritable run directory and a full disk.

The slow tests run `python launch.py --config=configs/local.py` (tiny Xception,
80 px) on a tiny built synthetic dataset (tests/run_helpers.py, shared with
tests/test_privacy.py); the others use the in-process TinyNet runs of
tests/test_train.py.
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import run_helpers
import test_checkpoint
import test_train
from test_train import compilation_cache  # noqa: F401  (autouse: shares XLA compilations)

from ankle_jax import checkpoint
from ankle_jax import train
from ankle_jax import writers

# Seeds the SIGKILL test's delay after the first checkpoint.
KILL_DELAY_SEED = 9  # A delay of 1.39 s, mid-range.


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return run_helpers.tiny_dataset(tmp_path_factory)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, dataset):
  return run_helpers.reference_run(tmp_path_factory, dataset)


def _steps(directory):
  """Finalized step numbers under a CheckpointManager directory."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _assert_same_variables(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert len(jax.tree.leaves(a)) == len(jax.tree.leaves(b)) >= 5


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _garble(path):
  data = bytearray(path.read_bytes())
  start = len(data) // 4
  for i in range(start, start + max(1, len(data) // 8)):
    data[i] ^= 0xA5
  path.write_bytes(bytes(data))


def _corrupt_step(step_dir, how):
  """Damages every array data file (OCDBT manifests and data blocks) of one step."""
  data_files = [
      p
      for p in step_dir.rglob('*')
      if p.is_file() and (p.parent.name == 'd' or p.name == 'manifest.ocdbt')
  ]
  assert data_files, f'no array data files under {step_dir}'
  for path in data_files:
    {'truncate': _truncate, 'garble': _garble}[how](path)


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_restart_gives_bitwise_the_same_params(
    tmp_path, dataset, reference
):
  workdir = tmp_path / 'run'
  command = run_helpers.launch_command(workdir, dataset)
  latest_dir = workdir / checkpoint.LATEST_DIR
  # Saves take most of the time: often mid-save. Seeded, so that a failure
  # reproduces with the same delay (the messages below name it).
  delay = random.Random(KILL_DELAY_SEED).uniform(0.0, 3.0)
  with open(tmp_path / 'killed.stderr', 'w') as stderr:
    proc = subprocess.Popen(
        command,
        cwd=run_helpers.REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=run_helpers.subprocess_env(dataset),
    )
    try:
      deadline = time.time() + 240
      while (
          not _steps(latest_dir)
          and proc.poll() is None
          and time.time() < deadline
      ):
        time.sleep(0.05)
      assert _steps(latest_dir), (tmp_path / 'killed.stderr').read_text()[
          -3000:
      ]
      time.sleep(delay)
      proc.send_signal(signal.SIGKILL)
    finally:
      proc.kill()
      proc.wait()
  assert (
      proc.returncode == -signal.SIGKILL
  ), f'the run ended before the kill ({delay=:.2f}s, {KILL_DELAY_SEED=})'
  steps_at_kill = _steps(latest_dir)
  assert steps_at_kill and max(steps_at_kill) < run_helpers.NUM_TRAIN_STEPS

  # A partially written checkpoint newer than any finalized one (what a kill
  # during a save
  # leaves: orbax writes into <step>.orbax-checkpoint-tmp-<time>, renamed when
  # complete).
  newest = latest_dir / str(max(steps_at_kill))
  partial = (
      latest_dir
      / f'{max(steps_at_kill) + 1}.orbax-checkpoint-tmp-1700000000000000'
  )
  shutil.copytree(newest, partial, dirs_exist_ok=True)
  _corrupt_step(partial, 'truncate')
  assert checkpoint.restore_variables(workdir, 'latest')[1] == max(
      steps_at_kill
  )

  result = run_helpers.run_logged(command, dataset, tmp_path / 'restart')
  assert result.returncode == 0, run_helpers.fail_message(result)
  assert (
      f'Resumed from {workdir} at step {max(steps_at_kill)}.' in result.stdout
  )
  # The console: the project's own lines, no library INFO records.
  assert not re.search(r'^I\d{4} ', result.stderr, re.MULTILINE), result.stderr
  assert 'Best val_accuracy: ' in result.stdout
  assert f'TensorBoard: tensorboard --logdir={workdir}' in result.stdout
  assert not list(
      latest_dir.glob('*orbax-checkpoint-tmp*')
  )  # Cleaned up on restart.

  for which in ('latest', 'best'):
    expected, expected_step = checkpoint.restore_variables(reference, which)
    resumed, resumed_step = checkpoint.restore_variables(workdir, which)
    assert resumed_step == expected_step
    _assert_same_variables(expected, resumed)
  # The logged training losses match too (the tail of the killed run was
  # dropped).
  records = lambda d: [
      (r['step'], r.get('train_loss'), r.get('val_loss'))
      for r in map(json.loads, (d / 'metrics.jsonl').read_text().splitlines())
  ]
  assert records(workdir) == records(reference)


def test_partial_checkpoint_directory_is_never_read(tmp_path):
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=3)
  for step in (1, 2):
    ckpts.save_latest(
        step, test_checkpoint._state_tree(step), [None], {'step': step}
    )
  ckpts.close()
  latest = tmp_path / checkpoint.LATEST_DIR
  partial = latest / '3.orbax-checkpoint-tmp-1700000000000000'
  shutil.copytree(latest / '2', partial)
  _corrupt_step(partial, 'truncate')
  variables, step = checkpoint.restore_variables(tmp_path, 'latest')
  assert step == 2
  np.testing.assert_array_equal(
      variables['params']['dense']['kernel'], np.full((3, 2), 2.0)
  )
  reopened = checkpoint.RunCheckpoints(
      tmp_path, keep=3
  )  # As a restarted run does.
  assert reopened.latest_step() == 2
  tree, _, loop = reopened.restore_latest(test_checkpoint._state_tree(0))
  assert int(tree['step']) == 2 and loop == {'step': 2}
  reopened.save_latest(3, test_checkpoint._state_tree(3), [None], {'step': 3})
  reopened.close()
  assert (
      not partial.exists()
  )  # Unfinished saves are removed (before the first new save).
  assert checkpoint.restore_variables(tmp_path, 'latest')[1] == 3


@pytest.mark.parametrize('how', ['truncate', 'garble'])
def test_corrupted_latest_checkpoint_falls_back_to_the_previous_with_a_warning(
    tmp_path, how, caplog
):
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=3)
  for step in (1, 2, 3):
    ckpts.save_latest(
        step,
        test_checkpoint._state_tree(step),
        [{'next': step}],
        {'step': step},
    )
  _corrupt_step(tmp_path / checkpoint.LATEST_DIR / '3', how)

  variables, step = checkpoint.restore_variables(
      tmp_path, 'latest'
  )  # Read-only path.
  assert step == 2
  np.testing.assert_array_equal(
      variables['params']['dense']['kernel'], np.full((3, 2), 2.0)
  )

  caplog.clear()
  tree, iter_state, loop = ckpts.restore_latest(test_checkpoint._state_tree(0))
  jax.tree.map(
      np.testing.assert_array_equal, tree, test_checkpoint._state_tree(2)
  )
  assert (iter_state, loop) == ([{'next': 2}], {'step': 2})
  warnings = [
      r.getMessage() for r in caplog.records if r.levelname == 'WARNING'
  ]
  assert any(
      'checkpoints/latest/3 is unreadable' in w
      and 'falling back to step 2' in w
      for w in warnings
  ), warnings
  # Moved aside (kept for inspection), so step 3 can be saved again and is not
  # retried.
  assert _steps(tmp_path / checkpoint.LATEST_DIR) == [1, 2]
  assert list((tmp_path / checkpoint.UNREADABLE_DIR).glob('3-*'))
  ckpts.save_latest(3, test_checkpoint._state_tree(30), [None], {'step': 3})
  ckpts.close()
  assert checkpoint.restore_variables(tmp_path, 'latest')[1] == 3


def test_all_checkpoints_unreadable_is_a_clear_error(tmp_path):
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=2)
  ckpts.save_latest(1, test_checkpoint._state_tree(1), [None], {})
  ckpts.save_best(
      1, {'params': {'w': np.ones(3)}, 'batch_stats': {}}, {'val_accuracy': 1.0}
  )
  ckpts.close()
  _corrupt_step(tmp_path / checkpoint.LATEST_DIR / '1', 'garble')
  _corrupt_step(tmp_path / checkpoint.BEST_DIR / '1', 'truncate')
  for which, directory in (
      ('latest', checkpoint.LATEST_DIR),
      ('best', checkpoint.BEST_DIR),
  ):
    with pytest.raises(
        checkpoint.CheckpointReadError,
        match=f'no readable checkpoint under .*{directory}: steps \\[1\\]',
    ):
      checkpoint.restore_variables(tmp_path, which)


def test_a_step_saved_again_after_a_kill_replaces_the_old_save(tmp_path):
  # Killed between save_best(s) and save_latest(s): the replay saves best step s
  # again.
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=2)
  ckpts.save_best(
      4,
      {'params': {'w': np.zeros(2)}, 'batch_stats': {}},
      {'val_accuracy': 0.5},
  )
  ckpts.close()
  replay = checkpoint.RunCheckpoints(tmp_path, keep=2)
  replay.save_best(
      4, {'params': {'w': np.ones(2)}, 'batch_stats': {}}, {'val_accuracy': 0.5}
  )
  replay.close()
  variables, step = checkpoint.restore_variables(tmp_path, 'best')
  assert step == 4
  np.testing.assert_array_equal(variables['params']['w'], np.ones(2))


def test_training_resumes_from_the_previous_checkpoint_when_the_latest_is_corrupt(
    tmp_path, monkeypatch
):
  config = lambda steps: test_train.tiny_config(
      num_train_steps=steps,
      checkpoint_every_steps=2,
      eval_every_steps=2,
      keep_checkpoints=2,
  )
  test_train.run(config(8), tmp_path / 'straight', monkeypatch)
  test_train.run(config(6), tmp_path / 'faulty', monkeypatch)
  assert _steps(tmp_path / 'faulty' / checkpoint.LATEST_DIR) == [4, 6]
  _corrupt_step(tmp_path / 'faulty' / checkpoint.LATEST_DIR / '6', 'garble')
  summary = test_train.run(config(8), tmp_path / 'faulty', monkeypatch)
  assert summary['final_step'] == 8
  straight, _ = checkpoint.restore_variables(tmp_path / 'straight', 'latest')
  resumed, _ = checkpoint.restore_variables(tmp_path / 'faulty', 'latest')
  _assert_same_variables(straight, resumed)


@pytest.mark.slow
def test_launch_stops_on_a_non_finite_loss_with_the_step_and_a_nonzero_exit(
    tmp_path, dataset
):
  # Adam moves every weight by ~lr: with lr=1e35 the L2 term (0.7 * sum W^2 / 2)
  # overflows float32 at step 2; checkpoints every step, checked before each is
  # written.
  workdir = tmp_path / 'run'
  overrides = (
      '--config.learning_rate=1e35',
      '--config.num_train_steps=6',
      '--config.checkpoint_every_steps=1',
      '--config.log_every_steps=1',
      '--config.eval_every_steps=100',
      '--config.image_summary_every_steps=0',
  )
  result = run_helpers.run_logged(
      run_helpers.launch_command(workdir, dataset, overrides),
      dataset,
      tmp_path / 'nan',
  )
  assert result.returncode == 1, run_helpers.fail_message(result)
  match = re.search(
      r'error: loss became (nan|-?inf) at step (\d+)', result.stderr
  )
  assert match, run_helpers.fail_message(result)
  bad_step = int(match.group(2))
  assert 'Traceback' not in result.stderr
  variables, step = checkpoint.restore_variables(workdir, 'latest')
  assert 1 <= step < bad_step
  assert f'last good checkpoint (step {step})' in result.stderr
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))


def _launch_fails_fast(tmp_path, dataset, workdir, reason):
  result = run_helpers.run_logged(
      run_helpers.launch_command(workdir, dataset),
      dataset,
      tmp_path / 'logs' / 'launch',
  )
  assert result.returncode == 2, run_helpers.fail_message(result)
  assert (
      f'error: [Errno {reason}] cannot write to the run directory {workdir}'
      in (result.stderr)
  ), run_helpers.fail_message(result)
  assert 'Traceback' not in result.stderr
  assert (
      'params' not in result.stdout
  )  # Failed before the model summary (heavy work).
  return result


@pytest.mark.slow
def test_launch_with_a_file_in_the_way_of_the_workdir(tmp_path, dataset):
  blocker = tmp_path / 'runs'
  blocker.write_text('not a directory')
  _launch_fails_fast(tmp_path, dataset, blocker / 'run', errno.ENOTDIR)


@pytest.fixture
def tmpfs(tmp_path):
  """Mounts tiny tmpfs file systems (root with CAP_SYS_ADMIN only; skipped elsewhere)."""
  mounted = []

  def mount(name, options):
    point = tmp_path / name
    point.mkdir()
    result = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
      pytest.skip(f'cannot mount a tmpfs here: {result.stderr.strip()}')
    mounted.append(point)
    return point

  yield mount
  for point in mounted:
    subprocess.run(['umount', str(point)], check=False)


@pytest.mark.slow
def test_launch_on_a_read_only_file_system(tmp_path, dataset, tmpfs):
  read_only = tmpfs('ro', 'ro,size=64k')
  _launch_fails_fast(tmp_path, dataset, read_only / 'run', errno.EROFS)


@pytest.mark.slow
def test_launch_on_a_full_disk(tmp_path, dataset, tmpfs):
  full = tmpfs('full', 'size=64k')
  with (
      open(full / 'filler', 'wb', buffering=0) as f,
      pytest.raises(OSError) as excinfo,
  ):
    for _ in range(1024):
      f.write(b'\0' * 4096)
  assert excinfo.value.errno == errno.ENOSPC
  (full / 'run').mkdir()  # Directories still fit: only the write probe fails.
  _launch_fails_fast(tmp_path, dataset, full / 'run', errno.ENOSPC)


def test_a_failing_checkpoint_save_names_the_directory_and_step(
    tmp_path, monkeypatch
):
  def no_space(self, step, *args, **kwargs):
    raise OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory / str(step))
    )

  monkeypatch.setattr(ocp.CheckpointManager, 'save', no_space)
  config = test_train.tiny_config(num_train_steps=3, checkpoint_every_steps=2)
  with pytest.raises(
      checkpoint.CheckpointWriteError,
      match=r'could not write the checkpoint of step 2 to .*checkpoints/latest: '
      r'OSError: \[Errno 28\] No space left on device',
  ) as excinfo:
    test_train.run(config, tmp_path, monkeypatch)
  assert isinstance(
      excinfo.value, OSError
  )  # launch.py reports it without a traceback.


def test_workdir_probe_errors_name_the_path(tmp_path, monkeypatch):
  test_train._validate_stub(monkeypatch)
  (tmp_path / 'file').write_text('x')
  with pytest.raises(
      writers.WorkdirNotWritableError,
      match=f"cannot write to the run directory {tmp_path / 'file' / 'run'}",
  ):
    train.train_and_evaluate(
        test_train.tiny_config(), str(tmp_path / 'file' / 'run')
    )
  assert (
      writers.ensure_writable_dir(tmp_path / 'a' / 'b') == tmp_path / 'a' / 'b'
  )
  assert (
      list((tmp_path / 'a' / 'b').iterdir()) == []
  )  # The probe file is removed.

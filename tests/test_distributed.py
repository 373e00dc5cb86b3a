"""Multi-process data-parallel training (jax.distributed), on CPU: two
launch.py processes on 127.0.0.1 against one process with two forced host
devices, on the tiny dataset and configs/local.py (run_helpers)."""

import csv
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import run_helpers
import test_checkpoint

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import sharding
from ankle_jax.data import pipeline

# 6 steps of batch 4, every step's loss logged, two evaluations over the
# validation split (whose last batch is ragged), checkpoints at 2, 4 and 6.
OVERRIDES = (
    '--config.num_train_steps=6',
    '--config.log_every_steps=1',
    '--config.eval_every_steps=3',
    '--config.checkpoint_every_steps=2',
    '--config.image_summary_every_steps=3',
    '--config.keep_checkpoints=3',
)
TIMEOUT_S = 300
FORCED_TWO_DEVICES = '--xla_force_host_platform_device_count=2'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_group(command, dataset, log_prefix, num_processes=2, port=None):
  """`command` as processes 0..n-1 of one jax.distributed group on
  127.0.0.1; their output goes to <log_prefix>.<i>.{stdout,stderr}."""
  port = port or _free_port()
  processes = []
  for index in range(num_processes):
    env = dict(
        run_helpers.subprocess_env(dataset),
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
        JAX_NUM_PROCESSES=str(num_processes),
        JAX_PROCESS_ID=str(index),
    )
    out = open(f'{log_prefix}.{index}.stdout', 'w')  # noqa: SIM115
    err = open(f'{log_prefix}.{index}.stderr', 'w')  # noqa: SIM115
    processes.append(
        subprocess.Popen(
            [*command, '--config.distributed=True'],
            cwd=run_helpers.REPO_ROOT,
            env=env,
            stdout=out,
            stderr=err,
        )
    )
  return processes


def _wait(processes, timeout=TIMEOUT_S) -> list[int]:
  """The exit statuses; kills every process still running at the deadline."""
  deadline = time.monotonic() + timeout
  try:
    return [p.wait(max(deadline - time.monotonic(), 0.1)) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()


def _log(log_prefix, index, stream='stderr') -> str:
  return pathlib.Path(f'{log_prefix}.{index}.{stream}').read_text()


def _start_two_devices(command, dataset, log_prefix):
  """`command` as one process with two forced host devices; its output goes
  to <log_prefix>.0.{stdout,stderr}."""
  env = dict(run_helpers.subprocess_env(dataset), XLA_FLAGS=FORCED_TWO_DEVICES)
  out = open(f'{log_prefix}.0.stdout', 'w')  # noqa: SIM115
  err = open(f'{log_prefix}.0.stderr', 'w')  # noqa: SIM115
  return subprocess.Popen(
      command, cwd=run_helpers.REPO_ROOT, env=env, stdout=out, stderr=err
  )


def _run_both(command_for, dataset, log_dir):
  """Runs command_for(kind) as two processes ('processes') and, at the same
  time, as one process with two devices ('devices'); asserts both succeed."""
  group = _start_group(command_for('processes'), dataset, log_dir / 'group')
  single = _start_two_devices(command_for('devices'), dataset, log_dir / 'one')
  statuses = _wait([*group, single])
  logs = [_log(log_dir / 'group', i)[-3000:] for i in (0, 1)]
  assert statuses == [0, 0, 0], [*logs, _log(log_dir / 'one', 0)[-3000:]]


def _run_group(command, dataset, log_prefix):
  statuses = _wait(_start_group(command, dataset, log_prefix))
  assert statuses == [0, 0], [_log(log_prefix, i)[-3000:] for i in (0, 1)]


def _records(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def _scalars(workdir, key) -> list[tuple[int, float]]:
  return [(r['step'], r[key]) for r in _records(workdir) if key in r]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return run_helpers.tiny_dataset(tmp_path_factory)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, dataset):
  """(two processes x 1 device, one process x 2 devices): the same run."""
  root = tmp_path_factory.mktemp('distributed')
  _run_both(
      lambda kind: run_helpers.launch_command(root / kind, dataset, OVERRIDES),
      dataset,
      root,
  )
  return root / 'processes', root / 'devices'


def _assert_same_params(a_dir, b_dir, which='latest'):
  """The two runs' variables at `which` are bitwise equal (README, 'Several
  machines': the two runs are bitwise the same)."""
  a, a_step = checkpoint.restore_variables(a_dir, which)
  b, b_step = checkpoint.restore_variables(b_dir, which)
  assert a_step == b_step
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(a)]
  leaves = zip(paths, jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  for path, x, y in leaves:
    assert np.asarray(x).dtype == np.asarray(y).dtype, path
    assert np.array_equal(x, y), path


def test_two_processes_train_as_one_process_with_two_devices(runs):
  two_processes, two_devices = runs
  _assert_same_params(two_processes, two_devices)
  for key in ('train_loss', 'val_loss', 'val_accuracy', 'val_auc'):
    got, want = _scalars(two_processes, key), _scalars(two_devices, key)
    assert [s for s, _ in got] == [s for s, _ in want], key
    # Every logged loss and validation number equal (README).
    assert [v for _, v in got] == [v for _, v in want], key
  assert len(_scalars(two_processes, 'train_loss')) == 6  # Chief only, once.
  summary = json.loads((two_processes / 'summary.json').read_text())
  assert summary['final_step'] == 6
  names = sorted(p.name for p in two_processes.iterdir())
  assert 'config.json' in names and 'checkpoints' in names


def test_every_process_iterator_state_and_a_digest_are_saved(runs):
  step_dir = runs[0] / checkpoint.LATEST_DIR / '6'
  encoded = json.loads((step_dir / 'data_iter' / 'metadata').read_text())
  states = checkpoint.decode_iterator_states(encoded)
  assert len(states) == 2 and states[0] == states[1]
  digests = json.loads((step_dir / checkpoint.DIGEST_FILE).read_text())
  assert any(name.startswith('params/') for name in digests['arrays'])


def test_a_two_process_checkpoint_evaluates_in_one_process_as_one(
    runs, dataset, tmp_path
):
  two_processes, two_devices = runs
  out = tmp_path / 'eval'
  result = run_helpers.run_logged(
      [
          sys.executable,
          '-m',
          'ankle_jax.evaluate',
          f'--runs={two_processes},{two_devices}',
          '--split=validation',
          '--checkpoint=latest',
          '--no_html',
          f'--out={out}',
          f'--data_dir={dataset.data_dir}',
      ],
      dataset,
      tmp_path / 'evaluate',
  )
  assert result.returncode == 0, run_helpers.fail_message(result)
  by_run = {}
  with open(out / 'predictions.csv', newline='') as f:
    for row in csv.DictReader(f):
      view = (row['case_id'], int(row['view_index']))
      by_run.setdefault(row['run'], {})[view] = float(row['probability'])
  assert len(by_run) == 2
  first, second = by_run.values()
  assert sorted(first) == sorted(second) and first
  np.testing.assert_allclose(
      [first[v] for v in sorted(first)],
      [second[v] for v in sorted(first)],
      atol=1e-5,
  )


def test_a_checkpoint_resumes_with_the_other_process_count(
    runs, dataset, tmp_path
):
  """The 2-process run continued by 1 process, and the 1-process run by 2,
  to step 8: the same parameters (states and data order carried over)."""
  two_processes, two_devices = runs
  # The 'devices' run continues the 2-process run, and the reverse.
  shutil.copytree(two_processes, tmp_path / 'devices')
  shutil.copytree(two_devices, tmp_path / 'processes')
  longer = (*OVERRIDES, '--config.num_train_steps=8')
  _run_both(
      lambda kind: run_helpers.launch_command(tmp_path / kind, dataset, longer),
      dataset,
      tmp_path,
  )
  for log in ('one', 'group'):
    assert 'Resumed from' in _log(tmp_path / log, 0, 'stdout')
    assert 'at step 6' in _log(tmp_path / log, 0, 'stdout')
  _assert_same_params(tmp_path / 'devices', tmp_path / 'processes')


def test_a_killed_process_ends_the_other(dataset, tmp_path):
  """Process 1 killed mid-run: process 0 exits non-zero within the limit,
  leaving complete checkpoints (resuming them with 1 or 2 processes:
  test_a_checkpoint_resumes_with_the_other_process_count)."""
  workdir = tmp_path / 'run'
  overrides = (
      '--config.num_train_steps=400',
      '--config.checkpoint_every_steps=2',
      '--config.eval_every_steps=1000',
      '--config.log_every_steps=2',
      '--config.distributed_heartbeat_timeout_s=10',
  )
  command = run_helpers.launch_command(workdir, dataset, overrides)
  processes = _start_group(command, dataset, tmp_path / 'group')
  deadline = time.monotonic() + TIMEOUT_S
  metrics = workdir / 'metrics.jsonl'
  while not (metrics.exists() and len(_records(workdir)) >= 2):
    assert time.monotonic() < deadline and processes[0].poll() is None
    time.sleep(0.5)
  processes[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  status = _wait(processes[:1], timeout=90)[0]
  assert status != 0 and time.monotonic() - killed_at < 90
  assert processes[1].wait() == -signal.SIGKILL
  stderr = _log(tmp_path / 'group', 0)
  assert 'error: process 0 of 2' in stderr, stderr
  assert 'disk full' not in stderr, stderr
  variables, saved = checkpoint.restore_variables(workdir, 'latest')
  assert saved >= 2 and saved % 2 == 0 and variables['params']


def test_an_unreachable_coordinator_is_named(dataset, tmp_path):
  port = _free_port()
  env = dict(
      run_helpers.subprocess_env(dataset),
      JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
      JAX_NUM_PROCESSES='2',
      JAX_PROCESS_ID='1',
  )
  started = time.monotonic()
  result = subprocess.run(
      [
          *run_helpers.launch_command(tmp_path / 'run', dataset, OVERRIDES),
          '--config.distributed=True',
          '--config.distributed_timeout_s=3',
      ],
      cwd=run_helpers.REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == console.EXIT_USER_ERROR
  assert f'coordinator at 127.0.0.1:{port}' in result.stderr
  assert 'Traceback' not in result.stderr
  assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    'environ, message',
    [
        (
            {'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2'},
            'must be',
        ),
        (
            {
                'JAX_COORDINATOR_ADDRESS': 'h:1',
                'JAX_NUM_PROCESSES': '2',
                'JAX_PROCESS_ID': '2',
            },
            'outside',
        ),
    ],
)
def test_an_incomplete_environment_is_named(environ, message):
  with pytest.raises(console.UserError, match=message):
    sharding.ProcessGroup.from_environment(environ)


def test_no_coordinator_variable_leaves_it_to_auto_detection():
  assert sharding.ProcessGroup.from_environment({}) is None
  group = sharding.ProcessGroup.from_environment(
      {
          'JAX_COORDINATOR_ADDRESS': '10.0.0.1:8476',
          'JAX_NUM_PROCESSES': '4',
          'JAX_PROCESS_ID': '3',
      }
  )
  assert group == sharding.ProcessGroup('10.0.0.1:8476', 4, 3)


@pytest.mark.parametrize('size', [0, 5, 8, 11])
def test_process_blocks_cover_every_item_once_in_order(size):
  items = list(range(size))
  blocks = [pipeline.process_blocks(items, 4, p, 2) for p in (0, 1)]
  assert len(blocks[0]) == len(blocks[1])
  joined = [i for pair in zip(*blocks) for block in pair for i in block]
  assert joined == items
  with pytest.raises(ValueError, match='does not split'):
    pipeline.process_blocks(items, 5, 0, 2)


def test_the_iterator_state_of_each_process_and_across_counts():
  same = [{'next_index': 4}, {'next_index': 4}]
  assert checkpoint.iterator_state_for(same, 1, 2) == {'next_index': 4}
  assert checkpoint.iterator_state_for(same, 0, 1) == {'next_index': 4}
  assert checkpoint.iterator_state_for([b'x'], 2, 4) == b'x'
  differ = [{'a': 1}, {'a': 2}]
  assert checkpoint.iterator_state_for(differ, 1, 2) == {'a': 2}
  with pytest.raises(ValueError, match='restart with 2 processes'):
    checkpoint.iterator_state_for(differ, 0, 1)
  legacy = checkpoint.encode_iterator_state({'next_index': 9})
  assert checkpoint.decode_iterator_states(legacy) == [{'next_index': 9}]


def _orbax_restore(workdir, step):
  """The latest checkpoint's state at `step`, read by orbax alone."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  manager = checkpoint._latest_manager(workdir, read_only=True)
  metadata = manager.item_metadata(step)['state']
  args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
      getattr(metadata, 'tree', metadata),
  )
  restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=args)),
  )
  manager.close()
  return restored['state']


def _flip_a_byte_silently(workdir, step: int, saved_big: np.ndarray) -> None:
  """Flips one byte of the largest data file of the step's state where
  orbax alone then reads the file back without an error but with wrong
  values of params/big (the data is compressed: a flip can also break the
  decoding, which orbax reports; those positions are skipped)."""
  state_dir = workdir / checkpoint.LATEST_DIR / str(step) / 'state'
  files = [p for p in state_dir.rglob('*') if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  pristine = largest.read_bytes()
  for offset in range(len(pristine) // 2, len(pristine), 97):
    data = bytearray(pristine)
    data[offset] ^= 0x10
    largest.write_bytes(bytes(data))
    try:
      restored = _orbax_restore(workdir, step)
    except Exception:  # noqa: BLE001 (decoding failed: not silent).
      continue
    if np.any(restored['params']['big'] != saved_big):
      return
  raise AssertionError(f'no silent flip found in {largest}')


def test_a_flipped_byte_in_array_data_falls_back_to_the_previous_step(
    tmp_path, caplog
):
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=3)
  rng = np.random.default_rng(0)
  trees = {}
  for step in (1, 2):
    trees[step] = test_checkpoint._state_tree(step)
    trees[step]['params']['big'] = rng.normal(size=(200, 100)).astype('f4')
    ckpts.save_latest(step, trees[step], [{'next_index': step}], {})
  _flip_a_byte_silently(tmp_path, 2, trees[2]['params']['big'])
  with pytest.raises(checkpoint.CheckpointIntegrityError, match='SHA-256'):
    checkpoint.verify_digests(
        tmp_path / checkpoint.LATEST_DIR / '2', _orbax_restore(tmp_path, 2)
    )
  variables, step = checkpoint.restore_variables(tmp_path, 'latest')
  assert step == 1
  np.testing.assert_array_equal(
      variables['params']['big'], trees[1]['params']['big']
  )
  caplog.clear()
  target = dict(trees[1], params=dict(trees[1]['params']))
  tree, iter_states, _ = ckpts.restore_latest(
      jax.tree.map(np.zeros_like, target)
  )
  assert iter_states == [{'next_index': 1}]
  np.testing.assert_array_equal(
      tree['params']['big'], trees[1]['params']['big']
  )
  warnings = [
      r.getMessage() for r in caplog.records if r.levelname == 'WARNING'
  ]
  assert any(
      'latest/2 is unreadable (CheckpointIntegrityError' in w
      and 'falling back to step 1' in w
      for w in warnings
  ), warnings
  ckpts.close()


def test_a_checkpoint_without_digests_still_restores(tmp_path):
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=3)
  ckpts.save_latest(1, test_checkpoint._state_tree(1), [None], {})
  ckpts.close()
  os.remove(tmp_path / checkpoint.LATEST_DIR / '1' / checkpoint.DIGEST_FILE)
  assert checkpoint.restore_variables(tmp_path, 'latest')[1] == 1

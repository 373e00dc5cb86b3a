"""Tests of ankle_jax.training.cadence: saves and validations every N steps or
every N seconds, the same decision on every process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import test_train
from test_train import compilation_cache  # noqa: F401  (autouse: shares XLA compilations)

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax.training import cadence
from ankle_jax.training import config_checks

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _steps_cadence(**overrides):
  fields = dict(
      num_train_steps=20,
      log_every_steps=2,
      checkpoint_every_steps=6,
      eval_every_steps=4,
  )
  return cadence.Cadence(**{**fields, **overrides})


def _run_steps(rhythm, seconds_per_step, agree=lambda due: due):
  """{step: Due} of the steps where something is due, the clock advancing
  `seconds_per_step` a step."""
  clock, taken = cadence.Clock.started(0.0), {}
  for step in range(1, rhythm.num_train_steps + 1):
    due, clock = cadence.decide(
        rhythm, clock, step, step * seconds_per_step, agree
    )
    if due.checkpoint or due.evaluate:
      taken[step] = due
  return taken


def test_by_steps_every_n_and_at_the_last_step():
  taken = _run_steps(_steps_cadence(), seconds_per_step=100.0)
  assert [s for s, due in taken.items() if due.checkpoint] == [6, 12, 18, 20]
  assert [s for s, due in taken.items() if due.evaluate] == [4, 8, 12, 16, 20]


def test_by_seconds_at_the_first_log_step_after_them():
  # 1.5 s a step, a save every 5 s, checked at the log steps (every 2): due
  # at step 4 (6 s), then 8 (12 s - 6 s >= 5), 12, 16, and the last step; the
  # validation stays by steps.
  rhythm = _steps_cadence(checkpoint_every_seconds=5.0)
  taken = _run_steps(rhythm, seconds_per_step=1.5)
  assert [s for s, due in taken.items() if due.checkpoint] == [4, 8, 12, 16, 20]
  assert [s for s, due in taken.items() if due.evaluate] == [4, 8, 12, 16, 20]
  slow_eval = _steps_cadence(eval_every_seconds=10.0)
  taken = _run_steps(slow_eval, seconds_per_step=1.5)
  assert [s for s, due in taken.items() if due.evaluate] == [8, 16, 20]
  assert [s for s, due in taken.items() if due.checkpoint] == [6, 12, 18, 20]


def test_the_decision_of_process_0_is_taken():
  chief_says = cadence.Due(checkpoint=True, evaluate=False)
  asked = []

  def agree(own):
    asked.append(own)
    return chief_says

  rhythm = _steps_cadence(checkpoint_every_seconds=1e9)
  taken = _run_steps(rhythm, seconds_per_step=0.0, agree=agree)
  # Asked at the log steps before the last, each time with this process's
  # own view (nothing due); the chief's decision wins.
  assert len(asked) == 9 and not any(d.checkpoint for d in asked)
  assert [s for s, due in taken.items() if due.checkpoint] == list(
      range(2, 21, 2)
  )


_BROADCAST_SCRIPT = """
import json, sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from ankle_jax.training import cadence
rhythm = cadence.Cadence(num_train_steps=10, log_every_steps=1,
    checkpoint_every_steps=100, eval_every_steps=100,
    checkpoint_every_seconds=5.0, eval_every_seconds=5.0)
# Process 0 is 6 s into the run, process 1 only 1 s.
now = 6.0 if jax.process_index() == 0 else 1.0
due, _ = cadence.decide(rhythm, cadence.Clock.started(0.0), 3, now)
print(json.dumps([due.checkpoint, due.evaluate]))
"""


def test_two_processes_take_process_0s_decision(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO_ROOT))
  processes = [
      subprocess.Popen(
          [sys.executable, '-c', _BROADCAST_SCRIPT, address, str(index)],
          cwd=REPO_ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for index in (0, 1)
  ]
  outputs = [p.communicate(timeout=120) for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs
  decisions = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert decisions == [[True, True], [True, True]]


def test_negative_seconds_are_a_clear_error(monkeypatch):
  test_train._validate_stub(monkeypatch)
  for field in ('checkpoint_every_seconds', 'eval_every_seconds'):
    with pytest.raises(console.UserError, match=f'config.{field}=-1'):
      config_checks.validate_config(test_train.tiny_config(**{field: -1}))


def test_a_run_saves_by_seconds_instead_of_steps(tmp_path, monkeypatch):
  # A save due at every log step (every 2 steps) once 1 us has passed; the
  # step count (100) is ignored.
  config = test_train.tiny_config(
      num_train_steps=4,
      log_every_steps=2,
      checkpoint_every_steps=100,
      checkpoint_every_seconds=1e-6,
      eval_every_steps=100,
      keep_checkpoints=5,
  )
  test_train.run(config, tmp_path, monkeypatch)
  latest = tmp_path / checkpoint.LATEST_DIR
  assert sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) == [
      2,
      4,
  ]

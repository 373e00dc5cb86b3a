"""Tests for ankle_jax.console: bad command lines give 1-3 line messages with
exit status 2 (no traceback unless --verbosity=1), --help exits 0, and library
INFO logging is silenced unless --verbosity=1."""

import logging as py_logging
import os
import pathlib
import subprocess
import sys
import textwrap

from absl import logging
import pytest

from ankle_jax import console

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, cwd=REPO_ROOT, timeout=120) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, *args],
      capture_output=True,
      text=True,
      cwd=cwd,
      env=env,
      check=False,
      timeout=timeout,
  )


def _launch(tmp_path, *args) -> subprocess.CompletedProcess:
  return _run(['launch.py', f'--workdir={tmp_path / "run"}', *args])


def _assert_brief_error(result, *expected: str) -> None:
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  lines = result.stderr.splitlines()
  assert 1 <= len(lines) <= 3, result.stderr
  assert lines[0].startswith('error: '), result.stderr
  for text in expected:
    assert text in result.stderr, result.stderr


def test_unknown_config_field(tmp_path):
  result = _launch(
      tmp_path, '--config=configs/demo.py', '--config.no_such_field=1'
  )
  _assert_brief_error(
      result,
      "error: unknown config field 'no_such_field' (--config.no_such_field=1)",
      'The fields and their defaults: configs/default.py',
  )
  assert not (tmp_path / 'run').exists()


def test_unknown_nested_config_field_suggests_the_closest(tmp_path):
  result = _launch(
      tmp_path, '--config=configs/demo.py', '--config.data.data_dirr=/x'
  )
  _assert_brief_error(
      result,
      "unknown config field 'data.data_dirr'",
      "did you mean 'data.data_dir'",
  )


def test_missing_config_file(tmp_path):
  result = _launch(tmp_path, '--config=configs/nope.py')
  _assert_brief_error(
      result,
      "error: config file 'configs/nope.py' not found "
      '(--config=configs/nope.py)',
      'default.py, demo.py',
  )
  # With an override as well (ml_collections fails on it differently).
  result = _launch(tmp_path, '--config=configs/nope.py', '--config.seed=1')
  _assert_brief_error(result, "config file 'configs/nope.py' not found")


@pytest.mark.parametrize(
    'override, expected',
    [
        (
            '--config.batch_size=abc',
            "config field 'batch_size' expects int, got 'abc'",
        ),
        (
            '--config.model.dropout_rate=high',
            "config field 'model.dropout_rate' expects float, got 'high'",
        ),
        (
            '--config.data.synthetic.enabled=maybe',
            "config field 'data.synthetic.enabled' expects bool",
        ),
    ],
)
def test_bad_config_value_type(tmp_path, override, expected):
  result = _launch(tmp_path, '--config=configs/demo.py', override)
  _assert_brief_error(result, expected, 'configs/default.py')


def test_unknown_flag_and_missing_required_flag(tmp_path):
  result = _launch(tmp_path, '--config=configs/demo.py', '--workdr=/x')
  _assert_brief_error(
      result, "Unknown command line flag 'workdr'", 'Did you mean: workdir'
  )
  result = _run(['launch.py', '--workdir=/x'])
  _assert_brief_error(result, 'error: --config is required')


def test_verbosity_1_shows_the_traceback(tmp_path):
  result = _launch(
      tmp_path,
      '--config=configs/demo.py',
      '--config.no_such_field=1',
      '--verbosity=1',
  )
  assert result.returncode == 2
  assert 'Traceback' in result.stderr
  assert (
      result.stderr.rstrip()
      .splitlines()[-2]
      .startswith("error: unknown config field 'no_such_field'")
  )


@pytest.mark.parametrize(
    'command',
    [
        ['launch.py'],
        ['-m', 'ankle_jax.data.build'],
        ['-m', 'ankle_jax.data.synthetic'],
        ['-m', 'ankle_jax.evaluate'],
        ['-m', 'ankle_jax.predict'],
    ],
    ids=lambda c: c[-1],
)
def test_help_exits_0(command):
  result = _run([*command, '--help'])
  assert result.returncode == 0, result.stderr
  assert '--' in result.stdout and 'flags:' in result.stdout


_SCRIPT = textwrap.dedent("""\
    import logging as py_logging
    import sys

    from absl import logging

    from ankle_jax import console

    def main(argv):
      logging.info('absl-info')
      logging.warning('absl-warning')
      for name in ('orbax', 'jax._src.xla_bridge', 'grain', 'etils'):
        py_logging.getLogger(name).info('%s-info', name)
      py_logging.getLogger('orbax').debug('orbax-debug')
      print('own line')
      if len(argv) > 1:
        raise console.UserError('the ' + argv[1] + ' is wrong; fix it')

    console.run(main)
    """)


@pytest.fixture
def script(tmp_path):
  path = tmp_path / 'command.py'
  path.write_text(_SCRIPT)
  return path


def test_library_info_is_silenced_by_default(script):
  result = _run([str(script)])
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'own line\n'
  assert 'absl-warning' in result.stderr
  for name in ('absl-info', 'orbax-info', 'jax._src', 'grain', 'etils'):
    assert name not in result.stderr
  assert len(result.stderr.splitlines()) == 1, result.stderr


def test_verbosity_1_brings_library_logging_back(script):
  result = _run([str(script), '--verbosity=1'])
  assert result.returncode == 0, result.stderr
  for name in ('absl-info', 'orbax-info', 'jax._src.xla_bridge-info'):
    assert name in result.stderr
  assert 'orbax-debug' not in result.stderr  # DEBUG needs --verbosity=2.
  result = _run([str(script), '--verbosity=2'])
  assert 'orbax-debug' in result.stderr


def test_user_error_is_one_line_and_exit_2(script):
  result = _run([str(script), 'widget'])
  assert result.returncode == 2
  assert result.stderr.splitlines()[-1] == 'error: the widget is wrong; fix it'
  assert 'Traceback' not in result.stderr
  verbose = _run([str(script), 'widget', '-v', '1'])
  assert verbose.returncode == 2
  assert 'Traceback' in verbose.stderr


def test_quiet_libraries_sets_the_levels():
  loggers = [py_logging.getLogger(n) for n in console.LIBRARY_LOGGERS]
  root = py_logging.getLogger()
  saved = [lg.level for lg in loggers], logging.get_verbosity(), root.level
  try:
    console.quiet_libraries(0)
    assert not any(lg.isEnabledFor(py_logging.INFO) for lg in loggers)
    assert logging.get_verbosity() == logging.WARNING
    console.quiet_libraries(1)  # They inherit the root level: INFO.
    assert all(lg.level == py_logging.NOTSET for lg in loggers)
    assert root.level == py_logging.INFO
  finally:
    for lg, level in zip(loggers, saved[0]):
      lg.setLevel(level)
    logging.set_verbosity(saved[1])
    root.setLevel(saved[2])


def test_closest_fields():
  names = ['data.data_dir', 'data.manual_dir', 'batch_size', 'model.name']
  assert console.closest_fields('data.data_dirr', names)[0] == 'data.data_dir'
  assert console.closest_fields('batchsize', names) == ['batch_size']
  assert console.closest_fields('zzzzzz', names) == []

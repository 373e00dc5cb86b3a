"""Tests for the command `python -m ankle_jax.data.build`: its console lines
and its errors (1-3 lines, exit status 2, no traceback)."""

import os
import pathlib
import subprocess
import sys

import pytest

from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.data import radiograph_studies
from ankle_jax.data import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _build(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'ankle_jax.data.build', *args],
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
      env=env,
      check=False,
      timeout=300,
  )


@pytest.fixture(scope='module')
def studies(tmp_path_factory):
  manual = tmp_path_factory.mktemp('studies')
  synthetic.generate_studies(
      manual,
      num_normal=6,
      num_fracture=6,
      seed=3,
      views_probs=(0, 0, 1),
      max_size=320,
  )
  (manual / 'normal' / 'notes_case').mkdir()
  (manual / 'normal' / 'notes_case' / 'notes.txt').write_text('not an image')
  return manual


def test_build_prints_its_own_lines_and_a_summary(studies, tmp_path):
  data_dir = tmp_path / 'tfds'
  salt_file = tmp_path / 'salt.txt'
  salt_file.write_text('  a private salt\n')
  result = _build(
      f'--manual_dir={studies}',
      f'--data_dir={data_dir}',
      f'--salt_file={salt_file}',
      '--num_workers=1',
      '--no_progress',
      '--num_validation_per_label=2',
      '--num_test_per_label=2',
  )
  assert result.returncode == 0, result.stderr
  out = result.stdout.splitlines()
  assert out[0] == (
      f'Building radiograph_studies/dicom_cases from {studies} into {data_dir}'
  )
  assert out[1].startswith('radiograph_studies/dicom_cases: 12 cases, 36 views')
  assert 'views/s' in out[1]
  assert ' '.join(out[2].split()) == (
      'train: normal 2 cases (6 views), fracture 2 cases (6 views)'
  )
  assert out[-1].startswith('1 unreadable file skipped (1 case had no')
  assert out[-1].endswith(
      f'dicom_cases/{radiograph_studies.Builder.VERSION}/build_report.md'
  )
  assert len(out) == 6, result.stdout
  console = result.stdout + result.stderr
  for noise in ('Downloading and preparing', 'Unknown size', '{"counts"'):
    assert noise not in console
  # The unreadable file: one warning line on stderr (absl format).
  assert 'skipping file 0 of case' in result.stderr
  assert len(result.stderr.splitlines()) == 1, result.stderr

  again = _build(f'--manual_dir={studies}', f'--data_dir={data_dir}')
  assert again.returncode == 0, again.stderr
  assert again.stdout.startswith('Using the existing radiograph_studies')
  # case_ids are hashed with the file's salt, stripped.
  case_ids = {
      pipeline.to_str(ex['case_id'])
      for split in ('train', 'validation', 'test')
      for ex in pipeline.load_split(data_dir, split)
  }
  folders = [
      f'{label}/{case.name}'
      for label in ('normal', 'fracture')
      for case in (studies / label).iterdir()
      if case.name != 'notes_case'
  ]
  assert case_ids == {
      radiograph_studies.case_id_for(f, 'a private salt') for f in folders
  }


def test_default_salt_warns(studies, tmp_path):
  result = _build(
      f'--manual_dir={studies}',
      f'--data_dir={tmp_path}',
      '--num_workers=1',
      '--no_progress',
      '--num_validation_per_label=2',
      '--num_test_per_label=2',
  )
  assert result.returncode == 0, result.stderr
  warning = 'case_ids use the public default salt'
  assert warning in result.stderr  # while building (absl format) ...
  assert f'warning: {warning}' in result.stdout  # ... and in the summary.
  assert '--salt_file=PATH' in result.stdout


@pytest.mark.parametrize(
    'args, message',
    [
        (
            ['--manual_dir={tmp}/nowhere', '--data_dir={tmp}/tfds'],
            'error: manual_dir {tmp}/nowhere does not exist or is not a '
            'folder.\nExpected layout (dicom_cases): '
            '<manual_dir>/{{normal,fracture}}/<case>/<file>.dcm',
        ),
        (
            ['--manual_dir={tmp}', '--data_dir={tmp}/tfds'],
            'error: manual_dir {tmp} is empty.',
        ),
        (
            ['--manual_dir={tmp}', '--data_dir={tmp}/tfds', '--config=murra'],
            "error: unknown dataset config 'murra'; choose one of "
            'dicom_cases, mura, fracatlas.',
        ),
        (['--data_dir={tmp}/tfds'], 'error: --manual_dir is required'),
        (
            [
                '--manual_dir={tmp}',
                '--data_dir={tmp}/tfds',
                '--salt_file={tmp}/no_salt.txt',
            ],
            'error: --salt_file={tmp}/no_salt.txt: cannot read it',
        ),
        (
            [
                '--manual_dir={tmp}',
                '--data_dir={tmp}/tfds',
                '--salt_file={tmp}/no_salt.txt',
                '--salt=x',
            ],
            'error: give --salt or --salt_file, not both.',
        ),
    ],
)
def test_bad_input_is_a_short_message(tmp_path, args, message):
  result = _build(*(a.format(tmp=tmp_path) for a in args))
  assert result.returncode == 2, result.stderr
  assert message.format(tmp=tmp_path) in result.stderr
  assert 'Traceback' not in result.stderr
  assert len(result.stderr.splitlines()) <= 3, result.stderr


def test_wrong_layout_is_a_user_error(studies, tmp_path):
  with pytest.raises(radiograph_studies.BuildError, match='Expected layout:'):
    prepare.build_dataset(
        studies, tmp_path, config='mura', num_workers=1, progress=False
    )
  assert not prepare.dataset_exists(tmp_path, 'mura')


def test_help_exits_0():
  result = _build('--help')
  assert result.returncode == 0, result.stderr
  assert '--manual_dir' in result.stdout and 'fracatlas' in result.stdout

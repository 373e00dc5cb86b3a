"""Tests of batch prediction (python -m ankle_jax.predict --out=DIR).

A tiny stand-in model (tests/test_evaluate.py's TinyNet, 32 px) on small
generated studies (ankle_jax.data.synthetic) keeps them cheap.
"""

import csv
import json
import os
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image
import pytest

from ankle_jax import console
from ankle_jax import inference
from ankle_jax import models
from ankle_jax.data import pipeline
from ankle_jax.data import synthetic
from ankle_jax.data.radiograph_studies import decoding
from ankle_jax.data.radiograph_studies import layouts
from ankle_jax.evaluation import calibrators
from ankle_jax.prediction import batch as batch_lib
from ankle_jax.prediction import decision
from ankle_jax.prediction import inputs
from ankle_jax.prediction import run as batch_run
from ankle_jax.prediction import single
from ankle_jax.prediction import table

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'tests'))
import test_evaluate  # noqa: E402

NUM_STUDIES = 4


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
  monkeypatch.setattr(
      models, 'from_run_config', test_evaluate.tiny_create_model
  )


@pytest.fixture(scope='module')
def studies(tmp_path_factory) -> pathlib.Path:
  """NUM_STUDIES small synthetic DICOM studies (dicom_cases layout)."""
  root = tmp_path_factory.mktemp('studies')
  synthetic.generate_studies(
      root, num_normal=2, num_fracture=2, seed=3, min_size=64, max_size=96
  )
  return root


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory) -> str:
  return test_evaluate.make_fake_run(
      str(tmp_path_factory.mktemp('runs') / 'tiny'), 1
  )


def mixed_folder(studies: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
  """The studies, a corrupt DICOM, a text file and a PNG case, nested."""
  mixed = root / 'mixed'
  shutil.copytree(studies, mixed / 'archive' / 'deep')
  first = sorted((mixed / 'archive').rglob('*.dcm'))[0]
  (mixed / 'archive' / 'corrupt.dcm').write_bytes(first.read_bytes()[:300])
  (mixed / 'notes.txt').write_text('not an image')
  png_case = mixed / 'pngs' / 'case_a'
  png_case.mkdir(parents=True)
  pixels = (np.arange(48 * 40).reshape(48, 40) % 251).astype(np.uint8)
  Image.fromarray(pixels).save(png_case / 'view.png')
  return mixed


def read_csv(path) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def batch(run_dir, paths, out_dir, **kwargs) -> batch_run.BatchReport:
  settings = batch_run.BatchSettings(
      run_dirs=[run_dir],
      paths=[str(p) for p in paths],
      out_dir=str(out_dir),
      progress=False,
      **kwargs,
  )
  return batch_run.run_batch(settings)


def test_find_cases_groups_by_study_series_and_folder(studies, tmp_path):
  mixed = mixed_folder(studies, tmp_path)
  found = inputs.find_cases([mixed], group_by='study')
  manifest = json.loads((studies / synthetic.MANIFEST_NAME).read_text())
  dicom_cases = [c for c in found.cases if c.is_dicom]
  assert {c.key for c in dicom_cases} == {m['study_uid'] for m in manifest}
  assert sum(len(c.files) for c in dicom_cases) == sum(
      len(m['files']) for m in manifest
  )
  png_cases = [c for c in found.cases if not c.is_dicom]
  assert [c.key for c in png_cases] == ['pngs/case_a']
  reasons = sorted(s.reason for s in found.skipped)
  # notes.txt, synthetic_manifest.json and the corrupt file.
  assert len(reasons) == 3 and 'not a DICOM, PNG or JPEG file' in reasons
  # A series per view in the synthetic studies; folders as the builder keys
  # them ('<label>/<case folder>'), so the hashed ids are the builder's.
  series = inputs.find_cases([studies], group_by='series')
  assert len(series.cases) == sum(len(m['files']) for m in manifest)
  folders = inputs.find_cases([studies], group_by='folder')
  keys = {
      p.parent.relative_to(studies).as_posix() for p in studies.rglob('*.dcm')
  }
  assert {c.case_id for c in folders.cases} == {
      layouts.case_id_for(k) for k in keys
  }
  unhashed = inputs.find_cases([studies], group_by='folder', salt=None)
  assert {c.case_id for c in unhashed.cases} == keys
  salted = inputs.find_cases([studies], group_by='folder', salt='private')
  assert {c.case_id for c in salted.cases} == {
      layouts.case_id_for(k, 'private') for k in keys
  }
  with pytest.raises(console.UserError, match='group_by'):
    inputs.find_cases([studies], group_by='patient')


def test_batch_csv_errors_and_no_paths(studies, run_dir, tmp_path, capsys):
  """A mixed folder: a row per case and view, bad files counted, no PHI."""
  mixed = mixed_folder(studies, tmp_path)
  report = batch(run_dir, [mixed], tmp_path / 'out')
  rows = read_csv(tmp_path / 'out' / table.PREDICTIONS_FILE)
  cases = [r for r in rows if r['row_type'] == 'case']
  views = [r for r in rows if r['row_type'] == 'view']
  assert len(cases) == NUM_STUDIES + 1  # + the PNG case
  assert len(views) == sum(int(r['num_views']) for r in cases)
  assert set(rows[0]) == set(table.PREDICTION_COLUMNS)
  for r in cases:
    assert r['decision'] == (
        'fracture' if float(r['prob_raw']) >= 0.5 else 'normal'
    )
    assert r['runs'] == 'tiny' and r['checkpoint_steps'] == '7'
  errors = read_csv(tmp_path / 'out' / table.ERRORS_FILE)
  assert [e['row_type'] for e in errors] == ['file'] * 3
  text = (tmp_path / 'out' / table.PREDICTIONS_FILE).read_text()
  text += (tmp_path / 'out' / table.ERRORS_FILE).read_text()
  printed = capsys.readouterr()
  for secret in ('Quoxington', 'mixed', 'case_a', 'corrupt', 'notes'):
    assert secret not in text and secret not in printed.out
  assert 'skipped 3 unreadable file(s)' in printed.out
  assert 'cases/s' in printed.out
  assert len(report.outcome.results) == NUM_STUDIES + 1


def test_batch_probabilities_equal_the_one_case_command(studies, run_dir):
  """Batched across cases (padded batches) = each case alone."""
  found = inputs.find_cases([studies])
  runs = inference.load_runs([run_dir])
  outcome = batch_lib.predict_cases(runs, found.cases, batch_size=4)
  for result in outcome.results:
    files = [v.file.path for v in result.views]
    alone = single.predict_case(runs, files)  # read the same way
    np.testing.assert_allclose(
        [v.prob_raw for v in result.views], alone.probs_rv[0], rtol=1e-5
    )
    np.testing.assert_allclose(
        result.prob_raw, alone.probs_rv[0].mean(), rtol=1e-5
    )


def test_views_are_read_as_the_builder_stores_them(studies):
  """stored_size: the builder's uint16 at 300 px, then pipeline.to_image, so
  that probabilities are evaluate's."""
  path = str(sorted(studies.rglob('*.dcm'))[0])
  ok, stored, _ = decoding.decode_job(path, batch_lib.STORED_SIZE)
  assert ok and stored.dtype == np.uint16
  np.testing.assert_array_equal(
      batch_lib.load_view(path, 32, batch_lib.STORED_SIZE),
      pipeline.to_image(stored, 32),
  )
  direct = batch_lib.load_view(path, 32, 0)
  assert direct.shape == (32, 32, 1)
  assert not np.array_equal(direct, pipeline.to_image(stored, 32))


def test_one_forward_compilation_for_all_cases(studies, run_dir, monkeypatch):
  """Fixed batch shapes: the forward compiles once, whatever the cases."""
  forwards = []
  make_forward = inference.make_forward

  def counting(module):
    forwards.append(make_forward(module))
    return forwards[-1]

  monkeypatch.setattr(inference, 'make_forward', counting)
  found = inputs.find_cases([studies])
  runs = inference.load_runs([run_dir])
  outcome = batch_lib.predict_cases(runs, found.cases, batch_size=2)
  assert len(outcome.results) == NUM_STUDIES
  assert len(forwards) == 1 and forwards[0]._cache_size() == 1


def test_a_failing_case_is_listed_and_others_go_on(studies, run_dir, tmp_path):
  """A study whose only view has truncated pixels fails with its reason."""
  broken = tmp_path / 'broken'
  shutil.copytree(studies, broken)
  manifest = json.loads((studies / synthetic.MANIFEST_NAME).read_text())
  one_view = next(m for m in manifest if len(m['files']) == 1)
  [path] = [
      p for p in broken.rglob('*.dcm')
      if inputs.sniff(str(p)).study_uid == one_view['study_uid']
  ]  # fmt: skip
  path.write_bytes(path.read_bytes()[:-500])
  report = batch(run_dir, [broken], tmp_path / 'out')
  assert len(report.outcome.results) == NUM_STUDIES - 1
  [failure] = report.outcome.failures
  assert failure.case.key == one_view['study_uid']
  assert failure.reason.startswith('no readable view')
  errors = read_csv(tmp_path / 'out' / table.ERRORS_FILE)
  assert {'case', 'file'} == {e['row_type'] for e in errors}


def write_evaluation(eval_dir, step, slope=2.0, intercept=-1.0):
  """A minimal evaluate output: a Platt calibrator at both levels and the
  case operating points."""
  os.makedirs(eval_dir, exist_ok=True)
  calibrator = calibrators.Calibrator('platt', slope, intercept, True)
  entries = [
      {
          'members': ['tiny'],
          'level': level,
          'voting': 'soft',
          'split': 'test',
          'subgroup': None,
          'calibration': {'calibrator': calibrator.to_json()},
      }
      for level in ('image', 'case')
  ]
  ops = [
      {'members': ['tiny'], 'level': level, 'name': name, 'threshold': t,
       'chosen_on': 'validation'}
      for level in ('image', 'case')
      for name, t in (('youden', 0.42), ('sens90', 0.3))
  ]  # fmt: skip
  summary = {
      'runs': ['tiny'],
      'checkpoints': {'tiny': {'which': 'best', 'step': step}},
      'operating_points': ops,
  }
  with open(os.path.join(eval_dir, decision.RESULTS_FILE), 'w') as f:
    json.dump(entries, f)
  with open(os.path.join(eval_dir, decision.SUMMARY_FILE), 'w') as f:
    json.dump(summary, f)
  return calibrator


def test_evaluation_calibration_and_operating_point(studies, run_dir, tmp_path):
  calibrator = write_evaluation(tmp_path / 'eval', step=7)
  batch(
      run_dir,
      [studies],
      tmp_path / 'out',
      evaluation=str(tmp_path / 'eval'),
      operating_point='sens90',
  )
  rows = read_csv(tmp_path / 'out' / table.PREDICTIONS_FILE)
  for r in rows:
    raw = float(r['prob_raw'])
    assert float(r['prob_calibrated']) == pytest.approx(
        float(calibrator.apply(raw)), rel=1e-12
    )
    assert r['threshold'] == '0.3' and r['operating_point'] == 'sens90'
    assert r['decision'] == ('fracture' if raw >= 0.3 else 'normal')
    assert r['chosen_on'] == 'validation' and r['evaluation_date']
    assert r['calibration'].startswith('platt')
    assert r['calibration'].endswith('(fitted on validation)')


def test_evaluation_of_other_steps_or_runs_is_refused(run_dir, tmp_path):
  write_evaluation(tmp_path / 'eval', step=8)
  runs = inference.load_runs([run_dir])
  with pytest.raises(console.UserError, match='step 8 but --runs restored'):
    decision.evaluation_rules(
        str(tmp_path / 'eval'), {r.name: r.step for r in runs}, 'youden'
    )
  with pytest.raises(console.UserError, match='pass the same runs'):
    decision.evaluation_rules(
        str(tmp_path / 'eval'), {'tiny': 7, 'other': 7}, 'youden'
    )
  with pytest.raises(console.UserError, match='needs --evaluation'):
    batch_run.decision_rules(
        batch_run.BatchSettings([run_dir], [], '', operating_point='youden'),
        runs,
    )


def test_an_error_in_one_case_stops_no_other(studies, run_dir, monkeypatch):
  """The stream fails (not just a file): retried case by case, the failing
  case listed with its reason."""
  found = inputs.find_cases([studies])
  poisoned = found.cases[1].key
  view_batches = batch_lib.view_batches

  def failing(cases, *args, **kwargs):
    if any(c.key == poisoned for c in cases):
      raise RuntimeError('decoder crashed')
    return view_batches(cases, *args, **kwargs)

  monkeypatch.setattr(batch_lib, 'view_batches', failing)
  runs = inference.load_runs([run_dir])
  outcome = batch_lib.predict_cases(runs, found.cases, batch_size=4)
  assert [r.case.key for r in outcome.results] == [
      c.key for c in found.cases if c.key != poisoned
  ]
  [failure] = outcome.failures
  assert failure.case.key == poisoned
  assert failure.reason == 'RuntimeError: decoder crashed'


def test_progress_counts_each_case_once_when_the_stream_fails_late(
    studies, run_dir, monkeypatch
):
  """The stream breaks after some cases were counted: the case-by-case
  retry counts only the others."""
  found = inputs.find_cases([studies])
  view_batches = batch_lib.view_batches

  def failing_late(cases, size, batch_size, unreadable, on_case, stored):
    read = []

    def count():
      read.append(1)
      on_case()

    for b in view_batches(cases, size, batch_size, unreadable, count, stored):
      if len(cases) > 1 and len(read) >= 2:
        raise RuntimeError('stream broke')
      yield b

  monkeypatch.setattr(batch_lib, 'view_batches', failing_late)
  runs = inference.load_runs([run_dir])
  calls = []
  outcome = batch_lib.predict_cases(
      runs, found.cases, batch_size=4, on_case=lambda: calls.append(1)
  )
  assert len(outcome.results) == len(found.cases)
  assert len(calls) == len(found.cases)

"""Tests of predict --dicom_out: every object validates (dciodvfy), reads
back, files into its source study and says what the CSV says."""

import os
import pathlib
import shutil
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
import pytest

from ankle_jax.dicom_out import identity
from ankle_jax.dicom_out import sc as sc_lib
from ankle_jax.dicom_out import write as write_lib
from ankle_jax.prediction import inputs
from ankle_jax.prediction import table

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'tests'))
import test_predict_batch as helpers  # noqa: E402
from test_predict_batch import run_dir  # noqa: E402, F401
from test_predict_batch import studies  # noqa: E402, F401
from test_predict_batch import tiny_models  # noqa: E402, F401

UID_ROOT = '1.2.826.0.1.3680043.10.999.'


def dciodvfy_errors(path: str) -> list[str]:
  """dciodvfy's "Error" lines for one file (skips when it is missing)."""
  if shutil.which('dciodvfy') is None:
    pytest.skip('dciodvfy missing (apt-get install dicom3tools; CI has it)')
  proc = subprocess.run(
      ['dciodvfy', path],
      capture_output=True,
      text=True,
      errors='replace',  # it echoes 8-bit values
      timeout=60,
  )
  return [
      line
      for line in (proc.stdout + proc.stderr).splitlines()
      if 'Error' in line
  ]


def sr_probabilities(path: str) -> dict[str, tuple[float, list[str]]]:
  """{tracking identifier: (probability, referenced SOP Instance UIDs)} of
  an SR, as highdicom parses it."""
  report = hd.sr.srread(path).content
  out = {}
  for group in report.get_image_measurement_groups():
    [measurement] = group.get_measurements(name=codes.DCM.Probability)
    uids = [
        image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for image in measurement.referenced_images
    ]
    out[group.tracking_identifier] = (measurement.value, uids)
  return out


def check_outputs(out_dir: pathlib.Path, sources: dict[str, pydicom.Dataset]):
  """Every object: no dciodvfy error, read back, in its source study, new
  UIDs under UID_ROOT, and SR probabilities = the CSV's."""
  rows = helpers.read_csv(out_dir / table.PREDICTIONS_FILE)
  objects = sorted((out_dir / write_lib.DICOM_DIR).rglob('*.dcm'))
  assert objects
  for path in objects:
    assert dciodvfy_errors(str(path)) == [], path
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID.startswith(UID_ROOT)
    assert ds.SeriesInstanceUID.startswith(UID_ROOT)
    assert ds.Manufacturer == identity.MANUFACTURER and ds.ContentDate
    case_rows = [r for r in rows if r['case_id'] == path.parent.name]
    assert ds.StudyInstanceUID == case_rows[0]['study_instance_uid']
    source = sources[case_rows[1]['sop_instance_uid']]
    assert ds.PatientID == source.PatientID
    if path.name == write_lib.SR_FILE:
      check_sr(str(path), case_rows, sources)
    else:
      [ref] = ds.SourceImageSequence
      assert ref.ReferencedSOPInstanceUID in sources
      assert identity.RESEARCH_ONLY in ds.ImageComments
  return objects


def check_sr(path, case_rows, sources) -> None:
  found = sr_probabilities(path)
  case, views = case_rows[0], case_rows[1:]
  probability, uids = found[f'case {case["case_id"]}']
  assert probability == float(case['prob_calibrated'])
  assert sorted(uids) == sorted(v['sop_instance_uid'] for v in views)
  for view in views:
    probability, [uid] = found[f'view {view["view_number"]}']
    assert probability == float(view['prob_calibrated'])
    assert uid == view['sop_instance_uid'] and uid in sources


def algorithm_parameters(path) -> set[str]:
  """The TEXT values of the SR's Algorithm Parameters (DCM 111002) items."""
  found = set()

  def walk(items):
    for item in items:
      code = item.ConceptNameCodeSequence[0].CodeValue
      if code == codes.DCM.AlgorithmParameters.value:
        found.add(item.TextValue)
      walk(item.get('ContentSequence', []))

  walk(pydicom.dcmread(path).ContentSequence)
  return found


def headers(paths) -> dict[str, pydicom.Dataset]:
  out = {}
  for path in paths:
    item = inputs.sniff(str(path))
    if isinstance(item, inputs.InputFile) and item.is_dicom:
      out[item.sop_uid] = pydicom.dcmread(path, stop_before_pixels=True)
  return out


def test_dicom_out_of_generated_studies_in_a_mixed_folder(
    studies, run_dir, tmp_path, capsys  # noqa: F811
):
  mixed = helpers.mixed_folder(studies, tmp_path)
  helpers.write_evaluation(tmp_path / 'eval', step=7)
  report = helpers.batch(
      run_dir,
      [mixed],
      tmp_path / 'out',
      evaluation=str(tmp_path / 'eval'),
      dicom_out=True,
      uid_root=UID_ROOT,
      panel_size=64,
  )
  objects = check_outputs(tmp_path / 'out', headers(mixed.rglob('*.dcm')))
  num_views = sum(
      len(r.views) for r in report.outcome.results if r.case.is_dicom
  )
  assert len(objects) == helpers.NUM_STUDIES + num_views
  assert 'PNG/JPEG files get no DICOM objects' in capsys.readouterr().err
  assert not report.written.failures
  sr_path = next(str(p) for p in objects if p.name == write_lib.SR_FILE)
  parameters = algorithm_parameters(sr_path)
  assert 'runs=tiny' in parameters and 'checkpoint_steps=7' in parameters
  assert any(
      p.startswith(
          'operating_point=youden chosen on validation (evaluation of '
      )
      for p in parameters
  )
  assert any(p.endswith('(fitted on validation)') for p in parameters)


def test_dicom_out_of_the_real_files(shared_dicom_dir, run_dir, tmp_path):  # noqa: F811
  """Real CR studies (RG3 ankle, RG2 hip), a DX whose 8-bit names declare
  no character set, and the undecodable file."""
  names = (
      'wg04_rg3_ankle_uncompressed.dcm',
      'wg04_rg2_hip_uncompressed.dcm',
      'pylibjpeg_dx_j2k_16bit.dcm',
      'bad_wg04_rg3_jpeg_extended_undecodable.dcm',
  )
  paths = [shared_dicom_dir / n for n in names]
  report = helpers.batch(
      run_dir,
      paths,
      tmp_path / 'out',
      dicom_out=True,
      uid_root=UID_ROOT,
      panel_size=64,
  )
  assert report.outcome.unreadable or report.outcome.failures
  check_outputs(tmp_path / 'out', headers(paths))


def test_secondary_capture_pixels_carry_the_bar_and_the_notice():
  background = np.full((64, 64), 0.5, np.float32)
  cam = np.zeros((64, 64), np.float32)
  cam[20:40, 20:40] = 1.0
  pixels = sc_lib.render(background, cam, 'view 1: p(fracture) = 0.900')
  assert pixels.shape == (
      sc_lib.TITLE_HEIGHT + 64 + sc_lib.FOOTER_HEIGHT,
      64 + sc_lib.BAR_WIDTH,
      3,
  )
  panel = pixels[sc_lib.TITLE_HEIGHT : sc_lib.TITLE_HEIGHT + 64, :64]
  assert panel[30, 30, 2] < panel[5, 5, 2] - 50  # the hot region is not grey
  bar = pixels[sc_lib.TITLE_HEIGHT : sc_lib.TITLE_HEIGHT + 64, 64 + 10]
  assert bar[0, 0] > bar[0, 2] and bar[-1, 2] > bar[-1, 0]  # red on top
  footer = pixels[sc_lib.TITLE_HEIGHT + 64 :]
  assert footer.max() > 0  # the research-use notice is drawn


def test_command_refuses_dicom_out_for_png_cases(run_dir, tmp_path):  # noqa: F811
  case = tmp_path / 'pngs' / 'case_a'
  case.mkdir(parents=True)
  from PIL import Image

  Image.fromarray(np.zeros((40, 40), np.uint8)).save(case / 'view.png')
  code = (
      'import sys; sys.path.insert(0, "tests");'
      'import test_evaluate as t;'
      'from ankle_jax import console, models, predict;'
      'models.from_run_config = t.tiny_create_model;'
      'predict.define_flags(); console.run(predict.main)'
  )
  proc = subprocess.run(
      [
          sys.executable,
          '-c',
          code,
          f'--runs={run_dir}',
          f'--out={tmp_path / "out"}',
          '--dicom_out',
          '--noprogress',
          str(tmp_path / 'pngs'),
      ],
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'PNG/JPEG files get no DICOM objects' in proc.stderr
  rows = helpers.read_csv(tmp_path / 'out' / table.PREDICTIONS_FILE)
  assert [r['row_type'] for r in rows] == ['case', 'view']
  assert not os.path.exists(tmp_path / 'out' / write_lib.DICOM_DIR)

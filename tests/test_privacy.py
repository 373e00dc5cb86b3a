"""No patient identifier reaches anything a researcher shares, end to end.

Synthetic studies carry distinctive fake identifiers (PatientName, PatientID,
birth date, accession number, Study/Series/SOP Instance UIDs) and case folders
named after the patient (ankle_jax.data.synthetic). They are built, trained on
with launch.py, evaluated with `python -m ankle_jax.evaluate` and predicted with
`python -m ankle_jax.predict --heatmap` on one case folder; the console output
of every command is saved in the run dir. Then no identifier may appear in any
byte of any file under the data dir, the run dir, the evaluation output or the
prediction output, nor in the decoded records, checkpoints and PNG text chunks.

The console is the user's own terminal: predict prints the view file names it
was given (`view 1 (IM0001_AP.dcm)`), never the folder, and writes none of them
to disk.
"""

import json
import sys

import jax
import numpy as np
from PIL import Image
import pytest
import run_helpers

from ankle_jax import checkpoint
from ankle_jax.data import pipeline


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return run_helpers.tiny_dataset(tmp_path_factory)


def identifiers(dataset):
  """Every identifying string of the generated studies, as bytes."""
  needles = set()
  for case in dataset.cases:
    surname, given = case.patient_name.split('^')
    needles |= {
        case.patient_name,
        surname,
        given,
        case.patient_id,
        case.birth_date,
        case.accession_number,
        case.study_uid,
        case.folder.split('/')[1],
    }
  assert len(needles) == 8 * len(dataset.cases)  # All distinct and distinctive.
  return sorted(needle.encode() for needle in needles)


@pytest.fixture(scope='module')
def outputs(tmp_path_factory, dataset):
  """{'data', 'run', 'evaluation', 'prediction'} directories after the four commands."""
  run_dir = run_helpers.reference_run(
      tmp_path_factory, dataset
  )  # Logs: run_dir/launch.*
  root = tmp_path_factory.mktemp('privacy')
  eval_dir, predict_dir = root / 'evaluation', root / 'prediction'
  result = run_helpers.run_logged(
      [
          sys.executable,
          '-m',
          'ankle_jax.evaluate',
          f'--runs={run_dir}',
          '--split=test',
          f'--out={eval_dir}',
          '--num_bootstrap=20',
          '--batch_size=8',
      ],
      dataset,
      run_dir / 'evaluate',
  )
  assert result.returncode == 0, run_helpers.fail_message(result)
  case = next(c for c in dataset.cases if len(c.files) == 3)
  case_dir = dataset.manual_dir / case.folder
  predict_dir.mkdir()
  result = run_helpers.run_logged(
      [
          sys.executable,
          '-m',
          'ankle_jax.predict',
          f'--runs={run_dir}',
          f"--heatmap={predict_dir / 'heatmap.png'}",
          '--panel_size=96',
          str(case_dir),
      ],
      dataset,
      run_dir / 'predict',
  )
  assert result.returncode == 0, run_helpers.fail_message(result)
  assert 'case: p(fracture)=' in result.stdout
  return {
      'data': dataset.data_dir,
      'run': run_dir,
      'evaluation': eval_dir,
      'prediction': predict_dir,
      'case_dir': case_dir,
  }


def test_no_identifier_in_any_byte_of_any_file(dataset, outputs):
  needles = identifiers(dataset) + [str(outputs['case_dir']).encode()]
  dicom = next(
      outputs['case_dir'].iterdir()
  ).read_bytes()  # The scan has teeth:
  assert (
      sum(needle in dicom for needle in needles) >= 5
  )  # the inputs carry them.
  files = {
      name: [p for p in outputs[name].rglob('*') if p.is_file()]
      for name in ('data', 'run', 'evaluation', 'prediction')
  }
  names = {p.name for paths in files.values() for p in paths}
  # The kinds of files the issue lists are all there.
  for expected in (
      'build_report.json',
      'config.json',
      'metrics.jsonl',
      'summary.json',
      'launch.stderr',
      'evaluate.stdout',
      'predict.stdout',
      'predictions.csv',
      'results.json',
      'report.md',
      'roc.png',
      'heatmap.png',
  ):
    assert expected in names, expected
  assert any(n.startswith('events.out.tfevents') for n in names)
  assert any(n.endswith('.array_record-00000-of-00001') for n in names)
  assert any('ocdbt' in str(p) for p in files['run'])
  leaks = [
      (needle.decode(), str(path))
      for paths in files.values()
      for path in paths
      for needle in needles
      if needle in path.read_bytes()
  ]
  assert not leaks, leaks[:10]
  # File and directory names too.
  all_paths = [
      str(p)
      for name in ('data', 'run', 'evaluation', 'prediction')
      for p in outputs[name].rglob('*')
  ]
  assert not [(n, p) for p in all_paths for n in needles if n.decode() in p]


def test_no_identifier_in_decoded_records_checkpoints_or_png_text(
    dataset, outputs
):
  """What compression could hide from the byte scan: records, arrays, PNG chunks."""
  needles = [n.decode() for n in identifiers(dataset)]
  strings = []
  for split in ('train', 'validation', 'test'):
    source = pipeline.load_split(dataset.data_dir, split)
    for i in range(len(source)):
      strings += [
          pipeline.to_str(v)
          for k, v in source[i].items()
          if k not in ('image',) and isinstance(v, (bytes, str, np.bytes_))
      ]
  assert strings
  for which in ('latest', 'best'):
    variables, _ = checkpoint.restore_variables(outputs['run'], which)
    for leaf in jax.tree.leaves(variables):
      assert np.issubdtype(np.asarray(leaf).dtype, np.number)
  for png in list(outputs['evaluation'].rglob('*.png')) + [
      outputs['prediction'] / 'heatmap.png'
  ]:
    with Image.open(png) as img:
      strings += [f'{k}={v}' for k, v in img.info.items()]
  strings += [
      json.dumps(json.loads(p.read_text()))
      for p in outputs['run'].rglob('*')
      if p.name in ('metadata',) and p.is_file()
  ]
  assert not [(n, s) for s in strings for n in needles if n in s]

"""Tests of ankle_jax.predict: case files, printed votes, RG3 with a heatmap."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import inference
from ankle_jax import models
from ankle_jax import saliency
from ankle_jax import writers
from ankle_jax.prediction import single

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from configs import local as local_config  # noqa: E402


def make_real_runs(root, seeds=(0, 1), image_size=80):
  """(Untrained) runs of the real tiny Xception drop/aux of configs/local.py."""
  config = local_config.get_config()
  config.image_size = image_size
  module = models.from_run_config(config)
  init = jax.jit(
      lambda k: module.init(
          k, jnp.zeros((1, image_size, image_size, 1)), train=False
      )
  )
  run_dirs = []
  for seed in seeds:
    workdir = os.path.join(root, f'xda{seed}')
    os.makedirs(workdir, exist_ok=True)
    config.seed = seed
    writers.write_config(workdir, config)
    ckpt = checkpoint.RunCheckpoints(workdir)
    ckpt.save_best(
        3,
        jax.tree.map(np.asarray, init(jax.random.key(seed))),
        {'val_accuracy': 0.5},
    )
    ckpt.close()
    run_dirs.append(workdir)
  return run_dirs


def test_case_files_folder_sorted_and_files(tmp_path):
  case = tmp_path / 'case'
  case.mkdir()
  for name in ('b.dcm', 'a.dcm', '.hidden'):
    (case / name).write_bytes(b'x')
  (tmp_path / 'z.dcm').write_bytes(b'x')
  assert single.case_files([str(case), str(tmp_path / 'z.dcm')]) == [
      str(case / 'a.dcm'),
      str(case / 'b.dcm'),
      str(tmp_path / 'z.dcm'),
  ]
  with pytest.raises(console.UserError, match='no such file'):
    single.case_files([str(tmp_path / 'missing.dcm')])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(console.UserError, match='no files'):
    single.case_files([str(tmp_path / 'empty')])


def test_format_predictions_votes_by_hand():
  probs_rv = np.array(
      [[0.9, 0.2], [0.3, 0.1], [0.8, 0.45]]  # 1 of 2 views: a tie -> fracture
  )
  text = single.format_predictions(
      ['r0', 'r1', 'r2'], ['v1.dcm', 'v2.dcm'], probs_rv
  )
  lines = text.splitlines()
  assert 'view 1 (v1.dcm): p(fracture)=0.9000 vote=fracture' in lines[1]
  assert lines[3].startswith(
      '  case: p(fracture)=0.5500 soft vote=fracture '
      'hard vote=fracture (1 of 2 views)'
  )
  assert 'hard vote=normal (0 of 2 views)' in lines[7]
  # Ensemble: view 1 has 2 of 3 runs voting fracture, view 2 none; mean of
  # view means (0.6667 and 0.25) is 0.4583 -> soft normal; hard: 1 of 2 views
  # -> tie -> fracture.
  assert 'ensemble of 3 runs:' in text
  assert lines[-3] == (
      '  view 1: mean p(fracture)=0.6667 soft vote=fracture '
      'hard vote=fracture (2 of 3 runs)'
  )
  assert lines[-1] == (
      '  case: mean p(fracture)=0.4583 soft vote=normal ' 'hard vote=fracture'
  )


@pytest.fixture(scope='module')
def real_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('predict_runs')
  return make_real_runs(str(root))


def test_predict_rg3_with_heatmap_writes_png_of_the_right_size(
    real_runs, shared_dicom_dir, tmp_path, capsys
):
  files = sorted(str(p) for p in shared_dicom_dir.glob('wg04_rg3_ankle_*.dcm'))
  assert len(files) >= 3
  files = files[:3]
  out_png = str(tmp_path / 'heat.png')
  result = single.run_predict(
      real_runs, files, heatmap_path=out_png, occlusion=True, panel_size=120
  )
  printed = capsys.readouterr().out
  assert 'ensemble of 2 runs' in printed and 'case: ' in printed
  assert result.probs_rv.shape == (2, 3)
  assert np.all((result.probs_rv >= 0) & (result.probs_rv <= 1))
  # The same pixel data in three encodings: nearly the same probability.
  assert np.ptp(result.probs_rv, axis=1).max() < 0.05
  with Image.open(out_png) as img:
    # 3 panels wide plus the colour bar; a Grad-CAM row and an occlusion row.
    assert img.size[::-1] == saliency.heatmap_png_size(3, 2, 120)
    assert img.size[0] > 3 * 120 and img.size[1] > 2 * 120
  cam = result.gradcam_vhw
  assert cam.shape == (3, 120, 120)
  assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() > 0.5
  assert result.occlusion_vhw.shape == (3, 120, 120)
  assert np.abs(result.occlusion_vhw).max() > 0
  # The probabilities equal a plain forward of each run.
  images = single.load_views(files, 80)
  for r, run_dir in enumerate(real_runs):
    config = checkpoint.load_run_config(run_dir)
    variables, _ = checkpoint.restore_variables(run_dir)
    log_probs = inference.make_forward(models.from_run_config(config))(
        inference.stack_variables([variables]), jnp.asarray(images)
    )[0]
    np.testing.assert_allclose(
        result.probs_rv[r], np.exp(np.asarray(log_probs)), atol=1e-5
    )


def test_predict_command_line(tmp_path, shared_dicom_dir):
  """The command's flags, with a tiny stand-in model (fast)."""
  sys.path.insert(0, str(REPO_ROOT / 'tests'))
  import test_evaluate

  run_dir = test_evaluate.make_fake_run(str(tmp_path / 'tiny'), 0)
  rg3 = str(shared_dicom_dir / 'wg04_rg3_ankle_uncompressed.dcm')
  rle = str(shared_dicom_dir / 'wg04_rg3_ankle_rle.dcm')
  out_png = str(tmp_path / 'heat.png')
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
          f'--runs={run_dir},{run_dir}',
          f'--heatmap={out_png}',
          '--occlusion',
          '--panel_size=100',
          rg3,
          rle,
      ],
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'view 1 (wg04_rg3_ankle_uncompressed.dcm): p(fracture)=' in proc.stdout
  assert 'run tiny~2:' in proc.stdout and 'ensemble of 2 runs' in proc.stdout
  with Image.open(out_png) as img:
    # 2 views; Grad-CAM row + occlusion row.
    assert img.size[::-1] == saliency.heatmap_png_size(2, 2, 100)
  proc = subprocess.run(
      [sys.executable, '-c', code, f'--runs={run_dir}', '--occlusion', rg3],
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
      timeout=600,
  )
  assert proc.returncode == 2 and 'error: --occlusion needs --heatmap' in (
      proc.stderr
  )


def test_predict_skips_unreadable_files(
    tmp_path, shared_dicom_dir, capsys, monkeypatch
):
  """A stray notes.txt is skipped with one warning line; none readable fails."""
  sys.path.insert(0, str(REPO_ROOT / 'tests'))
  import test_evaluate

  monkeypatch.setattr(
      models, 'from_run_config', test_evaluate.tiny_create_model
  )
  run_dir = test_evaluate.make_fake_run(str(tmp_path / 'tiny'), 0)
  case = tmp_path / 'case'
  case.mkdir()
  for name in ('wg04_rg3_ankle_uncompressed.dcm', 'wg04_rg3_ankle_rle.dcm'):
    (case / name).write_bytes((shared_dicom_dir / name).read_bytes())
  (case / 'notes.txt').write_text('seen by Dr. X\n')
  result = single.run_predict([run_dir], [str(case)])
  captured = capsys.readouterr()
  assert captured.err.splitlines() == [
      'warning: skipped notes.txt: not a DICOM, PNG or JPEG file.'
  ]
  assert result.probs_rv.shape == (1, 2)
  assert 'view 2 (wg04_rg3_ankle_uncompressed.dcm)' in captured.out
  assert 'notes.txt' not in captured.out and 'view 3' not in captured.out
  only_text = tmp_path / 'only_text'
  only_text.mkdir()
  (only_text / 'notes.txt').write_text('x')
  with pytest.raises(console.UserError, match='none of the 1 file'):
    single.run_predict([run_dir], [str(only_text)])


def test_format_predictions_of_a_multiview_run_and_a_mixed_ensemble():
  probs_rv = np.array([[0.9, 0.2], [0.3, 0.1], [0.8, 0.45]])
  case_probs_r = np.array([np.nan, 0.7, np.nan])  # r1 is multi-view.
  attention_rv = np.array([[np.nan] * 2, [0.75, 0.25], [np.nan] * 2])
  text = single.format_predictions(
      ['r0', 'r1', 'r2'],
      ['v1.dcm', 'v2.dcm'],
      probs_rv,
      case_probs_r,
      attention_rv,
  )
  lines = text.splitlines()
  assert lines[4] == 'run r1 (multi-view):'
  assert lines[5] == (
      '  view 1 (v1.dcm): attention=0.750 p(fracture) alone=0.3000'
  )
  assert lines[7] == '  case: p(fracture)=0.7000 vote=fracture'
  # Soft: mean of 0.55 (r0's soft vote), 0.7 and 0.625 = 0.625. Hard: r0
  # ties (1 of 2 views) -> fracture, r1 0.7 -> fracture, r2 ties -> fracture.
  assert lines[-2].startswith('ensemble of 3 runs (multi-view runs vote')
  assert lines[-1] == (
      '  case: mean p(fracture)=0.6250 soft vote=fracture hard vote=fracture'
  )

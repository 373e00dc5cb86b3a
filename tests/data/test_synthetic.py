"""Tests for ankle_jax.data.synthetic: real DICOM files, variety, determinism, the command."""

import json
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest

from ankle_jax.data import dicom
from ankle_jax.data import synthetic


def test_generates_varied_real_dicom_studies(tmp_path):
  start = time.time()
  cases = synthetic.generate_studies(
      tmp_path, num_normal=12, num_fracture=12, seed=3, max_size=500
  )
  assert time.time() - start < 30
  assert sum(c.label == 'fracture' for c in cases) == 12
  photometric, syntaxes, bits, sizes = set(), set(), set(), set()
  for case in cases:
    assert case.folder.startswith(case.label + '/')
    assert 1 <= len(case.files) <= 3
    for name in case.files:
      ds = pydicom.dcmread(tmp_path / case.folder / name)
      photometric.add(ds.PhotometricInterpretation)
      syntaxes.add(ds.file_meta.TransferSyntaxUID)
      bits.add(int(ds.BitsStored))
      sizes.add(int(ds.Rows))
      assert (
          str(ds.PatientName) == case.patient_name
          and ds.PatientID == case.patient_id
      )
      assert ds.ViewPosition in ('AP', 'OBL', 'LL')
  assert photometric == {'MONOCHROME1', 'MONOCHROME2'}
  assert (
      pydicom.uid.RLELossless in syntaxes
      and pydicom.uid.ExplicitVRLittleEndian in syntaxes
  )
  assert bits == {12}
  assert max(sizes) - min(sizes) > 50
  fractures = [c for c in cases if c.label == 'fracture']
  assert all(any(c.fracture_visible) for c in fractures)
  assert any(
      not all(c.fracture_visible) for c in fractures
  ), 'fracture visible in every view'
  manifest = json.loads((tmp_path / 'synthetic_manifest.json').read_text())
  assert len(manifest) == 24


def test_fracture_changes_pixels_subtly(tmp_path):
  """A fracture view differs from its case's normal-looking views only locally (thin line)."""
  cases = synthetic.generate_studies(
      tmp_path,
      num_normal=0,
      num_fracture=6,
      seed=1,
      views_probs=(0, 0, 1),
      max_size=400,
  )
  for case in cases:
    for name, _visible in zip(case.files, case.fracture_visible):
      image = dicom.load_radiograph(tmp_path / case.folder / name, 128)
      assert 0.05 < image.mean() < 0.8


def test_deterministic_and_command(tmp_path):
  synthetic.generate_studies(
      tmp_path / 'a', num_normal=2, num_fracture=2, seed=5, max_size=350
  )
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'ankle_jax.data.synthetic',
          f"--out_dir={tmp_path / 'b'}",
          '--num_normal=2',
          '--num_fracture=2',
          '--seed=5',
          '--max_size=350',
      ],
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Generated 4 synthetic cases'), result.stdout
  files_a = sorted(
      p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*.dcm')
  )
  files_b = sorted(
      p.relative_to(tmp_path / 'b') for p in (tmp_path / 'b').rglob('*.dcm')
  )
  assert files_a == files_b and files_a
  for rel in files_a:
    assert (tmp_path / 'a' / rel).read_bytes() == (
        tmp_path / 'b' / rel
    ).read_bytes()
  other = synthetic.generate_studies(
      tmp_path / 'c', num_normal=2, num_fracture=2, seed=6, max_size=350
  )
  assert other
  a0 = dicom.load_radiograph(tmp_path / 'a' / files_a[0], 64)
  assert np.isfinite(a0).all()


def _stored_pixels(root, case):
  return [
      pydicom.dcmread(root / case.folder / name).pixel_array.astype(np.int32)
      for name in case.files
  ]


def test_difficulty_knobs(tmp_path):
  """fracture_conspicuity scales the fracture (0 = none) and only touches
  fracture views;
  fracture_view_prob sets how many views of a fracture case show it."""
  kwargs = dict(
      num_normal=0,
      num_fracture=4,
      seed=2,
      views_probs=(0, 0, 1),
      max_size=350,
      fracture_view_prob=0.5,
  )
  runs = {
      c: synthetic.generate_studies(
          tmp_path / str(c), fracture_conspicuity=c, **kwargs
      )
      for c in (0.0, 1.0, 3.0)
  }
  change = {1.0: 0, 3.0: 0}
  for k, case in enumerate(runs[0.0]):
    pixels = {c: _stored_pixels(tmp_path / str(c), runs[c][k]) for c in runs}
    assert runs[1.0][k].fracture_visible == case.fracture_visible
    for view, visible in enumerate(case.fracture_visible):
      for c in change:
        diff = np.abs(pixels[c][view] - pixels[0.0][view])
        if (
            not visible
        ):  # identical random stream: a hidden fracture leaves no trace
          np.testing.assert_array_equal(diff, 0)
        else:
          assert (diff > 0).any(), 'a visible fracture must change the image'
          if c == 1.0:  # subtle: a thin line over a small part of the image
            assert (diff > 0.05 * 4095).mean() < 0.02
          change[c] += diff.sum()
  assert 0 < change[1.0] < change[3.0], change

  all_views = synthetic.generate_studies(
      tmp_path / 'p1', **{**kwargs, 'fracture_view_prob': 1.0}
  )
  one_view = synthetic.generate_studies(
      tmp_path / 'p0', **{**kwargs, 'fracture_view_prob': 0.0}
  )
  assert all(all(c.fracture_visible) for c in all_views)
  assert all(sum(c.fracture_visible) == 1 for c in one_view)
  for bad in (dict(fracture_view_prob=1.5), dict(fracture_conspicuity=-1.0)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      synthetic.generate_studies(tmp_path / 'bad', **{**kwargs, **bad})

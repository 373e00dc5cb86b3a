"""Tests for ankle_jax.data.synthetic: real DICOM files, variety, determinism, the command."""

import json
import time

import numpy as np
import pydicom

from ankle_jax.data import dicom
from ankle_jax.data import synthetic


def test_generates_varied_real_dicom_studies(tmp_path):
  start = time.time()
  cases = synthetic.generate_studies(tmp_path, num_normal=12, num_fracture=12, seed=3,
                                     max_size=500)
  assert time.time() - start < 30
  assert sum(c.label == "fracture" for c in cases) == 12
  photometric, syntaxes, bits, sizes = set(), set(), set(), set()
  for case in cases:
    assert case.folder.startswith(case.label + "/")
    assert 1 <= len(case.files) <= 3
    for name in case.files:
      ds = pydicom.dcmread(tmp_path / case.folder / name)
      photometric.add(ds.PhotometricInterpretation)
      syntaxes.add(ds.file_meta.TransferSyntaxUID)
      bits.add(int(ds.BitsStored))
      sizes.add(int(ds.Rows))
      assert str(ds.PatientName) == case.patient_name and ds.PatientID == case.patient_id
      assert ds.ViewPosition in ("AP", "OBL", "LL")
  assert photometric == {"MONOCHROME1", "MONOCHROME2"}
  assert pydicom.uid.RLELossless in syntaxes and pydicom.uid.ExplicitVRLittleEndian in syntaxes
  assert bits == {12}
  assert max(sizes) - min(sizes) > 50
  fractures = [c for c in cases if c.label == "fracture"]
  assert all(any(c.fracture_visible) for c in fractures)
  assert any(not all(c.fracture_visible) for c in fractures), "fracture visible in every view"
  manifest = json.loads((tmp_path / "synthetic_manifest.json").read_text())
  assert len(manifest) == 24


def test_fracture_changes_pixels_subtly(tmp_path):
  """A fracture view differs from its case's normal-looking views only locally (thin line)."""
  cases = synthetic.generate_studies(tmp_path, num_normal=0, num_fracture=6, seed=1,
                                     views_probs=(0, 0, 1), max_size=400)
  for case in cases:
    for name, visible in zip(case.files, case.fracture_visible):
      image = dicom.load_radiograph(tmp_path / case.folder / name, 128)
      assert 0.05 < image.mean() < 0.8


def test_deterministic_and_command(tmp_path):
  synthetic.generate_studies(tmp_path / "a", num_normal=2, num_fracture=2, seed=5, max_size=350)
  synthetic.main([f"--out_dir={tmp_path / 'b'}", "--num_normal=2", "--num_fracture=2",
                  "--seed=5", "--max_size=350"])
  files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
  files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
  assert files_a == files_b and files_a
  for rel in files_a:
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
  other = synthetic.generate_studies(tmp_path / "c", num_normal=2, num_fracture=2, seed=6,
                                     max_size=350)
  assert other
  a0 = dicom.load_radiograph(tmp_path / "a" / files_a[0], 64)
  assert np.isfinite(a0).all()

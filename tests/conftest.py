"""Shared pytest setup: Keras on the JAX backend, paths to the real files in ../shared."""

import os
import pathlib

os.environ.setdefault('KERAS_BACKEND', 'jax')

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / 'shared'
DICOM_DIR = SHARED_DIR / 'dicom'
FRACATLAS_DIR = SHARED_DIR / 'fracatlas_leg'


@pytest.fixture(scope='session')
def shared_dicom_dir() -> pathlib.Path:
  """The real DICOM radiographs of ../shared/dicom (see its MANIFEST.md)."""
  if not DICOM_DIR.is_dir():
    pytest.skip(f'real DICOM files not found at {DICOM_DIR}')
  return DICOM_DIR


@pytest.fixture(scope='session')
def fracatlas_dir() -> pathlib.Path:
  """The FracAtlas leg subset of ../shared/fracatlas_leg."""
  if not FRACATLAS_DIR.is_dir():
    pytest.skip(f'FracAtlas subset not found at {FRACATLAS_DIR}')
  return FRACATLAS_DIR

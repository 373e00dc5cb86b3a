r"""Builds the radiograph_studies dataset (ArrayRecord) from a folder of studies.

  python -m ankle_jax.data.build --manual_dir=DIR --data_dir=DIR \
      [--config=dicom_cases] [--strict]

The dataset lands in `<data_dir>/radiograph_studies/<config>/1.0.0/`, with
`build_report.json` and `build_report.md` next to the record files. The command
prints one line before, the decoding progress bar, and a closing summary
(counts per split and label, skipped files, speed). `tfds build` also works
where TensorFlow is installed, but is not needed.

Layouts of --manual_dir (`--config`):
  dicom_cases  <manual_dir>/{normal,fracture}/<case>/<file>.dcm (1..n views)
  mura         <manual_dir>/[MURA-v1.1/]{train,valid}/XR_<PART>/patient<id>/
               study<k>_{positive,negative}/image<n>.png
  fracatlas    <manual_dir>/images/{Fractured,Non_fractured}/*.jpg and
               <manual_dir>/dataset.csv
An optional <manual_dir>/splits.csv (columns case,split) overrides splits.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from ankle_jax import console
from ankle_jax.data import prepare

_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'Folder with the radiographs.', required=True
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data directory to write to.', required=True
)
_CONFIG = flags.DEFINE_string(
    'config',
    'dicom_cases',
    f'Layout of --manual_dir: {", ".join(prepare.CONFIG_NAMES)}.',
)
_STRICT = flags.DEFINE_bool(
    'strict', False, 'Fail on the first unreadable file (default: skip it).'
)
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', 0, 'Decoding processes (0 = all CPUs).'
)
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Rebuild an existing dataset.'
)
_NO_PROGRESS = flags.DEFINE_bool('no_progress', False, 'Hide the progress bar.')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'Side of the stored images in px (default 300).'
)
_SALT = flags.DEFINE_string(
    'salt',
    None,
    'case_id hash salt: set your own for real data, keep it private.',
)
_NUM_VALIDATION_PER_LABEL = flags.DEFINE_integer(
    'num_validation_per_label', None, 'dicom_cases, mura: validation cases.'
)
_NUM_TEST_PER_LABEL = flags.DEFINE_integer(
    'num_test_per_label', None, 'dicom_cases, mura: test cases per label.'
)
_MIN_EVAL_VIEWS = flags.DEFINE_integer(
    'min_eval_views', None, 'Views a validation/test case needs at least.'
)
_VALIDATION_FRACTION = flags.DEFINE_float(
    'validation_fraction', None, 'fracatlas: fraction of cases in validation.'
)
_BODY_PARTS = flags.DEFINE_list(
    'body_parts',
    None,
    'Comma-separated: mura XR_<PART> names, fracatlas CSV columns (e.g. leg).',
)
_EXCLUDE_HARDWARE = flags.DEFINE_bool(
    'exclude_hardware', False, 'fracatlas: drop images with hardware.'
)
_EXCLUDE_MULTISCAN = flags.DEFINE_bool(
    'exclude_multiscan', False, 'fracatlas: drop multiscan images.'
)


def config_overrides() -> dict[str, Any]:
  """The RadiographStudiesConfig fields the flags set (unset flags: none)."""
  overrides = {
      flag.name: flag.value
      for flag in (
          _IMAGE_SIZE,
          _SALT,
          _NUM_VALIDATION_PER_LABEL,
          _NUM_TEST_PER_LABEL,
          _MIN_EVAL_VIEWS,
          _VALIDATION_FRACTION,
      )
      if flag.value is not None
  }
  body_parts = tuple(p.strip() for p in _BODY_PARTS.value or () if p.strip())
  if body_parts:
    overrides['body_parts'] = body_parts
  if _EXCLUDE_HARDWARE.value:
    overrides['include_hardware'] = False
  if _EXCLUDE_MULTISCAN.value:
    overrides['include_multiscan'] = False
  return overrides


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise console.UserError(
        f'unexpected arguments: {" ".join(argv[1:])} (flags: --name=value)'
    )
  prepare.build_dataset(
      _MANUAL_DIR.value,
      _DATA_DIR.value,
      config=_CONFIG.value,
      strict=_STRICT.value,
      num_workers=_NUM_WORKERS.value,
      progress=not _NO_PROGRESS.value,
      overwrite=_OVERWRITE.value,
      echo=True,
      **config_overrides(),
  )


if __name__ == '__main__':
  console.run(main)

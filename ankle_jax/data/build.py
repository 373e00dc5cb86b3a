r"""Builds the radiograph_studies dataset (ArrayRecord) from a folder of studies.

  python -m ankle_jax.data.build --manual_dir=DIR --data_dir=DIR \
      [--config=dicom_cases] [--salt_file=PATH] [--strict]

The dataset lands in `<data_dir>/radiograph_studies/<config>/<version>/`, with
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

Salt. dicom_cases and mura name a case by a salted hash of its folder path;
for real data pass a private salt, preferably in a file (`--salt_file=PATH`:
its content, surrounding whitespace stripped; keep it outside data_dir and
reuse it for every build of the collection), as `--salt` shows in the shell
history and the process list. Without one, the public default salt is used and
the build warns. The salt never changes the split.
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
    'case_id hash salt for real data, kept private (--salt_file is safer).',
)
_SALT_FILE = flags.DEFINE_string(
    'salt_file',
    None,
    'File holding the case_id hash salt (stripped); keep it private.',
)
_NUM_VALIDATION_PER_LABEL = flags.DEFINE_integer(
    'num_validation_per_label', None, 'dicom_cases: validation cases per label.'
)
_NUM_TEST_PER_LABEL = flags.DEFINE_integer(
    'num_test_per_label', None, 'dicom_cases: test cases per label.'
)
_MIN_EVAL_VIEWS = flags.DEFINE_integer(
    'min_eval_views',
    None,
    'dicom_cases: views a validation/test case needs at least.',
)
_VALIDATION_FRACTION = flags.DEFINE_float(
    'validation_fraction',
    None,
    'fracatlas: fraction of images in validation; mura: of train/ studies.',
)
_NEAR_DUPLICATE_BITS = flags.DEFINE_integer(
    'near_duplicate_bits',
    None,
    'Views whose 512-bit difference hashes differ in at most this many bits '
    'share a split (default 32; -1: no check).',
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
          _NEAR_DUPLICATE_BITS,
      )
      if flag.value is not None
  }
  if _SALT_FILE.value is not None:
    overrides['salt'] = read_salt_file(_SALT_FILE.value, _SALT.value)
  body_parts = tuple(p.strip() for p in _BODY_PARTS.value or () if p.strip())
  if body_parts:
    overrides['body_parts'] = body_parts
  if _EXCLUDE_HARDWARE.value:
    overrides['include_hardware'] = False
  if _EXCLUDE_MULTISCAN.value:
    overrides['include_multiscan'] = False
  return overrides


def read_salt_file(path: str, salt_flag: str | None = None) -> str:
  """The salt in a --salt_file (`prepare.read_salt_file`).

  Raises:
    console.UserError: --salt given too, the file unreadable or blank.
  """
  if salt_flag is not None:
    raise console.UserError('give --salt or --salt_file, not both.')
  return prepare.read_salt_file(path)


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

r"""Builds the `radiograph_studies` dataset (ArrayRecord) without TensorFlow.

  python -m ankle_jax.data.build --manual_dir=DIR --data_dir=DIR \
      [--config=dicom_cases] [--strict]

The dataset lands in `<data_dir>/radiograph_studies/<config>/1.0.0/`, with
`build_report.json` and `build_report.md` next to the record files. `tfds build`
also works where TensorFlow is installed, but is not needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
from typing import Any

import tensorflow_datasets as tfds

from ankle_jax.data import radiograph_studies

CONFIG_NAMES = ('dicom_cases', 'mura', 'fracatlas')


def build_dataset(
    manual_dir: os.PathLike | str,
    data_dir: os.PathLike | str,
    *,
    config: str = 'dicom_cases',
    strict: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    **config_overrides: Any,
) -> dict[str, Any]:
  """Builds radiograph_studies/<config> into data_dir and returns the build
  report.

  Args:
    manual_dir: the folder with the radiographs (layout: see the builder's
      instructions).
    data_dir: TFDS data directory to write to.
    config: builder config name: 'dicom_cases', 'mura' or 'fracatlas'.
    strict: fail on the first unreadable file instead of skipping and reporting
      it.
    num_workers: decoding processes (0 = all CPUs, 1 = in this process).
    progress: show a progress bar.
    overwrite: rebuild even if the dataset already exists.
    **config_overrides: fields of `RadiographStudiesConfig` (image_size, salt,
      num_validation_per_label, num_test_per_label, min_eval_views,
      validation_fraction, body_parts, include_hardware, include_multiscan).

  Returns:
    The build report (also written as build_report.json / .md next to the
    dataset).
  """
  if config not in CONFIG_NAMES:
    raise ValueError(
        f'unknown config {config!r}; expected one of {CONFIG_NAMES}'
    )
  base = {c.name: c for c in radiograph_studies.Builder.BUILDER_CONFIGS}[config]
  builder_config = (
      dataclasses.replace(base, **config_overrides)
      if config_overrides
      else base
  )
  builder = radiograph_studies.Builder(
      config=builder_config,
      data_dir=os.fspath(data_dir),
      file_format='array_record',
      build_options=radiograph_studies.BuildOptions(
          num_workers=num_workers, strict=strict, progress=progress
      ),
  )
  if not progress:
    tfds.disable_progress_bar()
  mode = (
      tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
      if overwrite
      else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir), download_mode=mode
      ),
  )
  report_path = pathlib.Path(builder.data_dir) / radiograph_studies.REPORT_JSON
  return json.loads(report_path.read_text()) if report_path.exists() else {}


def _parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--manual_dir', required=True, help='folder with the radiographs'
  )
  parser.add_argument(
      '--data_dir', required=True, help='TFDS data directory to write'
  )
  parser.add_argument('--config', default='dicom_cases', choices=CONFIG_NAMES)
  parser.add_argument(
      '--strict', action='store_true', help='fail on the first unreadable file'
  )
  parser.add_argument('--num_workers', type=int, default=0, help='0 = all CPUs')
  parser.add_argument(
      '--overwrite', action='store_true', help='rebuild an existing dataset'
  )
  parser.add_argument('--no_progress', action='store_true')
  parser.add_argument('--image_size', type=int, default=None)
  parser.add_argument(
      '--salt', default=None, help='case_id hash salt (keep it private)'
  )
  parser.add_argument('--num_validation_per_label', type=int, default=None)
  parser.add_argument('--num_test_per_label', type=int, default=None)
  parser.add_argument('--min_eval_views', type=int, default=None)
  parser.add_argument('--validation_fraction', type=float, default=None)
  parser.add_argument(
      '--body_parts',
      default=None,
      help='comma-separated: mura XR_<PART> names, fracatlas CSV columns',
  )
  parser.add_argument(
      '--exclude_hardware', action='store_true', help='fracatlas'
  )
  parser.add_argument(
      '--exclude_multiscan', action='store_true', help='fracatlas'
  )
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = _parse_args(argv)
  overrides: dict[str, Any] = {}
  for field in (
      'image_size',
      'salt',
      'num_validation_per_label',
      'num_test_per_label',
      'min_eval_views',
      'validation_fraction',
  ):
    if getattr(args, field) is not None:
      overrides[field] = getattr(args, field)
  if args.body_parts:
    overrides['body_parts'] = tuple(
        p.strip() for p in args.body_parts.split(',') if p.strip()
    )
  if args.exclude_hardware:
    overrides['include_hardware'] = False
  if args.exclude_multiscan:
    overrides['include_multiscan'] = False
  report = build_dataset(
      args.manual_dir,
      args.data_dir,
      config=args.config,
      strict=args.strict,
      num_workers=args.num_workers,
      progress=not args.no_progress,
      overwrite=args.overwrite,
      **overrides,
  )
  summary = {
      'counts': report.get('counts'),
      'skipped_files': len(report.get('skipped_files', [])),
      'views_per_second': report.get('views_per_second'),
  }
  print(json.dumps(summary))


if __name__ == '__main__':
  main()

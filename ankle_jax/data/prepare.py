"""Makes the `radiograph_studies` dataset that a run or an evaluation needs.

The builder (`ankle_jax.data.radiograph_studies`) writes ArrayRecord files under
`<data_dir>/radiograph_studies/<config>/<version>/`. This module is the one
home of that name, of the command that builds it, and of the error a missing
dataset raises; `build_dataset` runs the builder in this process (the command
`python -m ankle_jax.data.build` is a thin shell around it), and
`prepare_dataset` generates the synthetic demo studies first when asked to.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import os
import pathlib
from typing import Any

from etils import epath
import tensorflow_datasets as tfds

from ankle_jax.data import radiograph_studies
from ankle_jax.data import synthetic

DATASET_NAME = 'radiograph_studies'
CONFIG_NAMES = tuple(c.name for c in radiograph_studies.Builder.BUILDER_CONFIGS)


class DatasetMissingError(FileNotFoundError):
  """The dataset, or one of its splits, is not under data_dir."""


def build_command(
    manual_dir: os.PathLike | str,
    data_dir: os.PathLike | str,
    dataset_config: str,
) -> str:
  """The shell command that builds a dataset (shown in error messages)."""
  return (
      f'python -m ankle_jax.data.build --manual_dir={manual_dir} '
      f'--data_dir={data_dir} --config={dataset_config}'
  )


def dataset_root(
    data_dir: os.PathLike | str, dataset_config: str
) -> epath.Path:
  """`<data_dir>/radiograph_studies/<dataset_config>` (holds version folders)."""
  return epath.Path(data_dir) / DATASET_NAME / dataset_config


def dataset_exists(data_dir: os.PathLike | str, dataset_config: str) -> bool:
  """True when a built version of the dataset is under data_dir."""
  root = dataset_root(data_dir, dataset_config)
  return root.exists() and any(root.glob('*/dataset_info.json'))


def resolve_data_dirs(
    data_dir: str, manual_dir: str, workdir: os.PathLike | str
) -> tuple[epath.Path, epath.Path]:
  """(data_dir, manual_dir); empty ones mean <workdir>/data/{tfds,studies}."""
  workdir = epath.Path(workdir)
  return (
      epath.Path(data_dir or (workdir / 'data' / 'tfds')),
      epath.Path(manual_dir or (workdir / 'data' / 'studies')),
  )


def missing_dataset_error(
    data_dir: os.PathLike | str, dataset_config: str, manual_dir: str = ''
) -> DatasetMissingError:
  """The error for a dataset that is not built, with the command to build it."""
  command = build_command(manual_dir or 'DIR', data_dir, dataset_config)
  return DatasetMissingError(
      f'dataset {DATASET_NAME}/{dataset_config} not found under {data_dir}.\n'
      f'Build it with: {command}\n'
      '(DIR holds normal/<case>/*.dcm and fracture/<case>/*.dcm), or point '
      '--config.data.data_dir at where it was built.'
  )


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


def prepare_dataset(
    *,
    data_dir: os.PathLike | str,
    manual_dir: os.PathLike | str,
    dataset_config: str,
    synthetic_studies: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> epath.Path:
  """Makes sure the dataset exists under data_dir; returns data_dir.

  Args:
    data_dir: the TFDS data directory.
    manual_dir: the studies folder the dataset is built from.
    dataset_config: the builder config.
    synthetic_studies: keyword arguments of `synthetic.generate_studies`
      (without out_dir): when given and manual_dir is empty, synthetic studies
      are generated there first. None: a missing dataset is an error.
    progress: show the builder's progress bar.

  Raises:
    DatasetMissingError: the dataset is missing and there is nothing to build
      it from.
  """
  data_dir, manual_dir = epath.Path(data_dir), epath.Path(manual_dir)
  if dataset_exists(data_dir, dataset_config):
    return data_dir
  if synthetic_studies is None:
    raise missing_dataset_error(data_dir, dataset_config)
  if not (manual_dir.exists() and any(manual_dir.iterdir())):
    synthetic.generate_studies(os.fspath(manual_dir), **synthetic_studies)
  build_dataset(manual_dir, data_dir, config=dataset_config, progress=progress)
  return data_dir

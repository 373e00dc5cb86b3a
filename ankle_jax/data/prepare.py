"""Makes the `radiograph_studies` dataset that a run or an evaluation needs.

The builder (`ankle_jax.data.radiograph_studies`) writes ArrayRecord files under
`<data_dir>/radiograph_studies/<config>/<version>/`. This module is the one
home of that name, of the command that builds it, and of the error a missing
dataset raises; `build_dataset` runs the builder in this process (the command
`python -m ankle_jax.data.build` is a thin shell around it) and, asked to
(`echo`), prints the build's console lines: one before, the decoding bar, and
`build_summary` after. `prepare_dataset` generates the synthetic demo studies
first when asked to. Bad input raises `radiograph_studies.BuildError` and a
missing dataset `DatasetMissingError`: both are `console.UserError`s (a command
prints them in 1-3 lines and exits 2).
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

from ankle_jax import console
from ankle_jax.data import radiograph_studies
from ankle_jax.data import synthetic

DATASET_NAME = 'radiograph_studies'
CONFIG_NAMES = tuple(c.name for c in radiograph_studies.Builder.BUILDER_CONFIGS)


class DatasetMissingError(console.UserError, FileNotFoundError):
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


def built_versions(
    data_dir: os.PathLike | str, dataset_config: str
) -> list[epath.Path]:
  """The built version folders of the dataset under data_dir, oldest first."""
  root = dataset_root(data_dir, dataset_config)
  if not root.exists():
    return []
  return sorted(info.parent for info in root.glob('*/dataset_info.json'))


def dataset_exists(data_dir: os.PathLike | str, dataset_config: str) -> bool:
  """True when a built version of the dataset is under data_dir."""
  return bool(built_versions(data_dir, dataset_config))


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
    data_dir: os.PathLike | str,
    dataset_config: str,
    manual_dir: str = '',
    *,
    split: str | None = None,
) -> DatasetMissingError:
  """The error for a dataset (or split) not built, with the command to build it.

  Args:
    data_dir: where the dataset was looked for.
    dataset_config: the builder config.
    manual_dir: the studies folder, if known (else DIR in the command).
    split: the split that is missing from a built dataset (None: all of it).
  """
  command = build_command(manual_dir or 'DIR', data_dir, dataset_config)
  if split is not None:
    return DatasetMissingError(
        f"split '{split}' of {DATASET_NAME}/{dataset_config} in {data_dir} is "
        'missing or empty (or not built as ArrayRecord).\n'
        f'Rebuild it with: {command} --overwrite'
    )
  layout = radiograph_studies.LAYOUTS.get(dataset_config, '')
  return DatasetMissingError(
      f'dataset {DATASET_NAME}/{dataset_config} not found under {data_dir}.\n'
      f'Build it with: {command}\n'
      f'({layout.replace("<manual_dir>", manual_dir or "DIR")}), or point '
      '--config.data.data_dir at where it was built.'
  )


def read_salt_file(path: str) -> str:
  """The salt in a salt file (`ankle_jax.data.build --salt_file`; surrounding
  whitespace stripped), as the builder and `predict --salt_file` read it.

  Raises:
    console.UserError: the file unreadable or blank.
  """
  try:
    salt = pathlib.Path(path).read_text().strip()
  except (OSError, UnicodeDecodeError) as e:
    raise console.UserError(
        f'--salt_file={path}: cannot read it ({type(e).__name__}).'
    ) from e
  if not salt:
    raise console.UserError(
        f'--salt_file={path} is empty: put a private salt (any text) in it.'
    )
  return salt


def check_build_input(manual_dir: os.PathLike | str, config: str) -> None:
  """Raises BuildError (a console.UserError) for a config or manual_dir that
  cannot be built: an unknown config name, a missing or empty folder."""
  if config not in CONFIG_NAMES:
    raise radiograph_studies.BuildError(
        f'unknown dataset config {config!r}; choose one of '
        f'{", ".join(CONFIG_NAMES)}.'
    )
  manual_dir = pathlib.Path(manual_dir)
  layout = f'Expected layout ({config}): {radiograph_studies.LAYOUTS[config]}'
  if not manual_dir.is_dir():
    raise radiograph_studies.BuildError(
        f'manual_dir {manual_dir} does not exist or is not a folder.\n{layout}'
    )
  if not any(manual_dir.iterdir()):
    raise radiograph_studies.BuildError(
        f'manual_dir {manual_dir} is empty.\n{layout}'
    )


def _make_builder(
    data_dir: os.PathLike | str,
    config: str,
    options: radiograph_studies.BuildOptions,
    config_overrides: Mapping[str, Any],
) -> radiograph_studies.Builder:
  """The radiograph_studies builder of `config`, with overridden fields."""
  base = {c.name: c for c in radiograph_studies.Builder.BUILDER_CONFIGS}[config]
  return radiograph_studies.Builder(
      config=(
          dataclasses.replace(base, **config_overrides)
          if config_overrides
          else base
      ),
      data_dir=os.fspath(data_dir),
      file_format='array_record',
      build_options=options,
  )


def _is_built(builder: radiograph_studies.Builder) -> bool:
  """Whether the builder's own version is built (an older version beside it
  is not reused: the builder builds this one next to it)."""
  return (pathlib.Path(builder.data_dir) / 'dataset_info.json').exists()


def build_dataset(
    manual_dir: os.PathLike | str,
    data_dir: os.PathLike | str,
    *,
    config: str = 'dicom_cases',
    strict: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    echo: bool = False,
    warn_default_salt: bool = True,
    **config_overrides: Any,
) -> dict[str, Any]:
  """Builds radiograph_studies/<config> into data_dir; returns the build report.

  Args:
    manual_dir: the folder with the radiographs (the builder's layout).
    data_dir: TFDS data directory to write to.
    config: builder config name: 'dicom_cases', 'mura' or 'fracatlas'.
    strict: fail on the first unreadable file instead of skipping and reporting
      it.
    num_workers: decoding processes (0 = all CPUs, 1 = in this process).
    progress: show the decoding progress bar.
    overwrite: rebuild even if the dataset already exists.
    echo: print what is built (one line) before and the closing summary
      (`build_summary`) after.
    warn_default_salt: warn when dicom_cases/mura are built with the public
      default salt (False for synthetic studies).
    **config_overrides: fields of `RadiographStudiesConfig` (image_size, salt,
      validation_fraction, body_parts, near_duplicate_bits, ...).

  Returns:
    The build report (also written as build_report.json / .md next to the
    dataset); that of the existing build when it is reused.

  Raises:
    radiograph_studies.BuildError: unknown config, manual_dir missing or
      empty, nothing readable, --strict and an unreadable file, a bad
      splits.csv (a console.UserError).
  """
  check_build_input(manual_dir, config)
  builder = _make_builder(
      data_dir,
      config,
      radiograph_studies.BuildOptions(
          num_workers=num_workers,
          strict=strict,
          progress=progress,
          warn_default_salt=warn_default_salt,
      ),
      config_overrides,
  )
  reused = _is_built(builder) and not overwrite
  if echo:
    print(
        f'Using the existing {DATASET_NAME}/{config} in {builder.data_dir} '
        '(--overwrite rebuilds it)'
        if reused
        else f'Building {DATASET_NAME}/{config} from {manual_dir} into '
        f'{data_dir}'
    )
  tfds.disable_progress_bar()  # TFDS's own bars; the builder shows decoding.
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
  report = json.loads(report_path.read_text()) if report_path.exists() else {}
  if echo and report:
    print('\n'.join(build_summary(report, builder.data_dir, reused=reused)))
  return report


def build_summary(
    report: Mapping[str, Any],
    dataset_dir: os.PathLike | str,
    *,
    reused: bool = False,
) -> list[str]:
  """The closing lines of a build: counts per split and label, skipped files.

  Args:
    report: a build report (`build_dataset`'s return value).
    dataset_dir: the folder of the built version (holds build_report.md).
    reused: the dataset was built before (its time is not this run's).
  """
  counts = report.get('counts', {})
  splits = [s for s in radiograph_studies.SPLITS + ('exclude',) if s in counts]
  cases = sum(c['cases'] for s in counts.values() for c in s.values())
  views = sum(c['views'] for s in counts.values() for c in s.values())
  head = f'{cases} cases, {views} views'
  if not reused and report.get('seconds') is not None:
    head += (
        f' in {report["seconds"]:.1f} s '
        f'({report.get("views_per_second", 0):.1f} views/s)'
    )
  lines = [f'{report.get("dataset", DATASET_NAME)}: {head}']
  width = max(map(len, splits), default=0) + 1
  for split in splits:
    parts = [
        f'{label} {c["cases"]} cases ({c["views"]} views)'
        for label in radiograph_studies.LABEL_NAMES
        if (c := counts[split].get(label)) and c['cases']
    ]
    lines.append(f'  {split + ":":<{width}} ' + (', '.join(parts) or 'empty'))
  warnings = report.get('warnings', [])
  lines += [f'warning: {w}' for w in warnings[:3]]
  if len(warnings) > 3:
    lines.append(f'... and {len(warnings) - 3} more warnings')
  skipped = len(report.get('skipped_files', []))
  note = f'{skipped} unreadable file{"s" * (skipped != 1)} skipped'
  if cases_lost := report.get('skipped_cases'):
    note += (
        f' ({cases_lost} case{"s" * (cases_lost != 1)} had no readable view)'
    )
  report_md = pathlib.Path(dataset_dir) / radiograph_studies.REPORT_MD
  lines.append(f'{note}; build report: {report_md}')
  return lines


def prepare_dataset(
    *,
    data_dir: os.PathLike | str,
    manual_dir: os.PathLike | str,
    dataset_config: str,
    synthetic_studies: Mapping[str, Any] | None = None,
    progress: bool = True,
    echo: bool = True,
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
    echo: print what is generated and built, and the build summary.

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
    if echo:
      n_normal = synthetic_studies.get('num_normal', '?')
      n_fracture = synthetic_studies.get('num_fracture', '?')
      print(
          f'Generating {n_normal} normal and {n_fracture} fracture synthetic '
          f'studies into {manual_dir}'
      )
    synthetic.generate_studies(os.fspath(manual_dir), **synthetic_studies)
  build_dataset(
      manual_dir,
      data_dir,
      config=dataset_config,
      progress=progress,
      echo=echo,
      # Studies the generator wrote (its manifest beside them) carry only fake
      # names: the public default salt hides nothing there.
      warn_default_salt=not (manual_dir / synthetic.MANIFEST_NAME).exists(),
  )
  return data_dir

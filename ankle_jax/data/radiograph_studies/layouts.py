"""The manual_dir layouts the builder reads: each finds the cases of one.

dicom_cases: `<manual_dir>/{normal,fracture}/<case>/<files>`; mura:
`<manual_dir>/[MURA-v1.1/]{train,valid}/XR_<PART>/patient<id>/study<k>_{positive,
negative}/image<n>.png`; fracatlas: `<manual_dir>/images/{Fractured,
Non_fractured}/*.jpg` + `dataset.csv`. A `Case` holds what the split assignment
needs (its key, rank and split unit) and what the records need (label, case_id,
files and, once decoded, views); how case_id and rank are derived is in the
builder's module docstring (privacy, split rank).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import pathlib
import re
from typing import Any

from ankle_jax.data.radiograph_studies import build_report
from ankle_jax.data.radiograph_studies import config

LABEL_NAMES = config.LABEL_NAMES


@dataclasses.dataclass
class Case:
  """One case while building. key, rank and unit are never stored.

  Attributes:
    key: the case as the user knows it (relative folder path / image id).
    aliases: the names splits.csv may give it.
    label: 0 normal, 1 fracture.
    files: its files, sorted by name.
    case_id: the stored name of the case.
    view_features: per file, record features from the layout (fracatlas: the
      CSV flags and view_position); empty for the other layouts.
    views: per readable view, (image row, view_position, record features),
      filled in by decoding.
    rank: the split rank ('' = split_rank(key)).
    unit: cases with one unit share a split ('' = the key).
    official_split: mura: 'test' for the studies under valid/.
  """

  key: str
  aliases: tuple[str, ...]
  label: int
  files: list[pathlib.Path]
  case_id: str
  view_features: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  views: list[tuple[int, str, dict[str, Any]]] = dataclasses.field(
      default_factory=list
  )
  rank: str = ''
  unit: str = ''
  official_split: str = ''

  def __post_init__(self):
    self.rank = self.rank or split_rank(self.key)
    self.unit = self.unit or self.key


def case_id_for(key: str, salt: str = config.DEFAULT_SALT) -> str:
  """The salted hash that names a case: sha256(salt + ':' + key), first 16 hex digits."""
  return hashlib.sha256(f'{salt}:{key}'.encode()).hexdigest()[:16]


def split_rank(key: str) -> str:
  """The rank of a case (dicom_cases, mura) in split assignment: a hash of its
  key that no salt changes (see the builder's module docstring)."""
  return _rank(case_id_for(key, config.DEFAULT_SALT))


def _rank(text: str) -> str:
  return hashlib.sha256(f'split:{text}'.encode()).hexdigest()


def find_cases(
    manual_dir: pathlib.Path,
    cfg: config.RadiographStudiesConfig,
    report: build_report.BuildReport,
) -> list[Case]:
  """The cases under manual_dir in the layout `cfg.layout`; notes what it
  leaves out (filters, CSV mismatches, missing folders) in `report`."""
  find = {
      'dicom_cases': _find_dicom_cases,
      'mura': _find_mura_cases,
      'fracatlas': _find_fracatlas_cases,
  }[cfg.layout]
  return find(manual_dir, cfg, report)


def _sorted_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(
      p
      for p in folder.rglob('*')
      if p.is_file()
      and not p.name.startswith('.')
      and p.name.upper() != 'DICOMDIR'
  )


def _find_dicom_cases(manual_dir, cfg, report) -> list[Case]:
  cases = []
  for label, name in enumerate(LABEL_NAMES):
    label_dir = manual_dir / name
    if not label_dir.is_dir():
      report.warnings.append(f"no '{name}' folder in manual_dir")
      continue
    for case_dir in sorted(p for p in label_dir.iterdir() if p.is_dir()):
      files = _sorted_files(case_dir)
      if not files:
        continue
      key = f'{name}/{case_dir.name}'
      cases.append(
          Case(
              key,
              (key, case_dir.name),
              label,
              files,
              case_id_for(key, cfg.salt),
          )
      )
  return cases


_MURA_STUDY = re.compile(r'^study\d+_(positive|negative)$')


def _find_mura_cases(manual_dir, cfg, report) -> list[Case]:
  root = (
      manual_dir / 'MURA-v1.1'
      if (manual_dir / 'MURA-v1.1').is_dir()
      else manual_dir
  )
  wanted = {
      p.upper() if p.upper().startswith('XR_') else f'XR_{p.upper()}'
      for p in cfg.body_parts
  }
  cases, filtered = [], 0
  for part_split in ('train', 'valid'):
    for part_dir in sorted((root / part_split).glob('XR_*')):
      if wanted and part_dir.name.upper() not in wanted:
        filtered += sum(1 for _ in part_dir.glob('*/*'))
        continue
      for study_dir in sorted(part_dir.glob('patient*/study*')):
        match = _MURA_STUDY.match(study_dir.name)
        if not match or not study_dir.is_dir():
          continue
        case = _mura_case(root, study_dir, match.group(1), part_split, cfg.salt)
        if case.files:
          cases.append(case)
  report.filtered_out['body_part_studies'] = filtered
  return cases


def _mura_case(
    root: pathlib.Path,
    study_dir: pathlib.Path,
    outcome: str,
    part_split: str,
    salt: str,
) -> Case:
  """The case of one MURA study folder (its files may be none)."""
  files = [
      p
      for p in _sorted_files(study_dir)
      if p.suffix.lower() in ('.png', '.jpg', '.jpeg')
  ]
  key = study_dir.relative_to(root).as_posix()
  return Case(
      key,
      (key, f'MURA-v1.1/{key}'),
      1 if outcome == 'positive' else 0,
      files,
      case_id_for(key, salt),
      # A patient id is one person across body parts: the patient, not the
      # study, is the split unit.
      unit=f'{part_split}/{study_dir.parent.name}',
      official_split='test' if part_split == 'valid' else '',
  )


def _find_fracatlas_cases(manual_dir, cfg, report) -> list[Case]:
  rows = _fracatlas_rows(manual_dir, report)
  cases, filtered = [], {'body_part': 0, 'hardware': 0, 'multiscan': 0}
  for label, folder in ((0, 'Non_fractured'), (1, 'Fractured')):
    for path in sorted((manual_dir / 'images' / folder).glob('*')):
      if path.suffix.lower() not in (
          '.jpg',
          '.jpeg',
          '.png',
      ) or path.name.startswith('.'):
        continue
      image_id = path.stem
      row = rows.get(image_id)
      flags = {
          k: _int_or(row.get(k) if row else None, -1)
          for k in config.FRACATLAS_FLAGS
      }
      if row is None:
        report.csv_missing_rows += 1
      elif _int_or(row.get('fractured'), label) != label:
        report.csv_label_disagreements.append(image_id)
      reason = _fracatlas_filter(flags, cfg)
      if reason:
        filtered[reason] += 1
        continue
      views = '+'.join(
          v for v in ('frontal', 'lateral', 'oblique') if flags[v] == 1
      )
      # FracAtlas image ids are not patient identifiers: the id itself is the
      # case_id.
      cases.append(
          Case(
              image_id,
              (image_id, path.name),
              label,
              [path],
              image_id,
              [dict(flags, view_position=views)],
              rank=_rank(image_id),
          )
      )
  report.filtered_out = filtered
  return cases


def _fracatlas_rows(manual_dir, report) -> dict[str, dict[str, str]]:
  """image id -> its dataset.csv row (none without a dataset.csv)."""
  rows = {}
  csv_path = manual_dir / 'dataset.csv'
  if csv_path.is_file():
    with open(csv_path, newline='') as f:
      for row in csv.DictReader(f):
        rows[pathlib.Path(row['image_id']).stem] = row
  else:
    report.warnings.append('no dataset.csv: CSV flags are -1')
  return rows


def _fracatlas_filter(flags: dict[str, int], cfg) -> str:
  """Why the config's filters leave an image out ('' = kept): 'body_part',
  'hardware' or 'multiscan'."""
  if cfg.body_parts and not any(flags.get(p) == 1 for p in cfg.body_parts):
    return 'body_part'
  if not cfg.include_hardware and flags['hardware'] == 1:
    return 'hardware'
  if not cfg.include_multiscan and flags['multiscan'] == 1:
    return 'multiscan'
  return ''


def _int_or(value, default: int) -> int:
  try:
    return int(float(value))
  except (TypeError, ValueError):
    return default

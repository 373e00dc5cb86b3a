"""The build report: what a build read, skipped, grouped and split.

`BuildReport.write` writes it next to the records as `build_report.json` (every
field, keys sorted) and a short `build_report.md`. It never holds a name, ID,
UID, date or path: files are named by case_id, position and extension.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from ankle_jax.data.radiograph_studies import config

REPORT_JSON = 'build_report.json'
REPORT_MD = 'build_report.md'

# The config fields a report lists under `options`.
_OPTION_FIELDS = (
    'num_validation_per_label',
    'num_test_per_label',
    'min_eval_views',
    'validation_fraction',
    'body_parts',
    'include_hardware',
    'include_multiscan',
    'near_duplicate_bits',
)


@dataclasses.dataclass
class SkippedFile:
  """An unreadable file: its case, position among the case's files sorted by
  name, extension (at most 8 characters) and the reason (path text removed)."""

  case_id: str
  file_index: int
  extension: str
  reason: str


@dataclasses.dataclass
class ViewCount:
  """Cases and views of one split and label."""

  cases: int = 0
  views: int = 0


@dataclasses.dataclass
class SplitsCsvMatch:
  """How the rows of `<manual_dir>/splits.csv` matched the cases."""

  rows: int
  matched_cases: int
  unmatched_rows: int


@dataclasses.dataclass
class NearDuplicateGroup:
  """Cases joined by near-duplicate views (they share one split).

  Attributes:
    cases: their case_ids, sorted.
    labels: their label names, in the order of `cases`.
    mixed_labels: whether the labels differ.
    num_pairs: near-duplicate view pairs that join them.
    pairs: up to 20 of those pairs, the closest first, each
      [case_id, view index, case_id, view index, Hamming distance in bits].
    splits: the split names the cases went to (one, except where splits.csv
      tears a group apart).
  """

  cases: list[str]
  labels: list[str]
  mixed_labels: bool
  num_pairs: int
  pairs: list[list[Any]]
  splits: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class NearDuplicates:
  """The near-duplicate check: its threshold and the groups it found.

  Attributes:
    hash_bits: bits of the difference hash (512).
    max_bits: the largest Hamming distance of near-duplicates (-1: no check).
    count: number of groups.
    cases_in_groups: cases over all groups.
    sizes: number of groups per group size in cases (str(size) -> count,
      sizes ascending).
    mixed_label_groups: groups whose cases' labels differ.
    groups: the groups, sorted by their cases' ids.
  """

  hash_bits: int
  max_bits: int
  count: int
  cases_in_groups: int
  sizes: dict[str, int]
  mixed_label_groups: int
  groups: list[NearDuplicateGroup]


@dataclasses.dataclass
class BuildReport:
  """The report of one build (the fields are the keys of build_report.json).

  Attributes:
    dataset: 'radiograph_studies/<config name>'.
    version: the builder version built.
    layout: the manual_dir layout read.
    image_size: side of the stored images in px.
    salt: 'default' or 'custom' (never the salt itself).
    options: the config fields that choose cases and splits.
    skipped_files: the unreadable files.
    skipped_cases: cases with no readable view (left out).
    truncated_images: case_ids of the images read although truncated.
    rgb_converted: views converted from RGB to grey.
    filtered_out: cases left out by a filter, per reason.
    csv_label_disagreements: fracatlas: image ids whose dataset.csv
      `fractured` disagrees with their folder.
    csv_missing_rows: fracatlas: images without a dataset.csv row.
    splits_csv: how splits.csv matched (None: no splits.csv).
    near_duplicates: the near-duplicate check (None before it ran).
    split_units: the case_ids of every split unit of more than one case (a
      MURA patient's studies, near-duplicate groups), each sorted; what keeps
      them together in cross-validation folds (`ankle_jax.data.folds`).
    warnings: what the user should know, in the order found.
    decoded_views: views read.
    counts: split -> label name -> cases and views ('exclude' only where
      splits.csv excluded cases).
    seconds: the build's wall time.
    views_per_second: files read (decoded or skipped) per second.
  """

  dataset: str
  version: str
  layout: str
  image_size: int
  salt: str
  options: dict[str, Any]
  skipped_files: list[SkippedFile] = dataclasses.field(default_factory=list)
  skipped_cases: int = 0
  truncated_images: list[str] = dataclasses.field(default_factory=list)
  rgb_converted: int = 0
  filtered_out: dict[str, int] = dataclasses.field(default_factory=dict)
  csv_label_disagreements: list[str] = dataclasses.field(default_factory=list)
  csv_missing_rows: int = 0
  splits_csv: SplitsCsvMatch | None = None
  near_duplicates: NearDuplicates | None = None
  split_units: list[list[str]] | None = None
  warnings: list[str] = dataclasses.field(default_factory=list)
  decoded_views: int = 0
  counts: dict[str, dict[str, ViewCount]] = dataclasses.field(
      default_factory=dict
  )
  seconds: float | None = None
  views_per_second: float | None = None

  @classmethod
  def new(
      cls, cfg: config.RadiographStudiesConfig, version: str
  ) -> BuildReport:
    """The build report of `cfg` before anything is read."""
    return cls(
        dataset=f'radiograph_studies/{cfg.name}',
        version=version,
        layout=cfg.layout,
        image_size=cfg.image_size,
        salt='default' if cfg.salt == config.DEFAULT_SALT else 'custom',
        options={k: getattr(cfg, k) for k in _OPTION_FIELDS},
    )

  def to_json_dict(self) -> dict[str, Any]:
    """The report as build_report.json holds it (with the two counts of its
    lists; truncated hashed ids sorted, as their order means something only to
    the builder)."""
    report = dataclasses.asdict(self)
    report['truncated_count'] = len(self.truncated_images)
    report['csv_label_disagreement_count'] = len(self.csv_label_disagreements)
    if self.layout != 'fracatlas':
      report['truncated_images'] = sorted(self.truncated_images)
    return report

  def write(self, out_dir: pathlib.Path) -> None:
    """Writes build_report.json and a short build_report.md into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_JSON).write_text(
        json.dumps(self.to_json_dict(), indent=1, sort_keys=True)
    )
    (out_dir / REPORT_MD).write_text('\n'.join(self.markdown_lines()) + '\n')

  def markdown_lines(self) -> list[str]:
    """build_report.md, line by line."""
    lines = [
        f'# Build report: {self.dataset} {self.version}',
        '',
        '| split | label | cases | views |',
        '|---|---|---|---|',
    ]
    for split, by_label in self.counts.items():
      for label, c in by_label.items():
        lines.append(f'| {split} | {label} | {c.cases} | {c.views} |')
    lines += [
        '',
        f'Decoded views: {self.decoded_views}; skipped files: '
        f'{len(self.skipped_files)}; cases with no readable view: '
        f'{self.skipped_cases}; truncated images read: '
        f'{len(self.truncated_images)}; RGB converted: {self.rgb_converted}; '
        'CSV label disagreements: '
        f'{len(self.csv_label_disagreements)}.',
    ]
    if self.skipped_files:
      lines += [
          '',
          '## Skipped files (case_id, file index in the case sorted by name, '
          'reason)',
          '',
      ]
      lines += [
          f'- {s.case_id} #{s.file_index} ({s.extension}): {s.reason}'
          for s in self.skipped_files
      ]
    lines += _near_duplicate_lines(self.near_duplicates)
    if self.warnings:
      lines += ['', '## Warnings', ''] + [f'- {w}' for w in self.warnings]
    return lines


def _near_duplicate_lines(near: NearDuplicates | None) -> list[str]:
  """The build report's section on near-duplicate groups (markdown lines)."""
  if not near:
    return []
  if near.max_bits < 0:
    return ['', '## Near-duplicate groups', '', 'Not checked.']
  sizes = ', '.join(f'{size}: {n}' for size, n in near.sizes.items())
  lines = [
      '',
      '## Near-duplicate groups',
      '',
      f"{near.count} groups of cases whose views' {near.hash_bits}-bit "
      f'difference hashes differ in <= {near.max_bits} bits '
      f'({near.cases_in_groups} cases; groups by size in cases: '
      f"{sizes or 'none'}; groups with mixed labels: "
      f'{near.mixed_label_groups}). Each group shares one split.',
  ]
  if near.groups:
    lines += [
        '',
        '| split | cases (label) | pairs: case#view ~ case#view (bits) |',
        '|---|---|---|',
    ]
  for group in near.groups:
    members = ', '.join(
        f'{c} ({label})' for c, label in zip(group.cases, group.labels)
    )
    pairs = ', '.join(
        f'{a}#{va} ~ {b}#{vb} ({bits})' for a, va, b, vb, bits in group.pairs
    )
    if group.num_pairs > len(group.pairs):
      pairs += f', ... {group.num_pairs} in all'
    lines.append(f"| {'/'.join(group.splits)} | {members} | {pairs} |")
  return lines

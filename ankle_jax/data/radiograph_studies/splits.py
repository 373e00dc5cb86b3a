"""Split assignment: near-duplicate groups, split units, ranking, splits.csv.

Cases that must share a split (a MURA patient's studies, cases joined by
near-duplicate views) form one unit; units are walked in the order of their
first-ranked case and assigned by count (dicom_cases) or by fraction (mura,
fracatlas), after the cases splits.csv fixes. The builder's module docstring
states the rules.
"""

from __future__ import annotations

import collections
import csv
import pathlib

import numpy as np

from ankle_jax.data import near_duplicates
from ankle_jax.data.radiograph_studies import build_report
from ankle_jax.data.radiograph_studies import config
from ankle_jax.data.radiograph_studies import layouts

LABEL_NAMES = config.LABEL_NAMES
SPLITS = config.SPLITS

# The near-duplicate pairs listed per group (the closest first).
_MAX_PAIRS = 20


def read_splits_csv(path: pathlib.Path) -> dict[str, str]:
  """Reads `case,split` rows; raises BuildError naming the row for an unknown split."""
  overrides = {}
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or {'case', 'split'} - set(reader.fieldnames):
      raise config.BuildError(
          f"{path}: expected columns 'case,split', got {reader.fieldnames}"
      )
    for line, row in enumerate(reader, start=2):
      split = (row['split'] or '').strip().lower()
      if split not in SPLITS + ('exclude',):
        raise config.BuildError(
            f'{path} line {line}: split must be one of '
            f"{SPLITS + ('exclude',)}, got {row['split']!r}"
        )
      overrides[(row['case'] or '').strip().strip('/')] = split
  return overrides


def near_duplicate_links(
    cases: list[layouts.Case],
    images: np.ndarray,
    max_bits: int,
    report: build_report.BuildReport,
) -> np.ndarray:
  """Index pairs (i, j) of cases with near-duplicate views: int [L, 2].

  Hashes every view's stored image, as stored and mirrored left-right (images:
  uint16 [N, S, S, 1], rows named by the cases' views), and sets `report.near_duplicates` to the groups of cases
  they join (their splits are added by `record_splits`).
  """
  views = [
      (k, v, row)
      for k, c in enumerate(cases)
      for v, (row, _, _) in enumerate(c.views)
  ]
  hashes = np.zeros((len(views), near_duplicates.HASH_BITS // 8), np.uint8)
  mirrored = np.zeros_like(hashes)
  for n, (_, _, row) in enumerate(views):
    hashes[n] = near_duplicates.difference_hash(images[row])
    mirrored[n] = near_duplicates.mirrored_difference_hash(images[row])
  pairs = near_duplicates.near_duplicate_pairs(hashes, max_bits, mirrored)
  case_of = np.array([k for k, _, _ in views] or [0], np.int64)
  pairs = pairs[case_of[pairs[:, 0]] != case_of[pairs[:, 1]]]
  links = case_of[pairs[:, :2]]
  groups = _near_duplicate_groups(cases, views, pairs, links)
  sizes = collections.Counter(str(len(g.cases)) for g in groups)
  report.near_duplicates = build_report.NearDuplicates(
      hash_bits=near_duplicates.HASH_BITS,
      max_bits=max_bits,
      count=len(groups),
      cases_in_groups=sum(len(g.cases) for g in groups),
      sizes=dict(sorted(sizes.items(), key=lambda item: int(item[0]))),
      mixed_label_groups=sum(g.mixed_labels for g in groups),
      groups=groups,
  )
  return links


def _near_duplicate_groups(
    cases, views, pairs, links
) -> list[build_report.NearDuplicateGroup]:
  """The groups of cases that near-duplicate views join (connected
  components of links), sorted by their cases' ids.

  views: (case index, view index, image row) per hashed view; pairs: int [P, 3]
  (view i, view j, bits); links: int [P, 2], the cases of those views.
  """
  component = near_duplicates.group_labels(len(cases), links)
  members: dict[int, set[int]] = {}
  found: dict[int, list[list]] = {}
  for (a, b, bits), (i, j) in zip(pairs.tolist(), links.tolist()):
    members.setdefault(component[i], set()).update((i, j))
    found.setdefault(component[i], []).append(
        [cases[i].case_id, views[a][1], cases[j].case_id, views[b][1], bits]
    )
  groups = []
  for key, indices in members.items():
    group = sorted((cases[k] for k in indices), key=lambda c: c.case_id)
    groups.append(
        build_report.NearDuplicateGroup(
            cases=[c.case_id for c in group],
            labels=[LABEL_NAMES[c.label] for c in group],
            mixed_labels=len({c.label for c in group}) > 1,
            num_pairs=len(found[key]),
            pairs=sorted(found[key], key=lambda p: p[-1])[:_MAX_PAIRS],
        )
    )
  return sorted(groups, key=lambda g: g.cases)


def split_units(
    cases: list[layouts.Case], links: np.ndarray
) -> list[list[layouts.Case]]:
  """The cases grouped by unit and near-duplicate links, each unit sorted by
  rank; units sorted by their first-ranked case."""
  first_of_unit: dict[str, int] = {}
  edges = [np.asarray(links, np.int64).reshape(-1, 2)]
  for k, case in enumerate(cases):
    edges.append(np.array([[first_of_unit.setdefault(case.unit, k), k]]))
  component = near_duplicates.group_labels(len(cases), np.concatenate(edges))
  units: dict[int, list[layouts.Case]] = {}
  for k, case in enumerate(cases):
    units.setdefault(int(component[k]), []).append(case)
  ranked = [sorted(u, key=lambda c: c.rank) for u in units.values()]
  return sorted(ranked, key=lambda u: u[0].rank)


def assign_splits(
    cases: list[layouts.Case],
    cfg: config.RadiographStudiesConfig,
    manual_dir: pathlib.Path,
    report: build_report.BuildReport,
    links: np.ndarray | None = None,
) -> dict[str, str]:
  """case_id -> split name (see the builder's module docstring).

  Args:
    cases: the cases with readable views.
    cfg: the builder config.
    manual_dir: where splits.csv may be.
    report: the build report (splits_csv and warnings are filled in).
    links: int [L, 2], index pairs of cases that must share a split (None:
      none).
  """
  assignment = _splits_csv_assignment(cases, manual_dir, report)
  pending, torn = [], 0
  links = np.zeros((0, 2), np.int64) if links is None else links
  units = split_units(cases, links)
  report.split_units = sorted(
      sorted(c.case_id for c in unit) for unit in units if len(unit) > 1
  )
  for unit in units:
    fixed = [assignment[c.case_id] for c in unit if c.case_id in assignment]
    fixed = [s for s in fixed if s != 'exclude']
    torn += len(set(fixed)) > 1
    fixed += [c.official_split for c in unit if c.official_split]
    free = [c for c in unit if c.case_id not in assignment]
    if fixed:
      assignment.update((c.case_id, fixed[0]) for c in free)
    elif free:
      pending.append(free)
  if torn:
    report.warnings.append(
        f'splits.csv puts the cases of {torn} split unit(s) (one patient, or '
        'near-duplicates) into different splits'
    )
  if cfg.layout == 'dicom_cases':
    _assign_by_count(pending, cfg, assignment, report)
  else:
    _assign_by_fraction(pending, cfg.validation_fraction, assignment)
  return assignment


def _splits_csv_assignment(cases, manual_dir, report) -> dict[str, str]:
  """case_id -> split of the cases listed in <manual_dir>/splits.csv."""
  assignment: dict[str, str] = {}
  splits_csv = manual_dir / 'splits.csv'
  if not splits_csv.is_file():
    return assignment
  overrides = read_splits_csv(splits_csv)
  matched = set()
  for case in cases:
    for alias in case.aliases:
      if alias in overrides:
        assignment[case.case_id] = overrides[alias]
        matched.add(alias)
        break
  report.splits_csv = build_report.SplitsCsvMatch(
      rows=len(overrides),
      matched_cases=len(assignment),
      unmatched_rows=len(set(overrides) - matched),
  )
  return assignment


def _assign_by_count(units, cfg, assignment, report) -> None:
  """dicom_cases: fixed numbers of validation and test cases per label."""
  wanted = {
      'validation': cfg.num_validation_per_label,
      'test': cfg.num_test_per_label,
  }
  need = {(s, label): n for s, n in wanted.items() for label in (0, 1)}
  eligible = [0, 0]
  for unit in units:
    counts = collections.Counter(c.label for c in unit)
    split = 'train'
    if all(len(c.views) >= cfg.min_eval_views for c in unit):
      for label, n in counts.items():
        eligible[label] += n
      split = next(
          (
              s
              for s in wanted
              if all(n <= need[s, label] for label, n in counts.items())
          ),
          'train',
      )
    if split != 'train':
      for label, n in counts.items():
        need[split, label] -= n
    assignment.update((c.case_id, split) for c in unit)
  total = sum(wanted.values())
  for label, name in enumerate(LABEL_NAMES):
    if eligible[label] < total:
      report.warnings.append(
          f'only {eligible[label]} {name} cases have >= '
          f'{cfg.min_eval_views} views; {total} wanted for validation + test'
      )


def _assign_by_fraction(units, fraction, assignment) -> None:
  """mura, fracatlas: per label (a unit's highest), units in rank order go to
  validation until it holds round(fraction * n) of the label's n cases."""
  for label in (0, 1):
    members = [u for u in units if max(c.label for c in u) == label]
    target = int(round(fraction * sum(len(u) for u in members)))
    taken = 0
    for unit in members:
      split = 'validation' if taken < target else 'train'
      taken += len(unit) * (split == 'validation')
      assignment.update((c.case_id, split) for c in unit)


def record_splits(
    report: build_report.BuildReport,
    cases: list[layouts.Case],
    assignment: dict[str, str],
) -> None:
  """Fills in the report's counts per split and label and each
  near-duplicate group's splits, and warns of groups that mix labels."""
  counts = {
      s: {n: build_report.ViewCount() for n in LABEL_NAMES}
      for s in SPLITS + ('exclude',)
  }
  for case in cases:
    entry = counts[assignment[case.case_id]][LABEL_NAMES[case.label]]
    entry.cases += 1
    entry.views += len(case.views)
  if not any(v.cases for v in counts['exclude'].values()):
    del counts['exclude']
  report.counts = counts
  near = report.near_duplicates
  for group in near.groups if near else []:
    group.splits = sorted({assignment[c] for c in group.cases})
  if near and near.mixed_label_groups:
    report.warnings.append(
        f'{near.mixed_label_groups} near-duplicate group(s) mix labels '
        '(each kept in one split; see the build report)'
    )

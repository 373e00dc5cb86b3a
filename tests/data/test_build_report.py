"""Tests for the typed build report of the radiograph_studies builder."""

import json
import pathlib

import numpy as np

from ankle_jax.data import prepare
from ankle_jax.data.radiograph_studies import build_report
from ankle_jax.data.radiograph_studies import config
from ankle_jax.data.radiograph_studies import layouts
from ankle_jax.data.radiograph_studies import splits


def _cases(n: int) -> list[layouts.Case]:
  """n dicom_cases cases, labels alternating, case k with k % 3 + 1 views."""
  cases = []
  for k in range(n):
    key = f'{config.LABEL_NAMES[k % 2]}/case{k}'
    case = layouts.Case(key, (key,), k % 2, [], layouts.case_id_for(key))
    case.views = [(0, '', {})] * (k % 3 + 1)
    cases.append(case)
  return cases


def _report(cfg=None) -> build_report.BuildReport:
  cfg = cfg or config.RadiographStudiesConfig(name='dicom_cases')
  return build_report.BuildReport.new(cfg, '1.1.0')


def test_new_report_names_the_salt_kind_never_the_salt():
  default = _report()
  assert (default.dataset, default.layout, default.salt) == (
      'radiograph_studies/dicom_cases',
      'dicom_cases',
      'default',
  )
  assert default.options['num_validation_per_label'] == 20
  private = _report(
      config.RadiographStudiesConfig(name='mura', layout='mura', salt='s3cret')
  )
  assert private.salt == 'custom'
  assert 's3cret' not in json.dumps(private.to_json_dict())


def test_split_counts_add_up_to_the_cases_and_views():
  cases = _cases(30)
  assignment = {
      c.case_id: ('train', 'validation', 'test', 'exclude')[k % 4]
      for k, c in enumerate(cases)
  }
  report = _report()
  splits.record_splits(report, cases, assignment)
  counted = [
      c for by_label in report.counts.values() for c in by_label.values()
  ]
  assert sum(c.cases for c in counted) == len(cases)
  assert sum(c.views for c in counted) == sum(len(c.views) for c in cases)
  for split, by_label in report.counts.items():
    for label, count in by_label.items():
      members = [
          c
          for c in cases
          if assignment[c.case_id] == split
          and config.LABEL_NAMES[c.label] == label
      ]
      assert count.cases == len(members)
      assert count.views == sum(len(c.views) for c in members)
  # 'exclude' is listed only when splits.csv excluded a case.
  assert 'exclude' in report.counts
  splits.record_splits(report, cases, dict.fromkeys(assignment, 'train'))
  assert list(report.counts) == list(config.SPLITS)


def test_near_duplicate_groups_get_their_split_and_mixed_labels_warn():
  cases = _cases(4)
  for k, case in enumerate(cases):
    case.views = [(k, '', {})]
  images = np.random.default_rng(0).integers(
      0, 65535, (4, 64, 64, 1), dtype=np.uint16
  )
  images[1] = images[0]  # cases 0 (normal) and 1 (fracture): one image
  report = _report()
  links = splits.near_duplicate_links(cases, images, 32, report)
  assert links.tolist() == [[0, 1]]
  near = report.near_duplicates
  assert (near.count, near.cases_in_groups, near.mixed_label_groups) == (
      1,
      2,
      1,
  )
  assert near.sizes == {'2': 1}
  assignment = splits.assign_splits(
      cases,
      config.RadiographStudiesConfig(
          name='t', num_validation_per_label=1, num_test_per_label=0
      ),
      pathlib.Path('/nonexistent'),
      report,
      links,
  )
  assert assignment[cases[0].case_id] == assignment[cases[1].case_id]
  # The unit is recorded for cross-validation folds (ankle_jax.data.folds).
  assert report.split_units == [sorted([cases[0].case_id, cases[1].case_id])]
  splits.record_splits(report, cases, assignment)
  assert near.groups[0].splits == [assignment[cases[0].case_id]]
  assert report.warnings[-1].startswith('1 near-duplicate group(s) mix labels')


def test_written_report_round_trips_and_feeds_the_build_summary(tmp_path):
  cases = _cases(6)
  report = _report()
  report.skipped_files.append(
      build_report.SkippedFile(cases[0].case_id, 2, '.dcm', 'no Pixel Data')
  )
  report.truncated_images += ['ffff', 'aaaa']
  report.csv_label_disagreements.append('IMG0000001')
  report.decoded_views = sum(len(c.views) for c in cases)
  report.warnings.append('a warning')
  splits.record_splits(report, cases, {c.case_id: 'train' for c in cases})
  report.seconds, report.views_per_second = 1.5, 8.0
  report.write(tmp_path)

  written = json.loads((tmp_path / build_report.REPORT_JSON).read_text())
  assert written == json.loads(json.dumps(report.to_json_dict()))
  assert set(written) == set(report.__dataclass_fields__) | {
      'truncated_count',
      'csv_label_disagreement_count',
  }
  assert written['counts']['train']['fracture'] == {'cases': 3, 'views': 6}
  assert written['skipped_files'] == [
      {
          'case_id': cases[0].case_id,
          'file_index': 2,
          'extension': '.dcm',
          'reason': 'no Pixel Data',
      }
  ]
  # Hashed ids are sorted (their order would tell the folder order).
  assert written['truncated_images'] == ['aaaa', 'ffff']
  assert written['truncated_count'] == 2
  assert written['csv_label_disagreement_count'] == 1

  markdown = (tmp_path / build_report.REPORT_MD).read_text()
  assert '| train | fracture | 3 | 6 |' in markdown
  assert f'- {cases[0].case_id} #2 (.dcm): no Pixel Data' in markdown
  assert 'truncated images read: 2;' in markdown
  assert markdown.endswith('## Warnings\n\n- a warning\n')

  summary = prepare.build_summary(written, tmp_path)
  assert summary[0] == (
      'radiograph_studies/dicom_cases: 6 cases, 12 views in 1.5 s (8.0 views/s)'
  )
  assert ' '.join(summary[1].split()) == (
      'train: normal 3 cases (6 views), fracture 3 cases (6 views)'
  )


def test_fracatlas_keeps_the_order_of_truncated_image_ids():
  report = _report(
      config.RadiographStudiesConfig(name='fracatlas', layout='fracatlas')
  )
  report.truncated_images += ['IMG2', 'IMG1']
  assert report.to_json_dict()['truncated_images'] == ['IMG2', 'IMG1']

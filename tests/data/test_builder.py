"""Tests for the radiograph_studies TFDS builder (dicom_cases, mura, fracatlas) and its report."""

import csv
import io
import json
import pathlib
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.data import radiograph_studies
from ankle_jax.data import synthetic
from ankle_jax.data.radiograph_studies import (
    radiograph_studies_dataset_builder as rsb,
)

SPLITS = ('train', 'validation', 'test')


def _records(data_dir, config='dicom_cases'):
  """split -> list of (case_id, view_index, label, num_views) (images excluded)."""
  out = {}
  for split in SPLITS:
    try:
      source = pipeline.load_split(data_dir, split, config)
    except prepare.DatasetMissingError:
      continue
    out[split] = [
        (
            pipeline._to_str(ex['case_id']),
            int(ex['view_index']),
            int(ex['label']),
            int(ex['num_views']),
        )
        for ex in (source[i] for i in range(len(source)))
    ]
  return out


@pytest.fixture(scope='module')
def synthetic_set(tmp_path_factory):
  manual = tmp_path_factory.mktemp('manual')
  cases = synthetic.generate_studies(
      manual,
      num_normal=60,
      num_fracture=60,
      seed=11,
      views_probs=(0.1, 0.1, 0.8),
      max_size=420,
  )
  # An unreadable file inside a readable case, and a case with nothing readable.
  (manual / cases[0].folder / 'zz_broken.dcm').write_bytes(b'not dicom' * 100)
  only_bad = manual / 'normal' / 'PXQ999_Brokenington'
  only_bad.mkdir()
  (only_bad / 'IM0001.dcm').write_bytes(b'\0' * 300)
  return manual, cases


@pytest.fixture(scope='module')
def built(synthetic_set, tmp_path_factory):
  manual, _ = synthetic_set
  dirs, reports = [], []
  for workers in (2, 1):
    data_dir = tmp_path_factory.mktemp('data')
    reports.append(
        prepare.build_dataset(
            manual, data_dir, num_workers=workers, progress=False
        )
    )
    dirs.append(data_dir)
  return dirs, reports


def test_split_counts_and_no_case_in_two_splits(built):
  (data_dir, _), (report, _) = built
  counts = report['counts']
  for split in ('validation', 'test'):
    for label in ('normal', 'fracture'):
      assert counts[split][label]['cases'] == 20, (split, label)
  records = _records(data_dir)
  case_sets = {s: {r[0] for r in recs} for s, recs in records.items()}
  assert not case_sets['train'] & case_sets['validation']
  assert not case_sets['train'] & case_sets['test']
  assert not case_sets['validation'] & case_sets['test']
  for split in ('validation', 'test'):
    assert all(r[3] >= 3 for r in records[split])
  total = sum(len(r) for r in records.values())
  assert (
      total
      == report['decoded_views']
      == 80 * 3
      + sum(counts['train'][l]['views'] for l in ('normal', 'fracture'))
  )
  # view_index runs 0..num_views-1 within each case, and labels agree within a
  # case.
  by_case = {}
  for recs in records.values():
    for case_id, view, label, num in recs:
      by_case.setdefault(case_id, []).append((view, label, num))
  for views in by_case.values():
    assert sorted(v for v, _, _ in views) == list(range(views[0][2]))
    assert len({l for _, l, _ in views}) == 1


def test_build_is_deterministic(built):
  (dir_a, dir_b), (report_a, report_b) = built
  assert report_a['counts'] == report_b['counts']
  rec_a, rec_b = _records(dir_a), _records(dir_b)
  for split in SPLITS:
    assert sorted(rec_a[split]) == sorted(rec_b[split])
  src_a, src_b = pipeline.load_split(dir_a, 'test'), pipeline.load_split(
      dir_b, 'test'
  )
  index_b = {
      (pipeline._to_str(src_b[i]['case_id']), int(src_b[i]['view_index'])): i
      for i in range(len(src_b))
  }
  for i in range(0, len(src_a), 17):
    ex = src_a[i]
    other = src_b[
        index_b[(pipeline._to_str(ex['case_id']), int(ex['view_index']))]
    ]
    np.testing.assert_array_equal(ex['image'], other['image'])
  assert src_a[0]['image'].dtype == np.uint16 and src_a[0]['image'].shape == (
      300,
      300,
      1,
  )


def test_bad_files_are_skipped_and_reported(built):
  (data_dir, _), (report, _) = built
  assert len(report['skipped_files']) == 2
  assert report['skipped_cases'] == 1
  for entry in report['skipped_files']:
    assert set(entry) == {'case_id', 'file_index', 'extension', 'reason'}
    assert 'not a DICOM' in entry['reason'] or 'DICOM' in entry['reason']
  report_dir = data_dir / 'radiograph_studies' / 'dicom_cases' / '1.0.0'
  assert (
      json.loads((report_dir / 'build_report.json').read_text())['counts']
      == report['counts']
  )
  assert (
      '| validation | fracture | 20 |'
      in (report_dir / 'build_report.md').read_text()
  )


def test_no_identifier_reaches_the_data_dir(synthetic_set, built):
  manual, cases = synthetic_set
  needles = {str(manual), 'Brokenington', 'PXQ999'}
  for case in cases:
    needles |= {
        case.patient_name,
        case.patient_name.split('^')[0],
        case.patient_name.split('^')[1],
        case.patient_id,
        case.birth_date,
        case.accession_number,
        case.study_uid,
        case.folder.split('/')[1],
    }
  needles = [n.encode() for n in needles]
  (dir_a, dir_b), _ = built
  files = [p for d in (dir_a, dir_b) for p in d.rglob('*') if p.is_file()]
  assert any(p.name == 'build_report.json' for p in files)
  for path in files:
    data = path.read_bytes()
    for needle in needles:
      assert needle not in data, (needle, path.name)


def _small_manual(tmp_path, synthetic_set, n=4):
  manual, cases = synthetic_set
  small = tmp_path / 'small'
  chosen = [c for c in cases if c.label == 'normal'][:n] + [
      c for c in cases if c.label == 'fracture'
  ][:n]
  for case in chosen:
    shutil.copytree(manual / case.folder, small / case.folder)
  return small, chosen


def test_strict_fails_and_splits_csv_overrides(tmp_path, synthetic_set):
  small, chosen = _small_manual(tmp_path, synthetic_set)
  with (small / 'splits.csv').open('w') as f:
    f.write('case,split\n')
    f.write(f'{chosen[0].folder},test\n')  # label/case form
    f.write(
        f"{chosen[-1].folder.split('/')[1]},validation\n"
    )  # bare case folder form
    f.write(f'{chosen[1].folder},exclude\n')
    f.write('normal/nobody,train\n')
  report = prepare.build_dataset(
      small,
      tmp_path / 'data',
      num_workers=1,
      progress=False,
      num_validation_per_label=0,
      num_test_per_label=0,
  )
  assert report['counts']['test']['normal']['cases'] == 1
  assert report['counts']['validation']['fracture']['cases'] == 1
  assert report['counts']['train']['normal']['cases'] == 2
  assert report['splits_csv'] == {
      'rows': 4,
      'matched_cases': 3,
      'unmatched_rows': 1,
  }
  test_ids = {r[0] for r in _records(tmp_path / 'data')['test']}
  assert test_ids == {radiograph_studies.case_id_for(chosen[0].folder)}
  (small / 'normal' / 'bad_case').mkdir()
  (small / 'normal' / 'bad_case' / 'x.dcm').write_bytes(b'junk')
  with pytest.raises(radiograph_studies.BuildError, match='strict'):
    prepare.build_dataset(
        small,
        tmp_path / 'data_strict',
        strict=True,
        num_workers=1,
        progress=False,
    )


def test_assignment_stable_when_cases_are_added():
  cfg = radiograph_studies.RadiographStudiesConfig(
      name='t', num_validation_per_label=5, num_test_per_label=5
  )

  def make(n):
    cases = []
    for i in range(n):
      key = f"{('normal', 'fracture')[i % 2]}/case{i}"
      case = rsb._Case(
          key, (key,), i % 2, [], radiograph_studies.case_id_for(key)
      )
      case.views = [(0, '', {})] * 3
      cases.append(case)
    return cases

  report = {'warnings': []}
  before = rsb._assign_splits(
      make(100), cfg, pathlib.Path('/nonexistent'), report
  )
  after = rsb._assign_splits(
      make(110), cfg, pathlib.Path('/nonexistent'), report
  )
  moved = [k for k in before if before[k] != after[k]]
  assert (
      len(moved) <= 2 * 10
  )  # each new case displaces at most one neighbour per boundary
  assert before == rsb._assign_splits(
      make(100), cfg, pathlib.Path('/nonexistent'), report
  )


def test_real_dicom_files_build(tmp_path, shared_dicom_dir):
  manual = tmp_path / 'real'
  for i, path in enumerate(sorted(shared_dicom_dir.glob('*.dcm'))):
    label = 'fracture' if 'rg3' in path.name else 'normal'
    case = manual / label / f'case{i % 4}'
    case.mkdir(parents=True, exist_ok=True)
    (case / path.name).symlink_to(path)
  report = prepare.build_dataset(
      manual,
      tmp_path / 'data',
      num_workers=1,
      progress=False,
      num_validation_per_label=1,
      num_test_per_label=0,
      min_eval_views=1,
      image_size=128,
  )
  assert report['decoded_views'] == 11
  assert len(report['skipped_files']) == 1
  assert 'JPEG Extended' in report['skipped_files'][0]['reason']
  assert 'bad_wg04' not in json.dumps(report)
  source = pipeline.load_split(tmp_path / 'data', 'train')
  assert source[0]['image'].shape == (128, 128, 1)
  assert {
      pipeline._to_str(source[i]['view_position']) for i in range(len(source))
  } >= {'AP'}


def _png(path, seed, size=64):
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)


def test_mura_fixture_builds_with_body_part_filter(tmp_path):
  root = tmp_path / 'mura' / 'MURA-v1.1'
  n = 0
  for part_split in ('train', 'valid'):
    for part in ('XR_WRIST', 'XR_ELBOW'):
      for patient in range(3):
        for study, outcome in ((1, 'positive'), (2, 'negative')):
          for image in range(1 + (patient % 3)):
            n += 1
            _png(
                root
                / part_split
                / part
                / f'patient{patient:05d}'
                / f'study{study}_{outcome}'
                / f'image{image + 1}.png',
                n,
            )
  report = prepare.build_dataset(
      tmp_path / 'mura',
      tmp_path / 'data',
      config='mura',
      num_workers=1,
      progress=False,
      body_parts=('XR_WRIST',),
      num_validation_per_label=1,
      num_test_per_label=1,
      min_eval_views=2,
  )
  counts = report['counts']
  total_cases = sum(c['cases'] for s in counts.values() for c in s.values())
  assert (
      total_cases == 2 * 3 * 2
  )  # wrist only: 2 folders x 3 patients x 2 studies
  assert report['filtered_out']['body_part_studies'] == 12
  for split in ('validation', 'test'):
    for label in ('normal', 'fracture'):
      assert counts[split][label]['cases'] == 1
  recs = _records(tmp_path / 'data', 'mura')
  assert (
      sum(len(r) for r in recs.values())
      == report['decoded_views']
      == 2 * (1 + 2 + 3) * 2
  )


def _fracatlas_fixture(root, num_frac=10, num_normal=30):
  rows = []
  for label, folder, count in (
      (1, 'Fractured', num_frac),
      (0, 'Non_fractured', num_normal),
  ):
    for i in range(count):
      image_id = f'IMG{label}{i:06d}'
      rng = np.random.default_rng(i + 1000 * label)
      arr = rng.integers(0, 255, (90, 70), dtype=np.uint8)
      path = root / 'images' / folder / f'{image_id}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(arr).save(path, quality=90)
      csv_label = label
      if label == 1 and i == 0:
        csv_label = 0  # folder/CSV disagreement
      rows.append(
          {
              'image_id': f'{image_id}.jpg',
              'hand': 0,
              'leg': 1,
              'hip': int(i == 3),
              'shoulder': 0,
              'mixed': 0,
              'hardware': int(i % 5 == 4),
              'multiscan': 0,
              'fractured': csv_label,
              'fracture_count': label,
              'frontal': 1,
              'lateral': int(i % 2),
              'oblique': 0,
          }
      )
  # A truncated JPEG (Pillow reads it with LOAD_TRUNCATED_IMAGES).
  victim = root / 'images' / 'Non_fractured' / 'IMG0000001.jpg'
  buf = io.BytesIO()
  noise = np.random.default_rng(5).integers(0, 255, (90, 70), dtype=np.uint8)
  Image.fromarray(noise).save(buf, format='JPEG', quality=90)
  victim.write_bytes(buf.getvalue()[:-40])
  with (root / 'dataset.csv').open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def test_fracatlas_fixture_builds(tmp_path):
  root = tmp_path / 'fracatlas'
  _fracatlas_fixture(root)
  (root / 'splits.csv').write_text(
      'case,split\nIMG1000001,test\nIMG0000005.jpg,test\n'
  )
  reports = [
      prepare.build_dataset(
          root,
          tmp_path / f'data{k}',
          config='fracatlas',
          num_workers=1,
          progress=False,
      )
      for k in range(2)
  ]
  report = reports[0]
  assert report['truncated_count'] == 1 and report['truncated_images'] == [
      'IMG0000001'
  ]
  assert report['csv_label_disagreements'] == ['IMG1000000']
  counts = report['counts']
  assert (
      counts['test']['fracture']['cases'] == 1
      and counts['test']['normal']['cases'] == 1
  )
  # Stratified 80/20 of the remaining 9 fractured and 29 normal images.
  assert counts['validation']['fracture']['cases'] == round(0.2 * 9)
  assert counts['validation']['normal']['cases'] == round(0.2 * 29)
  assert counts['train']['fracture']['cases'] == 9 - round(0.2 * 9)
  recs = [_records(tmp_path / f'data{k}', 'fracatlas') for k in range(2)]
  for split in SPLITS:
    assert sorted(recs[0][split]) == sorted(recs[1][split])
  assert {r[0] for r in recs[0]['test']} == {'IMG1000001', 'IMG0000005'}
  source = pipeline.load_split(tmp_path / 'data0', 'train', 'fracatlas')
  ex = source[0]
  assert ex['leg'] == 1 and ex['frontal'] == 1 and ex['num_views'] == 1
  assert pipeline._to_str(ex['view_position']).startswith('frontal')
  # Filters: hardware and body part.
  filtered = prepare.build_dataset(
      root,
      tmp_path / 'data_f',
      config='fracatlas',
      num_workers=1,
      progress=False,
      include_hardware=False,
      body_parts=('hip',),
  )
  assert filtered['filtered_out']['body_part'] == 40 - 2
  assert filtered['decoded_views'] == 2


def test_builder_follows_tfds_conventions():
  builder_cls = radiograph_studies.Builder
  assert builder_cls.name == 'radiograph_studies'
  assert [c.name for c in builder_cls.BUILDER_CONFIGS] == [
      'dicom_cases',
      'mura',
      'fracatlas',
  ]
  assert 'normal/<case>' in builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert 'radiograph_studies' in tfds.list_builders(
      with_community_datasets=False
  )

"""Tests for the radiograph_studies TFDS builder (dicom_cases, mura, fracatlas) and its report."""

import csv
import hashlib
import io
import json
import pathlib
import shutil

import numpy as np
from PIL import Image
import pytest
import scipy.ndimage
import tensorflow_datasets as tfds

from ankle_jax.data import near_duplicates
from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.data import radiograph_studies
from ankle_jax.data import synthetic
from ankle_jax.data.radiograph_studies import build_report
from ankle_jax.data.radiograph_studies import layouts
from ankle_jax.data.radiograph_studies import splits as splits_lib

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
            pipeline.to_str(ex['case_id']),
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
      (pipeline.to_str(src_b[i]['case_id']), int(src_b[i]['view_index'])): i
      for i in range(len(src_b))
  }
  for i in range(0, len(src_a), 17):
    ex = src_a[i]
    other = src_b[
        index_b[(pipeline.to_str(ex['case_id']), int(ex['view_index']))]
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
  report_dir = (
      data_dir
      / 'radiograph_studies'
      / 'dicom_cases'
      / str(radiograph_studies.Builder.VERSION)
  )
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
      case = layouts.Case(
          key, (key,), i % 2, [], radiograph_studies.case_id_for(key)
      )
      case.views = [(0, '', {})] * 3
      cases.append(case)
    return cases

  report = build_report.BuildReport.new(cfg, 'test')
  before = splits_lib.assign_splits(
      make(100), cfg, pathlib.Path('/nonexistent'), report
  )
  after = splits_lib.assign_splits(
      make(110), cfg, pathlib.Path('/nonexistent'), report
  )
  moved = [k for k in before if before[k] != after[k]]
  assert (
      len(moved) <= 2 * 10
  )  # each new case displaces at most one neighbour per boundary
  assert before == splits_lib.assign_splits(
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
      pipeline.to_str(source[i]['view_position']) for i in range(len(source))
  } >= {'AP'}


def _png(path, seed, size=64):
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)


def _mura_fixture(root, copy_from=None):
  """MURA-v1.1 layout: train/ and valid/, wrist and elbow; patient p has
  1 + p % 3 studies per part, each 1 + (p + k) % 3 images of noise.

  copy_from: (source, target) study paths under root (with an image name):
  the target image becomes a copy of the source, brightened by 10 grey levels.
  Returns {study path relative to MURA-v1.1: number of images}.
  """
  studies, n = {}, 0
  for part_split, patients in (('train', range(8)), ('valid', range(8, 11))):
    for part in ('XR_WRIST', 'XR_ELBOW'):
      for p in patients:
        for k in range(1 + p % 3):
          outcome = ('negative', 'positive')[(p + k) % 2]
          study = f'{part_split}/{part}/patient{p:05d}/study{k + 1}_{outcome}'
          studies[study] = 1 + (p + k) % 3
          for image in range(studies[study]):
            n += 1
            _png(root / 'MURA-v1.1' / study / f'image{image + 1}.png', n)
  if copy_from:
    source, target = (root / 'MURA-v1.1' / path for path in copy_from)
    pixels = np.asarray(Image.open(source), np.int32) + 10
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target)
  return studies


def test_mura_keeps_its_official_split_and_splits_train_by_patient(tmp_path):
  # Patient 0 (one wrist study) gets a copy of an image of patient 7's first
  # wrist study: two patients joined by a near-duplicate.
  copy = (
      'train/XR_WRIST/patient00007/study1_positive/image1.png',
      'train/XR_WRIST/patient00000/study1_negative/image1.png',
  )
  studies = _mura_fixture(tmp_path / 'mura', copy)
  report = prepare.build_dataset(
      tmp_path / 'mura',
      tmp_path / 'data',
      config='mura',
      num_workers=1,
      progress=False,
      body_parts=('XR_WRIST',),
      validation_fraction=0.4,
      salt='private',
  )
  wrist = {k: v for k, v in studies.items() if '/XR_WRIST/' in k}
  assert report['filtered_out']['body_part_studies'] == len(studies) - len(
      wrist
  )
  study_of = {radiograph_studies.case_id_for(k, 'private'): k for k in wrist}
  recs = _records(tmp_path / 'data', 'mura')
  split_of = {r[0]: s for s, rs in recs.items() for r in rs}
  assert set(split_of) == set(study_of)
  assert sum(len(r) for r in recs.values()) == sum(wrist.values())
  # valid/ is the test split, whole; train/ gives train and validation.
  assert {study_of[c] for c, s in split_of.items() if s == 'test'} == {
      k for k in wrist if k.startswith('valid/')
  }
  assert {s for c, s in split_of.items() if 'train/' in study_of[c]} == {
      'train',
      'validation',
  }
  # A patient never straddles splits, and the near-duplicate joins 0 and 7.
  patient_splits = {}
  for case_id, split in split_of.items():
    patient = study_of[case_id].split('/')[2]
    patient_splits.setdefault(patient, set()).add(split)
  assert all(len(s) == 1 for s in patient_splits.values()), patient_splits
  assert patient_splits['patient00000'] == patient_splits['patient00007']
  near = report['near_duplicates']
  assert near['count'] == 1 and near['sizes'] == {'2': 1}
  (group,) = near['groups']
  assert sorted(group['cases']) == sorted(
      radiograph_studies.case_id_for(copy[k].rsplit('/', 1)[0], 'private')
      for k in (0, 1)
  )
  assert group['mixed_labels'] and group['pairs'][0][-1] <= 32
  assert not any('salt' in w for w in report['warnings'])


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
  # (A seed no other fixture image uses: an equal image is a near-duplicate.)
  noise = np.random.default_rng(555).integers(0, 255, (90, 70), dtype=np.uint8)
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
  assert pipeline.to_str(ex['view_position']).startswith('frontal')
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


def _edit_jpeg(source, target, brightness=0, size=None):
  """Saves a brightened (and resized) copy of a JPEG."""
  picture = Image.open(source).convert('L')
  pixels = np.clip(np.asarray(picture, np.int32) + brightness, 0, 255)
  copy = Image.fromarray(pixels.astype(np.uint8))
  if size:
    copy = copy.resize(size, Image.Resampling.BILINEAR)
  copy.save(target, quality=85)


def test_fracatlas_near_duplicates_share_a_split(tmp_path):
  root = tmp_path / 'fracatlas'
  _fracatlas_fixture(root, num_frac=6, num_normal=14)
  images = root / 'images'
  # A brightened copy of a fractured image filed as normal (the labels
  # disagree), and a resized copy of a normal image; splits.csv puts the
  # latter's original in test.
  _edit_jpeg(
      images / 'Fractured' / 'IMG1000002.jpg',
      images / 'Non_fractured' / 'IMG0090001.jpg',
      brightness=12,
  )
  _edit_jpeg(
      images / 'Non_fractured' / 'IMG0000003.jpg',
      images / 'Non_fractured' / 'IMG0090002.jpg',
      size=(72, 92),
  )
  (root / 'splits.csv').write_text('case,split\nIMG0000003,test\n')
  report = prepare.build_dataset(
      root, tmp_path / 'data', config='fracatlas', num_workers=1, progress=False
  )
  near = report['near_duplicates']
  assert near['count'] == 2 and near['mixed_label_groups'] == 1
  groups = {tuple(g['cases']): g for g in near['groups']}
  assert set(groups) == {
      ('IMG0090001', 'IMG1000002'),
      ('IMG0000003', 'IMG0090002'),
  }
  assert groups['IMG0000003', 'IMG0090002']['splits'] == ['test']
  for group in groups.values():
    (pair,) = group['pairs']
    assert 0 <= pair[-1] <= 32 and len(group['splits']) == 1
  split_of = {
      r[0]: s
      for s, rs in _records(tmp_path / 'data', 'fracatlas').items()
      for r in rs
  }
  assert split_of['IMG0090001'] == split_of['IMG1000002']
  assert split_of['IMG0090002'] == 'test'
  assert any('mix labels' in w for w in report['warnings'])
  report_md = next((tmp_path / 'data').rglob('build_report.md')).read_text()
  assert '## Near-duplicate groups' in report_md
  assert 'IMG0090001 (normal), IMG1000002 (fracture)' in report_md
  # Off: no groups, the copies are split like any other image.
  off = prepare.build_dataset(
      root,
      tmp_path / 'data_off',
      config='fracatlas',
      num_workers=1,
      progress=False,
      near_duplicate_bits=-1,
  )
  assert off['near_duplicates']['count'] == 0


def test_difference_hash_finds_copies_not_other_images():
  rng = np.random.default_rng(0)
  # Smooth random images (structure at every scale of the hash's grid): one,
  # its re-export (brighter, contrast stretched, 2% larger), the same stored
  # as the builder's uint16 [S, S, 1], and an unrelated one.
  image, other = (
      scipy.ndimage.gaussian_filter(rng.normal(size=(300, 300)), 12)
      for _ in range(2)
  )
  copy = np.asarray(
      Image.fromarray(image.astype(np.float32)).resize((306, 306))
  )[3:303, 3:303]
  stored = (image - image.min()) / np.ptp(image) * 65535
  hashes = np.stack(
      [
          near_duplicates.difference_hash(x)
          for x in (
              image,
              1.3 * copy + 0.2,
              stored.astype(np.uint16)[..., None],
          )
          + (other,)
      ]
  )
  assert hashes.shape == (4, near_duplicates.HASH_BITS // 8)
  pairs = near_duplicates.near_duplicate_pairs(hashes, 32)
  assert pairs[:, :2].tolist() == [[0, 1], [0, 2], [1, 2]]
  assert pairs[1, 2] == 0 and 0 < pairs[0, 2] <= 32
  everything = near_duplicates.near_duplicate_pairs(hashes, 512)
  assert len(everything) == 6
  assert everything[everything[:, 1] == 3, 2].min() > 200  # unrelated
  assert near_duplicates.near_duplicate_pairs(hashes, -1).shape == (0, 3)
  # Groups are connected components: 0-1 and 1-2 chain, 3 stays alone.
  groups = near_duplicates.group_labels(4, np.array([[0, 1], [1, 2]]))
  assert groups[0] == groups[1] == groups[2] != groups[3]
  assert len(set(near_duplicates.group_labels(4, np.zeros((0, 2))))) == 4


def test_a_mirrored_copy_groups_with_its_original():
  rng = np.random.default_rng(1)

  # Smooth random images as above, with a bright bone off centre so that a
  # mirrored copy is far from its original as stored; stored as the builder
  # does (uint16 [S, S, 1]).
  def radiograph():
    image = scipy.ndimage.gaussian_filter(rng.normal(size=(300, 300)), 12)
    image[:, 40:90] += 3.0 * np.ptp(image)
    return ((image - image.min()) / np.ptp(image) * 65535).astype(np.uint16)

  image, other = radiograph(), radiograph()
  candidates = [image, image[:, ::-1], image.copy(), other, other[:, ::-1]]
  stored = [x[..., None] for x in candidates]
  hashes = np.stack([near_duplicates.difference_hash(x) for x in stored])
  mirrored = np.stack(
      [near_duplicates.mirrored_difference_hash(x) for x in stored]
  )
  # As stored only, the mirror is no near-duplicate...
  plain = near_duplicates.near_duplicate_pairs(hashes, 32)
  assert plain[:, :2].tolist() == [[0, 2]]
  far = near_duplicates.near_duplicate_pairs(hashes, 512)
  assert far[(far[:, 0] == 0) & (far[:, 1] == 1), 2] > 64
  # ...and with the mirrored hashes it is, at distance 0, like the plain copy;
  # the two different images (mirrored or not) stay apart.
  pairs = near_duplicates.near_duplicate_pairs(hashes, 32, mirrored)
  assert pairs.tolist() == [[0, 1, 0], [0, 2, 0], [1, 2, 0], [3, 4, 0]]
  groups = near_duplicates.group_labels(len(stored), pairs)
  assert groups[0] == groups[1] == groups[2] != groups[3] == groups[4]


def test_a_mirrored_copy_lands_in_its_originals_split(tmp_path):
  root = tmp_path / 'fracatlas'
  _fracatlas_fixture(root, num_frac=6, num_normal=14)
  images = root / 'images'
  original = images / 'Non_fractured' / 'IMG0000003.jpg'
  with Image.open(original) as picture:
    mirrored = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored.save(images / 'Non_fractured' / 'IMG0090002.jpg', quality=95)
  (root / 'splits.csv').write_text('case,split\nIMG0000003,test\n')
  report = prepare.build_dataset(
      root, tmp_path / 'data', config='fracatlas', num_workers=1, progress=False
  )
  groups = [tuple(g['cases']) for g in report['near_duplicates']['groups']]
  assert groups == [('IMG0000003', 'IMG0090002')]
  split_of = {
      r[0]: s
      for s, rs in _records(tmp_path / 'data', 'fracatlas').items()
      for r in rs
  }
  assert split_of['IMG0000003'] == split_of['IMG0090002'] == 'test'


def test_split_does_not_depend_on_the_salt():
  cfg = radiograph_studies.RadiographStudiesConfig(
      name='t', num_validation_per_label=4, num_test_per_label=4
  )
  keys = [f"{('normal', 'fracture')[i % 2]}/Patient^Name{i}" for i in range(40)]

  def splits(salt):
    cases = [
        layouts.Case(
            k, (k,), i % 2, [], radiograph_studies.case_id_for(k, salt)
        )
        for i, k in enumerate(keys)
    ]
    for case in cases:
      case.views = [(0, '', {})] * 3
    ids = splits_lib.assign_splits(
        cases,
        cfg,
        pathlib.Path('/nonexistent'),
        build_report.BuildReport.new(cfg, 'test'),
    )
    return [ids[radiograph_studies.case_id_for(k, salt)] for k in keys]

  by_default = splits(radiograph_studies.DEFAULT_SALT)
  assert splits('one private salt') == splits('another') == by_default
  assert by_default.count('validation') == by_default.count('test') == 8
  # The rank is 1.0.0's for the default salt: sha256('split:' + case_id).
  key = keys[0]
  assert (
      layouts.split_rank(key)
      == hashlib.sha256(
          f'split:{radiograph_studies.case_id_for(key)}'.encode()
      ).hexdigest()
  )


def test_default_salt_warns_for_real_data_but_not_for_the_demo(tmp_path):
  def built_report(data_dir):
    (path,) = data_dir.rglob('build_report.json')
    return json.loads(path.read_text())

  synthetic_studies = dict(
      num_normal=2, num_fracture=2, seed=4, min_size=96, max_size=128
  )
  prepare.prepare_dataset(
      data_dir=tmp_path / 'demo',
      manual_dir=tmp_path / 'studies',
      dataset_config='dicom_cases',
      synthetic_studies=synthetic_studies,
      progress=False,
      echo=False,
  )
  demo = built_report(tmp_path / 'demo')
  assert demo['salt'] == 'default'
  assert not any('salt' in w for w in demo['warnings'])
  # The same folder without the generator's manifest: real data for all the
  # builder knows.
  (tmp_path / 'studies' / synthetic.MANIFEST_NAME).unlink()
  args = dict(num_workers=1, progress=False, image_size=64)
  real = prepare.build_dataset(tmp_path / 'studies', tmp_path / 'real', **args)
  assert 'public default salt' in real['warnings'][0]
  assert 'public default salt' in (
      next((tmp_path / 'real').rglob('build_report.md')).read_text()
  )
  private = prepare.build_dataset(
      tmp_path / 'studies', tmp_path / 'private', salt='s3cret', **args
  )
  assert private['salt'] == 'custom'
  assert not any('salt' in w for w in private['warnings'])


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

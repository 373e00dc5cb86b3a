"""Tests for ankle_jax.data.pipeline: load_split, training loader (resume), evaluation batches."""

import numpy as np
import pytest

from ankle_jax.data import cases
from ankle_jax.data import pipeline
from ankle_jax.data import prepare
from ankle_jax.data import synthetic


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  manual = tmp_path_factory.mktemp('manual')
  synthetic.generate_studies(
      manual,
      num_normal=14,
      num_fracture=10,
      seed=2,
      views_probs=(0.2, 0.2, 0.6),
      max_size=360,
  )
  out = tmp_path_factory.mktemp('data')
  prepare.build_dataset(
      manual,
      out,
      num_workers=1,
      progress=False,
      num_validation_per_label=3,
      num_test_per_label=2,
      min_eval_views=2,
  )
  return out


def test_load_split_missing_names_the_build_command(tmp_path, data_dir):
  with pytest.raises(
      prepare.DatasetMissingError, match='python -m ankle_jax.data.build'
  ):
    pipeline.load_split(tmp_path, 'train')
  with pytest.raises(prepare.DatasetMissingError, match='mura'):
    pipeline.load_split(data_dir, 'train', 'mura')
  source = pipeline.load_split(data_dir, 'train')
  assert len(source) > 0


def test_train_batches_shapes_and_epoch_coverage(data_dir):
  source = pipeline.load_split(data_dir, 'train')
  n = len(source)
  loader = pipeline.make_train_loader(
      source, global_batch_size=4, image_size=96, seed=0
  )
  batch = next(loader)
  assert (
      batch['image'].shape == (4, 96, 96, 1)
      and batch['image'].dtype == np.float32
  )
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  assert batch['image'].min() >= 0.0 and batch['image'].max() <= 1.0
  assert batch['image'].std() > 0.05
  one_epoch = list(
      pipeline.make_train_loader(
          source, global_batch_size=1, image_size=32, seed=3, num_epochs=1
      )
  )
  assert len(one_epoch) == n
  labels = sorted(int(b['label'][0]) for b in one_epoch)
  assert labels == sorted(int(source[i]['label']) for i in range(n))
  dropped = list(
      pipeline.make_train_loader(
          source, global_batch_size=5, image_size=32, seed=3, num_epochs=1
      )
  )
  assert len(dropped) == n // 5
  # Shuffled, and differently with another seed / in the next epoch.
  in_order = [int(source[i]['label']) for i in range(n)]
  seq = lambda seed: [
      int(b['label'][0])
      for b in pipeline.make_train_loader(
          source, global_batch_size=1, image_size=32, seed=seed, num_epochs=1
      )
  ]
  images = lambda seed: np.stack(
      [
          b['image'][0]
          for b in pipeline.make_train_loader(
              source,
              global_batch_size=1,
              image_size=16,
              seed=seed,
              num_epochs=1,
          )
      ]
  )
  assert not np.array_equal(images(3), images(4))
  assert seq(3) == seq(3)
  del in_order


def test_train_loader_resumes_exactly(data_dir):
  source = pipeline.load_split(data_dir, 'train')
  kwargs = dict(global_batch_size=3, image_size=48, seed=7)
  loader = pipeline.make_train_loader(source, **kwargs)
  for _ in range(len(source) // 3 + 2):  # cross an epoch boundary
    next(loader)
  state = loader.get_state()
  expected = [next(loader) for _ in range(4)]
  resumed = pipeline.make_train_loader(source, **kwargs)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_weighted_sampling_balances_labels_and_resumes(data_dir):
  source = pipeline.load_split(data_dir, 'train')
  labels = np.array([int(source[i]['label']) for i in range(len(source))])
  base_rate = labels.mean()
  loader = pipeline.make_train_loader(
      source,
      global_batch_size=32,
      image_size=16,
      seed=1,
      sample_weights_by_label=[1.0, 6.0],
  )
  rate = np.mean([next(loader)['label'].mean() for _ in range(6)])
  assert rate > base_rate + 0.2
  state = loader.get_state()
  want = next(loader)
  again = pipeline.make_train_loader(
      source,
      global_batch_size=32,
      image_size=16,
      seed=1,
      sample_weights_by_label=[1.0, 6.0],
  )
  again.set_state(state)
  np.testing.assert_array_equal(next(again)['image'], want['image'])


def test_eval_batches_ordered_grouped_and_padded(data_dir):
  source = pipeline.load_split(data_dir, 'validation')
  n = len(source)
  batches = list(
      pipeline.iterate_eval_batches(source, batch_size=4, image_size=64)
  )
  assert len(batches) == -(-n // 4)
  for b in batches:
    assert b['image'].shape == (4, 64, 64, 1) and b['image'].dtype == np.float32
    assert b['label'].dtype == np.int32 and b['view_index'].dtype == np.int32
    assert b['mask'].dtype == bool and b['case_id'].shape == (4,)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == n and mask[:n].all()
  keys = [
      (c, v)
      for b in batches
      for c, v, m in zip(b['case_id'], b['view_index'], b['mask'])
      if m
  ]
  assert keys == sorted(keys) and len(set(keys)) == n
  last = batches[-1]
  assert not last['image'][~last['mask']].any()
  # Each case's views are contiguous and labels agree within a case.
  labels = [int(l) for b in batches for l, m in zip(b['label'], b['mask']) if m]
  seen, current = set(), None
  for (case, _), _label in zip(keys, labels):
    if case != current:
      assert case not in seen
      seen.add(case)
      current = case
  assert len(seen) == 6  # 3 normal + 3 fracture validation cases


def test_eval_batches_carry_the_view_features(data_dir):
  """view_position and num_views of each real view, as the records have
  them; padding '' and -1; a dicom_cases dataset has no FracAtlas flags."""
  source = pipeline.load_split(data_dir, 'validation')
  assert pipeline.view_features(source) == ('view_position', 'num_views')
  size = len(source) + 1  # one batch, with one padding row
  batches = list(
      pipeline.iterate_eval_batches(source, batch_size=size, image_size=16)
  )
  records = {
      (pipeline.to_str(r['case_id']), int(r['view_index'])): r
      for r in (source[i] for i in range(len(source)))
  }
  seen = set()
  for b in batches:
    assert b['num_views'].dtype == np.int32
    for j in range(size):
      if not b['mask'][j]:
        assert (b['view_position'][j], b['num_views'][j]) == ('', -1)
        continue
      r = records[(b['case_id'][j], int(b['view_index'][j]))]
      assert b['view_position'][j] == pipeline.to_str(r['view_position'])
      assert b['num_views'][j] == int(r['num_views'])
      seen.add(b['view_position'][j])
  assert seen - {''}  # the synthetic studies have view positions
  assert not batches[-1]['mask'].all()  # a padding row was checked


def test_eval_batches_carry_fracatlas_flags_where_records_have_them():
  records = [_view_record('a', 0, 'frontal'), _view_record('b', 0, 'lateral')]
  for r, hardware in zip(records, (1, -1)):
    r.update(hardware=np.int32(hardware), leg=np.int32(1))
    r.update(frontal=np.int32(1))  # repeats view_position: not carried
  assert pipeline.view_features(records) == (
      'view_position',
      'num_views',
      'leg',
      'hardware',
  )
  (batch,) = pipeline.iterate_eval_batches(records, batch_size=3, image_size=8)
  assert batch['hardware'].tolist() == [1, -1, -1]
  assert batch['leg'].tolist() == [1, 1, -1]
  assert batch['view_position'].tolist() == ['frontal', 'lateral', '']
  assert 'frontal' not in batch
  assert pipeline.view_features([]) == ()


def _view_record(case_id, view_index, view_position, label=0):
  return {
      'image': np.full((8, 8, 1), 1000 * view_index, np.uint16),
      'label': np.int64(label),
      'case_id': case_id.encode(),
      'view_index': np.int32(view_index),
      'num_views': np.int32(0),
      'view_position': view_position.encode(),
  }


def _kept(source, max_views):
  batches = pipeline.iterate_eval_batches(
      source, batch_size=3, image_size=8, max_views_per_case=max_views
  )
  return [
      (c, int(v))
      for b in batches
      for c, v, m in zip(b['case_id'], b['view_index'], b['mask'])
      if m
  ]


def test_max_views_per_case_keeps_the_first_by_view_position_then_file():
  """data.max_eval_views: per case, the first N views by view position (views
  without one last), then file name (view_index); kept in view_index order."""
  records = [
      _view_record('b', 1, ''),
      _view_record('a', 3, 'OBL'),
      _view_record('a', 0, 'LL'),
      _view_record('c', 1, 'AP'),
      _view_record('a', 2, 'AP'),
      _view_record('b', 0, 'AP'),
      _view_record('c', 0, 'AP'),
      _view_record('a', 1, ''),
      _view_record('c', 2, 'AP'),
  ]
  every = [
      ('a', 0), ('a', 1), ('a', 2), ('a', 3),
      ('b', 0), ('b', 1),
      ('c', 0), ('c', 1), ('c', 2),
  ]  # fmt: skip
  assert _kept(records, 0) == every
  assert _kept(records, 9) == every
  # a: AP (2), LL (0), OBL (3), then the view without a position (1).
  assert _kept(records, 3) == [
      ('a', 0), ('a', 2), ('a', 3), ('b', 0), ('b', 1),
      ('c', 0), ('c', 1), ('c', 2),
  ]  # fmt: skip
  # c: three AP views, so file name order decides.
  assert _kept(records, 2) == [
      ('a', 0), ('a', 2), ('b', 0), ('b', 1), ('c', 0), ('c', 1),
  ]  # fmt: skip
  assert _kept(records, 1) == [('a', 2), ('b', 0), ('c', 0)]
  with pytest.raises(ValueError, match='max_views_per_case=-1'):
    pipeline.eval_order(records, -1)


def test_max_views_per_case_on_a_built_split(data_dir):
  source = pipeline.load_split(data_dir, 'validation')
  every = _kept(source, 0)
  kept = _kept(source, 2)
  by_case = {}
  for case, view in every:
    by_case.setdefault(case, []).append(view)
  assert any(len(views) == 3 for views in by_case.values())
  position = {
      (pipeline.to_str(source[i]['case_id']), int(source[i]['view_index'])): (
          pipeline.to_str(source[i]['view_position'])
      )
      for i in range(len(source))
  }
  for case, views in by_case.items():
    expected = sorted(views, key=lambda v: (position[(case, v)], v))[:2]
    assert [v for c, v in kept if c == case] == sorted(expected)
  assert len(kept) == sum(min(2, len(v)) for v in by_case.values())


def _case_source():
  """Fake source: case 'a' (4 views, label 1), 'b' (1 view, label 0), 'c'
  (2 views, label 0), 'd' (3 views, label 0), records out of order."""
  views = {'a': (4, 1), 'b': (1, 0), 'c': (2, 0), 'd': (3, 0)}
  records = [
      _view_record(case, v, 'AP', label)
      for case, (n, label) in views.items()
      for v in range(n)
  ]
  return records[::-1]


def _real_view_keys(batch):
  """{(case_id, view_index)} of the real views of an iterate_case_batches
  batch."""
  return {
      (c, int(v))
      for c, vs, ms in zip(
          batch['case_id'], batch['view_index'], batch['view_mask']
      )
      for v, m in zip(vs, ms)
      if m
  }


def test_case_groups_num_cases_and_max_case_views():
  source = _case_source()
  groups = cases.case_groups(source)
  assert [c for c, _ in groups] == ['a', 'b', 'c', 'd']
  assert [[source[i]['view_index'] for i in g] for _, g in groups] == [
      [0, 1, 2, 3], [0], [0, 1], [0, 1, 2],
  ]  # fmt: skip
  capped = cases.case_groups(source, 2)
  assert [i for _, g in capped for i in g] == pipeline.eval_order(source, 2)
  assert cases.num_cases(source) == 4
  assert cases.max_case_views(source) == 4
  assert cases.max_case_views(source, 2) == 2
  assert cases.max_case_views([]) == 0


def test_case_train_loader_shapes_masks_and_epoch_coverage():
  source = _case_source()
  one_epoch = list(
      cases.make_case_train_loader(
          source,
          global_batch_size=1,
          max_views=3,
          image_size=8,
          seed=0,
          num_epochs=1,
      )
  )
  assert len(one_epoch) == 4
  b = one_epoch[0]
  # Stored at image_size: the uint16 intensities travel (the step converts).
  assert b['image'].shape == (1, 3, 8, 8, 1) and b['image'].dtype == np.uint16
  assert b['view_mask'].shape == (1, 3) and b['view_mask'].dtype == bool
  assert b['label'].shape == (1,) and b['label'].dtype == np.int32
  # A view's pixels are 1000 * view_index: they identify the view.
  by_count = {}
  for b in one_epoch:
    mask, image = b['view_mask'][0], b['image'][0]
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any()  # real views first
    assert not image[n:].any()  # padded slots exactly 0
    views = image[:n, 0, 0, 0].astype(int) // 1000
    by_count[n] = (sorted(views), int(b['label'][0]))
  # Every case once: 'b' (1 view), 'c' (2), and 'a' and 'd' both at 3 slots.
  assert sorted(int(b['view_mask'].sum()) for b in one_epoch) == [1, 2, 3, 3]
  assert by_count[1] == ([0], 0) and by_count[2] == ([0, 1], 0)
  assert sorted(int(b['label'][0]) for b in one_epoch) == [0, 0, 0, 1]
  with pytest.raises(ValueError, match='empty'):
    cases.make_case_train_loader(
        [], global_batch_size=1, max_views=3, image_size=8, seed=0
    )
  with pytest.raises(ValueError, match='max_views=0'):
    cases.make_case_train_loader(
        source, global_batch_size=1, max_views=0, image_size=8, seed=0
    )


def test_case_train_loader_draws_view_subsets_afresh():
  source = [r for r in _case_source() if r['case_id'] == b'a']  # 4 views
  loader = cases.make_case_train_loader(
      source, global_batch_size=1, max_views=2, image_size=8, seed=5
  )
  subsets = set()
  for _ in range(12):
    b = next(loader)
    assert b['view_mask'].all() and int(b['label'][0]) == 1
    views = b['image'][0, :, 0, 0, 0].astype(int) // 1000
    assert len(set(views)) == 2 and set(views) <= {0, 1, 2, 3}
    subsets.add(tuple(views))
  assert len(subsets) > 2


def test_case_train_loader_resumes_exactly(data_dir):
  source = pipeline.load_split(data_dir, 'train')
  kwargs = dict(global_batch_size=3, max_views=2, image_size=16, seed=7)
  loader = cases.make_case_train_loader(source, **kwargs)
  for _ in range(cases.num_cases(source) // 3 + 2):  # cross an epoch
    next(loader)
  state = loader.get_state()
  expected = [next(loader) for _ in range(4)]
  resumed = cases.make_case_train_loader(source, **kwargs)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in ('image', 'view_mask', 'label'):
      np.testing.assert_array_equal(got[key], want[key])


def test_case_train_loader_balanced_sampling(data_dir):
  source = pipeline.load_split(data_dir, 'train')
  case_labels = [
      int(source[g[0]]['label']) for _, g in cases.case_groups(source)
  ]
  kwargs = dict(global_batch_size=16, max_views=1, image_size=8, seed=1)
  plain = cases.make_case_train_loader(source, **kwargs)
  balanced = cases.make_case_train_loader(
      source, sample_weights_by_label=[1.0, 6.0], **kwargs
  )
  plain_rate = np.mean([next(plain)['label'].mean() for _ in range(4)])
  rate = np.mean([next(balanced)['label'].mean() for _ in range(4)])
  assert rate > plain_rate + 0.2 and rate > np.mean(case_labels) + 0.2


def test_case_batches_cover_the_eval_views_and_pad(data_dir):
  source = pipeline.load_split(data_dir, 'validation')
  for cap in (0, 2):
    batches = list(
        cases.iterate_case_batches(
            source, batch_size=4, image_size=16, max_views_per_case=cap
        )
    )
    slots = cases.max_case_views(source, cap)
    assert slots == (3 if cap == 0 else 2)
    assert len(batches) == 2  # 6 validation cases, batches of 4
    for b in batches:
      assert b['image'].shape == (4, slots, 16, 16, 1)
      assert b['view_mask'].shape == b['view_index'].shape == (4, slots)
      assert b['view_index'].dtype == b['label'].dtype == np.int32
      assert b['mask'].dtype == b['view_mask'].dtype == bool
      assert not b['image'][~b['view_mask']].any()
      assert (b['view_index'][~b['view_mask']] == -1).all()
      assert b['view_mask'][b['mask']].any(axis=1).all()
    last = batches[-1]
    assert last['mask'].tolist() == [True, True, False, False]
    assert list(last['case_id'][2:]) == ['', '']
    assert not last['view_mask'][2:].any()
    case_ids = [
        c for b in batches for c, m in zip(b['case_id'], b['mask']) if m
    ]
    assert case_ids == sorted(case_ids) and len(case_ids) == 6
    views = set().union(*(_real_view_keys(b) for b in batches))
    assert sorted(views) == _kept(source, cap)
  with pytest.raises(ValueError, match=r'has 3 views .*num_view_slots=2'):
    cases.iterate_case_batches(
        source, batch_size=4, image_size=16, num_view_slots=2
    )
  wide = next(
      cases.iterate_case_batches(
          source, batch_size=4, image_size=8, num_view_slots=5
      )
  )
  assert (
      wide['view_mask'].shape == (4, 5) and not wide['view_mask'][:, 3:].any()
  )


def test_per_process_loaders_join_into_the_single_process_batches(data_dir):
  source = pipeline.load_split(data_dir, 'train')
  options = {'global_batch_size': 4, 'image_size': 32, 'seed': 3}
  single = pipeline.make_train_loader(source, **options)
  shares = [
      pipeline.make_train_loader(
          source, process_index=p, process_count=2, **options
      )
      for p in (0, 1)
  ]
  for _ in range(12):  # Crosses epoch boundaries of the small split.
    want = next(single)
    got = [next(share) for share in shares]
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([g[key] for g in got]), want[key]
      )
  states = [share.get_state() for share in shares]
  assert states[0] == states[1] == single.get_state()


def test_case_loaders_split_the_same_way(data_dir):
  source = pipeline.load_split(data_dir, 'train')
  options = {'global_batch_size': 4, 'max_views': 3, 'image_size': 16}
  options.update(seed=1, sample_weights_by_label=[1.0, 2.0])
  single = cases.make_case_train_loader(source, **options)
  shares = [
      cases.make_case_train_loader(
          source, process_index=p, process_count=2, **options
      )
      for p in (0, 1)
  ]
  for _ in range(5):
    want = next(single)
    got = [next(share) for share in shares]
    for key in ('image', 'view_mask', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([g[key] for g in got]), want[key]
      )


def test_eval_batches_split_over_processes(data_dir):
  source = pipeline.load_split(data_dir, 'validation')
  common = {'batch_size': 4, 'image_size': 16}
  single = list(pipeline.iterate_eval_batches(source, **common))
  shares = [
      list(
          pipeline.iterate_eval_batches(
              source, process_index=p, process_count=2, **common
          )
      )
      for p in (0, 1)
  ]
  assert len(shares[0]) == len(shares[1]) == len(single)
  for want, *got in zip(single, *shares):
    for key in ('label', 'mask', 'case_id', 'image'):
      np.testing.assert_array_equal(
          np.concatenate([g[key] for g in got]), want[key]
      )

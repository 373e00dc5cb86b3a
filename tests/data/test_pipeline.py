"""Tests for ankle_jax.data.pipeline: load_split, training loader (resume), evaluation batches."""

import numpy as np
import pytest

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
  assert pipeline.split_size(source) == len(source) > 0


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
      (pipeline._to_str(source[i]['case_id']), int(source[i]['view_index'])): (
          pipeline._to_str(source[i]['view_position'])
      )
      for i in range(len(source))
  }
  for case, views in by_case.items():
    expected = sorted(views, key=lambda v: (position[(case, v)], v))[:2]
    assert [v for c, v in kept if c == case] == sorted(expected)
  assert len(kept) == sum(min(2, len(v)) for v in by_case.values())

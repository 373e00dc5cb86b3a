"""The splits on the device (data.on_device) against the host path: the same
batches element for element (per view and multi-view, augmentation included),
the same validation rows, an exact resume through the device prefetch, and
the same trained parameters end to end; plus the placement decisions and
their config checks.

Tiny in-memory records (test_train.make_records) and test_train's TinyNet.
"""

import json

import jax
import numpy as np
import pytest
import test_train as t
from test_train import compilation_cache  # noqa: F401 (an autouse fixture)

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import sharding
from ankle_jax.data import augment
from ankle_jax.data import cases
from ankle_jax.data import pipeline
from ankle_jax.training import config_checks
from ankle_jax.training import inputs
from ankle_jax.training import steps
from ankle_jax.training import validation

AUG = steps.AugmentSettings(
    rotation_degrees=10.0,
    flip_lr=True,
    brightness_delta=0.2,
    crop_scale_lower=0.8,
)


def _source(size=t.IMAGE_SIZE, num=20, views=1):
  return t.make_records(num, seed=3, size=size, views=views)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _host_and_index_batches(source, image_size, n, **options):
  """n batches of the host loader and of the index loader, same options."""
  make = (
      cases.make_case_train_loader
      if 'max_views' in options
      else pipeline.make_train_loader
  )
  common = {'image_size': image_size, 'seed': 5, **options}
  host = _take(make(source, **common), n)
  index = _take(make(source, indices_only=True, **common), n)
  return host, index


def _assert_same_images(host, index, split):
  """The index batches gather exactly the host batches' images, and the
  augmentation of both (same key) gives the same pixels."""
  key = jax.random.PRNGKey(7)
  for h, i in zip(host, index, strict=True):
    np.testing.assert_array_equal(h['label'], i['label'])
    host_images = augment.to_unit_float(h['image'])
    gathered = augment.gather_images(split, i['index'], i.get('view_mask'))
    assert gathered.dtype == host_images.dtype == np.float32
    np.testing.assert_array_equal(gathered, host_images)
    np.testing.assert_array_equal(
        steps.preprocess_train_images(key, gathered, AUG),
        steps.preprocess_train_images(key, host_images, AUG),
    )


@pytest.mark.parametrize('stored', [t.IMAGE_SIZE, t.IMAGE_SIZE + 4])
def test_per_view_index_batches_gather_the_host_batches(stored):
  source = _source(size=stored)
  split = pipeline.split_images(source, t.IMAGE_SIZE)
  # Stored at image_size: uint16 on the wire and on the device; else resized
  # on the host once, float32.
  assert split.dtype == (np.uint16 if stored == t.IMAGE_SIZE else np.float32)
  assert split.nbytes == pipeline.split_nbytes(source, t.IMAGE_SIZE)
  host, index = _host_and_index_batches(
      source,
      t.IMAGE_SIZE,
      8,
      global_batch_size=4,
      sample_weights_by_label=[1.0, 3.0],
  )
  assert host[0]['image'].dtype == split.dtype
  assert index[0]['index'].dtype == np.int32 and 'image' not in index[0]
  _assert_same_images(host, index, split)


def test_multiview_index_batches_gather_the_host_batches():
  # 4-view cases in 3 slots: random view subsets, drawn the same either way.
  source = _source(num=24, views=4) + _source(num=2, views=1)
  split = pipeline.split_images(source, t.IMAGE_SIZE)
  host, index = _host_and_index_batches(
      source, t.IMAGE_SIZE, 6, global_batch_size=2, max_views=3
  )
  assert index[0]['index'].shape == (2, 3)
  for h, i in zip(host, index):
    np.testing.assert_array_equal(h['view_mask'], i['view_mask'])
  _assert_same_images(host, index, split)


@pytest.mark.parametrize('multiview', [False, True])
def test_validation_index_batches_have_the_host_rows(multiview):
  source = _source(num=15, views=3)
  split = pipeline.split_images(source, t.IMAGE_SIZE)
  options = {
      'eval_source': source,
      'batch_size': 4,
      'image_size': t.IMAGE_SIZE,
      'max_views_per_case': 2,
      'multiview': multiview,
  }
  host = list(validation.validation_batches(**options))
  index = list(validation.validation_batches(indices_only=True, **options))
  assert len(host) == len(index) > 1
  for h, i in zip(host, index):
    assert set(h) - {'image', 'num_views', 'view_position'} == set(i) - {
        'index'
    }
    for key in set(i) - {'index'}:
      np.testing.assert_array_equal(h[key], i[key], err_msg=key)
    gathered = augment.gather_images(split, i['index'], i.get('view_mask'))
    real = h['mask']
    host_images = augment.to_unit_float(h['image'])
    np.testing.assert_array_equal(gathered[real], host_images[real])


class _Counter:
  """A resumable iterator of 0, 1, 2, ... (grain's get_state/set_state)."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    return {'index': np.array([self.position - 1], np.int32)}

  def get_state(self):
    return {'position': self.position}

  def set_state(self, state):
    self.position = state['position']


def test_device_prefetch_state_is_that_of_the_batches_yielded():
  prefetch = inputs.DevicePrefetch(_Counter(), lambda b: b['index'] * 10)
  first = [next(prefetch) for _ in range(3)]
  assert [int(p[0]) for _, p in first] == [0, 10, 20]
  state = prefetch.get_state()
  assert state == {'position': 3}  # Not 5, the batches already placed.
  after = [int(b['index'][0]) for b, _ in _take(prefetch, 2)]
  resumed = inputs.DevicePrefetch(_Counter(), lambda b: b['index'])
  resumed.set_state(state)
  assert [int(b['index'][0]) for b, _ in _take(resumed, 2)] == after == [3, 4]


def _run(tmp_path, monkeypatch, name, on_device, **overrides):
  config = t.tiny_config(**overrides)
  config.data.on_device = on_device
  t.run(config, tmp_path / name, monkeypatch)
  return tmp_path / name


def _metrics(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  drop = ('seconds', 'images_per_second', 'steps_per_second', 'walltime')
  return [
      {k: v for k, v in json.loads(line).items() if not k.endswith(drop)}
      for line in lines
  ]


def test_a_run_on_the_device_is_the_host_run_and_resumes_exactly(
    tmp_path, monkeypatch
):
  host = _run(tmp_path, monkeypatch, 'host', 'false')
  _run(tmp_path, monkeypatch, 'device', 'true', num_train_steps=3)
  device = _run(tmp_path, monkeypatch, 'device', 'true')
  (host_vars, host_step), (device_vars, device_step) = (
      checkpoint.restore_variables(d, 'latest') for d in (host, device)
  )
  assert host_step == device_step == 6
  jax.tree.map(np.testing.assert_array_equal, host_vars, device_vars)
  # The same train losses and validation metrics, step by step.
  assert _metrics(host) == _metrics(device)


def _placement(on_device='auto', platform='cpu', sizes=(100, 50), **kw):
  options = {'worker_count': 'auto', 'budget_bytes': 120, **kw}
  return inputs.resolve_placement(
      on_device=on_device, platform=platform, split_nbytes=sizes, **options
  )


def test_placement_follows_the_budget_the_platform_and_the_choice():
  gpu = _placement(platform='gpu')
  assert (gpu.train_on_device, gpu.eval_on_device) == (True, False)
  assert gpu.worker_count == 0  # The train split is on the device.
  everything = _placement(platform='gpu', budget_bytes=150)
  assert everything.train_on_device and everything.eval_on_device
  host = _placement(on_device='false', platform='gpu', budget_bytes=150)
  assert not host.train_on_device and not host.eval_on_device
  assert host.worker_count >= 1  # 'auto' on a GPU host.
  too_big = _placement(on_device='true', sizes=(200, 50))
  assert not too_big.train_on_device and too_big.eval_on_device
  assert _placement(on_device='false', worker_count=3).worker_count == 3
  cpu = _placement(on_device='false')
  assert cpu.worker_count == 0  # The CPU's cores run the step.
  assert _placement().train_on_device == inputs.AUTO_ON_DEVICE_CPU


class _Device:

  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


def test_device_budget_is_a_fraction_of_its_memory_or_the_cpu_budget():
  assert (
      inputs.device_budget_bytes(_Device({'bytes_limit': 1000}), 0.25, 7) == 250
  )
  assert inputs.device_budget_bytes(_Device(None), 0.25, 7) == 7
  assert inputs.device_budget_bytes(jax.devices()[0], 0.5, 9) > 0


@pytest.mark.parametrize(
    'field, value, message',
    [
        ('on_device', 'yes', 'config.data.on_device'),
        ('worker_count', -1, 'config.data.worker_count'),
        ('worker_count', 'many', 'config.data.worker_count'),
        ('on_device_budget_fraction', 1.5, 'on_device_budget_fraction'),
    ],
)
def test_bad_placement_fields_are_named(field, value, message, monkeypatch):
  t._validate_stub(monkeypatch)
  config = t.tiny_config()
  with config.unlocked():
    config.data[field] = value
  with pytest.raises(console.UserError, match=message):
    config_checks.validate_config(config)


def test_worker_count_takes_auto_or_an_int(monkeypatch):
  t._validate_stub(monkeypatch)
  config = t.tiny_config()
  for value in ('auto', 0, 4):
    config.data.worker_count = value
    config_checks.validate_config(config)


def test_index_batches_place_on_the_mesh():
  mesh = sharding.create_mesh()
  placed = sharding.shard_batch(
      {'index': np.arange(4, dtype=np.int32), 'label': np.zeros(4, np.int32)},
      mesh,
  )
  assert set(placed) == {'index', 'label'}
  split = inputs.place_split(_source(num=6), t.IMAGE_SIZE, mesh)
  assert split.dtype == np.uint16 and split.shape[0] == 6
  assert split.sharding.is_fully_replicated


@pytest.mark.parametrize('multiview', [False, True])
def test_two_processes_index_blocks_join_into_the_one_process_batch(multiview):
  source = _source(num=24, views=3)
  make = (
      cases.make_case_train_loader if multiview else pipeline.make_train_loader
  )
  options = {
      'global_batch_size': 4,
      'image_size': t.IMAGE_SIZE,
      'seed': 1,
      'indices_only': True,
      **({'max_views': 2} if multiview else {}),
  }
  one = _take(make(source, **options), 4)
  blocks = [
      _take(make(source, process_index=p, process_count=2, **options), 4)
      for p in (0, 1)
  ]
  for k, batch in enumerate(one):
    for key in batch:
      joined = np.concatenate([blocks[0][k][key], blocks[1][k][key]])
      np.testing.assert_array_equal(joined, batch[key])

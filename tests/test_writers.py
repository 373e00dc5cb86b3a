"""Tests of ankle_jax.writers: metrics.jsonl, TensorBoard events (scalars, HParams, images)."""

import json
import struct

import ml_collections
import numpy as np

from ankle_jax import writers


def _read_events(workdir):
  """All tensorboardX Event protos in workdir (TFRecord framing, CRCs skipped)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  events = []
  for path in workdir.glob('events.out.tfevents.*'):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset : offset + 8])
      payload = data[offset + 12 : offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event()
      event.ParseFromString(payload)
      events.append(event)
  return events


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  writer.write_scalars(
      10, {'train_loss': np.float32(0.5), 'val_accuracy': 0.75}
  )
  writer.write_scalars(20, {'train_loss': float('nan'), 'note': 'x'})
  writer.close()
  lines = [
      json.loads(l)
      for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  assert lines[0] == {'step': 10, 'train_loss': 0.5, 'val_accuracy': 0.75}
  assert lines[1]['step'] == 20 and lines[1]['train_loss'] is None
  tags = {
      (v.tag, e.step) for e in _read_events(tmp_path) for v in e.summary.value
  }
  assert {('train_loss', 10), ('val_accuracy', 10)} <= tags


def test_hparams_and_image_grid_are_written(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  writer.write_hparams(
      {'learning_rate': 1e-3, 'model.name': 'xception'}, ['val_loss']
  )
  writer.write_images(
      1,
      'train/augmented_images',
      np.random.default_rng(0).normal(size=(6, 8, 8, 1)),
  )
  writer.close()
  tags = {v.tag for e in _read_events(tmp_path) for v in e.summary.value}
  assert (
      '_hparams_/experiment' in tags and '_hparams_/session_start_info' in tags
  )
  assert 'train/augmented_images' in tags


def test_image_grid_layout_and_range():
  grid = writers.image_grid(
      np.random.default_rng(0).normal(size=(6, 8, 8, 1)), columns=4
  )
  assert grid.shape == (2 * 8 + 2, 4 * 8 + 3 * 2)
  assert grid.dtype == np.uint8 and grid.max() == 255


def test_disabled_writer_writes_nothing(tmp_path):
  writer = writers.MetricWriter(tmp_path / 'run', enabled=False)
  writer.write_scalars(1, {'train_loss': 1.0})
  writer.close()
  assert not (tmp_path / 'run').exists()


def test_truncate_metrics_drops_lines_after_a_step(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  for step in (1, 2, 3, 4):
    writer.write_scalars(step, {'train_loss': float(step)})
  writer.close()
  writers.truncate_metrics(tmp_path, 2)
  steps = [
      json.loads(l)['step']
      for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  assert steps == [1, 2]


def test_config_json_and_flat_hparams(tmp_path):
  config = ml_collections.ConfigDict(
      {
          'model': {'name': 'resnet101_v2'},
          'class_weights': None,
          'learning_rate': 6e-6,
      }
  )
  writers.write_config(tmp_path, config)
  assert (
      json.loads((tmp_path / 'config.json').read_text())['model']['name']
      == 'resnet101_v2'
  )
  flat = writers.flatten_config(config)
  assert (
      flat['model.name'] == 'resnet101_v2' and flat['class_weights'] == 'None'
  )

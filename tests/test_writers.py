"""Tests of ankle_jax.writers: metrics.jsonl, TensorBoard events (scalars,
HParams, images), read back with TensorBoard's own event reader."""

import json

import ml_collections
import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ankle_jax import writers
from ankle_jax.training import validation


def read_events(workdir):
  """TensorBoard's view of a run directory: (scalars {tag: [(step, value)]},
  image tags, hparams {name: value}, HParams metric tags)."""
  accumulator = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={'scalars': 0, 'images': 0, 'tensors': 0}
  )
  accumulator.Reload()
  tags = accumulator.Tags()
  scalars = {
      tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
      for tag in tags['scalars']
  }
  hparams, metric_tags = {}, []
  try:
    contents = accumulator.PluginTagToContent('hparams').values()
  except KeyError:  # No HParams in this run.
    contents = ()
  for content in contents:
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    if data.HasField('session_start_info'):
      for name, value in data.session_start_info.hparams.items():
        hparams[name] = getattr(value, value.WhichOneof('kind'))
    if data.HasField('experiment'):
      metric_tags = [m.name.tag for m in data.experiment.metric_infos]
      types = {h.name: h.type for h in data.experiment.hparam_infos}
      hparams['__types__'] = types
  return scalars, set(tags['images']), hparams, metric_tags


def test_scalars_go_to_jsonl_and_grouped_tensorboard_tags(tmp_path):
  writer = writers.MetricWriter(tmp_path, tags=validation.METRIC_TAGS)
  writer.write_scalars(
      10,
      {
          'train_loss': np.float32(0.5),
          'val_accuracy': 0.75,
          'steps_per_second': 2.0,
          'epoch': 0.5,
      },
  )
  writer.write_scalars(20, {'train_loss': float('nan'), 'note': 'x'})
  writer.close()
  lines = [
      json.loads(l)
      for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
  ]
  assert lines[0] == {
      'step': 10,
      'train_loss': 0.5,
      'val_accuracy': 0.75,
      'steps_per_second': 2.0,
      'epoch': 0.5,
  }
  assert lines[1]['step'] == 20 and lines[1]['train_loss'] is None
  scalars, _, _, _ = read_events(tmp_path)
  assert set(scalars) == {
      'train/loss',
      'val/accuracy',
      'perf/steps_per_second',
      'train/epoch',
  }
  assert scalars['val/accuracy'] == [(10, 0.75)]


def test_hparams_keep_their_types_and_best_metrics_are_scalars(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  writer.write_hparams(
      {
          'learning_rate': 1e-3,
          'model.name': 'xception',
          'image_size': 128,
          'model.aux_head': True,
          'class_weights': None,
      },
      writers.best_metric_tags(validation.METRIC_NAMES),
  )
  writer.write_best(4, {'val_auc': 0.5, 'val_loss': 0.9})
  writer.write_best(8, {'val_auc': 0.75, 'val_loss': 0.7})
  writer.close()
  scalars, _, hparams, metric_tags = read_events(tmp_path)
  types = hparams.pop('__types__')
  assert hparams == {
      'learning_rate': 1e-3,
      'model.name': 'xception',
      'image_size': 128,
      'model.aux_head': True,
      'class_weights': 'None',
  }
  assert isinstance(hparams['model.aux_head'], bool)
  assert types['model.name'] == types['class_weights']  # Both strings.
  assert types['image_size'] == types['learning_rate'] != types['model.name']
  assert set(metric_tags) == set(
      writers.best_metric_tags(validation.METRIC_NAMES)
  )
  assert scalars['hparams/best_val_auc'][-1] == (8, 0.75)
  assert scalars['hparams/best_step'] == [(4, 4.0), (8, 8.0)]


def test_image_tiles_carry_their_label(tmp_path):
  images = np.zeros((2, 40, 60, 1), np.float32)
  images[:, 0, 0] = 1.0  # Min-max scaling: one bright pixel, the rest black.
  grid = writers.image_grid(images, labels=[0, 1], columns=2)
  unlabelled = writers.image_grid(images, columns=2)
  left, right = grid[:, :60], grid[:, 62:]
  # Text pixels where the plain tiles are black; the two names differ.
  assert (left[:15] > 128).sum() > 10 and (right[:15] > 128).sum() > 10
  assert not np.array_equal(left[:15], right[:15])
  assert (unlabelled[:15, 1:60] > 128).sum() == 0
  writer = writers.MetricWriter(tmp_path)
  writer.write_images(1, 'train/augmented_images', images, labels=[0, 1])
  writer.close()
  assert read_events(tmp_path)[1] == {'train/augmented_images'}
  Image.fromarray(grid).save(tmp_path / 'tiles.png')  # A valid picture.


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

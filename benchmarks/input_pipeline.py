r"""Input pipeline throughput vs the train step's demand.

Builds a small synthetic `radiograph_studies` dataset (or uses --data_dir), then
measures images/s of:

  host:      ArrayRecord data source -> grain (shuffle, decode uint16 ->
             float32, resize if needed, batch), `pipeline.make_train_loader`,
             for each --worker_counts;
  transfer:  host batch -> device (`sharding.shard_batch`);
  augment:   on-device augmentation + per-image standardization, jitted alone
             (`training.steps.preprocess_train_images` with the config's settings);
  end_to_end: loader -> shard_batch -> augment, one after the other, as the
             training loop does it (minus the model).

and compares the slowest stage with the train step's demand, images/s of
benchmarks/train_step.py (pass --step_images_per_sec, e.g. from its JSON).

Usage:
  python benchmarks/input_pipeline.py [--config=configs/xception.py] \
      [--batch_size=8] [--batches=30] [--worker_counts=0,2] \
      [--data_dir=DIR --dataset_config=dicom_cases --split=train] \
      [--step_images_per_sec=X]

The last line printed is one JSON object.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')

from absl import app  # noqa: E402
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from ankle_jax import sharding  # noqa: E402
from ankle_jax.data import pipeline  # noqa: E402
from ankle_jax.data import prepare  # noqa: E402
from ankle_jax.data import synthetic  # noqa: E402
from ankle_jax.training import steps  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config',
    str(REPO_ROOT / 'configs' / 'xception.py'),
    'Config (augmentation settings, image size).',
    lock_config=False,
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Images per batch.')
_BATCHES = flags.DEFINE_integer('batches', 30, 'Timed batches per stage.')
_WORKER_COUNTS = flags.DEFINE_list(
    'worker_counts', ['0', '2'], 'grain worker processes to try.'
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'A built TFDS data dir; default: build a synthetic one.'
)
_DATASET_CONFIG = flags.DEFINE_string(
    'dataset_config', 'dicom_cases', 'Builder config.'
)
_SPLIT = flags.DEFINE_string('split', 'train', 'Split to read.')
_NUM_CASES = flags.DEFINE_integer(
    'num_cases', 40, 'Synthetic cases when building one.'
)
_STORED_SIZE = flags.DEFINE_integer(
    'stored_size',
    None,
    "image_size the synthetic dataset is built with (default: the config's; "
    'a different one makes the loader resize on the host).',
)
_STEP_IPS = flags.DEFINE_float(
    'step_images_per_sec',
    None,
    'Train-step demand in images/s (from benchmarks/train_step.py).',
)


def _rate(num_images: int, seconds: float) -> float:
  return round(num_images / seconds, 1)


def time_loader(source, *, batch_size, image_size, batches, worker_count):
  """images/s of the host loader after its first batch (startup excluded)."""
  start = time.perf_counter()
  loader = pipeline.make_train_loader(
      source,
      global_batch_size=batch_size,
      image_size=image_size,
      seed=0,
      worker_count=worker_count,
  )
  first = next(loader)
  startup_s = time.perf_counter() - start
  assert first['image'].shape == (batch_size, image_size, image_size, 1)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(loader)
  seconds = time.perf_counter() - start
  del batch, loader
  return {
      'worker_count': worker_count,
      'images_per_sec': _rate(batches * batch_size, seconds),
      'startup_s': round(startup_s, 2),
  }


def time_device_stages(config, batch_size, image_size, batches, source):
  """images/s of host->device transfer, augmentation, and the chain."""
  mesh = sharding.create_mesh()
  aug = steps.AugmentSettings.from_config(config.augment)
  preprocess = jax.jit(
      lambda key, images: steps.preprocess_train_images(key, images, aug)
  )
  rng = np.random.default_rng(0)
  host_batch = {
      'image': rng.random((batch_size, image_size, image_size, 1), np.float32),
      'label': rng.integers(0, 2, (batch_size,), np.int32),
  }
  key = jax.random.key(0)
  device_batch = sharding.shard_batch(host_batch, mesh)
  jax.block_until_ready(preprocess(key, device_batch['image']))

  start = time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(sharding.shard_batch(host_batch, mesh))
  transfer_s = time.perf_counter() - start

  start = time.perf_counter()
  for i in range(batches):
    jax.block_until_ready(
        preprocess(jax.random.fold_in(key, i), device_batch['image'])
    )
  augment_s = time.perf_counter() - start

  loader = pipeline.make_train_loader(
      source, global_batch_size=batch_size, image_size=image_size, seed=0
  )
  next(loader)
  start = time.perf_counter()
  for i in range(batches):
    batch = sharding.shard_batch(next(loader), mesh)
    jax.block_until_ready(
        preprocess(jax.random.fold_in(key, i), batch['image'])
    )
  chain_s = time.perf_counter() - start
  n = batches * batch_size
  return {
      'transfer_images_per_sec': _rate(n, transfer_s),
      'augment_images_per_sec': _rate(n, augment_s),
      'end_to_end_images_per_sec': _rate(n, chain_s),
  }


def main(argv):
  del argv
  config = _CONFIG.value
  image_size = config.image_size
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value
    built = None
    if data_dir is None:
      tmp = pathlib.Path(tmp)
      half = _NUM_CASES.value // 2
      synthetic.generate_studies(
          tmp / 'studies',
          num_normal=half,
          num_fracture=_NUM_CASES.value - half,
          seed=0,
      )
      data_dir = tmp / 'tfds'
      start = time.perf_counter()
      prepare.build_dataset(
          tmp / 'studies',
          data_dir,
          progress=False,
          image_size=_STORED_SIZE.value or image_size,
      )
      built = {
          'synthetic_cases': _NUM_CASES.value,
          'build_s': round(time.perf_counter() - start, 1),
      }
    source = pipeline.load_split(data_dir, _SPLIT.value, _DATASET_CONFIG.value)
    num_records = len(source)
    if num_records < _BATCH_SIZE.value:
      raise SystemExit(
          f'input_pipeline: split {_SPLIT.value!r} has only '
          f'{num_records} records (< batch {_BATCH_SIZE.value})'
      )
    loaders = [
        time_loader(
            source,
            batch_size=_BATCH_SIZE.value,
            image_size=image_size,
            batches=_BATCHES.value,
            worker_count=int(w),
        )
        for w in _WORKER_COUNTS.value
    ]
    for row in loaders:
      print(json.dumps(row), flush=True)
    device = time_device_stages(
        config, _BATCH_SIZE.value, image_size, _BATCHES.value, source
    )

  best_host = max(r['images_per_sec'] for r in loaders)
  stages = {
      'host_loader': best_host,
      'transfer': device['transfer_images_per_sec'],
      'augment': device['augment_images_per_sec'],
  }
  bottleneck = min(stages, key=stages.get)
  result = {
      'benchmark': 'input_pipeline',
      'image_size': image_size,
      'stored_size': _STORED_SIZE.value or image_size,
      'batch_size': _BATCH_SIZE.value,
      'batches': _BATCHES.value,
      'records': num_records,
      'dataset': built or {'data_dir': str(data_dir)},
      'loader': loaders,
      **device,
      'bottleneck_stage': bottleneck,
      'bottleneck_images_per_sec': stages[bottleneck],
      'backend': jax.default_backend(),
      'cpu_count': os.cpu_count(),
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
  }
  if _STEP_IPS.value:
    result['step_images_per_sec'] = _STEP_IPS.value
    result['headroom_vs_step'] = round(
        device['end_to_end_images_per_sec'] / _STEP_IPS.value, 2
    )
    result['keeps_up'] = bool(stages[bottleneck] >= _STEP_IPS.value)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)

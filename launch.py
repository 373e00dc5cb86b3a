r"""Trains one model: python launch.py --config=configs/<model>.py
--workdir=DIR.

Examples:
  python launch.py --config=configs/demo.py --workdir=runs/demo
  python launch.py --config=configs/xception_dropaux.py --workdir=runs/xda \
      --config.data.manual_dir=/path/to/dicom_root --config.learning_rate=5e-6
  python launch.py --config=configs/xception_dropaux.py --workdir=runs/x \
      --summary_only

Running again on the same --workdir resumes from its latest checkpoint. The
config is validated before any heavy work (model name, image size, the dataset's
presence), and the model summary (parameters, forward FLOPs from XLA's cost
analysis, output shapes) is printed first.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ankle_jax import console

FLAGS = flags.FLAGS

flags.DEFINE_string(
    'workdir', None, 'Run directory (checkpoints, logs, config.json).'
)
flags.DEFINE_bool(
    'summary_only',
    False,
    'Print the model summary (params, FLOPs, output shapes) and exit.',
)
config_flags.DEFINE_config_file(
    'config',
    None,
    'Training configuration file (configs/*.py).',
    lock_config=True,
)

EXIT_CONFIG_ERROR = 2
EXIT_TRAINING_ERROR = 1


def print_summary(config) -> None:
  """Prints the model summary of config.model at config.image_size."""
  from ankle_jax import models  # pylint: disable=g-import-not-at-top
  from ankle_jax import train  # pylint: disable=g-import-not-at-top

  model = train.create_model(config)
  summary = models.summarize(model, config.image_size)
  print(models.format_summary(summary, title=config.model.name))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config=configs/<model>.py is required')

  # Imported here so that --help stays fast.
  import jax  # pylint: disable=g-import-not-at-top

  from ankle_jax import train  # pylint: disable=g-import-not-at-top

  try:
    train.validate_config(config)
  except ValueError as e:
    logging.error('Invalid config: %s', e)
    print(f'error: invalid config: {e}', file=sys.stderr)
    return EXIT_CONFIG_ERROR

  if not FLAGS.summary_only:
    if not FLAGS.workdir:
      raise app.UsageError('--workdir is required')
    from ankle_jax import writers  # pylint: disable=g-import-not-at-top

    try:
      writers.ensure_writable_dir(FLAGS.workdir)
    except writers.WorkdirNotWritableError as e:
      print(f'error: {e}', file=sys.stderr)
      return EXIT_CONFIG_ERROR

  print_summary(config)
  if FLAGS.summary_only:
    return 0

  if config.distributed:
    jax.distributed.initialize()
  logging.info(
      'JAX process %d/%d, devices: %s',
      jax.process_index(),
      jax.process_count(),
      jax.devices(),
  )

  try:
    train.prepare_dataset(config, FLAGS.workdir)
  except train.DatasetMissingError as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_CONFIG_ERROR

  try:
    summary = train.train_and_evaluate(config, FLAGS.workdir)
  except train.NonFiniteLossError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    return EXIT_TRAINING_ERROR
  except (
      OSError
  ) as e:  # Disk full, run directory not writable (names the path).
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    return EXIT_TRAINING_ERROR
  logging.info('Done: %s', summary)
  return 0


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  console.run(main)

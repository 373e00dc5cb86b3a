r"""Trains one model: python launch.py --config=configs/<model>.py --workdir=DIR

--config (required) names a config file (configs/*.py); any of its fields can
be overridden as --config.<field>=<value>, e.g. --config.learning_rate=5e-6 or
--config.data.manual_dir=/path/to/dicom_root (the fields and their defaults are
in configs/default.py). --workdir (required unless --summary_only) is the run
directory: config.json, metrics.jsonl, summary.json, TensorBoard events and
checkpoints/.

Examples:
  python launch.py --config=configs/demo.py --workdir=runs/demo
  python launch.py --config=configs/xception_dropaux.py --workdir=runs/xda \
      --config.data.manual_dir=/path/to/dicom_root --config.learning_rate=5e-6
  python launch.py --config=configs/xception_dropaux.py --summary_only

Running again on the same --workdir resumes from its latest checkpoint. The
config, the run directory and the dataset are checked before any heavy work;
then the model summary (parameters, forward FLOPs from XLA's cost analysis,
output shapes) is printed, a progress bar runs, and a closing summary says
where the checkpoints and the TensorBoard logs are. --verbosity=1 shows the
libraries' logging too. Compiled steps are kept in a persistent compilation
cache (config.compilation_cache_dir, default ~/.cache/ankle_jax/jax_cache;
--config.compilation_cache=False turns it off), so a second run starts faster.

Several processes (one per GPU or host; README "Several machines"): start the
same command in each with --config.distributed=True, and JAX_COORDINATOR_ADDRESS
(host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID set, or under
SLURM / Open MPI / Kubernetes, which JAX detects. Only process 0 prints and
writes logs; a process that fails ends the others.
"""

import sys
import time

from absl import flags
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
    'Training configuration file (configs/*.py); required. Override any field '
    'with --config.<field>=<value>.',
    lock_config=True,
)

EXIT_TRAINING_ERROR = 1


def closing_summary(summary, workdir: str, seconds: float) -> str:
  """The lines printed after training: best checkpoint, where things are."""
  minutes, secs = divmod(int(round(seconds)), 60)
  best = summary['best_metric_value']
  lines = [
      f'Done in {minutes} min {secs:02d} s: trained to step '
      f"{summary['final_step']} of {summary['num_train_steps']}"
      + (' (stopped early).' if summary['stopped_early'] else '.'),
      f"Best {summary['best_metric']}: "
      + (
          f"{best:.4f} at step {summary['best_step']}"
          if best is not None
          else 'none yet (no evaluation)'
      )
      + f' (checkpoint: {workdir}/checkpoints/best).',
      f'Latest checkpoint: {workdir}/checkpoints/latest; '
      f'TensorBoard: tensorboard --logdir={workdir}',
      'python -m ankle_jax.evaluate and predict restore the '
      f"{summary.get('eval_checkpoint', 'best')} checkpoint "
      '(config.eval_checkpoint; --checkpoint=best|latest to choose).',
  ]
  return '\n'.join(lines)


def train_run(config, workdir: str, started: float) -> int:
  """Trains (the chief prints the model summary once the data is ready, then
  the closing summary); returns the exit status."""
  from ankle_jax import sharding  # noqa: PLC0415
  from ankle_jax import stages  # noqa: PLC0415
  from ankle_jax import train  # noqa: PLC0415
  from ankle_jax import writers  # noqa: PLC0415
  from ankle_jax.data import prepare  # noqa: PLC0415

  try:
    # One run, or a multi-view config's per-view stage then its own.
    summary = stages.train_stages(config, workdir, print_model_summary=True)
  except (writers.WorkdirNotWritableError, prepare.DatasetMissingError) as e:
    raise console.UserError(str(e)) from e
  except (train.NonFiniteLossError, OSError) as e:  # OSError: disk full...
    print(f'error: {e}', file=sys.stderr)
    return EXIT_TRAINING_ERROR
  if sharding.is_chief():
    print(closing_summary(summary, workdir, time.time() - started))
  return 0


def main(argv):
  started = time.time()
  # Imported here so that --help answers at once (these take ~5 s).
  from ankle_jax import compilation_cache  # noqa: PLC0415
  from ankle_jax import sharding  # noqa: PLC0415
  from ankle_jax import train  # noqa: PLC0415
  from ankle_jax.training import config_checks  # noqa: PLC0415

  if len(argv) > 1:
    raise console.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  config, workdir = FLAGS.config, FLAGS.workdir
  if config is None:
    raise console.UserError(
        '--config is required, e.g. --config=configs/demo.py (see --help)'
    )
  if FLAGS.summary_only:
    config_checks.validate_config(config)
    print(train.model_summary(config), flush=True)
    return 0
  if not workdir:
    raise console.UserError(
        '--workdir is required: the run directory, e.g. --workdir=runs/demo'
    )
  compilation_cache.enable(compilation_cache.CacheSettings.from_config(config))
  # jax.distributed must start before any other JAX work; train_and_evaluate
  # then checks the config (before writing anything), the run directory and
  # the dataset, once.
  sharding.initialize(
      config.distributed,
      timeout_s=config.distributed_timeout_s,
      heartbeat_timeout_s=config.distributed_heartbeat_timeout_s,
  )
  return sharding.end_together(
      lambda: train_run(config, workdir, started), FLAGS.verbosity
  )


if __name__ == '__main__':
  console.run(main)

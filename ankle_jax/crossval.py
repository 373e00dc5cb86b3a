r"""K-fold cross-validation: trains the folds, then the out-of-fold evaluation.

  python -m ankle_jax.crossval --config=configs/demo.py --workdir=runs/cv \
      [--folds=5] [--config.<field>=<value> ...] [--num_bootstrap=2000] \
      [--seed=0] [--batch_size=16] [--checkpoint=best|latest]

Training. Fold k (0-based) is trained as DIR/fold_<k>, an ordinary run of
the config with data.cv_folds=K and data.cv_fold=k, exactly as
`python launch.py --config=CFG --workdir=DIR/fold_<k> --config.data.cv_folds=K
--config.data.cv_fold=k` (so folds trained by hand are picked up): its train
split is the other K-1 folds of the dataset's train+validation splits, its
validation split fold k; test is never read. The folds train in turn
("fold i of K"); running the command again skips the finished folds (their
summary.json says the last step, or an early stop) and resumes the
unfinished one from its latest checkpoint. TensorBoard shows the folds side
by side: tensorboard --logdir=DIR. --folds defaults to the config's
data.cv_folds (5).

Evaluation (DIR/cv/, ankle_jax.reporting.crossval): every train+validation
case predicted by the fold model that did not see it (each fold run on its
own validation split, as `evaluate` reads it; --checkpoint, else each fold
run's config.eval_checkpoint): oof_predictions.csv
(predictions.csv's columns; run = the fold run that predicted the view),
results.json (OOF metrics with DeLong / Wilson intervals, operating points
chosen on OOF, per-fold metrics and their spread, the calibration fitted on
OOF), report.md and report.html. A 'best' checkpoint was chosen on the
fold it predicts here, which makes OOF optimistic by that choice;
--checkpoint=latest (the last step of a fixed schedule) chooses nothing on
the OOF cases (report.md says which was used).

The fold ensemble on test: python -m ankle_jax.evaluate --runs=DIR
--out=DIR/eval_test (its thresholds and calibration come from the OOF
predictions).

Errors a user can fix (--folds < 2, a workdir whose folds were trained with
another K, a config without the fold fields) exit with status 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import os
import time
from typing import Any

from absl import flags
from ml_collections import config_flags

from ankle_jax import console

FLAGS = flags.FLAGS

# train_fn(config, workdir, started) -> exit status (launching.train_run).
TrainFn = Callable[[Any, str, float], int]


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_string(
      'workdir', None, 'Cross-validation directory (DIR/fold_<k>, DIR/cv).'
  )
  flags.DEFINE_integer(
      'folds', None, "Number of folds K (default: the config's data.cv_folds)."
  )
  flags.DEFINE_integer(
      'num_bootstrap', 2000, 'Bootstrap resamples (calibration intervals).'
  )
  flags.DEFINE_integer('seed', 0, 'Bootstrap seed.')
  flags.DEFINE_integer('batch_size', 16, 'Views per forward batch.')
  flags.DEFINE_enum(
      'checkpoint',
      None,
      ['best', 'latest'],
      "Each fold model's checkpoint for the OOF predictions (default: the "
      "run's config.eval_checkpoint). 'latest' chooses nothing on the OOF "
      "cases; 'best' was chosen on them.",
  )
  config_flags.DEFINE_config_file(
      'config',
      None,
      'Training configuration file (configs/*.py); required. Override any '
      'field with --config.<field>=<value>.',
      lock_config=True,
  )


def train_folds(configs: Sequence[Any], workdir: str, train_fn: TrainFn) -> int:
  """Trains fold k's config (configs[k]) as DIR/fold_<k> in turn, skipping
  finished folds; returns the first non-zero exit status, else 0."""
  from ankle_jax import crossval_runs  # noqa: PLC0415

  num_folds = len(configs)
  for k, config in enumerate(configs):
    run_dir = crossval_runs.fold_dir(workdir, k)
    head = f'fold {k + 1} of {num_folds} ({run_dir})'
    if crossval_runs.fold_finished(run_dir):
      print(f'{head}: finished, skipped.', flush=True)
      continue
    resumed = os.path.exists(os.path.join(run_dir, 'checkpoints'))
    print(f'{head}: {"resuming" if resumed else "training"}...', flush=True)
    status = train_fn(config, run_dir, time.time())
    if status:
      return status
  return 0


def evaluate_folds(
    workdir: str,
    num_folds: int,
    *,
    num_bootstrap: int = 2000,
    seed: int = 0,
    batch_size: int = 16,
    checkpoint: str | None = None,
    batches_fn_of=None,
):
  """The OOF evaluation of DIR's K folds, written to DIR/cv; returns the
  OofEvaluation (checkpoint: 'best' or 'latest' for every fold, None: each
  run's config.eval_checkpoint; batches_fn_of: crossval_runs.predict_oof's,
  tests only)."""
  from ankle_jax import crossval_runs  # noqa: PLC0415
  from ankle_jax import inference  # noqa: PLC0415
  from ankle_jax.evaluation import oof as oof_lib  # noqa: PLC0415
  from ankle_jax.reporting import crossval as report  # noqa: PLC0415

  runs = inference.load_runs(
      [crossval_runs.fold_dir(workdir, k) for k in range(num_folds)],
      checkpoint,
  )
  oof = crossval_runs.predict_oof(
      runs,
      batch_size=batch_size,
      max_eval_views=int(runs[0].config.data.get('max_eval_views', 0)),
      batches_fn_of=batches_fn_of,
  )
  ev = oof_lib.evaluate_oof(oof, num_bootstrap=num_bootstrap, seed=seed)
  paths = report.write_cv(
      crossval_runs.cv_dir(workdir),
      oof,
      ev,
      workdir,
      crossval_runs.checkpoints_of(runs),
  )
  print(closing_lines(ev, paths))
  return ev


def closing_lines(ev, paths: Sequence[str]) -> str:
  """The OOF headline numbers and where the files are."""
  from ankle_jax.reporting.format import format_value  # noqa: PLC0415

  case = ev.estimates['case']
  auc = ev.spread['roc_auc']
  spread = (
      f'mean {auc.mean:.3f}, sd {auc.sd:.3f}, min {auc.min:.3f}, '
      f'max {auc.max:.3f}'
      if auc.sd is not None
      else 'n/a'
  )
  return '\n'.join(
      [
          f'OOF ROC AUC (case, soft vote, {ev.counts.cases} cases, '
          f'{ev.counts.fracture_cases} fractured): '
          + format_value(case.point['roc_auc'], case.ci95['roc_auc']),
          f'Per-fold ROC AUC: {spread}.',
          'Written: ' + ', '.join(paths),
      ]
  )


def fold_configs(config: Any, workdir: str, num_folds: int | None) -> list:
  """Each fold's config (crossval_runs.fold_config), checked before any
  work (num_folds None: the config's data.cv_folds).

  Raises:
    console.UserError: K < 2, a config without the fold fields, a workdir
      whose folds disagree with K.
  """
  from ankle_jax import crossval_runs  # noqa: PLC0415

  if num_folds is None:
    num_folds = int(config.data.get(crossval_runs.FOLDS_FIELD, 5))
  crossval_runs.check_num_folds(num_folds)
  configs = [
      crossval_runs.fold_config(config, num_folds, k) for k in range(num_folds)
  ]
  crossval_runs.check_workdir(workdir, num_folds)
  return configs


def run_crossval(
    configs: Sequence[Any],
    workdir: str,
    train_fn: TrainFn,
    **evaluate_kwargs: Any,
) -> int:
  """Trains the folds (train_fn), then evaluates them (the chief only);
  returns the exit status."""
  from ankle_jax import sharding  # noqa: PLC0415

  status = train_folds(configs, workdir, train_fn)
  if status or not sharding.is_chief():
    return status
  evaluate_folds(workdir, len(configs), **evaluate_kwargs)
  return 0


def main(argv: Sequence[str]) -> int:
  started = time.time()
  if len(argv) > 1:
    raise console.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.config is None:
    raise console.UserError(
        '--config is required, e.g. --config=configs/demo.py (see --help)'
    )
  if not FLAGS.workdir:
    raise console.UserError(
        '--workdir is required: the cross-validation directory, e.g. '
        '--workdir=runs/cv'
    )
  # Imported here so that --help answers at once (these take ~5 s).
  from ankle_jax import launching  # noqa: PLC0415
  from ankle_jax import sharding  # noqa: PLC0415

  configs = fold_configs(FLAGS.config, FLAGS.workdir, FLAGS.folds)
  launching.start_process(FLAGS.config)
  status = sharding.end_together(
      lambda: run_crossval(
          configs,
          FLAGS.workdir,
          launching.train_run,
          num_bootstrap=FLAGS.num_bootstrap,
          seed=FLAGS.seed,
          batch_size=FLAGS.batch_size,
          checkpoint=FLAGS.checkpoint,
      ),
      FLAGS.verbosity,
  )
  if not status:
    minutes, secs = divmod(int(round(time.time() - started)), 60)
    print(f'Cross-validation done in {minutes} min {secs:02d} s.')
  return status


if __name__ == '__main__':
  define_flags()
  console.run(main)

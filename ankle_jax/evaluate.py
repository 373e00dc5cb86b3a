r"""Evaluates trained runs, alone and as ensembles, at image and case level.

  python -m ankle_jax.evaluate --runs=RUN1,RUN2,... --split=test --out=OUT \
      [--checkpoint=best|latest] [--max_eval_views=N] [--data_dir=DIR] \
      [--dataset_config=NAME] [--max_subsets=N] [--num_bootstrap=2000] \
      [--seed=0] [--batch_size=16]

How it works:

1. Each run's config.json and checkpoint are restored (ankle_jax.inference):
   --checkpoint, else the run's config.eval_checkpoint ('best' = best
   validation, the default; 'latest' in the five paper configs, as the
   authors).
   Views per case: --max_eval_views, else the first run's
   config.data.max_eval_views (0 = every view; the paper configs: 3, the
   first 3 by view position, then file name), on every split evaluated.
2. Runs of the same architecture and shape (model name, aux head, width,
   family kwargs, image size, dtype) are stacked along a leading runs axis and
   applied with ONE jitted `jax.vmap` over runs, on batches of views; groups
   of different architectures go in a Python loop. Every model runs once over
   each split needed: the asked split and `validation` (for the honest
   protocol and the operating points).
3. The fracture probabilities are written to predictions.csv (per view) and
   case_predictions.csv (per case), and everything else is computed from
   these files alone, with array operations (ankle_jax.results,
   ankle_jax.voting, ankle_jax.metrics): per model and per odd-size
   ensemble, image and case level, hard and soft voting, the six metrics
   with 95% intervals (Wilson for the proportions, a case bootstrap for ROC
   AUC).

Per-view and multi-view runs (models.multiview: all views of a case at once)
are evaluated together. Each run has one case probability: a per-view run's
soft vote (the mean of its view probabilities), a multi-view run's own; at
image level a multi-view run counts with its case head on each view alone.
How ensembles vote at case level: ankle_jax.voting.

Protocols:
  paper:  the best subset chosen on validation+test pooled and reported on the
          same pooled cases, as the authors did (selection on the test data;
          shown only for comparison).
  honest: the best subset chosen on validation, reported on the asked split.
"Best" is the highest accuracy (--selection_metric), ties broken by ROC AUC,
then by the larger ensemble, then by the members' order.

Outputs in OUT:
  predictions.csv  columns run,case_id,view_index,label,probability,split: one
                   row per run and view, for the asked split and validation
                   (a multi-view run: its case head on that view alone).
                   The case level uses exactly the views listed. Then one
                   column per field the dataset stores per view
                   (data.pipeline.VIEW_FEATURES): view_position, num_views
                   and, for FracAtlas, its flags (hand, leg, hip, shoulder,
                   mixed, hardware, multiscan: 1 yes, 0 no, -1 unknown).
  case_predictions.csv  columns run,case_id,label,probability,split,kind,
                   hard_vote,num_views: one row per run and case. probability
                   is the run's case probability (kind 'multi_view': the
                   run's own; 'per_view': its soft vote), hard_vote (0/1)
                   the run's own case vote (a per-view run: the majority of
                   its view votes, ties to fracture; a multi-view run:
                   probability >= 0.5), num_views the views the case had.
                   Every case-level number of results.json follows from this
                   file, but for hard voting of ensembles of per-view runs
                   only: those vote per view first, members then views, and
                   need predictions.csv.
  results.json     a list of {members, level, voting, split, metrics, ci95,
                   subgroup} for every subset x level (image|case) x voting
                   (hard|soft) x split (validation, the asked split, and the
                   pooled 'validation+<split>', whose cases are (split,
                   case_id)), subgroup null; then the subgroups' entries
                   (ankle_jax.subgroups): each single run and the honest
                   protocol's chosen ensembles on the asked split, per view
                   position, body part, hardware (image level) and number
                   of views per case (case level), subgroup {field, value,
                   positives, negatives, small}.
  summary.json     checkpoints, class counts, the protocols' selections and the
                   operating points.
  report.md        Table-4-style tables for both protocols, operating points,
                   the subgroups (soft voting; small ones flagged).
  roc.png          single-view vs case-level ROC of the best ensemble.
  confusion.png    its confusion matrices (hard voting).
  events.out.tfevents.*  the results' scalars for TensorBoard (`eval/...`,
                   see ankle_jax.report).

Case identifiers are the dataset's salted hashes; nothing else identifying is
written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import os
import sys

from absl import flags
from etils import epath

from ankle_jax import checkpoint as checkpoint_lib
from ankle_jax import console
from ankle_jax import inference
from ankle_jax import metrics as metrics_lib
from ankle_jax import report
from ankle_jax import results
from ankle_jax import subgroups
from ankle_jax.data import pipeline
from ankle_jax.data import prepare

# batches_fn(split) -> batches_for(image_size) -> iterator of eval batches, or
# None when the split does not exist.
BatchesFn = Callable[[str], Callable[[int], Iterator] | None]


def evaluate_predictions(
    out_dir: str,
    *,
    split: str,
    max_subsets: int | None = None,
    num_bootstrap: int = 2000,
    seed: int = 0,
    selection_metric: str = 'accuracy',
    checkpoints: dict[str, results.CheckpointInfo] | None = None,
    max_eval_views: int = 0,
) -> results.Evaluation:
  """Everything from OUT/predictions.csv and OUT/case_predictions.csv:
  results, protocols, report, plots.

  checkpoints and max_eval_views (0 = every view) are stated in the report;
  the views themselves are those predictions.csv lists. Without a
  case_predictions.csv (older evaluations) every run counts as per-view.
  """
  run_names, by_split = results.read_predictions_csv(
      os.path.join(out_dir, 'predictions.csv')
  )
  evaluation = results.evaluate_splits(
      by_split,
      run_names,
      split=split,
      max_subsets=max_subsets,
      num_bootstrap=num_bootstrap,
      seed=seed,
      selection_metric=selection_metric,
  )
  evaluation.checkpoints = dict(checkpoints or {})
  evaluation.max_eval_views = max_eval_views
  evaluation.subgroups = subgroups.evaluate(evaluation, by_split)
  report.write_all(out_dir, evaluation, by_split)
  return evaluation


def dataset_batches(
    runs: Sequence[inference.Run],
    split: str,
    *,
    data_dir: str | None,
    dataset_config: str | None,
    batch_size: int,
    max_eval_views: int = 0,
) -> BatchesFn:
  """batches_fn over the TFDS dataset (default: the first run's); each case
  keeps its first `max_eval_views` views (0 = all; pipeline.eval_order)."""
  first = runs[0]
  data = first.config.data
  default_dir, manual_dir = prepare.resolve_data_dirs(
      data.get('data_dir', ''), data.get('manual_dir', ''), first.workdir
  )
  data_dir = epath.Path(data_dir or default_dir)
  dataset_config = dataset_config or data.get('dataset_config', 'dicom_cases')
  if not prepare.dataset_exists(data_dir, dataset_config):
    manual_dir = str(manual_dir) if manual_dir.exists() else ''
    error = prepare.missing_dataset_error(data_dir, dataset_config, manual_dir)
    raise console.UserError(str(error))
  for run in runs[1:]:
    other = run.config.data
    if (other.get('data_dir'), other.get('dataset_config')) != (
        data.get('data_dir'),
        data.get('dataset_config'),
    ):
      print(
          f'note: run {run.name} was trained on another dataset than '
          f'{first.name}; all runs are evaluated on {data_dir} '
          f'({dataset_config}).',
          file=sys.stderr,
      )

  def batches_fn(name: str) -> Callable[[int], Iterator] | None:
    try:
      source = pipeline.load_split(data_dir, name, dataset_config)
    except (prepare.DatasetMissingError, FileNotFoundError) as e:
      if name == split:
        raise console.UserError(str(e)) from e
      print(
          f'note: no {name!r} split in {data_dir}: no honest protocol and no '
          'operating points.',
          file=sys.stderr,
      )
      return None
    return lambda image_size: pipeline.iterate_eval_batches(
        source,
        batch_size=batch_size,
        image_size=image_size,
        max_views_per_case=max_eval_views,
    )

  return batches_fn


def predict_splits(
    runs: Sequence[inference.Run], split: str, batches_fn: BatchesFn
) -> dict[str, inference.SplitPredictions]:
  """Every run's probabilities on `split` and, if it exists, validation."""
  checkpoints = ', '.join(
      dict.fromkeys(f'{r.which} checkpoint, step {r.step}' for r in runs)
  )
  print(f'Evaluating {len(runs)} run(s) ({checkpoints}) on split {split!r}...')
  by_split = {}
  for name in dict.fromkeys([split, results.VALIDATION]):
    batches_for = batches_fn(name)
    if batches_for is None:
      if name == split:
        raise console.UserError(f'split {split!r} not found.')
      continue
    by_split[name] = inference.predict_split(runs, batches_for)
  return by_split


def views_per_case(
    runs: Sequence[inference.Run], max_eval_views: int | None
) -> int:
  """The view cap: `max_eval_views` when given, else the first run's
  config.data.max_eval_views (0 = every view; also for older runs).

  Raises:
    console.UserError: a negative cap.
  """
  if max_eval_views is None:
    max_eval_views = int(runs[0].config.data.get('max_eval_views', 0))
    for run in runs[1:]:
      if int(run.config.data.get('max_eval_views', 0)) != max_eval_views:
        print(
            f'note: run {run.name} was validated with another '
            f'data.max_eval_views than {runs[0].name}; all runs are '
            f'evaluated with {max_eval_views} (0 = every view).',
            file=sys.stderr,
        )
  if max_eval_views < 0:
    raise console.UserError(
        f'--max_eval_views={max_eval_views}; expected 0 (every view) or the '
        'number of views per case (the paper: 3).'
    )
  return max_eval_views


def evaluate_runs(
    run_dirs: Sequence[str],
    *,
    split: str,
    out_dir: str,
    checkpoint: str | None = None,
    max_eval_views: int | None = None,
    data_dir: str | None = None,
    dataset_config: str | None = None,
    batch_size: int = 16,
    max_subsets: int | None = None,
    num_bootstrap: int = 2000,
    seed: int = 0,
    selection_metric: str = 'accuracy',
    batches_fn: BatchesFn | None = None,
) -> results.Evaluation:
  """Restores runs, predicts the needed splits, and writes OUT's files.

  Args:
    run_dirs: training run directories.
    split: the split to report on ('test').
    out_dir: where the outputs go (created once the runs and data are found).
    checkpoint: 'best' or 'latest' for every run; None: each run's
      config.eval_checkpoint.
    max_eval_views: views kept per case, the first by view position, then
      file name (0 = all); None: the first run's config.data.max_eval_views.
    data_dir: dataset directory (default: the first run's data.data_dir).
    dataset_config: builder config (default: the first run's
      data.dataset_config).
    batch_size: views per forward batch (each of the group's runs sees it).
    max_subsets: cap on the number of ensembles (None: all odd subsets).
    num_bootstrap: bootstrap resamples (ROC AUC intervals, ROC bands).
    seed: bootstrap and subset-sampling seed.
    selection_metric: metric that picks the protocols' best ensembles.
    batches_fn: (split) -> batches_for(image_size) or None when the split
      does not exist; defaults to the TFDS pipeline (tests inject fakes; an
      injected one applies no view cap itself).

  Raises:
    console.UserError: no run directory, no checkpoint, or no dataset/split.
  """
  runs = inference.load_runs(run_dirs, checkpoint)
  max_eval_views = views_per_case(runs, max_eval_views)
  if batches_fn is None:
    batches_fn = dataset_batches(
        runs,
        split,
        data_dir=data_dir,
        dataset_config=dataset_config,
        batch_size=batch_size,
        max_eval_views=max_eval_views,
    )
  by_split = predict_splits(runs, split, batches_fn)
  os.makedirs(out_dir, exist_ok=True)
  run_names = [r.name for r in runs]
  results.write_predictions_csv(
      os.path.join(out_dir, 'predictions.csv'), run_names, by_split
  )
  results.write_case_predictions_csv(
      os.path.join(out_dir, results.CASE_PREDICTIONS_FILE), run_names, by_split
  )
  return evaluate_predictions(
      out_dir,
      split=split,
      max_subsets=max_subsets,
      num_bootstrap=num_bootstrap,
      seed=seed,
      selection_metric=selection_metric,
      checkpoints={
          r.name: results.CheckpointInfo(r.which, r.step) for r in runs
      },
      max_eval_views=max_eval_views,
  )


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_list('runs', None, 'Comma-separated training run directories.')
  flags.DEFINE_string('split', 'test', 'Split to report on.')
  flags.DEFINE_string('out', None, 'Output directory.')
  flags.DEFINE_enum(
      'checkpoint',
      None,
      list(checkpoint_lib.CHECKPOINT_CHOICES),
      "Which checkpoint of each run (default: the run's "
      "config.eval_checkpoint; 'best' for runs saved without it).",
  )
  flags.DEFINE_integer(
      'max_eval_views',
      None,
      'Views per case: the first N by view position, then file name; 0 = '
      "every view (default: the first run's config.data.max_eval_views).",
  )
  flags.DEFINE_string(
      'data_dir',
      None,
      "Dataset directory (default: the first run's data.data_dir); evaluates "
      'on another dataset.',
  )
  flags.DEFINE_string(
      'dataset_config',
      None,
      "Builder config (default: the first run's data.dataset_config).",
  )
  flags.DEFINE_integer(
      'max_subsets',
      None,
      'Cap on the number of odd-size ensembles (default: all).',
  )
  flags.DEFINE_integer(
      'num_bootstrap',
      2000,
      'Bootstrap resamples (ROC AUC intervals, ROC bands).',
  )
  flags.DEFINE_integer('seed', 0, 'Bootstrap / subset sampling seed.')
  flags.DEFINE_integer('batch_size', 16, 'Views per forward batch.')
  flags.DEFINE_enum(
      'selection_metric',
      'accuracy',
      list(metrics_lib.METRIC_NAMES),
      'Metric choosing the best ensemble in both protocols.',
  )


USAGE = (
    'usage: python -m ankle_jax.evaluate --runs=RUN_DIR[,RUN_DIR...] '
    '--out=OUT_DIR [--split=test]'
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise console.UserError(f'unexpected arguments {argv[1:]}.\n{USAGE}')
  f = flags.FLAGS
  missing = [name for name in ('runs', 'out') if not f[name].value]
  if missing:
    names = ' and '.join(f'--{m}' for m in missing)
    verb = 'are' if len(missing) > 1 else 'is'
    raise console.UserError(f'{names} {verb} required.\n{USAGE}')
  evaluation = evaluate_runs(
      f.runs,
      split=f.split,
      out_dir=f.out,
      checkpoint=f.checkpoint,
      max_eval_views=f.max_eval_views,
      data_dir=f.data_dir,
      dataset_config=f.dataset_config,
      batch_size=f.batch_size,
      max_subsets=f.max_subsets,
      num_bootstrap=f.num_bootstrap,
      seed=f.seed,
      selection_metric=f.selection_metric,
  )
  print(report.console_summary(evaluation, f.out))


if __name__ == '__main__':
  define_flags()
  console.run(main)

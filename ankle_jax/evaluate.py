r"""Evaluates trained runs, alone and as ensembles, at image and case level.

  python -m ankle_jax.evaluate --runs=RUN1,RUN2,... --split=test --out=OUT \
      [--checkpoint=best|latest] [--max_eval_views=N] [--data_dir=DIR] \
      [--dataset_config=NAME] [--max_subsets=N] [--num_bootstrap=2000] \
      [--seed=0] [--batch_size=16] [--html|--no_html]

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
3. From these probabilities alone, ankle_jax.evaluation.compute builds one
   frozen Evaluation with array operations (evaluation.results, .voting,
   .metrics, .calibration, .subgroups): per model and per odd-size
   ensemble, image and case level, hard and soft voting (at case level
   also max, noisy_or and stacked; the honest protocol's choice among
   them: evaluation.aggregation), the six metrics
   with 95% intervals (Wilson for the proportions, DeLong for ROC AUC, both
   clustered by case at image level), and the one Headline (below).
4. Each writer of ankle_jax.reporting writes its files from the Evaluation
   (WRITERS); none reads another's file. The probabilities themselves go to
   predictions.csv and case_predictions.csv, from which every number can be
   recomputed.

Fold ensembles: --runs=DIR, a cross-validation workdir of
`python -m ankle_jax.crossval`, stands for its folds DIR/fold_0,...
(listing the fold runs does the same). The K fold runs (data.cv_fold >= 0,
each fold once, one data.cv_folds) are evaluated on the asked split as an
ensemble (soft and hard voting) and, as their 'validation', each member
counts with the out-of-fold (OOF) predictions (DIR/cv/oof_predictions.csv,
else each fold run on its own validation fold): the thresholds, the
calibrators and the honest protocol's choice come from OOF, not from any
single fold's validation (report.md says so; summary.json's oof_source).

Per-view and multi-view runs (models.multiview: all views of a case at once)
are evaluated together. Each run has one case probability: a per-view run's
soft vote (the mean of its view probabilities), a multi-view run's own; at
image level a multi-view run counts with its case head on each view alone.
How ensembles vote at case level: ankle_jax.evaluation.voting.

The headline model (evaluation.Headline): the honest protocol's choice at
case level under soft voting (the paper protocol's without a validation
split). The figures, the model card, the error gallery, TensorBoard and the
console show it; summary.json names it.

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
                   need predictions.csv. Both CSV files end with
                   probability_calibrated: the probability by the run's own
                   calibrator at that level (evaluation.calibrators; the
                   raw one where it is not applied).
  results.json     a list of {members, level, voting, split, metrics, ci95,
                   subgroup, calibration} for every subset x level
                   (image|case) x voting (hard|soft) x split (validation,
                   the asked split, and the pooled 'validation+<split>',
                   whose cases are (split, case_id)), subgroup null; then the subgroups' entries
                   (evaluation.subgroups): each single run and the honest
                   protocol's chosen ensembles on the asked split, per view
                   position, body part, hardware (image level) and number
                   of views per case (case level), subgroup {field, value,
                   positives, negatives, small}. Main entries carry a
                   "calibration" block (see Calibration below).
  summary.json     checkpoints, class counts, the protocols' selections, the
                   headline model and the operating points.
  report.md        Table-4-style tables for both protocols, operating points,
                   calibration, the subgroups (soft voting; small ones
                   flagged).
  reliability.png  the reliability diagram of the headline model (case level)
                   before and after its calibrator (equal-mass bins with
                   counts and Wilson intervals).
  roc.png          single-view vs case-level ROC of the headline model.
  confusion.png    its confusion matrices (its voting rule's decisions).
  events.out.tfevents.*  the headline model's metrics for TensorBoard
                   (`verdict/...`, see ankle_jax.reporting.tensorboard).
  report.html      one self-contained page (images embedded): protocol and
                   data, report.md's tables, ROC, reliability, confusion
                   matrices, subgroups and the error gallery: the headline
                   model's most confident false negatives and false
                   positives, with Grad-CAM thumbnails (reporting.html,
                   reporting.gallery; --no_html skips it).
  MODEL_CARD.md    the headline model's card (reporting.model_card).

Calibration: each run and ensemble's soft-voted probability gets a
calibrator (temperature or Platt scaling, chosen by AIC; not applied, with a
reason, on a separable validation split or at its bounds) fitted on
validation and applied to the reported split (results.json's "calibration"
blocks; evaluation.calibration, evaluation.calibrators). On
another dataset than the first run's own (an external test set), or one
without a validation split, validation comes from the run's own dataset
(summary.json's validation_source).

Case identifiers are the dataset's salted hashes; nothing else identifying is
written.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import sys
import types

from absl import flags

from ankle_jax import checkpoint as checkpoint_lib
from ankle_jax import console
from ankle_jax import crossval_runs
from ankle_jax import evaluation_inputs
from ankle_jax import inference
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import oof as oof_lib
from ankle_jax.evaluation import predictions as predictions_lib
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.evaluation import Settings
from ankle_jax.evaluation.evaluation import compute
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.results import CheckpointInfo
from ankle_jax.reporting import figures
from ankle_jax.reporting import files
from ankle_jax.reporting import gallery
from ankle_jax.reporting import html as html_page
from ankle_jax.reporting import markdown
from ankle_jax.reporting import model_card
from ankle_jax.reporting import tensorboard
from ankle_jax.reporting import terminal
from ankle_jax.reporting.context import ReportContext

# Every writer, in the order they run (each write(out_dir, evaluation,
# context); none reads another's file).
WRITERS = (files, markdown, figures, tensorboard, model_card, html_page)
# The writers of evaluate_predictions: no runs, so no model card or gallery.
PREDICTION_WRITERS = (files, markdown, figures, tensorboard)


def write_all(
    out_dir: str,
    evaluation: Evaluation,
    context: ReportContext,
    writers: Sequence[types.ModuleType] = WRITERS,
) -> None:
  """Each writer's files in out_dir (created)."""
  os.makedirs(out_dir, exist_ok=True)
  for writer in writers:
    writer.write(out_dir, evaluation, context)


def evaluate_predictions(out_dir: str, settings: Settings) -> Evaluation:
  """Everything but the model card and report.html from the predictions
  OUT/predictions.csv and OUT/case_predictions.csv already hold (read once;
  rewritten with probability_calibrated). Without a case_predictions.csv
  (older evaluations) every run counts as per-view."""
  run_names, by_split = predictions_lib.read_predictions(out_dir)
  evaluation = compute(by_split, run_names, settings)
  write_all(out_dir, evaluation, ReportContext(html=False), PREDICTION_WRITERS)
  return evaluation


def predict_splits(
    runs: Sequence[inference.Run],
    split: str,
    batches_fn: evaluation_inputs.BatchesFn,
) -> dict[str, SplitPredictions]:
  """Every run's probabilities on `split` and, if it exists, validation."""
  checkpoints = ', '.join(
      dict.fromkeys(f'{r.which} checkpoint, step {r.step}' for r in runs)
  )
  print(f'Evaluating {len(runs)} run(s) ({checkpoints}) on split {split!r}...')
  by_split = {}
  for name in dict.fromkeys([split, VALIDATION]):
    batches_for = batches_fn(name)
    if batches_for is None:
      if name == split:
        raise console.UserError(f'split {split!r} not found.')
      continue
    by_split[name] = inference.predict_split(runs, batches_for)
  return by_split


def fold_ensemble_splits(
    runs: Sequence[inference.Run],
    split: str,
    batches_fn: evaluation_inputs.BatchesFn,
    batch_size: int,
    max_eval_views: int,
) -> tuple[dict[str, SplitPredictions], str]:
  """A fold ensemble's predictions: every fold run on `split`, and as
  'validation' the out-of-fold predictions (DIR/cv/oof_predictions.csv when
  there, else each fold run on its own validation fold; oof.as_validation);
  with where the OOF came from.

  Raises:
    console.UserError: --split=validation, or OOF predictions that do not
      fit the runs.
  """
  if split == VALIDATION:
    raise console.UserError(
        'a fold ensemble is evaluated on test (--split=test): each fold has '
        'its own validation split; their union is the out-of-fold '
        'evaluation of python -m ankle_jax.crossval (DIR/cv).'
    )
  batches_for = batches_fn(split)
  if batches_for is None:
    raise console.UserError(f'split {split!r} not found.')
  print(f'Evaluating the ensemble of {len(runs)} folds on split {split!r}...')
  by_split = {split: inference.predict_split(runs, batches_for)}
  path = crossval_runs.saved_oof(runs)
  if path:
    try:
      oof = oof_lib.read_oof_csv(path, [r.name for r in runs])
    except ValueError as e:
      raise console.UserError(str(e)) from e
  else:
    oof = crossval_runs.predict_oof(
        runs, batch_size=batch_size, max_eval_views=max_eval_views
    )
  by_split[VALIDATION] = oof_lib.as_validation(oof, len(runs))
  return by_split, path or "the fold runs' own validation folds"


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


def load_evaluated_runs(
    run_dirs: Sequence[str], checkpoint: str | None
) -> tuple[list[inference.Run], int | None]:
  """(the restored runs, K when they are the K folds of a cross-validation,
  else None): a cross-validation workdir expands to its folds, which come
  in fold order."""
  runs = inference.load_runs(crossval_runs.expand_runs(run_dirs), checkpoint)
  num_folds = crossval_runs.check_fold_ensemble(runs)
  if num_folds:
    runs = crossval_runs.in_fold_order(runs)
  return runs, num_folds


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
    batches_fn: evaluation_inputs.BatchesFn | None = None,
    html: bool = True,
) -> Evaluation:
  """Restores runs, predicts the needed splits once, computes the one
  Evaluation, and hands it to every writer (WRITERS).

  Args:
    run_dirs: training run directories.
    split: the split to report on ('test').
    out_dir: where the outputs go (created once the runs and data are found).
    checkpoint: 'best' or 'latest' for every run; None: each run's
      config.eval_checkpoint.
    max_eval_views: views kept per case, the first by view position, then
      file name (0 = all); None: the first run's config.data.max_eval_views.
    data_dir, dataset_config: the dataset (default: the first run's).
    batch_size: views per forward batch (each of the group's runs sees it).
    max_subsets, num_bootstrap, seed, selection_metric: as in `Settings`.
    batches_fn: (split) -> batches_for(image_size) or None when the split
      does not exist; defaults to the TFDS pipeline (tests inject fakes; an
      injected one applies no view cap itself).
    html: whether to write report.html with its error gallery (one Grad-CAM
      pass of the headline model over at most 24 cases).

  Raises:
    console.UserError: no run directory, no checkpoint, or no dataset/split.
  """
  runs, num_folds = load_evaluated_runs(run_dirs, checkpoint)
  max_eval_views = views_per_case(runs, max_eval_views)
  inputs = evaluation_inputs.EvaluationInputs.of(
      runs,
      split,
      batches_fn=batches_fn,
      data_dir=data_dir,
      dataset_config=dataset_config,
      batch_size=batch_size,
      max_eval_views=max_eval_views,
  )
  by_split, oof_source = (
      fold_ensemble_splits(
          runs, split, inputs.batches_fn, batch_size, max_eval_views
      )
      if num_folds
      else (predict_splits(runs, split, inputs.batches_fn), None)
  )
  evaluation = compute(
      by_split,
      [r.name for r in runs],
      Settings(
          split=split,
          max_subsets=max_subsets,
          num_bootstrap=num_bootstrap,
          seed=seed,
          selection_metric=selection_metric,
          checkpoints={r.name: CheckpointInfo(r.which, r.step) for r in runs},
          max_eval_views=max_eval_views,
          validation_source=inputs.validation_source,
          oof_source=oof_source,
      ),
  )
  context = report_context(evaluation, runs, inputs, html)
  write_all(out_dir, evaluation, context)
  return evaluation


def report_context(
    evaluation: Evaluation,
    runs: Sequence[inference.Run],
    inputs: evaluation_inputs.EvaluationInputs,
    html: bool,
) -> ReportContext:
  """What the writers need beyond the evaluation; with html, the error
  gallery (one Grad-CAM pass of the headline model's runs)."""
  location = inputs.location
  return ReportContext(
      run_dirs={r.name: r.workdir for r in runs},
      data_dir=str(location[0]) if location else None,
      dataset_config=location[1] if location else None,
      html=html,
      gallery=(
          gallery.build(evaluation, runs, inputs.case_images) if html else None
      ),
  )


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_list(
      'runs',
      None,
      'Comma-separated training run directories (a cross-validation '
      'workdir: its folds, evaluated as a fold ensemble).',
  )
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
  flags.DEFINE_bool(
      'html',
      True,
      'Write report.html with the error gallery (Grad-CAM of the headline '
      "model's most confident wrong cases); --no_html skips it.",
  )
  # absl spells a bool's negation --nohtml; --no_html is the documented one.
  flags.DEFINE_bool('no_html', False, 'Skip report.html (same as --nohtml).')
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
  with_html = f.html and not f.no_html
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
      html=with_html,
  )
  written = [markdown.REPORT_FILE, *files.FILES, *figures.FILES]
  written += [model_card.MODEL_CARD_FILE] + (
      [html_page.HTML_FILE] if with_html else []
  )
  print(terminal.summary(evaluation, f.out, written))


if __name__ == '__main__':
  define_flags()
  console.run(main)

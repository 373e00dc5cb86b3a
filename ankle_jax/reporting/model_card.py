"""MODEL_CARD.md: the Headline described for a reader, after Mitchell et
al. 2019 ("Model Cards for Model Reporting") and the CLAIM items that apply
(model, intended use, data and its split, metrics with intervals,
calibration, subgroups, failure analysis, limits).

Every number is the Evaluation's (the same results.json and summary.json
hold); the model details come from each run's config.json.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import os

from ankle_jax import writers
from ankle_jax.evaluation import aggregation
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting.context import ReportContext
from ankle_jax.reporting.document import calibration_method
from ankle_jax.reporting.format import LEVEL_TITLES
from ankle_jax.reporting.format import SAME_CASES
from ankle_jax.reporting.format import SUBGROUP_FOOTNOTE
from ankle_jax.reporting.format import Table
from ankle_jax.reporting.format import calibration_table
from ankle_jax.reporting.format import format_threshold
from ankle_jax.reporting.format import format_value
from ankle_jax.reporting.format import has_small_subgroup
from ankle_jax.reporting.format import markdown_table
from ankle_jax.reporting.format import metric_cells
from ankle_jax.reporting.format import metric_headers
from ankle_jax.reporting.format import same_cases
from ankle_jax.reporting.format import subgroup_table

MODEL_CARD_FILE = 'MODEL_CARD.md'
# What a split unit is per builder config, and what can still leak (README,
# section Data).
SPLIT_UNITS = {
    'dicom_cases': (
        'the case folder (one study); near-duplicate views join their cases '
        'into one unit',
        'a patient with several case folders (e.g. two visits) can land in '
        'two splits unless the folders are grouped by a splits.csv',
    ),
    'mura': (
        "the patient (MURA's official patient-disjoint split)",
        'nothing known across patients',
    ),
    'fracatlas': (
        'the image, plus near-duplicate groups (512-bit dHash)',
        'FracAtlas has no patient ids: repeat exposures of one patient that '
        'are not near-copies can land in two splits',
    ),
}


def metrics_table(ev: Evaluation) -> Table:
  """The Headline's six metrics [95% CI] on the reported split, each level
  and voting (case level: also max, noisy_or and stacked, where computed)."""
  h = ev.headline
  rows = []
  for level in LEVEL_TITLES:
    for vote in ('soft', 'hard', 'max', 'noisy_or', aggregation.STACKED):
      e = ev.results.get(ResultKey(h.members, h.reported_on, level, vote))
      if e is not None:
        rows.append([LEVEL_TITLES[level], vote, *metric_cells(e)])
  return Table.of(['Views', 'Voting'] + metric_headers(), rows)


def operating_points_table(ev: Evaluation) -> Table:
  """The Headline's operating points."""
  header = ['Views', 'Operating point', 'Chosen on', 'Reported on']
  header += ['Threshold', 'Sensitivity', 'Specificity']
  rows = [
      [
          LEVEL_TITLES[op.level],
          op.description,
          op.chosen_on,
          op.split,
          format_threshold(op.threshold),
          format_value(op.sensitivity, op.ci95['sensitivity']),
          format_value(op.specificity, op.ci95['specificity']),
      ]
      for op in ev.operating_points
      if op.members == ev.headline.members
  ]
  return Table.of(header, rows)


def read_run_configs(run_dirs: Mapping[str, str]) -> dict[str, dict]:
  """{run name: its config.json as a dict}."""
  out = {}
  for name, workdir in run_dirs.items():
    with open(os.path.join(workdir, writers.CONFIG_FILE)) as f:
      out[name] = json.load(f)
  return out


def _model_details(ev: Evaluation, configs: Mapping[str, dict]) -> list[str]:
  rows = []
  for name, c in configs.items():
    model, data = c.get('model', {}), c.get('data', {})
    ckpt = ev.checkpoints.get(name)
    multiview = (model.get('multiview') or {}).get('enabled', False)
    rows.append(
        [
            name,
            str(model.get('name')),
            str(model.get('width_multiplier')),
            f'{c.get("image_size")} px',
            'multi-view' if multiview else 'per view',
            f'{ckpt.which}, step {ckpt.step}' if ckpt else '?, step ?',
            f'{c.get("optimizer")}, lr {c.get("learning_rate")}, batch '
            f'{c.get("batch_size")}, {c.get("num_train_steps")} steps',
            f'`{data.get("data_dir") or "(default)"}` '
            f'({data.get("dataset_config")})',
        ]
    )
  header = ['Run', 'Family', 'Width multiplier', 'Image size', 'Reads']
  header += ['Checkpoint', 'Training', 'Training data']
  return [
      '## Model details',
      '',
      'Binary classifiers of radiographs: fracture vs normal, per view, '
      'voted per case (ankle_jax.evaluation.voting). Every run was trained from scratch '
      '(random initialization, no pretrained weights), with the config.json '
      'in its run directory.',
      '',
      *markdown_table(Table.of(header, rows)),
      '',
  ]


def _intended_use() -> list[str]:
  return [
      '## Intended use',
      '',
      '- Research on fracture detection in ankle (and other limb) '
      'radiographs: reproducing and comparing models, studying their errors.',
      '- Users: researchers who can read the evaluation report and its '
      'limits.',
      '',
      '## Out-of-scope use',
      '',
      '- Any clinical use: diagnosis, triage, or ruling out a fracture. This '
      'is not a medical device; it is not cleared or approved by any '
      'regulator, and it was not evaluated prospectively.',
      '- Other body parts, modalities, populations or scanners than the data '
      'below, without an external validation.',
      '',
  ]


def _data(ev: Evaluation, context: ReportContext) -> list[str]:
  unit, leak = SPLIT_UNITS.get(
      context.dataset_config or '',
      ('the case', 'depends on the dataset (see its build_report.md)'),
  )
  source = (
      f'`{context.data_dir}` (builder config {context.dataset_config})'
      if context.data_dir
      else 'data passed in by the caller (no dataset directory)'
  )
  counts = [
      [
          f'`{split}`',
          f'{c.cases} ({c.normal_cases} / {c.fracture_cases})',
          f'{c.views} ({c.normal_views} / {c.fracture_views})',
      ]
      for split, c in ev.counts.items()
  ]
  views = ev.max_eval_views
  header = ['Split', 'Cases (normal / fracture)', 'Views (normal / fracture)']
  return [
      '## Data',
      '',
      f'- Evaluated on: {source}.',
      f'- Split unit: {unit}. What can still leak: {leak}.',
      '- Preprocessing: each view decoded to grey levels in [0, 1], resized '
      "to the run's image size and standardized per image (mean 0, std 1); "
      + (
          f'the first {views} views of each case by view position.'
          if views
          else 'every view of each case.'
      ),
      '',
      *markdown_table(Table.of(header, counts)),
      '',
  ]


def _metrics(ev: Evaluation) -> list[str]:
  h = ev.headline
  lines = [
      '## Metrics',
      '',
      f'Headline model: **{h.label}**, {h.rule}, reported on '
      f'`{h.reported_on}`. Decisions at p(fracture) >= '
      f'{voting.THRESHOLD}; 95% intervals in brackets (Wilson for '
      'proportions, DeLong for ROC AUC; report.md says more).',
      '',
      *_same_cases(ev),
      *markdown_table(metrics_table(ev)),
      '',
  ]
  ops = operating_points_table(ev)
  if ops.rows:
    lines += ['Operating points (thresholds chosen on validation):', '']
    lines += markdown_table(ops) + ['']
  return lines


def _same_cases(ev: Evaluation) -> list[str]:
  """SAME_CASES as a paragraph where it holds, else nothing."""
  return [SAME_CASES, ''] if same_cases(ev) else []


def _calibration(ev: Evaluation) -> list[str]:
  """The Headline's calibration on each split but the pooled one (it holds
  the validation cases the calibrator was fitted on)."""
  splits = [s for s in ev.counts if s == ev.split or s != ev.pooled_split]
  table = calibration_table(ev, [ev.headline.members], splits)
  if not table.rows:
    return ['## Calibration', '', 'Not computed in this evaluation.', '']
  return [
      '## Calibration',
      '',
      calibration_method(ev),
      '',
      *_same_cases(ev),
      *markdown_table(table),
      '',
  ]


def _subgroups(ev: Evaluation) -> list[str]:
  table = subgroup_table(ev, ev.headline.members)
  if not table.rows:
    return ['## Subgroups', '', 'No subgroup results in this evaluation.', '']
  lines = ['## Subgroups', '', *markdown_table(table)]
  if has_small_subgroup(table):
    lines += ['', SUBGROUP_FOOTNOTE]
  return lines + ['']


def _failures_and_caveats(html_written: bool) -> list[str]:
  gallery = (
      'The most confident false negatives and false positives of the '
      'headline model, with Grad-CAM overlays: [report.html, error '
      'gallery](report.html#gallery).'
      if html_written
      else 'No report.html was written (evaluate --no_html): run evaluate '
      'with --html for the error gallery.'
  )
  return [
      '## Failure analysis',
      '',
      gallery,
      '',
      '## Caveats',
      '',
      '- Retrospective, single-source data; small test sets give wide '
      'intervals (see the brackets).',
      '- The views of a case are correlated: single-view intervals count '
      'them as fewer independent items (a design effect; DeLong clustered by '
      'case).',
      '- Grad-CAM shows where the evidence is, not why; it is no '
      'localization.',
      '- Probabilities are calibrated only where the calibration section says '
      'so.',
      '',
  ]


def write(out_dir: str, ev: Evaluation, context: ReportContext) -> str:
  """Writes OUT/MODEL_CARD.md; returns its path."""
  lines = [
      f'# Model card: {ev.headline.label}',
      '',
      'Written by `python -m ankle_jax.evaluate`; every number is the '
      "evaluation's (results.json and summary.json next to this file hold "
      "them too), the model details the runs' config.json.",
      '',
      *_model_details(ev, read_run_configs(context.run_dirs)),
      *_intended_use(),
      *_data(ev, context),
      *_metrics(ev),
      *_calibration(ev),
      *_subgroups(ev),
      *_failures_and_caveats(context.html),
  ]
  path = os.path.join(out_dir, MODEL_CARD_FILE)
  with open(path, 'w') as f:
    f.write('\n'.join(lines).rstrip('\n') + '\n')
  return path

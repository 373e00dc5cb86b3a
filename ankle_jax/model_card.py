"""MODEL_CARD.md: the evaluated model described for a reader, after Mitchell
et al. 2019 ("Model Cards for Model Reporting") and the CLAIM items that
apply (model, intended use, data and its split, metrics with intervals,
calibration, subgroups, failure analysis, limits).

Every number in the card is read from the files evaluate wrote (results.json
for metrics, calibration and subgroups; summary.json for the protocol's
choice, operating points, counts and checkpoint steps) and each run's
config.json; nothing is recomputed here. The JSON readers and table builders
below are shared with ankle_jax.html_report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os
from typing import Any

from ankle_jax import metrics as metrics_lib
from ankle_jax import writers
from ankle_jax.report import METRIC_TITLES
from ankle_jax.report import format_threshold
from ankle_jax.report import format_value
from ankle_jax.report import members_label
from ankle_jax.results import LEVEL_TITLES

MODEL_CARD_FILE = 'MODEL_CARD.md'
# The calibration block's values shown, with their titles (others are kept
# in results.json).
CALIBRATION_FIELDS = {
    'temperature': 'Temperature',
    'ece': 'ECE',
    'ece_calibrated': 'ECE calibrated',
    'brier': 'Brier',
    'brier_calibrated': 'Brier calibrated',
}
SUBGROUP_METRICS = ('sensitivity', 'specificity', 'roc_auc')
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


# ------------------------------------------------------------ JSON readers
def read_json(out_dir: str, name: str) -> Any:
  with open(os.path.join(out_dir, name)) as f:
    return json.load(f)


def headline(summary: Mapping[str, Any]) -> tuple[str, list[str]]:
  """(protocol, members) of the headline model: the honest protocol's
  ensemble chosen at case level with soft voting (the paper protocol's when
  there is no validation split)."""
  protocols = summary['protocols']
  protocol = 'honest' if 'honest' in protocols else 'paper'
  return protocol, list(protocols[protocol]['case_soft']['members'])


def main_entries(entries: Sequence[Mapping[str, Any]]) -> list[dict]:
  """results.json entries that are no subgroup."""
  return [dict(e) for e in entries if not e.get('subgroup')]


def subgroup_entries(entries: Sequence[Mapping[str, Any]]) -> list[dict]:
  """results.json entries of subgroups (their 'subgroup' is not null)."""
  return [dict(e) for e in entries if e.get('subgroup')]


def find_entry(
    entries: Sequence[Mapping[str, Any]],
    members: Sequence[str],
    split: str,
    level: str,
    vote: str,
) -> dict | None:
  for e in main_entries(entries):
    if (list(e['members']), e['split'], e['level'], e['voting']) == (
        list(members),
        split,
        level,
        vote,
    ):
      return e
  return None


def json_value(entry: Mapping[str, Any], metric: str) -> str:
  ci = entry.get('ci95', {}).get(metric) or (None, None)
  return format_value(entry['metrics'].get(metric), ci)


# ---------------------------------------------------------- table builders
Table = tuple[list[str], list[list[str]]]


def metrics_table(
    entries: Sequence[Mapping[str, Any]], members: Sequence[str], split: str
) -> Table:
  """The members' six metrics [95% CI] on `split`, each level and voting."""
  header = ['Views', 'Voting'] + [
      METRIC_TITLES[m] for m in metrics_lib.METRIC_NAMES
  ]
  rows = []
  for level in LEVEL_TITLES:
    for vote in ('soft', 'hard'):
      e = find_entry(entries, members, split, level, vote)
      if e is not None:
        rows.append(
            [LEVEL_TITLES[level], vote]
            + [json_value(e, m) for m in metrics_lib.METRIC_NAMES]
        )
  return header, rows


def operating_points_table(
    summary: Mapping[str, Any], members: Sequence[str]
) -> Table:
  """The members' operating points from summary.json."""
  header = ['Views', 'Operating point', 'Chosen on', 'Reported on']
  header += ['Threshold', 'Sensitivity', 'Specificity']
  rows = []
  for op in summary.get('operating_points', []):
    if list(op['members']) != list(members):
      continue
    rows.append(
        [
            LEVEL_TITLES[op['level']],
            op['description'],
            op['chosen_on'],
            op['split'],
            format_threshold(op['threshold']),
            format_value(op['sensitivity'], op['ci95']['sensitivity']),
            format_value(op['specificity'], op['ci95']['specificity']),
        ]
    )
  return header, rows


def calibration_table(
    entries: Sequence[Mapping[str, Any]], members: Sequence[str]
) -> Table:
  """The members' calibration blocks (soft voting), every split; no rows
  when results.json has none (evaluations before calibration)."""
  header = ['Split', 'Views'] + list(CALIBRATION_FIELDS.values())
  rows = []
  for e in main_entries(entries):
    block = e.get('calibration')
    if not block or e['voting'] != 'soft' or list(e['members']) != members:
      continue
    cells = []
    for name in CALIBRATION_FIELDS:
      ci = block.get('ci95', {}).get(name) or (None, None)
      cells.append(format_value(block.get(name), ci))
    split = e['split'] + (
        ' (fitted here)' if block.get('fitted_on') == e['split'] else ''
    )
    rows.append([split, LEVEL_TITLES[e['level']]] + cells)
  return header, rows


def subgroup_table(
    entries: Sequence[Mapping[str, Any]], members: Sequence[str] | None = None
) -> Table:
  """Every subgroup entry (of `members` only, when given), with its counts;
  a small subgroup (< 10 positives or negatives) is flagged, not hidden."""
  header = ['Field', 'Value', 'Model', 'Views', 'Voting', 'Fracture / normal']
  header += [METRIC_TITLES[m] for m in SUBGROUP_METRICS] + ['Note']
  rows = []
  for e in subgroup_entries(entries):
    if members is not None and list(e['members']) != list(members):
      continue
    g = e['subgroup']
    rows.append(
        [
            str(g['field']),
            str(g['value']),
            members_label(e['members']),
            LEVEL_TITLES.get(e['level'], e['level']),
            e['voting'],
            f'{g["positives"]} / {g["negatives"]}',
            *(json_value(e, m) for m in SUBGROUP_METRICS),
            'small (< 10 of a class)' if g.get('small') else '',
        ]
    )
  return header, rows


def markdown_table(table: Table) -> list[str]:
  header, rows = table
  return [
      '| ' + ' | '.join(header) + ' |',
      '|' + '---|' * len(header),
      *('| ' + ' | '.join(r) + ' |' for r in rows),
  ]


# ------------------------------------------------------------ the card
def read_run_configs(run_dirs: Mapping[str, str]) -> dict[str, dict]:
  """{run name: its config.json as a dict}."""
  out = {}
  for name, workdir in run_dirs.items():
    with open(os.path.join(workdir, writers.CONFIG_FILE)) as f:
      out[name] = json.load(f)
  return out


def _model_details(
    configs: Mapping[str, dict], summary: Mapping[str, Any]
) -> list[str]:
  rows = []
  for name, c in configs.items():
    model, data = c.get('model', {}), c.get('data', {})
    ckpt = summary.get('checkpoints', {}).get(name, {})
    multiview = (model.get('multiview') or {}).get('enabled', False)
    rows.append(
        [
            name,
            str(model.get('name')),
            str(model.get('width_multiplier')),
            f'{c.get("image_size")} px',
            'multi-view' if multiview else 'per view',
            f'{ckpt.get("which", "?")}, step {ckpt.get("step", "?")}',
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
      'voted per case (ankle_jax.voting). Every run was trained from scratch '
      '(random initialization, no pretrained weights), with the config.json '
      'in its run directory.',
      '',
      *markdown_table((header, rows)),
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


def _data(
    summary: Mapping[str, Any], data_dir: str | None, dataset_config: str | None
) -> list[str]:
  unit, leak = SPLIT_UNITS.get(
      dataset_config or '',
      ('the case', 'depends on the dataset (see its build_report.md)'),
  )
  source = (
      f'`{data_dir}` (builder config {dataset_config})'
      if data_dir
      else 'data passed in by the caller (no dataset directory)'
  )
  counts = [
      [
          f'`{split}`',
          f'{c["cases"]} ({c["normal_cases"]} / {c["fracture_cases"]})',
          f'{c["views"]} ({c["normal_views"]} / {c["fracture_views"]})',
      ]
      for split, c in summary['counts'].items()
  ]
  views = summary.get('max_eval_views') or 0
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
      *markdown_table(
          (
              [
                  'Split',
                  'Cases (normal / fracture)',
                  'Views (normal / fracture)',
              ],
              counts,
          )
      ),
      '',
  ]


def _metrics(entries, summary, protocol, members) -> list[str]:
  split = summary['split']
  chosen_on = summary['protocols'][protocol]['case_soft']['chosen_on']
  lines = [
      '## Metrics',
      '',
      f'Headline model: **{members_label(members)}**, the {protocol} '
      f"protocol's choice (case level, soft voting, chosen on `{chosen_on}`),"
      f' reported on `{split}`. Decisions at p(fracture) >= '
      f'{summary.get("vote_threshold")}; 95% intervals in brackets (Wilson for '
      'proportions, case bootstrap for ROC AUC).',
      '',
      *markdown_table(metrics_table(entries, members, split)),
      '',
  ]
  ops = operating_points_table(summary, members)
  if ops[1]:
    lines += ['Operating points (thresholds chosen on validation):', '']
    lines += markdown_table(ops) + ['']
  return lines


def _calibration(entries, members) -> list[str]:
  table = calibration_table(entries, members)
  if not table[1]:
    return ['## Calibration', '', 'Not computed in this evaluation.', '']
  return [
      '## Calibration',
      '',
      'Temperature scaling fitted on validation and applied unchanged to '
      'the other splits; ECE over 15 equal-width bins of p(fracture).',
      '',
      *markdown_table(table),
      '',
  ]


def _subgroups(entries, members) -> list[str]:
  table = subgroup_table(entries, members)
  if not table[1]:
    return ['## Subgroups', '', 'No subgroup results in this evaluation.', '']
  return ['## Subgroups', '', *markdown_table(table), '']


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
      '- Single-view intervals treat views as independent; the views of a '
      'case are correlated, so they are optimistic.',
      '- Grad-CAM shows where the evidence is, not why; it is no '
      'localization.',
      '- Probabilities are calibrated only where the calibration section says '
      'so.',
      '',
  ]


def write_model_card(
    out_dir: str,
    run_dirs: Mapping[str, str],
    *,
    data_dir: str | None = None,
    dataset_config: str | None = None,
    html_written: bool = True,
) -> str:
  """Writes OUT/MODEL_CARD.md from OUT's results.json and summary.json.

  Args:
    out_dir: the evaluation's output directory (already holding the JSON).
    run_dirs: {run name: run directory} of the evaluated runs.
    data_dir: the evaluated TFDS dataset directory (None: data injected).
    dataset_config: its builder config ('dicom_cases', 'mura', 'fracatlas').
    html_written: whether report.html (with the gallery) exists.

  Returns:
    The card's path.
  """
  entries = read_json(out_dir, 'results.json')
  summary = read_json(out_dir, 'summary.json')
  protocol, members = headline(summary)
  lines = [
      f'# Model card: {members_label(members)}',
      '',
      'Written by `python -m ankle_jax.evaluate`; every number is copied from '
      "results.json and summary.json next to this file, and the runs' "
      'config.json.',
      '',
      *_model_details(read_run_configs(run_dirs), summary),
      *_intended_use(),
      *_data(summary, data_dir, dataset_config),
      *_metrics(entries, summary, protocol, members),
      *_calibration(entries, members),
      *_subgroups(entries, members),
      *_failures_and_caveats(html_written),
  ]
  path = os.path.join(out_dir, MODEL_CARD_FILE)
  with open(path, 'w') as f:
    f.write('\n'.join(lines).rstrip('\n') + '\n')
  return path

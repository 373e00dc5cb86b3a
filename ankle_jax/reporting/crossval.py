"""DIR/cv of a cross-validation (ankle_jax.crossval): the out-of-fold
evaluation's files, each written once from the OofEvaluation.

  oof_predictions.csv  predictions.csv's columns (run: the fold run that
                       predicted the view, i.e. held it out; split
                       'validation'), its feature columns, then
                       probability_calibrated (the OOF calibrator, image
                       level).
  results.json         OofEvaluation.to_json (README "Cross-validation").
  report.md            the sections below; report.html the same page.

Sections: the protocol, the OOF metrics (image and case level), the
operating points chosen on OOF, the per-fold metrics and their spread, the
calibration fitted on OOF.
"""

from __future__ import annotations

import html
import json
import os

from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import oof as oof_lib
from ankle_jax.reporting import document
from ankle_jax.reporting import html as html_page
from ankle_jax.reporting.format import CALIBRATION_HEADER
from ankle_jax.reporting.format import LEVEL_TITLES
from ankle_jax.reporting.format import METRIC_TITLES
from ankle_jax.reporting.format import Table
from ankle_jax.reporting.format import calibration_row
from ankle_jax.reporting.format import format_threshold
from ankle_jax.reporting.format import format_value
from ankle_jax.reporting.format import write_csv

REPORT_FILE = 'report.md'
HTML_FILE = 'report.html'
FILES = (oof_lib.OOF_FILE, oof_lib.RESULTS_FILE, REPORT_FILE, HTML_FILE)
TITLE = '# Cross-validation report'


def _fmt(x: float | None) -> str:
  return 'n/a' if x is None else f'{x:.3f}'


def _overview(
    ev: oof_lib.OofEvaluation, workdir: str, checkpoints: dict[str, dict]
) -> list:
  c = ev.counts
  return [
      f'{ev.num_folds}-fold cross-validation in `{workdir}`: fold k is an '
      'ordinary run (`fold_<k>`) trained on the other folds of the '
      "dataset's train+validation splits; its validation split is fold k. "
      'The test split is not used here.',
      '',
      f'Out-of-fold (OOF): each of the {c.cases} cases ({c.fracture_cases} '
      f'fractured, {c.normal_cases} normal; {c.views} views) is predicted '
      'once, by the fold model that did not see it. Case level: soft vote '
      '(mean view probability); decisions at 0.5. ROC AUC: DeLong interval '
      '(clustered by case at image level); proportions: Wilson (design '
      'effect at image level).',
      '',
      checkpoint_sentence(checkpoints),
      '',
  ]


def checkpoint_sentence(checkpoints: dict[str, dict]) -> str:
  """Which checkpoints made the OOF predictions, and what that means.
  checkpoints: {run: {'which', 'step'}}."""
  steps = ', '.join(
      f"{run} {c['which']} step {c['step']}" for run, c in checkpoints.items()
  )
  if all(c['which'] == 'latest' for c in checkpoints.values()):
    return (
        f'Fold models: their last checkpoints ({steps}): nothing was chosen '
        'on the OOF cases.'
    )
  return (
      f'Fold models: {steps}. A best checkpoint was chosen on the fold it '
      'predicts here, which makes OOF optimistic by that choice '
      '(`--checkpoint=latest` avoids it; the fold ensemble on test is not '
      'affected).'
  )


def _metrics_section(ev: oof_lib.OofEvaluation) -> list:
  names = metrics_lib.METRIC_NAMES
  rows = [
      [
          LEVEL_TITLES.get(level, level),
          *(format_value(e.point[m], e.ci95[m]) for m in names),
      ]
      for level, e in ev.estimates.items()
  ]
  header = ['Level', *(METRIC_TITLES[m] for m in names)]
  return ['## Out-of-fold metrics', '', Table.of(header, rows), '']


def _operating_points_section(ev: oof_lib.OofEvaluation) -> list:
  if not ev.operating_points:
    return []
  rows = [
      [
          metrics_lib.OPERATING_POINTS[name],
          format_threshold(op['threshold']),
          format_value(op['sensitivity'], op['ci95']['sensitivity']),
          format_value(op['specificity'], op['ci95']['specificity']),
      ]
      for name, op in ev.operating_points.items()
  ]
  header = ['Operating point', 'Threshold', 'Sensitivity', 'Specificity']
  return [
      '## Operating points (chosen on OOF)',
      '',
      'Case level, soft vote; chosen and measured on the same OOF cases (in '
      'sample: the thresholds a fold ensemble uses on test).',
      '',
      Table.of(header, rows),
      '',
  ]


def _per_fold_section(ev: oof_lib.OofEvaluation) -> list:
  metric_names = oof_lib.FOLD_METRICS
  rows = [
      [
          f'`{f.run}`',
          str(f.counts.cases),
          str(f.counts.fracture_cases),
          *(_fmt(f.metrics[m]) for m in metric_names),
      ]
      for f in ev.per_fold
  ]
  for stat in ('mean', 'sd', 'min', 'max'):
    rows.append(
        [
            f'**{stat}**',
            '',
            '',
            *(_fmt(getattr(ev.spread[m], stat)) for m in metric_names),
        ]
    )
  header = [
      'Fold',
      'Cases',
      'Fractured',
      *(METRIC_TITLES[m] for m in metric_names),
  ]
  return [
      '## Per-fold metrics',
      '',
      'Each fold model on its own validation fold (case level, soft vote), '
      'then the spread over folds (sd: sample sd).',
      '',
      Table.of(header, rows),
      '',
  ]


def _calibration_section(ev: oof_lib.OofEvaluation) -> list:
  block = ev.calibration
  return [
      '## Calibration (fitted on OOF)',
      '',
      'The calibrator is fitted on the OOF case-level soft vote and measured '
      'on the same cases (in sample); a fold ensemble applies it on test.',
      '',
      Table.of(
          ['Model', 'Views', *CALIBRATION_HEADER],
          [['OOF', LEVEL_TITLES['case'], *calibration_row(block)]],
      ),
      '',
  ]


def blocks(
    ev: oof_lib.OofEvaluation, workdir: str, checkpoints: dict[str, dict]
) -> list:
  """report.md's blocks (document.Block: markdown lines and Tables)."""
  return [
      *_overview(ev, workdir, checkpoints),
      *_metrics_section(ev),
      *_operating_points_section(ev),
      *_per_fold_section(ev),
      *_calibration_section(ev),
  ]


def write_cv(
    out_dir: str,
    oof: oof_lib.OofPredictions,
    ev: oof_lib.OofEvaluation,
    workdir: str,
    checkpoints: dict[str, dict],
) -> list[str]:
  """Writes FILES into out_dir (created); returns their paths.
  checkpoints: {run: {'which', 'step'}} the fold models', in results.json."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, name) for name in FILES]
  write_csv(paths[0], *oof_lib.oof_rows(oof))
  with open(paths[1], 'w') as f:
    json.dump({**ev.to_json(), 'checkpoints': checkpoints}, f, indent=1)
  page = blocks(ev, workdir, checkpoints)
  lines = [TITLE, '', *document.markdown_lines(page)]
  with open(paths[2], 'w') as f:
    f.write('\n'.join(lines).rstrip('\n') + '\n')
  title = html.escape(TITLE[2:])
  with open(paths[3], 'w') as f:
    f.write(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title><style>{html_page._CSS}</style></head>'
        f'<body><h1>{title}</h1>\n{html_page.blocks_html(page)}\n'
        '</body></html>\n'
    )
  return paths

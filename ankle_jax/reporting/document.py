"""The text of report.md, section by section (shared by reporting.markdown,
which writes it, and reporting.html, which shows it; no writer itself).

`sections(ev)`: {title: blocks}; '' holds the overview (below the
'# Evaluation report' title), every other section starts with its '## '
heading. A block is a line of markdown text (a heading, a paragraph's line,
or '' between paragraphs) or a format.Table; `markdown_lines` renders them
for report.md, reporting.html as HTML.
"""

from __future__ import annotations

from collections.abc import Sequence

from ankle_jax.evaluation import aggregation
from ankle_jax.evaluation import calibration
from ankle_jax.evaluation import calibrators
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.results import PROTOCOLS
from ankle_jax.evaluation.results import OperatingPoint
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting.format import LEVEL_TITLES
from ankle_jax.reporting.format import METRIC_TITLES
from ankle_jax.reporting.format import SAME_CASES
from ankle_jax.reporting.format import SUBGROUP_FOOTNOTE
from ankle_jax.reporting.format import Table
from ankle_jax.reporting.format import aggregation_table
from ankle_jax.reporting.format import calibration_table
from ankle_jax.reporting.format import format_threshold
from ankle_jax.reporting.format import format_value
from ankle_jax.reporting.format import has_small_subgroup
from ankle_jax.reporting.format import markdown_table
from ankle_jax.reporting.format import members_label
from ankle_jax.reporting.format import metric_cells
from ankle_jax.reporting.format import metric_headers
from ankle_jax.reporting.format import run_label
from ankle_jax.reporting.format import same_cases
from ankle_jax.reporting.format import subgroup_table

TITLE = '# Evaluation report'


# A line of markdown text, or a table.
Block = str | Table


def _table(header, rows) -> list[Block]:
  return [Table.of(header, rows)]


def markdown_lines(blocks: Sequence[Block]) -> list[Block]:
  """The blocks as markdown lines (tables rendered by format)."""
  lines = []
  for block in blocks:
    lines += markdown_table(block) if isinstance(block, Table) else [block]
  return lines


def _headline_note(ev: Evaluation) -> list[Block]:
  h = ev.headline
  return [
      f'Headline model: **{h.label}**, {h.rule}, reported on '
      f'`{h.reported_on}`: the model of the figures, the model card, the '
      'error gallery and the console summary.'
      + (f' {SAME_CASES}' if same_cases(ev) else ''),
      '',
  ]


def _overview(ev: Evaluation) -> list[Block]:
  """Runs and checkpoints, class counts, voting and the intervals."""
  lines = ['', f'Reported split: `{ev.split}`.', '', *_headline_note(ev)]
  if ev.checkpoints:
    lines += _table(
        ['Run', 'Checkpoint', 'Step'],
        [
            [run_label(ev, n), c.which, str(c.step)]
            for n, c in ev.checkpoints.items()
        ],
    ) + ['']
  else:
    runs = ', '.join(run_label(ev, n) for n in ev.run_names)
    lines += [f'Runs: {runs}.', '']
  lines += _table(
      ['Split', 'Cases (normal / fracture)', 'Views (normal / fracture)'],
      [
          [
              f'`{name}`',
              f'{c.cases} ({c.normal_cases} / {c.fracture_cases})',
              f'{c.views} ({c.normal_views} / {c.fracture_views})',
          ]
          for name, c in ev.counts.items()
      ],
  )
  views = (
      f'the first {ev.max_eval_views} of each case by view position, then '
      f'file name (data.max_eval_views={ev.max_eval_views})'
      if ev.max_eval_views
      else 'every view of each case'
  )
  return lines + [
      '',
      f'Views evaluated: {views}.',
      '',
      f'Vote threshold: a view votes fracture when p(fracture) >= '
      f'{voting.THRESHOLD}. Hard voting: majority of the members per view, '
      'then of the views per case (ties, e.g. in 2-view cases, go to '
      'fracture). Soft voting: mean probabilities. ROC AUC always from the '
      'soft scores (mean probabilities).',
      *_multiview_note(ev),
      *_validation_source_note(ev),
      *_oof_note(ev),
      '',
      *_intervals_note(ev),
  ]


def _intervals_note(ev: Evaluation) -> list[Block]:
  """Which interval each metric uses (results.json: each entry's
  ci95_method), written once for every table."""
  return [
      '95% intervals: accuracy, sensitivity, specificity, PPV, NPV and the '
      'operating points: Wilson score intervals, over cases at case level; '
      'at single-view level the views of a case are correlated, so the '
      'Wilson interval uses the effective n = views / design effect of the '
      'case clusters (at least 1). ROC AUC: DeLong on the logit scale, at '
      'single-view level clustered by case (Obuchowski); at AUC 1.000 the '
      'interval is one-sided, [L, 1.00], L exact under the equal-variance '
      'binormal model: below it perfect separation of these fracture and '
      'normal cases has probability < 2.5%. ROC bands (roc.png): '
      f'case-level bootstrap ({ev.num_bootstrap} resamples).',
      '',
  ]


def _validation_source_note(ev: Evaluation) -> list[Block]:
  """Where validation came from on an external test set (else nothing)."""
  if not ev.validation_source:
    return []
  return [
      '',
      f'External test set: validation (the temperature, the operating points '
      f"and the honest protocol's choice) comes from the runs' own dataset, "
      f'{ev.validation_source}.',
  ]


def _oof_note(ev: Evaluation) -> list[Block]:
  """A fold ensemble's validation: the OOF predictions (else nothing)."""
  if not ev.oof_source:
    return []
  return [
      '',
      f'Fold ensemble: `{VALIDATION}` here is the out-of-fold predictions of '
      f'the {len(ev.run_names)} fold runs ({ev.oof_source}; every member '
      "counts with the OOF probability), not any single fold's validation: "
      "the thresholds, the calibrators and the honest protocol's choice "
      'come from OOF.',
  ]


def _multiview_note(ev: Evaluation) -> list[Block]:
  """How multi-view runs count at case level (nothing without one)."""
  if not ev.multiview_runs:
    return []
  return [
      '',
      'Multi-view runs read all views of a case at once: their case '
      'probability is their own (at single-view level, their case head on '
      "each view alone); a per-view run's is its soft vote. Soft voting "
      "averages the members' case probabilities. Hard voting of an "
      'ensemble with a multi-view member: each member votes once per case '
      '(a per-view member by the majority of its views), then the members '
      'vote (ties to fracture).',
  ]


def _protocol_section(ev: Evaluation, protocol: str, vote: str) -> list[Block]:
  """One Table-4-style table: every run, then the chosen ensembles."""
  selections = [ev.protocols[(protocol, lvl, vote)] for lvl in voting.LEVELS]
  chosen_on, reported_on = selections[0].chosen_on, selections[0].reported_on
  note = (
      ' Selection and report use the same cases: optimistic, shown only to '
      'compare with the paper.'
      if protocol == 'paper'
      else ''
  )
  rows = []
  for name in ev.run_names:
    for level in voting.LEVELS:
      e = ev.results[ResultKey((name,), reported_on, level, vote)]
      rows.append([run_label(ev, name), LEVEL_TITLES[level], *metric_cells(e)])
  chosen_by: dict[tuple[str, ...], list[str]] = {}
  for s in selections:
    chosen_by.setdefault(s.members, []).append(LEVEL_TITLES[s.level])
  singles = []
  if len(ev.run_names) == 1:
    chosen_by = {}  # nothing to choose from
  for members, levels in chosen_by.items():
    by = ' and '.join(levels)
    if len(members) == 1:
      singles.append(f'Best by {by}: {members[0]}, a single run (above).')
      continue
    for level in voting.LEVELS:
      e = ev.results[ResultKey(members, reported_on, level, vote)]
      label = f'Best ensemble (by {by}): {members_label(members)}'
      rows.append([label, LEVEL_TITLES[level], *metric_cells(e)])
  header = ['Model', 'Views'] + metric_headers()
  chosen = (
      f'Best ensemble chosen on `{chosen_on}`, every row'
      if len(ev.run_names) > 1
      else 'One run (nothing to choose); every row'
  )
  return [
      f'## {protocol.title()} protocol, {vote} voting',
      '',
      f'{chosen} reported on `{reported_on}`.{note}',
      '',
      *_table(header, rows),
      *(['', *singles] if singles else []),
      '',
  ]


def _aggregation_section(ev: Evaluation) -> list[Block]:
  """Every case vote, and the honest protocol's choice among them."""
  a = ev.aggregation
  choice = (
      f'The honest protocol chose **{a.voting}** '
      f'({members_label(a.members)}): the highest `{a.chosen_on}` case '
      f'{METRIC_TITLES[a.metric]} of '
      + ', '.join(a.validation_values)
      + ' (ties to the simpler, in that order; hard voting scores with the '
      'soft vote, so it is no candidate). The paper protocol keeps hard '
      'voting.'
      if a is not None
      else 'No validation split: no aggregation is chosen (the paper '
      'protocol keeps hard voting) and no stacked aggregator is fitted.'
  )
  return [
      '## Case aggregation',
      '',
      'Case votes of the view probabilities: hard and soft (above); max, the '
      'largest; noisy_or, 1 - prod(1 - p); stacked, an L2 logistic '
      'regression of the mean, max and min view logit and the number of '
      'views, fitted on `validation` (its validation ROC AUC out of fold, '
      f"{aggregation.STACKED_FOLDS} folds). ROC AUC from each vote's own "
      'score (hard: the soft score); decisions at '
      f'{voting.THRESHOLD}. {choice}',
      '',
      aggregation_table(ev),
      '',
  ]


def _operating_points_section(ev: Evaluation) -> list[Block]:
  if not ev.operating_points:
    return [
        'No separate validation split to choose on (none was built, or the '
        'reported split is the validation split itself): no honest protocol '
        'and no operating points.',
        '',
    ]

  def cell(op: OperatingPoint, name: str) -> str:
    return format_value(getattr(op, name), op.ci95[name])

  rows = [
      [
          members_label(op.members),
          LEVEL_TITLES[op.level],
          op.description,
          f'`{op.chosen_on}`',
          f'`{op.split}`',
          format_threshold(op.threshold),
          cell(op, 'sensitivity'),
          cell(op, 'specificity'),
      ]
      for op in ev.operating_points
  ]
  header = [
      'Members',
      'Views',
      'Operating point',
      'Chosen on',
      'Reported on',
      'Threshold',
      'Sensitivity',
      'Specificity',
  ]
  return [
      '## Operating points',
      '',
      'Soft scores; each threshold lies halfway between two distinct scores '
      'of the split it was chosen on; a decision is fracture when the score '
      'is >= the threshold.',
      '',
      *_table(header, rows),
      '',
  ]


def _applied_to(split: str) -> str:
  if split == VALIDATION:
    return (
        'reported on `validation` itself (in sample, so the calibrated '
        'numbers are optimistic: there is no other split to apply it to)'
    )
  return f'applied to `{split}`, never refitted there'


def calibration_method(ev: Evaluation) -> str:
  """How the calibrator is chosen and the metrics computed, in words
  (report.md; the model card and report.html cite it)."""
  lo, hi = calibrators.TEMPERATURE_BOUNDS
  return (
      'Calibrator of the soft-voted fracture probability p, z = logit(p), '
      f'fitted on `validation` and {_applied_to(ev.split)}: temperature '
      'scaling, sigmoid(z / T), or Platt scaling, sigmoid(a z + b) (its '
      'intercept can undo the shift of training class weights), whichever '
      'has the lower AIC on validation (2 x log-loss + 2 x parameters). It '
      'is not applied (calibrated = raw; the table says why) when '
      f'validation holds one class, is separable, or T leaves [{lo}, {hi}]. '
      "ECE debiased: Kumar et al. (2019)'s debiased binned calibration "
      'error (root mean square over equal-mass bins, about n / 15, at most '
      f'{calibration.NUM_BINS}, less the sampling noise); ECE 15 bins: the '
      'plain ECE (mean absolute gap) over '
      f'{calibration.NUM_BINS} equal-width bins (biased upwards on small '
      'sets); Brier: mean squared error of p; Change: calibrated - raw ECE '
      'debiased, paired. 95% intervals: point -+ 1.96 SE of a case '
      f'bootstrap ({ev.num_bootstrap} resamples), the calibrator refitted '
      'on a resample of validation in each. Below '
      f'{calibration.MIN_CASES} cases or {calibration.MIN_RARER_CLASS_CASES} '
      f'of the rarer class: "{calibration.TOO_FEW_CASES}".'
  )


def _calibration_section(ev: Evaluation) -> list[Block]:
  """Each run and the chosen ensembles on the reported split, image and
  case level."""
  members_list = [(n,) for n in ev.run_names]
  for (_, level, _), s in ev.protocols.items():
    if level == 'case' and s.members not in members_list:
      members_list.append(s.members)
  table = calibration_table(ev, members_list)
  return [
      '## Calibration',
      '',
      calibration_method(ev)
      + " All variants (adaptive ECE, slope, intercept, the calibrators' "
      'parameters and AIC) in results.json; the diagram: reliability.png.'
      + (f' {SAME_CASES}' if same_cases(ev) else ''),
      '',
      table,
      '',
  ]


def _subgroup_section(ev: Evaluation) -> list[Block]:
  """The subgroups' soft-voting entries, by model; small ones flagged with a
  dagger and a footnote (nothing without subgroups)."""
  if not ev.subgroups:
    return []
  table = subgroup_table(ev)
  models = (
      "Each single run and the honest protocol's chosen ensembles"
      if ev.headline.protocol == 'honest'
      else 'Each single run (no validation split to choose an ensemble on)'
  )
  lines = [
      '## Subgroups',
      '',
      f'{models} on `{ev.split}`, soft voting (hard voting: results.json). '
      'A subgroup is '
      'the views (single view) or the cases (all views) with that value; a '
      "case's value of a per-view field is its views' value where they all "
      "share one, else 'varies'. num_views: the views evaluated per case.",
      '',
      table,
  ]
  if has_small_subgroup(table):
    lines += ['', SUBGROUP_FOOTNOTE]
  return lines + ['']


def sections(ev: Evaluation) -> dict[str, list[str]]:
  """report.md's sections (module docstring), in order."""
  lines = _overview(ev)
  for vote in voting.VOTINGS:
    for protocol in PROTOCOLS:
      if (protocol, 'case', vote) in ev.protocols:
        lines += _protocol_section(ev, protocol, vote)
  lines += _aggregation_section(ev)
  lines += _operating_points_section(ev)
  lines += _calibration_section(ev)
  lines += _subgroup_section(ev)
  out: dict[str, list[Block]] = {'': []}
  title = ''
  for line in lines:
    if isinstance(line, str) and line.startswith('## '):
      title = line[3:].strip()
      out[title] = []
    out[title].append(line)
  return out

"""Shared rendering of the reporting writers (no writer itself): one number
and interval format, one table type with its markdown and HTML renderers,
and the tables more than one document shows.

Interval format (README): '0.975 [0.87, 1.00]': the value with 3 decimals,
its 95% interval with 2; '0.975' without an interval, 'n/a' if undefined.
"""

from __future__ import annotations

from collections.abc import Sequence
import csv
import dataclasses
import html
import re

from ankle_jax.evaluation import aggregation
from ankle_jax.evaluation import calibration
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.results import ResultEntry
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.evaluation.subgroups import MIN_CLASS_COUNT
from ankle_jax.evaluation.subgroups import Subgroup

LEVEL_TITLES = {'image': 'single view', 'case': 'all views (case)'}
METRIC_TITLES = {
    'accuracy': 'Accuracy',
    'sensitivity': 'Sensitivity',
    'specificity': 'Specificity',
    'ppv': 'PPV',
    'npv': 'NPV',
    'roc_auc': 'ROC AUC',
}


# ----------------------------------------------------------------- numbers
def format_value(value: float | None, ci: Sequence[float | None]) -> str:
  """'0.812 [0.70, 0.90]', '0.812' without an interval, 'n/a' if undefined.

  An interval that 2 decimals would print as one number gets up to 4
  ('1.000 [0.996, 1.000]', not the collapsed-looking [1.00, 1.00]).
  """
  if value is None:
    return 'n/a'
  if not ci or ci[0] is None:
    return f'{value:.3f}'
  lo, hi = f'{ci[0]:.2f}', f'{ci[1]:.2f}'
  for digits in (3, 4):
    if lo != hi:
      break
    lo, hi = f'{ci[0]:.{digits}f}', f'{ci[1]:.{digits}f}'
  return f'{value:.3f} [{lo}, {hi}]'


def format_threshold(t: float) -> str:
  """A threshold with the digits that tell it apart ('1 - 3.1e-08')."""
  if t > 0.999:
    return f'1 - {1.0 - t:.2g}'
  if t < 0.001:
    return f'{t:.2g}'
  return f'{t:.4f}'


def members_label(members: Sequence[str]) -> str:
  return '+'.join(members)


def run_label(ev: Evaluation, name: str) -> str:
  """The run's name, marked '(multi-view)' for a multi-view run."""
  return f'{name} (multi-view)' if name in ev.multiview_runs else name


def model_label(ev: Evaluation, members: Sequence[str]) -> str:
  """A single run's run_label, else the members joined."""
  if len(members) == 1:
    return run_label(ev, members[0])
  return members_label(members)


def metric_cells(entry: ResultEntry) -> list[str]:
  """The six metrics of an entry, each with its interval."""
  return [
      format_value(entry.metrics[m], entry.ci95[m])
      for m in metrics_lib.METRIC_NAMES
  ]


def metric_headers() -> list[str]:
  return [METRIC_TITLES[m] for m in metrics_lib.METRIC_NAMES]


# ------------------------------------------------------------------ tables
@dataclasses.dataclass(frozen=True)
class Table:
  """A table of text cells (markdown inline: `code`, **bold**)."""

  header: tuple[str, ...]
  rows: tuple[tuple[str, ...], ...]

  @classmethod
  def of(cls, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    return cls(tuple(header), tuple(tuple(r) for r in rows))


def markdown_table(table: Table) -> list[str]:
  """The table as markdown lines."""
  return [
      '| ' + ' | '.join(table.header) + ' |',
      '|' + '---|' * len(table.header),
      *('| ' + ' | '.join(r) + ' |' for r in table.rows),
  ]


def inline_html(text: str) -> str:
  """Markdown inline code and bold to HTML (text escaped)."""
  text = html.escape(text, quote=False)
  text = re.sub(r'`([^`]*)`', r'<code>\1</code>', text)
  return re.sub(r'\*\*([^*]+)\*\*', r'<b>\1</b>', text)


def html_table(table: Table) -> str:
  """The table as one HTML <table>."""
  head = ''.join(f'<th>{inline_html(h)}</th>' for h in table.header)
  body = ''.join(
      '<tr>' + ''.join(f'<td>{inline_html(c)}</td>' for c in r) + '</tr>'
      for r in table.rows
  )
  return f'<table><tr>{head}</tr>{body}</table>'


SAME_CASES = 'Selected and reported on the same cases: optimistic.'
IN_SAMPLE = 'in sample (the calibrator was fitted on these cases)'
CALIBRATION_HEADER = [
    'Calibrator',
    'ECE debiased',
    'ECE debiased calibrated',
    'Change',
    'ECE 15 bins',
    'ECE 15 bins calibrated',
    'Brier',
    'Brier calibrated',
    'Note',
]


def same_cases(ev: Evaluation) -> bool:
  """Whether the model was chosen (and calibrated) on the reported cases:
  --split=validation, or no validation split."""
  return ev.pooled_split == ev.split


def calibrator_label(calibrator: dict) -> str:
  """A calibration block's calibrator in words: 'temperature, T = 0.812',
  'Platt, 1.03 z - 2.08', or 'not applied: <reason>'."""
  if not calibrator['applied']:
    return f'not applied: {calibrator["reason"]}'
  if calibrator['temperature'] is not None:
    return f'temperature, T = {calibrator["temperature"]:.3f}'
  b = calibrator['intercept']
  return (
      f'Platt, {calibrator["slope"]:.3f} z {"-" if b < 0 else "+"} {abs(b):.3f}'
  )


def calibration_note(block: dict) -> str:
  """IN_SAMPLE and TOO_FEW_CASES where they hold, else ''."""
  notes = [IN_SAMPLE] if block['in_sample'] else []
  if block['too_few_cases']:
    notes.append(
        f'{calibration.TOO_FEW_CASES} ({block["cases"]} cases, '
        f'{block["rarer_class_cases"]} of the rarer class)'
    )
  return '; '.join(notes)


def calibration_row(block: dict) -> list[str]:
  cells = [calibrator_label(block['calibrator'])]
  for name in (
      'ece_debiased',
      'ece_debiased_calibrated',
      'ece_debiased_change',
      'ece',
      'ece_calibrated',
      'brier',
      'brier_calibrated',
  ):
    cells.append(format_value(block[name], block['ci95'].get(name)))
  return cells + [calibration_note(block)]


def calibration_table(
    ev: Evaluation,
    members_list: Sequence[Sequence[str]],
    splits: Sequence[str] | None = None,
) -> Table:
  """Each members' calibration (soft-voted probability), single view and
  case level: the calibrator, the debiased and 15-bin ECE and the Brier
  score before and after it, the paired change of the debiased ECE, and a
  note (IN_SAMPLE, TOO_FEW_CASES). On the reported split; with `splits`, on
  each of them, in a first column."""
  rows = []
  for split in splits or [ev.split]:
    for members in members_list:
      for level in ('image', 'case'):
        b = ev.calibration.blocks.get(
            ResultKey(tuple(members), split, level, 'soft')
        )
        if b is None:
          continue
        rows.append(
            ([split] if splits else [])
            + [members_label(members), LEVEL_TITLES[level]]
            + calibration_row(b)
        )
  header = ['Model', 'Views', *CALIBRATION_HEADER]
  return Table.of((['Split'] if splits else []) + header, rows)


def case_votes(ev: Evaluation, members: Sequence[str], split: str) -> list[str]:
  """The case-level votes the members have entries for on `split`
  (voting.CASE_VOTINGS, then the stacked aggregator where fitted)."""
  return [
      vote
      for vote in (*voting.CASE_VOTINGS, aggregation.STACKED)
      if ResultKey(tuple(members), split, 'case', vote) in ev.results
  ]


def aggregation_table(ev: Evaluation) -> Table:
  """Each case vote of each run and of the honest protocol's chosen
  ensembles on the reported split: the validation ROC AUC it was chosen by
  (n/a without validation; stacked: out of fold) and the six metrics; the
  honest protocol's choice in bold."""
  members_list = [(n,) for n in ev.run_names]
  for (protocol, level, _), s in ev.protocols.items():
    if (protocol, level) == (
        'honest',
        'case',
    ) and s.members not in members_list:
      members_list.append(s.members)
  chosen = ev.aggregation
  rows = []
  for members in members_list:
    for vote in case_votes(ev, members, ev.split):
      e = ev.results[ResultKey(members, ev.split, 'case', vote)]
      val = ev.results.get(ResultKey(members, VALIDATION, 'case', vote))
      is_chosen = chosen is not None and (members, vote) == (
          chosen.members,
          chosen.voting,
      )
      rows.append(
          [
              model_label(ev, members),
              f'**{vote} (chosen)**' if is_chosen else vote,
              format_value(val.metrics['roc_auc'], ()) if val else 'n/a',
              *metric_cells(e),
          ]
      )
  header = ['Model', 'Case vote', 'Validation ROC AUC', *metric_headers()]
  return Table.of(header, rows)


def _subgroup_cell(s: Subgroup) -> str:
  return f'{s.field} = {s.value}' + (' †' if s.small else '')


def subgroup_table(
    ev: Evaluation, members: Sequence[str] | None = None
) -> Table:
  """The subgroups' soft-voting entries by model (of `members` only, when
  given), small ones marked † (SUBGROUP_FOOTNOTE)."""
  order = {n: i for i, n in enumerate(ev.run_names)}
  soft = sorted(
      (
          s
          for s in ev.subgroups
          if s.entry.voting == 'soft'
          and (members is None or s.entry.members == tuple(members))
      ),
      key=lambda s: (
          len(s.entry.members) > 1,
          [order[m] for m in s.entry.members],
      ),
  )
  rows = [
      [
          model_label(ev, s.entry.members),
          LEVEL_TITLES[s.entry.level],
          _subgroup_cell(s.subgroup),
          f'{s.subgroup.positives} / {s.subgroup.negatives}',
          *metric_cells(s.entry),
      ]
      for s in soft
  ]
  header = ['Model', 'Views', 'Subgroup', 'Fracture / normal']
  return Table.of(header + metric_headers(), rows)


SUBGROUP_FOOTNOTE = (
    f'† Fewer than {MIN_CLASS_COUNT} fractures or {MIN_CLASS_COUNT} '
    'normals: shown with its counts, but its intervals are wide and its '
    'metrics unstable.'
)


def has_small_subgroup(table: Table) -> bool:
  return any(' †' in row[2] for row in table.rows)


def write_csv(path: str, header: Sequence[str], rows) -> None:
  """Writes a CSV file: the header row, then `rows`."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)

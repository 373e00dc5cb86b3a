"""Shared rendering of the reporting writers (no writer itself): one number
and interval format, one table type with its markdown and HTML renderers,
and the tables more than one document shows.

Interval format (README): '0.975 [0.87, 1.00]': the value with 3 decimals,
its 95% interval with 2; '0.975' without an interval, 'n/a' if undefined.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import html
import re

from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation.evaluation import Evaluation
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


def calibration_table(
    ev: Evaluation,
    members_list: Sequence[Sequence[str]],
    splits: Sequence[str] | None = None,
) -> Table:
  """Each members' calibration (soft-voted probability), single view and
  case level: T, ECE and Brier before and after scaling. On the reported
  split; with `splits`, on each of them, in a first column ('(fitted here)'
  on the split the temperature was fitted on)."""
  header = ['Model', 'Views', 'T', 'ECE', 'ECE scaled', 'Brier', 'Brier scaled']
  rows = []
  for split in splits or [ev.split]:
    for members in members_list:
      for level in ('image', 'case'):
        b = ev.calibration.blocks.get(
            ResultKey(tuple(members), split, level, 'soft')
        )
        if b is None:
          continue
        t = 'n/a' if b['temperature'] is None else f'{b["temperature"]:.3f}'
        where = [split + (' (fitted here)' if b['fitted_on'] == split else '')]
        rows.append(
            (where if splits else [])
            + [members_label(members), LEVEL_TITLES[level], t]
            + [
                format_value(b[n], b['ci95'].get(n))
                for n in ('ece', 'ece_calibrated', 'brier', 'brier_calibrated')
            ]
        )
  return Table.of((['Split'] if splits else []) + header, rows)


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

"""What an evaluation writes for people: report.md, roc.png, confusion.png,
TensorBoard scalars, and the closing summary on the console.

Everything here reads a `results.Evaluation` (and, for the figures, the
predictions it came from); nothing is computed twice.

TensorBoard tags (all under `eval/`, valid TensorBoard names: letters,
digits, `_ - . /`):
  eval/<protocol>/<level>_<voting>/<metric>           the protocol's chosen
      ensemble on the split it is reported on (protocol: honest | paper);
  eval/<split>/<level>_<voting>/<metric>/<members>    every run and ensemble
      (split 'validation+test' is written `validation_and_test`, members are
      joined with '-');
  eval/operating_points/<level>_<name>/<sensitivity|specificity>/<members>.
Each scalar is written at the training step of the evaluated checkpoint; for
an ensemble of runs evaluated at different steps, at the largest of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import math
import os
import re

from matplotlib.figure import Figure
import numpy as np
from sklearn import metrics as sk
from tensorboardX import SummaryWriter

from ankle_jax import calibration
from ankle_jax import metrics as metrics_lib
from ankle_jax import voting
from ankle_jax.inference import SplitPredictions
from ankle_jax.results import LEVEL_TITLES
from ankle_jax.results import PROTOCOLS
from ankle_jax.results import Evaluation
from ankle_jax.results import OperatingPoint
from ankle_jax.results import ResultEntry
from ankle_jax.results import ResultKey
from ankle_jax.results import decide_split
from ankle_jax.subgroups import MIN_CLASS_COUNT
from ankle_jax.subgroups import Subgroup

FIGURE_DPI = 200
FILES = (
    'report.md',
    'results.json',
    'summary.json',
    'predictions.csv',
    'case_predictions.csv',
    'roc.png',
    'confusion.png',
    'reliability.png',
)
METRIC_TITLES = {
    'accuracy': 'Accuracy',
    'sensitivity': 'Sensitivity',
    'specificity': 'Specificity',
    'ppv': 'PPV',
    'npv': 'NPV',
    'roc_auc': 'ROC AUC',
}


# ------------------------------------------------------------ formatting
def format_value(value: float | None, ci: Sequence[float | None]) -> str:
  """'0.812 [0.70, 0.90]', '0.812' without an interval, 'n/a' if undefined."""
  if value is None:
    return 'n/a'
  if ci[0] is None:
    return f'{value:.3f}'
  return f'{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]'


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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return [
      '| ' + ' | '.join(header) + ' |',
      '|' + '---|' * len(header),
      *('| ' + ' | '.join(r) + ' |' for r in rows),
  ]


def _metric_cells(entry: ResultEntry) -> list[str]:
  return [
      format_value(entry.metrics[m], entry.ci95[m])
      for m in metrics_lib.METRIC_NAMES
  ]


# ------------------------------------------------------------- report.md
def _overview(ev: Evaluation) -> list[str]:
  """Runs and checkpoints, class counts, voting and the intervals."""
  lines = ['# Evaluation report', '', f'Reported split: `{ev.split}`.', '']
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
      '',
      '95% intervals: accuracy, sensitivity, specificity, PPV and NPV: '
      "Wilson score intervals over the rows' items (views at single-view "
      'level, cases at case level; the views of a case are correlated, so '
      'single-view intervals are optimistic). ROC AUC: percentile interval '
      f'of a case-level bootstrap ({ev.num_bootstrap} resamples).',
      '',
  ]


def _validation_source_note(ev: Evaluation) -> list[str]:
  """Where validation came from on an external test set (else nothing)."""
  if not ev.validation_source:
    return []
  return [
      '',
      f'External test set: validation (the temperature, the operating points '
      f"and the honest protocol's choice) comes from the runs' own dataset, "
      f'{ev.validation_source}.',
  ]


def _multiview_note(ev: Evaluation) -> list[str]:
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


def _protocol_section(ev: Evaluation, protocol: str, vote: str) -> list[str]:
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
      rows.append([run_label(ev, name), LEVEL_TITLES[level], *_metric_cells(e)])
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
      rows.append([label, LEVEL_TITLES[level], *_metric_cells(e)])
  header = ['Model', 'Views'] + [
      METRIC_TITLES[m] for m in metrics_lib.METRIC_NAMES
  ]
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


def _operating_points_section(ev: Evaluation) -> list[str]:
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


def _subgroup_cell(s: Subgroup) -> str:
  return f'{s.field} = {s.value}' + (' †' if s.small else '')


def subgroup_section(ev: Evaluation) -> list[str]:
  """The subgroups' soft-voting entries, by model; small ones flagged with a
  dagger and a footnote (nothing without subgroups)."""
  if not ev.subgroups:
    return []
  order = {n: i for i, n in enumerate(ev.run_names)}
  soft = sorted(
      (s for s in ev.subgroups if s.entry.voting == 'soft'),
      key=lambda s: (
          len(s.entry.members) > 1,
          [order[m] for m in s.entry.members],
      ),
  )
  rows = [
      [
          run_label(ev, s.entry.members[0])
          if len(s.entry.members) == 1
          else members_label(s.entry.members),
          LEVEL_TITLES[s.entry.level],
          _subgroup_cell(s.subgroup),
          f'{s.subgroup.positives} / {s.subgroup.negatives}',
          *_metric_cells(s.entry),
      ]
      for s in soft
  ]
  header = ['Model', 'Views', 'Subgroup', 'Fracture / normal'] + [
      METRIC_TITLES[m] for m in metrics_lib.METRIC_NAMES
  ]
  models = (
      "Each single run and the honest protocol's chosen ensembles"
      if ev.headline_protocol == 'honest'
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
      *_table(header, rows),
  ]
  if any(s.subgroup.small for s in soft):
    lines += [
        '',
        f'† Fewer than {MIN_CLASS_COUNT} fractures or {MIN_CLASS_COUNT} '
        'normals: shown with its counts, but its intervals are wide and its '
        'metrics unstable.',
    ]
  return lines + ['']


def write_report(path: str, ev: Evaluation) -> None:
  """Writes report.md."""
  lines = _overview(ev)
  for vote in voting.VOTINGS:
    for protocol in PROTOCOLS:
      if (protocol, 'case', vote) in ev.protocols:
        lines += _protocol_section(ev, protocol, vote)
  lines += _operating_points_section(ev)
  lines += calibration.report_section(ev)
  lines += subgroup_section(ev)
  with open(path, 'w') as f:
    f.write('\n'.join(lines).rstrip('\n') + '\n')


def write_json(out_dir: str, ev: Evaluation) -> None:
  """results.json (a list of entries) and summary.json, each written once."""
  for name, data in (
      ('results.json', ev.results_json()),
      ('summary.json', ev.summary_json()),
  ):
    with open(os.path.join(out_dir, name), 'w') as f:
      json.dump(data, f, indent=1)


# ---------------------------------------------------------------- figures
def _decisions(
    preds: SplitPredictions, run_names: Sequence[str], members, level, vote
) -> voting.Decisions:
  idx = [run_names.index(m) for m in members]
  return decide_split(preds, idx, level, vote)


def _roc_label(ev: Evaluation, level: str, members, d) -> str:
  e = ev.results[ResultKey(tuple(members), ev.split, level, 'soft')]
  auc = format_value(e.metrics['roc_auc'], e.ci95['roc_auc'])
  positives = int(d.labels.sum())
  if level == 'image':
    n = f'{d.labels.size} views of {len(np.unique(d.clusters))} cases'
  else:
    n = f'{d.labels.size} cases'
  return f'{LEVEL_TITLES[level]}: AUC {auc}\n{n}, {positives} fracture'


def _mark_operating_points(ax, ops: Sequence[OperatingPoint], color) -> None:
  for op, marker in zip(ops, ('o', 's', '^', 'D')):
    if op.sensitivity is None or op.specificity is None:
      continue
    ax.plot(
        1.0 - op.specificity,
        op.sensitivity,
        marker,
        color=color,
        markeredgecolor='black',
        label=f'{op.name} (t = {format_threshold(op.threshold)}, chosen on '
        f'{op.chosen_on})',
    )


def plot_roc(
    path: str, ev: Evaluation, preds: SplitPredictions, protocol: str
) -> None:
  """ROC of the protocol's best ensemble (case level, hard voting) on the
  reported split: single view and case level, each with a case-bootstrap
  band and the operating points chosen for these members."""
  selection = ev.protocols[(protocol, 'case', 'hard')]
  members = selection.members
  fig = Figure(figsize=(6.5, 6.5), dpi=FIGURE_DPI)
  ax = fig.add_subplot()
  fpr_grid = np.linspace(0.0, 1.0, 101)
  for level, color in zip(voting.LEVELS, ('tab:blue', 'tab:orange')):
    d = _decisions(preds, ev.run_names, members, level, 'soft')
    if np.unique(d.labels).size < 2:
      continue
    fpr, tpr, _ = sk.roc_curve(d.labels, d.scores)
    ax.plot(fpr, tpr, color=color, label=_roc_label(ev, level, members, d))
    lo, hi = metrics_lib.bootstrap_roc_band(
        d.labels,
        d.scores,
        d.clusters,
        fpr_grid=fpr_grid,
        num_resamples=ev.num_bootstrap,
        seed=ev.seed,
    )
    ax.fill_between(fpr_grid, lo, hi, color=color, alpha=0.15, lw=0)
    ops = [
        op
        for op in ev.operating_points
        if op.members == members and op.level == level and op.split == ev.split
    ]
    _mark_operating_points(ax, ops, color)
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect='equal')
  ax.set_xlabel('1 - specificity')
  ax.set_ylabel('sensitivity')
  ax.set_title(
      f'ROC of {members_label(members)} on {ev.split}\n{protocol} protocol '
      f'(chosen on {selection.chosen_on}); bands: 95% case bootstrap',
      fontsize=9,
  )
  ax.legend(loc='lower right', fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=FIGURE_DPI)


def plot_confusion(
    path: str, ev: Evaluation, preds: SplitPredictions, protocol: str
) -> None:
  """Confusion matrices (hard voting) of the protocol's best ensemble."""
  members = ev.protocols[(protocol, 'case', 'hard')].members
  fig = Figure(figsize=(8, 4), dpi=FIGURE_DPI)
  axes = fig.subplots(1, 2)
  for ax, level in zip(axes, voting.LEVELS):
    d = _decisions(preds, ev.run_names, members, level, 'hard')
    cm = sk.confusion_matrix(d.labels, d.preds.astype(int), labels=[0, 1])
    sk.ConfusionMatrixDisplay(cm, display_labels=['normal', 'fracture']).plot(
        ax=ax, colorbar=False, cmap='Blues'
    )
    ax.set_title(LEVEL_TITLES[level])
  fig.suptitle(
      f'{members_label(members)} on {ev.split} (hard voting, {protocol} '
      'protocol)',
      fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=FIGURE_DPI)


# ------------------------------------------------------------ TensorBoard
def tag_part(text: str) -> str:
  """A valid TensorBoard tag component ('validation+test' ->
  'validation_and_test')."""
  return re.sub(r'[^\w.-]', '_', text.replace('+', '_and_'))


def members_tag(members: Sequence[str]) -> str:
  return '-'.join(tag_part(m) for m in members)


def tensorboard_scalars(ev: Evaluation) -> list[tuple[str, float, int]]:
  """(tag, value, step) of every scalar written (see the module docstring)."""
  out = []
  for (protocol, level, vote), s in ev.protocols.items():
    e = ev.results[s.reported_key()]
    for metric, value in e.metrics.items():
      if value is not None:
        tag = f'eval/{protocol}/{level}_{vote}/{metric}'
        out.append((tag, value, ev.step_of(e.members)))
  for e in ev.results.values():
    for metric, value in e.metrics.items():
      if value is not None:
        tag = (
            f'eval/{tag_part(e.split)}/{e.level}_{e.voting}/{metric}/'
            f'{members_tag(e.members)}'
        )
        out.append((tag, value, ev.step_of(e.members)))
  for op in ev.operating_points:
    for name in ('sensitivity', 'specificity'):
      value = getattr(op, name)
      if value is not None:
        tag = (
            f'eval/operating_points/{op.level}_{op.name}/{name}/'
            f'{members_tag(op.members)}'
        )
        out.append((tag, value, ev.step_of(op.members)))
  return out


def write_tensorboard(out_dir: str, ev: Evaluation) -> None:
  """The scalars as TensorBoard events in out_dir."""
  writer = SummaryWriter(out_dir)
  for tag, value, step in tensorboard_scalars(ev):
    writer.add_scalar(tag, value, step)
  writer.close()


def write_all(
    out_dir: str, ev: Evaluation, by_split: Mapping[str, SplitPredictions]
) -> None:
  """Every file of the evaluation but predictions.csv (written before)."""
  write_json(out_dir, ev)
  write_report(os.path.join(out_dir, 'report.md'), ev)
  protocol = ev.headline_protocol
  for name, plot in (('roc.png', plot_roc), ('confusion.png', plot_confusion)):
    plot(os.path.join(out_dir, name), ev, by_split[ev.split], protocol)
  write_tensorboard(out_dir, ev)


# ---------------------------------------------------------------- console
def console_summary(ev: Evaluation, out_dir: str) -> str:
  """The closing lines of `evaluate`: the headline protocol's case-level
  table and where the files are."""
  protocol = ev.headline_protocol
  s = ev.protocols[(protocol, 'case', 'hard')]
  c = ev.counts[s.reported_on]
  names = [(n,) for n in ev.run_names]
  for vote in voting.VOTINGS:
    best = ev.protocols[(protocol, 'case', vote)].members
    if len(best) > 1 and best not in names:
      names.append(best)
  metric_names = ('accuracy', 'sensitivity', 'specificity', 'roc_auc')
  header = f'  {"model":<24} {"voting":<6} ' + ' '.join(
      f'{METRIC_TITLES[m]:<18}' for m in metric_names
  )
  lines = [
      f'{protocol.title()} protocol, all views (case level): chosen on '
      f'{s.chosen_on}, reported on {s.reported_on} ({c.cases} cases: '
      f'{c.normal_cases} normal, {c.fracture_cases} fracture).',
      header.rstrip(),
  ]
  for members in names:
    for vote in voting.VOTINGS:
      e = ev.results[ResultKey(members, s.reported_on, 'case', vote)]
      cells = ' '.join(
          f'{format_value(e.metrics[m], e.ci95[m]):<18}' for m in metric_names
      )
      label = _shorten(members_label(members), 24)
      lines.append(f'  {label:<24} {vote:<6} {cells}'.rstrip())
  lines.append(
      f'Wrote {", ".join(FILES)} and TensorBoard events to {out_dir} '
      f'(tensorboard --logdir={out_dir}).'
  )
  return '\n'.join(lines)


def _shorten(text: str, width: int) -> str:
  if len(text) <= width:
    return text
  keep = max(math.floor((width - 3) / 2), 1)
  return f'{text[:keep]}...{text[-keep:]}'

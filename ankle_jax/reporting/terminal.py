"""The closing lines `evaluate` prints: the Headline, then the reported
split's case-level table of each run and the chosen ensembles, one row per
case vote (hard, soft, max, noisy_or, stacked where fitted), then the honest
protocol's case aggregation."""

from __future__ import annotations

from collections.abc import Sequence
import math

from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting.format import METRIC_TITLES
from ankle_jax.reporting.format import case_votes
from ankle_jax.reporting.format import format_value
from ankle_jax.reporting.format import members_label

METRICS = ('accuracy', 'sensitivity', 'specificity', 'roc_auc')


def _shorten(text: str, width: int) -> str:
  if len(text) <= width:
    return text
  keep = max(math.floor((width - 3) / 2), 1)
  return f'{text[:keep]}...{text[-keep:]}'


def summary(ev: Evaluation, out_dir: str, files: Sequence[str]) -> str:
  """The closing text (`files`: the names written to out_dir)."""
  h = ev.headline
  c = ev.counts[h.reported_on]
  names = [(n,) for n in ev.run_names]
  for vote in voting.VOTINGS:
    best = ev.protocols[(h.protocol, 'case', vote)].members
    if len(best) > 1 and best not in names:
      names.append(best)
  header = f'  {"model":<24} {"voting":<8} ' + ' '.join(
      f'{METRIC_TITLES[m]:<18}' for m in METRICS
  )
  lines = [
      f'Headline: {h.label}, {h.rule.replace("`", "")}, reported on '
      f'{h.reported_on} ({c.cases} cases: {c.normal_cases} normal, '
      f'{c.fracture_cases} fracture).',
      f'{h.protocol.title()} protocol, all views (case level):',
      header.rstrip(),
  ]
  for members in names:
    for vote in case_votes(ev, members, h.reported_on):
      e = ev.results[ResultKey(members, h.reported_on, 'case', vote)]
      cells = ' '.join(
          f'{format_value(e.metrics[m], e.ci95[m]):<18}' for m in METRICS
      )
      label = _shorten(members_label(members), 24)
      mark = '*' if (members, vote) == (h.members, h.voting) else ' '
      lines.append(f'{mark} {label:<24} {vote:<8} {cells}'.rstrip())
  if ev.aggregation is not None:
    a = ev.aggregation
    e = ev.results[a.reported_key()]
    lines.append(
        f'Case aggregation chosen on {a.chosen_on} ({METRIC_TITLES[a.metric]}'
        f'): {a.voting} ({members_label(a.members)}); on {a.reported_on}: '
        f'ROC AUC {format_value(e.metrics["roc_auc"], e.ci95["roc_auc"])}.'
    )
  lines.append(
      f'(* the Headline.) Wrote {", ".join(files)} and TensorBoard events to '
      f'{out_dir} (tensorboard --logdir={out_dir}).'
  )
  return '\n'.join(lines)

r"""Multi-view models against per-view voting, over seeds: the README's table.

Reads evaluate outputs (one per seed), each made from one per-view run and
multi-view runs trained on the same data with the same seed, e.g.

  python -m ankle_jax.evaluate --runs=runs/mv_exp/demo_s0,\
runs/mv_exp/attention_s0,runs/mv_exp/mean_s0,runs/mv_exp/max_s0 \
      --split=test --out=runs/mv_exp/eval_s0

and prints, for the reported split at case level, each kind of run's ROC AUC
and accuracy with their 95% intervals (results.json) per seed and their mean
over seeds, then the paired difference of ROC AUC between a multi-view run
and the per-view run's soft vote with DeLong's paired interval
(ankle_jax.evaluation.auc.paired_difference, on case_predictions.csv; "not
measurable" where both AUCs are 1.0).

Usage:
  python benchmarks/multiview_vs_voting.py --evals=DIR1,DIR2,DIR3 \
      [--baseline=demo] [--kinds=attention,mean,max]

A run's kind is its name up to the last '_' (demo_s0 -> demo). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np

from ankle_jax.evaluation import auc
from ankle_jax.reporting.format import format_value


def kind_of(run: str) -> str:
  return run.rsplit('_', 1)[0]


def case_entries(eval_dir: str) -> dict[tuple[str, str], dict]:
  """{(kind, voting): entry} of the single runs at case level, reported
  split."""
  with open(os.path.join(eval_dir, 'summary.json')) as f:
    split = json.load(f)['split']
  with open(os.path.join(eval_dir, 'results.json')) as f:
    entries = json.load(f)
  return {
      (kind_of(e['members'][0]), e['voting']): e
      for e in entries
      if len(e['members']) == 1
      and e['level'] == 'case'
      and e['split'] == split
      and not e.get('subgroup')
  }


def case_probabilities(eval_dir: str, split: str) -> dict[str, dict]:
  """{kind: {case_id: (label, probability)}} from case_predictions.csv."""
  out: dict[str, dict] = {}
  with open(os.path.join(eval_dir, 'case_predictions.csv'), newline='') as f:
    for row in csv.DictReader(f):
      if row['split'] == split:
        out.setdefault(kind_of(row['run']), {})[row['case_id']] = (
            int(row['label']),
            float(row['probability']),
        )
  return out


def paired_difference(probs, kind, baseline) -> auc.AucDifference:
  """AUC(kind) - AUC(baseline) on the baseline's cases (DeLong, paired)."""
  cases = sorted(probs[baseline])
  labels = np.array([probs[baseline][c][0] for c in cases])
  score = lambda k: np.array([probs[k][c][1] for c in cases])
  return auc.paired_difference(labels, score(kind), score(baseline))


def fmt(entry, metric):
  return format_value(entry['metrics'][metric], entry['ci95'][metric])


def markdown_table(table, kinds, differences, baseline) -> str:
  """The README's table: per seed, case-level ROC AUC and accuracy with
  their intervals, and AUC minus the per-view soft vote's."""
  num_seeds = len(next(iter(table.values())))
  header = ['model (test, case level)'] + [
      f'seed {s}: ROC AUC / accuracy' for s in range(num_seeds)
  ]
  header += ['mean AUC / accuracy', 'AUC - soft vote, per seed']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for (kind, vote), entries in table.items():
    name = f'multi-view, {kind}' if kind in kinds else f'{kind}, {vote} vote'
    cells = [f'{fmt(e, "roc_auc")} / {fmt(e, "accuracy")}' for e in entries]
    aucs = [e['metrics']['roc_auc'] for e in entries]
    accs = [e['metrics']['accuracy'] for e in entries]
    diff = ''
    if kind in kinds:
      diff = '; '.join(d.describe() for d in differences[kind])
    cells += [f'{np.mean(aucs):.3f} / {np.mean(accs):.3f}', diff]
    lines.append('| ' + ' | '.join([name] + cells) + ' |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--evals', required=True)
  parser.add_argument('--baseline', default='demo')
  parser.add_argument('--kinds', default='attention,mean,max')
  args = parser.parse_args()
  kinds = args.kinds.split(',')
  rows = [(args.baseline, 'hard'), (args.baseline, 'soft')]
  rows += [(k, 'soft') for k in kinds]
  table = {row: [] for row in rows}
  differences = {k: [] for k in kinds}
  for eval_dir in args.evals.split(','):
    entries = case_entries(eval_dir)
    with open(os.path.join(eval_dir, 'summary.json')) as f:
      split = json.load(f)['split']
    probs = case_probabilities(eval_dir, split)
    for row in rows:
      table[row].append(entries[row])
    for kind in kinds:
      differences[kind].append(paired_difference(probs, kind, args.baseline))
  summary = {
      'rows': {},
      'auc_difference_vs_soft_vote': {
          k: [d.to_json() for d in diffs] for k, diffs in differences.items()
      },
  }
  for (kind, vote), entries in table.items():
    name = f'{kind} ({"multi-view" if kind in kinds else vote + " vote"})'
    aucs = [e['metrics']['roc_auc'] for e in entries]
    accs = [e['metrics']['accuracy'] for e in entries]
    print(
        f'{name:24s} AUC mean {np.mean(aucs):.3f} (sd {np.std(aucs):.3f}) '
        f'acc mean {np.mean(accs):.3f} (sd {np.std(accs):.3f}) | per seed: '
        + '; '.join(
            f'AUC {fmt(e, "roc_auc")} acc {fmt(e, "accuracy")}' for e in entries
        )
    )
    summary['rows'][name] = {'roc_auc': aucs, 'accuracy': accs}
  print(markdown_table(table, kinds, differences, args.baseline))
  for kind, diffs in differences.items():
    print(
        f'AUC({kind}) - AUC({args.baseline} soft vote): '
        + '; '.join(d.describe() for d in diffs)
    )
  print(json.dumps(summary))


if __name__ == '__main__':
  main()

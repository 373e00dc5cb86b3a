r"""Chooses a recipe by out-of-fold (OOF) ROC AUC across seeds: test untouched.

Each recipe (a config file and optional overrides) is cross-validated with
`python -m ankle_jax.crossval` once per seed, in ROOT/<recipe>/seed_<s>
(a finished cross-validation is skipped by crossval itself, so a search can
be stopped and started again). Then, from each workdir's
cv/oof_predictions.csv alone:
  * each recipe's OOF case-level ROC AUC (soft vote) per seed, with its
    DeLong interval, and the mean and sd over seeds;
  * for each pair of recipes and each seed, the paired OOF AUC difference
    (first - second) on the same cases with DeLong's paired interval
    (ankle_jax.evaluation.auc.paired_difference), and the mean of the
    per-fold paired differences (auc.stratified_paired_difference: each
    fold's AUC compares one fold model's scores only, so a shift of scale
    between fold models does not count against a recipe); both also on the
    seed-averaged OOF scores (each recipe's probability averaged over its
    seeds per case).

Usage:
  python benchmarks/recipe_search.py --root=runs/recipes --folds=5 \
      --seeds=0,1,2 \
      --recipe=r128=configs/fracatlas_cpu.py:image_size=128 \
      --recipe=r160=configs/fracatlas_cpu.py \
      [--no_train] [--checkpoint=latest] \
      [--config.<field>=<value> ... passed to every recipe]

A recipe is NAME=CONFIG[:FIELD=VALUE,FIELD=VALUE...] (fields as in
--config.FIELD=VALUE). --no_train only reads what the workdirs hold. Other
flags (--checkpoint=latest: OOF from the last checkpoints, nothing chosen on
the OOF cases) go to crossval; every workdir's OOF must come from the same
kind of checkpoint. Writes ROOT/recipe_search.json and ROOT/recipe_search.md;
prints the markdown.
The folds depend only on the dataset and K, so every recipe and seed sees
the same OOF cases (the pairing needs it; a mismatch is an error).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # For `ankle_jax`.

from ankle_jax import crossval_runs  # noqa: E402
from ankle_jax.evaluation import auc as auc_lib  # noqa: E402
from ankle_jax.evaluation import oof as oof_lib  # noqa: E402
from ankle_jax.evaluation import voting  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A named config file with its --config overrides ('field=value')."""

  name: str
  config: str
  overrides: tuple[str, ...] = ()

  @classmethod
  def parse(cls, text: str) -> Recipe:
    """NAME=CONFIG[:FIELD=VALUE,...]."""
    name, sep, rest = text.partition('=')
    if not sep or not name or not rest:
      raise ValueError(f'--recipe={text}: expected NAME=CONFIG[:F=V,...]')
    config, _, overrides = rest.partition(':')
    return cls(name, config, tuple(o for o in overrides.split(',') if o))


def workdir_of(root: str, recipe: Recipe, seed: int) -> str:
  return os.path.join(root, recipe.name, f'seed_{seed}')


def crossval_command(
    recipe: Recipe, workdir: str, folds: int, seed: int, extra: list[str]
) -> list[str]:
  """The crossval command line of one recipe and seed."""
  return [
      sys.executable,
      '-m',
      'ankle_jax.crossval',
      f'--config={recipe.config}',
      f'--workdir={workdir}',
      f'--folds={folds}',
      f'--config.seed={seed}',
      *(f'--config.{o}' for o in recipe.overrides),
      *extra,
  ]


def case_scores(workdir: str, folds: int) -> dict[str, tuple[int, float, int]]:
  """{case_id: (label, OOF case probability, fold)} of a crossval
  workdir."""
  path = os.path.join(crossval_runs.cv_dir(workdir), crossval_runs.OOF_FILE)
  names = [crossval_runs.fold_name(k) for k in range(folds)]
  oof = oof_lib.read_oof_csv(path, names)
  cases = oof.preds.cases()
  probs_c = voting.run_case_probs(oof.preds.probs_rv, cases)[0]
  fold_of = oof.fold_of_case()
  return {
      c: (int(y), float(p), fold_of[c])
      for c, y, p in zip(cases.case_ids_c, cases.labels_c, probs_c)
  }


def checkpoint_kind(workdir: str) -> str:
  """'best', 'latest' or 'mixed': the fold checkpoints behind a workdir's OOF
  predictions (cv/results.json)."""
  path = os.path.join(crossval_runs.cv_dir(workdir), crossval_runs.RESULTS_FILE)
  with open(path) as f:
    kinds = {c['which'] for c in json.load(f)['checkpoints'].values()}
  return kinds.pop() if len(kinds) == 1 else 'mixed'


def aligned(
    scores: dict[str, dict[str, tuple[int, float, int]]],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """(labels [n], folds [n], {key: scores [n]}) of case_scores dicts over
  the same cases (sorted by case id).

  Raises:
    ValueError: the OOF case sets or their folds differ.
  """
  keys = list(scores)
  case_ids = sorted(scores[keys[0]])
  for key in keys[1:]:
    if sorted(scores[key]) != case_ids:
      raise ValueError(
          f'{key} and {keys[0]} have different OOF cases: not the same '
          'dataset (or folds); they cannot be paired.'
      )
    if any(scores[key][c][2] != scores[keys[0]][c][2] for c in case_ids):
      raise ValueError(f'{key} and {keys[0]} put cases in different folds.')
  labels = np.array([scores[keys[0]][c][0] for c in case_ids])
  folds = np.array([scores[keys[0]][c][2] for c in case_ids])
  return (
      labels,
      folds,
      {k: np.array([s[c][1] for c in case_ids]) for k, s in scores.items()},
  )


def summarize(
    recipes: list[Recipe],
    seeds: list[int],
    scores_of: dict[str, np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    checkpoint: str,
) -> dict:
  """The per-recipe AUCs and the pairwise paired differences, of the pooled
  OOF scores and fold-stratified (checkpoint: the fold checkpoints of every
  workdir, 'best' or 'latest')."""
  out = {
      'checkpoint': checkpoint,
      'recipes': {},
      'pairs': [],
      'cases': int(labels.size),
      'fractured': int(labels.sum()),
  }
  for r in recipes:
    per_seed = {}
    for s in seeds:
      i = auc_lib.delong_interval(labels, scores_of[f'{r.name}/{s}'])
      per_seed[s] = dataclasses.asdict(i)
    aucs = np.array([v['auc'] for v in per_seed.values()])
    mean_scores = np.mean([scores_of[f'{r.name}/{s}'] for s in seeds], axis=0)
    out['recipes'][r.name] = {
        'config': r.config,
        'overrides': list(r.overrides),
        'oof_roc_auc_per_seed': per_seed,
        'oof_roc_auc_mean': float(aucs.mean()),
        'oof_roc_auc_sd': float(aucs.std(ddof=1)) if aucs.size > 1 else None,
        'oof_roc_auc_seed_averaged': dataclasses.asdict(
            auc_lib.delong_interval(labels, mean_scores)
        ),
    }
    scores_of[f'{r.name}/mean'] = mean_scores
  for a, b in itertools.combinations(recipes, 2):
    for s in [*seeds, 'mean']:
      pair = (labels, scores_of[f'{a.name}/{s}'], scores_of[f'{b.name}/{s}'])
      d = auc_lib.paired_difference(*pair)
      by_fold = auc_lib.stratified_paired_difference(*pair, folds)
      out['pairs'].append(
          {
              'first': a.name,
              'second': b.name,
              'seed': s,
              **d.to_json(),
              'described': d.describe(),
              'fold_stratified': {
                  **by_fold.to_json(),
                  'described': by_fold.describe(),
              },
          }
      )
  return out


def markdown(summary: dict) -> str:
  lines = [
      f"OOF cases: {summary['cases']} ({summary['fractured']} fractured); "
      'case level, soft vote; DeLong 95% intervals; fold models: their '
      f"{summary['checkpoint']} checkpoints.",
      '',
      '| Recipe | OOF ROC AUC per seed | mean (sd) | seed-averaged scores |',
      '|---|---|---|---|',
  ]
  for name, r in summary['recipes'].items():
    seeds = ', '.join(
        f"{s}: {v['auc']:.3f} [{v['lo']:.2f}, {v['hi']:.2f}]"
        for s, v in r['oof_roc_auc_per_seed'].items()
    )
    sd = r['oof_roc_auc_sd']
    avg = r['oof_roc_auc_seed_averaged']
    lines.append(
        f"| {name} | {seeds} | {r['oof_roc_auc_mean']:.3f}"
        f" ({'n/a' if sd is None else f'{sd:.3f}'}) | "
        f"{avg['auc']:.3f} [{avg['lo']:.2f}, {avg['hi']:.2f}] |"
    )
  lines += [
      '',
      "Paired differences [95%]: of the pooled OOF scores' AUC, and the mean "
      'of the per-fold differences (fold-stratified: a shift of scale '
      'between fold models does not count).',
      '',
      '| First - second | Seed | Pooled OOF | Fold-stratified (mean per-fold'
      ' AUCs) |',
      '|---|---|---|---|',
  ]
  for p in summary['pairs']:
    f = p['fold_stratified']
    lines.append(
        f"| {p['first']} - {p['second']} | {p['seed']} | {p['described']} |"
        f" {f['described']} ({f['auc_a']:.3f} vs {f['auc_b']:.3f}) |"
    )
  return '\n'.join(lines) + '\n'


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--recipe', action='append', required=True)
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--no_train', action='store_true')
  args, extra = parser.parse_known_args(argv)
  recipes = [Recipe.parse(t) for t in args.recipe]
  seeds = [int(s) for s in args.seeds.split(',')]
  if len(recipes) < 2 or len({r.name for r in recipes}) < len(recipes):
    parser.error('give at least two --recipe with different names')
  scores, kinds = {}, {}
  for r, s in itertools.product(recipes, seeds):
    workdir = workdir_of(args.root, r, s)
    if not args.no_train:
      command = crossval_command(r, workdir, args.folds, s, extra)
      print(' '.join(command), flush=True)
      if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode:
        return 1
    scores[f'{r.name}/{s}'] = case_scores(workdir, args.folds)
    kinds[workdir] = checkpoint_kind(workdir)
  if len(set(kinds.values())) != 1 or 'mixed' in kinds.values():
    parser.error(
        f'the OOF predictions come from different checkpoints ({kinds}): '
        'run crossval again with one --checkpoint=best|latest for all'
    )
  labels, folds, scores_of = aligned(scores)
  summary = summarize(
      recipes, seeds, scores_of, labels, folds, kinds.popitem()[1]
  )
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, 'recipe_search.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  text = markdown(summary)
  with open(os.path.join(args.root, 'recipe_search.md'), 'w') as f:
    f.write(text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

r"""The per-view demo, the multi-view demo from scratch and the multi-view
demo warm-started from that per-view run, over seeds: issue 27's experiment.

For each seed s, under ROOT/s<s>/ (each training under `nice -n 5`, one at a
time, each resumable: run the script again to continue):

  python launch.py --config=configs/multiview_demo.py --workdir=ROOT/s<s>/warm \
      --config.seed=s --config.data.synthetic.fracture_view_prob=P
      (two stages: the per-view demo in ROOT/s<s>/warm/per_view, then the
      multi-view model warm-started from its best checkpoint)
  python launch.py --config=configs/multiview_demo.py \
      --workdir=ROOT/s<s>/scratch --config.model.multiview.per_view_steps=0 \
      --config.seed=s --config.data.synthetic.fracture_view_prob=P
  python -m ankle_jax.evaluate --runs=ROOT/s<s>/warm/per_view,\
ROOT/s<s>/warm,ROOT/s<s>/scratch --split=test --out=ROOT/s<s>/eval

then prints, per seed and row, the test split's case-level ROC AUC with its
DeLong interval (results.json), AUC minus the per-view soft vote's (DeLong,
paired on the same cases), accuracy at 0.5 and at the threshold chosen on
validation (Youden's J of that row's own case scores: the per-view run's
view probabilities combined by its vote, mean / max / noisy-OR, from
predictions.csv; a multi-view run's case probability), and the compute:
training steps (per-view + multi-view) and images through the trunk
(multi-view: cases x 3 view slots, padding included). The hard vote's ROC
AUC is the soft vote's score's; it has no threshold of its own.

Usage:
  python benchmarks/multiview_warm_start.py --root=/tmp/mv_warm --seeds=0,1,2
  python benchmarks/multiview_warm_start.py --root=... --seeds=0 --no_train

The data are the demo's synthetic cases (data seed 0) with a fracture in
each view of a fracture case with probability P (default 0.5); the seed is
config.seed (initialization, data order, augmentation). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import multiview_vs_voting  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # For `ankle_jax`.

from ankle_jax.evaluation import voting  # noqa: E402

CONFIG = 'configs/multiview_demo.py'
# Row name -> (run directory under ROOT/s<s>, voting rule in results.json).
ROWS = {
    'per-view demo, soft vote': ('warm/per_view', 'soft'),
    'per-view demo, hard vote': ('warm/per_view', 'hard'),
    'per-view demo, max vote': ('warm/per_view', 'max'),
    'per-view demo, noisy-OR vote': ('warm/per_view', 'noisy_or'),
    'multi-view from scratch': ('scratch', 'soft'),
    'multi-view warm-started': ('warm', 'soft'),
}
BASELINE = 'per-view demo, soft vote'


def run_command(args: list[str], log: pathlib.Path) -> None:
  """Runs one command (niced) with its output in `log`; raises on failure."""
  log.parent.mkdir(parents=True, exist_ok=True)
  print('$ ' + ' '.join(args), flush=True)
  with open(log, 'a') as out:
    subprocess.run(
        ['nice', '-n', '5', sys.executable, *args],
        cwd=REPO_ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        check=True,
    )


def train_and_evaluate_seed(root: pathlib.Path, seed: int, prob: float):
  """The two trainings and the evaluation of one seed (module docstring)."""
  common = [
      f'--config={CONFIG}',
      f'--config.seed={seed}',
      f'--config.data.synthetic.fracture_view_prob={prob}',
      '--config.progress_bar=False',
  ]
  run_command(
      ['launch.py', f'--workdir={root}/warm', *common], root / 'warm.log'
  )
  run_command(
      [
          'launch.py',
          f'--workdir={root}/scratch',
          *common,  # --config first: absl reads overrides after it.
          '--config.model.multiview.per_view_steps=0',
      ],
      root / 'scratch.log',
  )
  run_dirs = dict.fromkeys(str(root / run_dir) for run_dir, _ in ROWS.values())
  runs = ','.join(run_dirs)
  run_command(
      [
          '-m',
          'ankle_jax.evaluate',
          f'--runs={runs}',
          '--split=test',
          f'--out={root}/eval',
      ],
      root / 'eval.log',
  )


def read_json(path: pathlib.Path):
  with open(path) as f:
    return json.load(f)


def compute_of(run_dir: pathlib.Path) -> tuple[int, int, int]:
  """(per-view steps, multi-view steps, images through the trunk) of a run,
  its per-view stage included (init_from)."""
  config = read_json(run_dir / 'config.json')
  steps = read_json(run_dir / 'summary.json')['final_step']
  views = config['model']['multiview']
  if not views['enabled']:
    return steps, 0, steps * config['batch_size']
  images = steps * config['batch_size'] * views['max_views']
  if views.get('init_from'):
    pv_steps, _, pv_images = compute_of(pathlib.Path(views['init_from']))
    return pv_steps, steps, pv_images + images
  return 0, steps, images


def read_rows(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def case_scores(eval_dir: pathlib.Path, run: str, vote: str, split: str):
  """{case_id: (label, score)} of one run on `split`: a multi-view run's own
  case probability (case_predictions.csv), or a per-view run's view
  probabilities (predictions.csv) combined by `vote` (voting.case_vote_probs,
  as evaluate combines them)."""
  case_rows = [
      r for r in read_rows(eval_dir / 'case_predictions.csv')
      if r['run'] == run and r['split'] == split
  ]  # fmt: skip
  if any(r['kind'] == 'multi_view' for r in case_rows):
    return {r['case_id']: (int(r['label']), float(r['probability']))
            for r in case_rows}  # fmt: skip
  view_rows = [
      r for r in read_rows(eval_dir / 'predictions.csv')
      if r['run'] == run and r['split'] == split
  ]  # fmt: skip
  case_ids = np.array([r['case_id'] for r in view_rows])
  labels = np.array([int(r['label']) for r in view_rows])
  cases = voting.index_cases(case_ids, labels)
  scores = voting.case_vote_probs(
      np.array([float(r['probability']) for r in view_rows]), cases, vote
  )
  return {
      c: (int(y), float(p))
      for c, y, p in zip(cases.case_ids_c, cases.labels_c, scores)
  }


def youden_accuracy(validation: dict, reported: dict) -> float:
  """Accuracy on `reported` ({case: (label, score)}) at the threshold that
  maximizes sensitivity + specificity on `validation` (score >= t; among
  equal J the lowest score, unlike metrics.youden_threshold: the README's
  table was measured so)."""
  labels = np.array([y for y, _ in validation.values()])
  scores = np.array([p for _, p in validation.values()])
  best_t, best_j = 0.5, -np.inf
  for t in np.unique(scores):
    pred = scores >= t
    j = pred[labels == 1].mean() + (~pred[labels == 0]).mean()
    if j > best_j:
      best_t, best_j = t, j
  right = [(p >= best_t) == bool(y) for y, p in reported.values()]
  return float(np.mean(right))


def seed_rows(root: pathlib.Path) -> dict[str, dict]:
  """{row name: its numbers} of one evaluated seed."""
  eval_dir = root / 'eval'
  summary = read_json(eval_dir / 'summary.json')
  split = summary['split']
  entries = {
      (e['members'][0], e['voting']): e
      for e in read_json(eval_dir / 'results.json')
      if len(e['members']) == 1
      and e['level'] == 'case'
      and e['split'] == split
      and not e.get('subgroup')
  }
  names = {row: os.path.basename(ROWS[row][0]) for row in ROWS}
  scores = {}
  for row, (_, vote) in ROWS.items():
    if vote != 'hard':
      scores[row] = {
          s: case_scores(eval_dir, names[row], vote, s)
          for s in ('validation', split)
      }
  test_scores = {row: pair[split] for row, pair in scores.items()}
  out = {}
  for row, (run_dir, vote) in ROWS.items():
    entry = entries[(names[row], vote)]
    pv, mv, images = compute_of(root / run_dir)
    out[row] = {
        'roc_auc': multiview_vs_voting.fmt(entry, 'roc_auc'),
        'auc': entry['metrics']['roc_auc'],
        'accuracy': entry['metrics']['accuracy'],
        'youden_accuracy': (
            youden_accuracy(scores[row]['validation'], scores[row][split])
            if row in scores
            else None
        ),
        'steps': f'{pv} + {mv}',
        'images': images,
    }
    if row in scores and row != BASELINE:
      out[row]['vs_soft_vote'] = multiview_vs_voting.paired_difference(
          test_scores, row, BASELINE
      ).describe()
  return out


def markdown(per_seed: dict[int, dict]) -> str:
  header = (
      '| seed | model (test, case level) | ROC AUC [95% DeLong] | AUC - soft'
      ' vote (paired DeLong) | accuracy at 0.5 / at val Youden | steps '
      '(per-view + multi-view) | images through the trunk |'
  )
  lines = [header, '|' + '---|' * 7]
  for seed, rows in per_seed.items():
    for name, r in rows.items():
      youden = r['youden_accuracy']
      acc = f'{r["accuracy"]:.3f} / ' + (
          f'{youden:.3f}' if youden is not None else '-'
      )
      lines.append(
          f'| {seed} | {name} | {r["roc_auc"]} | {r.get("vs_soft_vote", "")} '
          f'| {acc} | {r["steps"]} | {r["images"]:,} |'
      )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--fracture_view_prob', type=float, default=0.5)
  parser.add_argument('--no_train', action='store_true')
  args = parser.parse_args()
  per_seed = {}
  for seed in (int(s) for s in args.seeds.split(',')):
    root = pathlib.Path(args.root).resolve() / f's{seed}'
    if not args.no_train:
      train_and_evaluate_seed(root, seed, args.fracture_view_prob)
    per_seed[seed] = seed_rows(root)
  print(markdown(per_seed))
  for name in ROWS:
    aucs = [rows[name]['auc'] for rows in per_seed.values()]
    print(f'{name:28s} AUC mean {np.mean(aucs):.3f} over {len(aucs)} seed(s)')
  print(json.dumps({str(s): rows for s, rows in per_seed.items()}))


if __name__ == '__main__':
  main()

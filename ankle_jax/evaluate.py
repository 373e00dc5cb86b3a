r"""Evaluates trained runs, alone and as ensembles, at image and case level.

  python -m ankle_jax.evaluate --runs=RUN1,RUN2,... --split=test --out=OUT \
      [--checkpoint=best|latest] [--data_dir=DIR] [--dataset_config=NAME] \
      [--max_subsets=N] [--num_bootstrap=2000] [--seed=0] [--batch_size=16]

How it works:

1. Each run's config.json and checkpoint are restored.
2. Runs of the same architecture and shape (model name, aux head, width,
   family kwargs, image size, dtype) are stacked along a leading runs axis and
   applied with ONE jitted `jax.vmap` over runs, on batches of views; groups
   of different architectures go in a Python loop. Every model runs once over
   each split needed: the asked split and `validation` (for the honest
   protocol and the operating points).
3. The fracture probabilities are written to predictions.csv and everything
   else is computed from that file alone, with array operations
   (ankle_jax.voting and ankle_jax.metrics): per model and per odd-size
   ensemble, image and case level, hard and soft voting, the six metrics with
   case-level bootstrap 95% CIs.

Protocols:
  paper:  the best subset chosen on validation+test pooled and reported on the
          same pooled cases, as the authors did (selection on the test data;
          shown only for comparison).
  honest: the best subset chosen on validation, reported on the asked split.
"Best" is the highest accuracy (--selection_metric), ties broken by ROC AUC,
then by the larger ensemble, then by the members' order.

Outputs in OUT:
  predictions.csv  columns run,case_id,view_index,label,probability,split: one
                   row per run and view, for the asked split and validation.
                   The case level uses exactly the views listed.
  results.json     a list of {members, level, voting, split, metrics, ci95}
                   for every subset x level (image|case) x voting (hard|soft)
                   x split (validation, the asked split, and the pooled
                   'validation+<split>', whose cases are (split, case_id)).
  summary.json     the protocols' selections and the operating points.
  report.md        Table-4-style tables for both protocols, operating points.
  roc.png          single-view vs case-level ROC of the best ensemble.
  confusion.png    its confusion matrices (hard voting).
  events.out.tfevents.*  the results' scalars for TensorBoard.

Case identifiers are the dataset's salted hashes; nothing else identifying is
written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import csv
import dataclasses
import json
import math
import os
import pathlib
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ankle_jax import metrics as metrics_lib
from ankle_jax import voting

PREDICTION_COLUMNS = (
    'run',
    'case_id',
    'view_index',
    'label',
    'probability',
    'split',
)
VALIDATION = 'validation'
PROTOCOLS = ('paper', 'honest')
LEVEL_TITLES = {'image': 'single view', 'case': 'all views (case)'}


# ------------------------------------------------------------------- runs
@dataclasses.dataclass
class Run:
  """One restored training run.

  Attributes:
    name: unique short name (the run directory's base name).
    workdir: the run directory.
    config: its ConfigDict.
    variables: {'params', 'batch_stats'} (numpy).
    step: the training step of the restored checkpoint.
  """

  name: str
  workdir: str
  config: Any
  variables: Any
  step: int


def unique_run_names(workdirs: Sequence[str]) -> list[str]:
  """Base names of the run directories, made unique with a '~k' suffix."""
  names, seen = [], {}
  for workdir in workdirs:
    name = os.path.basename(os.path.normpath(str(workdir))) or 'run'
    seen[name] = seen.get(name, 0) + 1
    names.append(name if seen[name] == 1 else f'{name}~{seen[name]}')
  return names


def load_runs(workdirs: Sequence[str], which: str = 'best') -> list[Run]:
  """Restores config and variables of each run directory."""
  from ankle_jax import checkpoint  # pylint: disable=g-import-not-at-top

  runs = []
  for name, workdir in zip(unique_run_names(workdirs), workdirs):
    config = checkpoint.load_run_config(workdir)
    variables, step = checkpoint.restore_variables(workdir, which=which)
    runs.append(
        Run(
            name=name,
            workdir=str(workdir),
            config=config,
            variables=variables,
            step=step,
        )
    )
    logging.info('Restored run %s (%s checkpoint, step %d).', name, which, step)
  return runs


def create_model(config):
  """The run's linen module (train.create_model; dropout is inactive here)."""
  from ankle_jax import train  # pylint: disable=g-import-not-at-top

  return train.create_model(config)


def model_group_key(config) -> str:
  """Runs with equal keys have the same architecture and input shape.

  Dropout is left out: it does not change the variables and is off in eval.
  """
  model = (
      config.model.to_dict()
      if hasattr(config.model, 'to_dict')
      else dict(config.model)
  )
  model.pop('dropout_rate', None)
  key = {
      'model': model,
      'image_size': int(config.image_size),
      'dtype': str(config.get('dtype', 'float32')),
  }
  return json.dumps(key, sort_keys=True, default=str)


def group_runs(configs: Sequence[Any]) -> dict[str, list[int]]:
  """{group key: [run indices]}, in the order the runs were given."""
  groups: dict[str, list[int]] = {}
  for i, config in enumerate(configs):
    groups.setdefault(model_group_key(config), []).append(i)
  return groups


def stack_variables(variables_list: Sequence[Any]) -> Any:
  """Stacks same-structure variable trees along a new leading runs axis."""
  structures = {str(jax.tree.structure(v)) for v in variables_list}
  if len(structures) != 1:
    raise ValueError(
        'Runs grouped together have different variable trees; '
        'were they trained with different model configs?'
    )
  return jax.tree.map(
      lambda *xs: np.stack([np.asarray(x) for x in xs]), *variables_list
  )


def make_forward(module) -> Callable[[Any, jax.Array], jax.Array]:
  """A jitted forward over stacked runs.

  Returns:
    f(variables_r, images_bhwc) -> fracture probabilities float32 [runs, B],
    with variables_r the runs-stacked variables and images_bhwc in [0, 1]
    (standardized per image here, as in training).
  """
  from ankle_jax.data import augment  # pylint: disable=g-import-not-at-top

  def one_run(variables, images_bhwc):
    outputs = module.apply(variables, images_bhwc, train=False)
    return jax.nn.softmax(outputs.logits.astype(jnp.float32), axis=-1)[:, 1]

  def forward(variables_r, images_bhwc):
    images = augment.standardize_per_image(images_bhwc.astype(jnp.float32))
    return jax.vmap(one_run, in_axes=(0, None))(variables_r, images)

  return jax.jit(forward)


# ------------------------------------------------------------ predictions
@dataclasses.dataclass
class SplitPredictions:
  """Every run's probability for every view of one split.

  Attributes:
    case_ids_v: str [views]. view_index_v: int [views]. labels_v: int [views].
    probs_rv: float64 [runs, views] fracture probabilities.
  """

  case_ids_v: np.ndarray
  view_index_v: np.ndarray
  labels_v: np.ndarray
  probs_rv: np.ndarray

  def cases(self) -> voting.CaseIndex:
    return voting.index_cases(self.case_ids_v, self.labels_v)


def _as_str(values) -> np.ndarray:
  return np.array(
      [
          v.decode() if isinstance(v, bytes) else str(v)
          for v in np.asarray(values).ravel()
      ],
      dtype=object,
  )


def predict_group(
    forward, variables_r, batches: Iterable[Mapping[str, Any]]
) -> SplitPredictions:
  """Runs one group's stacked models over a split's batches of views."""
  case_ids, view_index, labels, probs = [], [], [], []
  for batch in batches:
    mask = np.asarray(batch.get('mask', np.ones(len(batch['label']), bool)))
    probs_rb = np.asarray(forward(variables_r, jnp.asarray(batch['image'])))
    case_ids.append(_as_str(batch['case_id'])[mask])
    view_index.append(np.asarray(batch['view_index'])[mask])
    labels.append(np.asarray(batch['label'])[mask])
    probs.append(probs_rb[:, mask])
  if not case_ids:
    raise ValueError('The split has no views to evaluate.')
  return SplitPredictions(
      case_ids_v=np.concatenate(case_ids).astype(str),
      view_index_v=np.concatenate(view_index).astype(np.int64),
      labels_v=np.concatenate(labels).astype(np.int64),
      probs_rv=np.concatenate(probs, axis=1).astype(np.float64),
  )


def _align(reference: SplitPredictions, other: SplitPredictions) -> np.ndarray:
  """Indices putting `other`'s views in `reference`'s order."""
  position = {
      (c, int(v)): i
      for i, (c, v) in enumerate(zip(other.case_ids_v, other.view_index_v))
  }
  keys = list(zip(reference.case_ids_v, reference.view_index_v))
  if len(position) != len(keys) or any(
      (c, int(v)) not in position for c, v in keys
  ):
    raise ValueError('Model groups saw different views of the same split.')
  return np.array([position[(c, int(v))] for c, v in keys])


def predict_split(
    runs: Sequence[Run],
    batches_for: Callable[[int], Iterable[Mapping[str, Any]]],
) -> SplitPredictions:
  """All runs' probabilities on one split: one vmapped forward per group.

  Args:
    runs: the restored runs.
    batches_for: image_size -> iterable of eval batches ('image' [B,S,S,1] in
      [0, 1], 'label', 'case_id', 'view_index', 'mask').

  Returns:
    SplitPredictions with probs_rv in the order of `runs`.
  """
  groups = group_runs([r.config for r in runs])
  result, probs_rv = None, None
  for key, indices in groups.items():
    module = create_model(runs[indices[0]].config)
    variables_r = stack_variables([runs[i].variables for i in indices])
    image_size = int(runs[indices[0]].config.image_size)
    logging.info(
        'Evaluating %d run(s) of %s at %d px.',
        len(indices),
        runs[indices[0]].config.model.name,
        image_size,
    )
    group = predict_group(
        make_forward(module), variables_r, batches_for(image_size)
    )
    if result is None:
      result = group
      probs_rv = np.zeros((len(runs), len(group.labels_v)))
      order = np.arange(len(group.labels_v))
    else:
      order = _align(result, group)
    probs_rv[indices] = group.probs_rv[:, order]
    del key
  result.probs_rv = probs_rv
  return result


def pipeline_batches(
    data_dir: str, split: str, dataset_config: str, batch_size: int
) -> Callable[[int], Iterator]:
  """batches_for(image_size) over a TFDS split (ankle_jax.data.pipeline)."""
  from ankle_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  source = pipeline.load_split(data_dir, split, dataset_config=dataset_config)

  def batches_for(image_size):
    return pipeline.iterate_eval_batches(
        source, batch_size=batch_size, image_size=image_size
    )

  return batches_for


# ------------------------------------------------------- predictions.csv
def write_predictions_csv(
    path: str,
    run_names: Sequence[str],
    by_split: Mapping[str, SplitPredictions],
) -> None:
  """One row per run and view; probabilities written exactly (repr)."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(PREDICTION_COLUMNS)
    for split, preds in by_split.items():
      for r, run in enumerate(run_names):
        for v in range(len(preds.labels_v)):
          writer.writerow(
              [
                  run,
                  preds.case_ids_v[v],
                  int(preds.view_index_v[v]),
                  int(preds.labels_v[v]),
                  repr(float(preds.probs_rv[r, v])),
                  split,
              ]
          )


def read_predictions_csv(
    path: str,
) -> tuple[list[str], dict[str, SplitPredictions]]:
  """Reads predictions.csv back: (run names, {split: SplitPredictions})."""
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f'{path} has no rows.')
  missing = set(PREDICTION_COLUMNS[:5]) - set(rows[0])
  if missing:
    raise ValueError(f'{path} lacks the column(s) {sorted(missing)}.')
  run_names = list(dict.fromkeys(r['run'] for r in rows))
  run_index = {n: i for i, n in enumerate(run_names)}
  by_split: dict[str, SplitPredictions] = {}
  split_names = list(dict.fromkeys(r.get('split', 'test') for r in rows))
  for split in split_names:
    split_rows = [r for r in rows if r.get('split', 'test') == split]
    views = list(
        dict.fromkeys((r['case_id'], int(r['view_index'])) for r in split_rows)
    )
    view_pos = {k: i for i, k in enumerate(views)}
    probs_rv = np.full((len(run_names), len(views)), np.nan)
    labels_v = np.zeros(len(views), np.int64)
    for r in split_rows:
      v = view_pos[(r['case_id'], int(r['view_index']))]
      probs_rv[run_index[r['run']], v] = float(r['probability'])
      labels_v[v] = int(r['label'])
    if np.isnan(probs_rv).any():
      raise ValueError(f'{path}: split {split!r} lacks some run/view rows.')
    by_split[split] = SplitPredictions(
        case_ids_v=np.array([c for c, _ in views], dtype=str),
        view_index_v=np.array([v for _, v in views], np.int64),
        labels_v=labels_v,
        probs_rv=probs_rv,
    )
  return run_names, by_split


def pool_splits(by_split: Mapping[str, SplitPredictions]) -> SplitPredictions:
  """Concatenates splits; a pooled case is '<split>/<case_id>'."""
  parts = list(by_split.items())
  return SplitPredictions(
      case_ids_v=np.concatenate(
          [np.char.add(f'{s}/', p.case_ids_v.astype(str)) for s, p in parts]
      ),
      view_index_v=np.concatenate([p.view_index_v for _, p in parts]),
      labels_v=np.concatenate([p.labels_v for _, p in parts]),
      probs_rv=np.concatenate([p.probs_rv for _, p in parts], axis=1),
  )


# ---------------------------------------------------------------- results
def _finite_or_none(x):
  return float(x) if x is not None and math.isfinite(x) else None


def evaluate_subsets(
    preds: SplitPredictions,
    split: str,
    run_names: Sequence[str],
    subsets: Sequence[Sequence[int]],
    evaluator: metrics_lib.BinaryEvaluator,
) -> list[dict]:
  """results.json entries of every subset x level x voting on one split."""
  cases = preds.cases()
  entries = []
  for members in subsets:
    for level in voting.LEVELS:
      for vote in voting.VOTINGS:
        d = voting.decide(
            preds.probs_rv, preds.labels_v, cases, members, level, vote
        )
        point, ci = evaluator(d.labels, d.preds, d.scores, d.clusters)
        entries.append(
            {
                'members': [run_names[i] for i in members],
                'level': level,
                'voting': vote,
                'split': split,
                'metrics': {
                    k: _finite_or_none(point[k])
                    for k in metrics_lib.METRIC_NAMES
                },
                'ci95': {
                    k: [_finite_or_none(ci[k][0]), _finite_or_none(ci[k][1])]
                    for k in metrics_lib.METRIC_NAMES
                },
            }
        )
  return entries


def select_best(
    results: Sequence[dict],
    split: str,
    level: str,
    vote: str,
    metric: str = 'accuracy',
) -> dict:
  """The entry with the best `metric` (ties: AUC, larger ensemble, order)."""
  candidates = [
      (i, e)
      for i, e in enumerate(results)
      if e['split'] == split and e['level'] == level and e['voting'] == vote
  ]
  if not candidates:
    raise ValueError(
        f'No results for split={split} level={level} ' f'voting={vote}.'
    )

  def key(item):
    i, e = item
    m = e['metrics'][metric]
    auc = e['metrics']['roc_auc']
    return (
        -(m if m is not None else -1),
        -(auc if auc is not None else -1),
        -len(e['members']),
        i,
    )

  return min(candidates, key=key)[1]


def find_entry(results, members, split, level, vote) -> dict:
  for e in results:
    if (
        e['members'] == list(members)
        and e['split'] == split
        and e['level'] == level
        and e['voting'] == vote
    ):
      return e
  raise KeyError((members, split, level, vote))


def choose_protocols(
    results, *, split, pooled_split, has_validation, metric='accuracy'
) -> dict:
  """{protocol: {level_voting: {members, chosen_on, reported_on}}}."""
  out = {}
  for level in voting.LEVELS:
    for vote in voting.VOTINGS:
      k = f'{level}_{vote}'
      best = select_best(results, pooled_split, level, vote, metric)
      out.setdefault('paper', {})[k] = {
          'members': best['members'],
          'chosen_on': pooled_split,
          'reported_on': pooled_split,
      }
      if has_validation:
        best = select_best(results, VALIDATION, level, vote, metric)
        out.setdefault('honest', {})[k] = {
            'members': best['members'],
            'chosen_on': VALIDATION,
            'reported_on': split,
        }
  return out


def compute_operating_points(
    by_split, run_names, members_list, split, *, num_resamples, seed
) -> list[dict]:
  """Sensitivity/specificity at thresholds chosen on validation (soft scores).

  For each members tuple and level: the Youden threshold and the highest
  threshold with sensitivity >= 0.90 on validation, applied to `split`.
  """
  val, test = by_split[VALIDATION], by_split[split]
  val_cases, test_cases = val.cases(), test.cases()
  out = []
  for members in members_list:
    for level in voting.LEVELS:
      dv = voting.decide(
          val.probs_rv, val.labels_v, val_cases, members, level, 'soft'
      )
      dt = voting.decide(
          test.probs_rv, test.labels_v, test_cases, members, level, 'soft'
      )
      for name, description in metrics_lib.OPERATING_POINTS.items():
        if np.unique(dv.labels).size < 2:
          continue
        threshold = metrics_lib.choose_threshold(name, dv.labels, dv.scores)
        op = metrics_lib.operating_point(
            dt.labels,
            dt.scores,
            threshold,
            dt.clusters,
            num_resamples=num_resamples,
            seed=seed,
        )
        out.append(
            {
                'members': [run_names[i] for i in members],
                'level': level,
                'voting': 'soft',
                'name': name,
                'description': description,
                'chosen_on': VALIDATION,
                'split': split,
                'threshold': op['threshold'],
                'sensitivity': _finite_or_none(op['sensitivity']),
                'specificity': _finite_or_none(op['specificity']),
                'ci95': {
                    k: [_finite_or_none(x) for x in v]
                    for k, v in op['ci95'].items()
                },
            }
        )
  return out


# ----------------------------------------------------------------- report
def _fmt(entry, metric) -> str:
  value = entry['metrics'][metric]
  lo, hi = entry['ci95'][metric]
  if value is None:
    return 'n/a'
  if lo is None:
    return f'{value:.3f}'
  return f'{value:.3f} [{lo:.2f}, {hi:.2f}]'


def _table(rows: Sequence[tuple[str, dict]]) -> list[str]:
  header = ['Model', 'Views'] + [
      m.upper()
      if m in ('ppv', 'npv')
      else m.replace('_', ' ').title().replace('Roc Auc', 'ROC AUC')
      for m in metrics_lib.METRIC_NAMES
  ]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, entry in rows:
    lines.append(
        '| '
        + ' | '.join(
            [name, LEVEL_TITLES[entry['level']]]
            + [_fmt(entry, m) for m in metrics_lib.METRIC_NAMES]
        )
        + ' |'
    )
  return lines


def write_report(
    path,
    results,
    protocols,
    operating_points,
    *,
    run_names,
    split,
    pooled_split,
    num_bootstrap,
    counts,
) -> None:
  """Writes report.md."""
  lines = [
      '# Evaluation report',
      '',
      f'Runs: {", ".join(run_names)}. Split: `{split}` '
      f'({counts[split][0]} cases, {counts[split][1]} views).',
      f'Metrics with case-level bootstrap 95% CIs ({num_bootstrap} '
      'resamples). Hard voting: majority of the members per view, then '
      'of the views per case (ties, e.g. in 2-view cases, go to '
      'fracture). ROC AUC always from the soft scores (mean '
      'probabilities).',
      '',
  ]
  for vote in voting.VOTINGS:
    for protocol in PROTOCOLS:
      if protocol not in protocols:
        continue
      report_split = split if protocol == 'honest' else pooled_split
      chosen_on = VALIDATION if protocol == 'honest' else pooled_split
      lines += [
          f'## {protocol.title()} protocol, {vote} voting',
          '',
          (
              f'Best ensemble chosen on `{chosen_on}`, every row reported '
              f'on `{report_split}`.'
              + (
                  ' Selection and report use the same cases: optimistic, '
                  'shown only to compare with the paper.'
                  if protocol == 'paper'
                  else ''
              )
          ),
          '',
      ]
      rows = []
      for name in run_names:
        for level in voting.LEVELS:
          rows.append(
              (name, find_entry(results, [name], report_split, level, vote))
          )
      chosen_by = {}
      for level in voting.LEVELS:
        members = tuple(protocols[protocol][f'{level}_{vote}']['members'])
        chosen_by.setdefault(members, []).append(LEVEL_TITLES[level])
      for members, levels in chosen_by.items():
        label = f'Best ensemble (by {" and ".join(levels)}): ' + '+'.join(
            members
        )
        for lvl in voting.LEVELS:
          rows.append(
              (label, find_entry(results, members, report_split, lvl, vote))
          )
      lines += _table(rows) + ['']
  if operating_points:
    lines += [
        '## Operating points (thresholds chosen on validation)',
        '',
        '| Members | Views | Operating point | Threshold | Sensitivity '
        '| Specificity |',
        '|---|---|---|---|---|---|',
    ]
    for op in operating_points:

      def fmt(k, op=op):
        lo, hi = op['ci95'][k]
        v = op[k]
        if v is None:
          return 'n/a'
        return f'{v:.3f}' + (f' [{lo:.2f}, {hi:.2f}]' if lo is not None else '')

      lines.append(
          f'| {"+".join(op["members"])} | '
          f'{LEVEL_TITLES[op["level"]]} | {op["description"]} | '
          f'{op["threshold"]:.3f} | {fmt("sensitivity")} | '
          f'{fmt("specificity")} |'
      )
    lines.append('')
  else:
    lines += [
        'No separate validation split to choose on (none was built, or the '
        'reported split is the validation split itself): no honest protocol and '
        'no operating points.',
        '',
    ]
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def plot_roc(path, preds: SplitPredictions, members, run_names, split) -> None:
  """ROC of an ensemble's soft scores: single view vs case level."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top

  idx = [run_names.index(m) for m in members]
  cases = preds.cases()
  fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
  for level in voting.LEVELS:
    d = voting.decide(preds.probs_rv, preds.labels_v, cases, idx, level, 'soft')
    if np.unique(d.labels).size < 2:
      continue
    fpr, tpr, _ = sk.roc_curve(d.labels, d.scores)
    auc = sk.roc_auc_score(d.labels, d.scores)
    ax.plot(fpr, tpr, label=f'{LEVEL_TITLES[level]} (AUC {auc:.3f})')
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set_xlabel('1 - specificity')
  ax.set_ylabel('sensitivity')
  ax.set_title(f'{"+".join(members)} on {split}', fontsize=9)
  ax.legend(loc='lower right')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_confusion(
    path, preds: SplitPredictions, members, run_names, split
) -> None:
  """Confusion matrices (hard voting) of an ensemble, image and case level."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top

  idx = [run_names.index(m) for m in members]
  cases = preds.cases()
  fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
  for ax, level in zip(axes, voting.LEVELS):
    d = voting.decide(preds.probs_rv, preds.labels_v, cases, idx, level, 'hard')
    cm = sk.confusion_matrix(d.labels, d.preds.astype(int), labels=[0, 1])
    sk.ConfusionMatrixDisplay(cm, display_labels=['normal', 'fracture']).plot(
        ax=ax, colorbar=False, cmap='Blues'
    )
    ax.set_title(LEVEL_TITLES[level])
  fig.suptitle(f'{"+".join(members)} on {split} (hard voting)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_tensorboard(out_dir, results, protocols, operating_points) -> None:
  """The results' scalars as TensorBoard events in out_dir (step 0)."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

  writer = SummaryWriter(out_dir)
  for e in results:
    for metric, value in e['metrics'].items():
      if value is not None:
        writer.add_scalar(
            f'{e["split"]}/{e["level"]}_{e["voting"]}_{metric}/'
            f'{"+".join(e["members"])}',
            value,
            0,
        )
  for protocol, chosen in protocols.items():
    for k, sel in chosen.items():
      level, vote = k.split('_')
      e = find_entry(results, sel['members'], sel['reported_on'], level, vote)
      for metric, value in e['metrics'].items():
        if value is not None:
          writer.add_scalar(f'protocol_{protocol}/{k}_{metric}', value, 0)
  for op in operating_points:
    for k in ('sensitivity', 'specificity'):
      if op[k] is not None:
        writer.add_scalar(
            f'operating_points/{op["level"]}_{op["name"]}_{k}/'
            f'{"+".join(op["members"])}',
            op[k],
            0,
        )
  writer.close()


# ------------------------------------------------------------------- main
def evaluate_predictions(
    out_dir: str,
    *,
    split: str,
    max_subsets=None,
    num_bootstrap: int = 2000,
    seed: int = 0,
    selection_metric: str = 'accuracy',
) -> dict:
  """Everything from OUT/predictions.csv: results, protocols, report, plots."""
  run_names, by_split = read_predictions_csv(
      os.path.join(out_dir, 'predictions.csv')
  )
  has_validation = VALIDATION in by_split and split != VALIDATION
  pooled_split = f'{VALIDATION}+{split}' if has_validation else split
  evaluator = metrics_lib.BinaryEvaluator(
      num_resamples=num_bootstrap, seed=seed
  )
  subsets = voting.odd_subsets(len(run_names), max_subsets, seed)
  splits = dict(by_split)
  if has_validation:
    splits[pooled_split] = pool_splits(
        {VALIDATION: by_split[VALIDATION], split: by_split[split]}
    )
  results = []
  for name, preds in splits.items():
    results += evaluate_subsets(preds, name, run_names, subsets, evaluator)
  protocols = choose_protocols(
      results,
      split=split,
      pooled_split=pooled_split,
      has_validation=has_validation,
      metric=selection_metric,
  )
  operating_points = []
  if has_validation:
    members_list = [(i,) for i in range(len(run_names))]
    for k in ('image_soft', 'case_soft'):
      best = tuple(
          run_names.index(m) for m in protocols['honest'][k]['members']
      )
      if best not in members_list:
        members_list.append(best)
    operating_points = compute_operating_points(
        by_split,
        run_names,
        members_list,
        split,
        num_resamples=num_bootstrap,
        seed=seed,
    )
  counts = {
      name: (p.cases().num_cases, len(p.labels_v)) for name, p in splits.items()
  }
  summary = {
      'runs': run_names,
      'split': split,
      'pooled_split': pooled_split,
      'num_subsets': len(subsets),
      'num_bootstrap': num_bootstrap,
      'seed': seed,
      'selection_metric': selection_metric,
      'counts': {k: {'cases': c, 'views': v} for k, (c, v) in counts.items()},
      'protocols': protocols,
      'operating_points': operating_points,
  }
  with open(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  write_report(
      os.path.join(out_dir, 'report.md'),
      results,
      protocols,
      operating_points,
      run_names=run_names,
      split=split,
      pooled_split=pooled_split,
      num_bootstrap=num_bootstrap,
      counts=counts,
  )
  protocol = 'honest' if has_validation else 'paper'
  best = protocols[protocol]['case_hard']['members']
  plot_roc(
      os.path.join(out_dir, 'roc.png'), by_split[split], best, run_names, split
  )
  plot_confusion(
      os.path.join(out_dir, 'confusion.png'),
      by_split[split],
      best,
      run_names,
      split,
  )
  write_tensorboard(out_dir, results, protocols, operating_points)
  return {'results': results, 'summary': summary}


def evaluate_runs(
    run_dirs: Sequence[str],
    *,
    split: str,
    out_dir: str,
    checkpoint: str = 'best',
    data_dir: str | None = None,
    dataset_config: str | None = None,
    batch_size: int = 16,
    max_subsets: int | None = None,
    num_bootstrap: int = 2000,
    seed: int = 0,
    selection_metric: str = 'accuracy',
    batches_fn=None,
) -> dict:
  """Restores runs, predicts the needed splits, and writes OUT's files.

  Args:
    run_dirs: training run directories.
    split: the split to report on ('test').
    out_dir: where the outputs go (created).
    checkpoint: 'best' or 'latest'.
    data_dir: dataset directory (default: the first run's data.data_dir).
    dataset_config: builder config (default: the first run's
      data.dataset_config).
    batch_size: views per forward batch (each of the group's runs sees it).
    max_subsets: cap on the number of ensembles (None: all odd subsets).
    num_bootstrap: bootstrap resamples.
    seed: bootstrap and subset-sampling seed.
    selection_metric: metric that picks the protocols' best ensembles.
    batches_fn: (split) -> batches_for(image_size) or None when the split
      does not exist; defaults to the TFDS pipeline (tests inject fakes).

  Returns:
    {'results': [...], 'summary': {...}}.
  """
  if not run_dirs:
    raise ValueError('--runs names no run directory.')
  os.makedirs(out_dir, exist_ok=True)
  runs = load_runs(run_dirs, checkpoint)
  first = runs[0].config
  if batches_fn is None:
    if not data_dir:
      from ankle_jax import train  # pylint: disable=g-import-not-at-top

      data_dir = str(train.resolve_data_dirs(first, runs[0].workdir)[0])
    dataset_config = dataset_config or first.data.get(
        'dataset_config', 'dicom_cases'
    )
    for run in runs[1:]:
      if not (data_dir and dataset_config):
        break
      if run.config.data.data_dir != first.data.data_dir or run.config.data.get(
          'dataset_config'
      ) != first.data.get('dataset_config'):
        logging.warning(
            'Run %s was trained on another dataset than %s; all '
            'runs are evaluated on %s (%s).',
            run.name,
            runs[0].name,
            data_dir,
            dataset_config,
        )
    logging.info('Evaluating on %s (config %s).', data_dir, dataset_config)

    def batches_fn(name):
      try:
        return pipeline_batches(data_dir, name, dataset_config, batch_size)
      except FileNotFoundError as e:  # pipeline.DatasetNotBuiltError
        if name == split:
          raise
        logging.warning(
            'No %r split (%s): skipping the honest protocol and '
            'operating points.',
            name,
            e,
        )
        return None

  by_split = {}
  for name in dict.fromkeys([split, VALIDATION]):
    batches_for = batches_fn(name)
    if batches_for is None:
      if name == split:
        raise ValueError(f'Split {split!r} not found.')
      continue
    by_split[name] = predict_split(runs, batches_for)
  write_predictions_csv(
      os.path.join(out_dir, 'predictions.csv'), [r.name for r in runs], by_split
  )
  out = evaluate_predictions(
      out_dir,
      split=split,
      max_subsets=max_subsets,
      num_bootstrap=num_bootstrap,
      seed=seed,
      selection_metric=selection_metric,
  )
  out['summary']['checkpoints'] = {
      r.name: {'which': checkpoint, 'step': r.step} for r in runs
  }
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(out['summary'], f, indent=1)
  return out


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_list('runs', None, 'Comma-separated training run directories.')
  flags.DEFINE_string('split', 'test', 'Split to report on.')
  flags.DEFINE_string('out', None, 'Output directory.')
  flags.DEFINE_enum(
      'checkpoint', 'best', ['best', 'latest'], 'Which checkpoint of each run.'
  )
  flags.DEFINE_string(
      'data_dir',
      None,
      "Dataset directory (default: the first run's "
      'data.data_dir); evaluates on another dataset.',
  )
  flags.DEFINE_string(
      'dataset_config',
      None,
      "Builder config (default: the first run's " 'data.dataset_config).',
  )
  flags.DEFINE_integer(
      'max_subsets',
      None,
      'Cap on the number of odd-size ensembles (default: all).',
  )
  flags.DEFINE_integer('num_bootstrap', 2000, 'Bootstrap resamples.')
  flags.DEFINE_integer('seed', 0, 'Bootstrap / subset sampling seed.')
  flags.DEFINE_integer('batch_size', 16, 'Views per forward batch.')
  flags.DEFINE_enum(
      'selection_metric',
      'accuracy',
      list(metrics_lib.METRIC_NAMES),
      'Metric choosing the best ensemble in both protocols.',
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  flags_ = flags.FLAGS
  if not flags_.runs or not flags_.out:
    raise app.UsageError('--runs and --out are required.')
  out = evaluate_runs(
      flags_.runs,
      split=flags_.split,
      out_dir=flags_.out,
      checkpoint=flags_.checkpoint,
      data_dir=flags_.data_dir,
      dataset_config=flags_.dataset_config,
      batch_size=flags_.batch_size,
      max_subsets=flags_.max_subsets,
      num_bootstrap=flags_.num_bootstrap,
      seed=flags_.seed,
      selection_metric=flags_.selection_metric,
  )
  print(pathlib.Path(flags_.out, 'report.md').read_text())
  del out


if __name__ == '__main__':
  define_flags()
  app.run(main)

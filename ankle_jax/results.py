"""The typed results of an evaluation, computed from predictions alone.

`evaluate_splits` turns every run's probabilities (`SplitPredictions`, read
back from predictions.csv and case_predictions.csv) into
  * one `ResultEntry` per subset x level (image|case) x voting (hard|soft) x
    split, keyed by `ResultKey(members, split, level, voting)`;
  * the protocols' `Selection`s: paper (best subset chosen on
    validation+<split> pooled and reported there, as the authors did) and
    honest (chosen on validation, reported on <split>). "Best" is the highest
    selection metric, ties broken by ROC AUC, then by the larger ensemble,
    then by the members' order;
  * `OperatingPoint`s: thresholds chosen on validation, reported on <split>;
  * the class counts of each split.
The files' JSON structures (results.json, summary.json) are built here too
(`Evaluation.results_json`, `Evaluation.summary_json`).

predictions.csv holds one row per run and view (a multi-view run's rows: its
case head on each view alone); case_predictions.csv one row per run and case:
the run's case probability (a multi-view run's own, a per-view run's soft
vote) and its own hard case vote (voting.run_case_hard_votes). Without a
multi-view run, case_predictions.csv is read for nothing (everything follows
from predictions.csv, exactly as before multi-view runs existed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ankle_jax import metrics as metrics_lib
from ankle_jax import voting
from ankle_jax.inference import SplitPredictions

if TYPE_CHECKING:
  from ankle_jax.subgroups import SubgroupEntry

PREDICTION_COLUMNS = (
    'run',
    'case_id',
    'view_index',
    'label',
    'probability',
    'split',
)
# The first five columns are the interface; kind is 'per_view' or
# 'multi_view', hard_vote (0/1) the run's own case vote, num_views the views
# the case had.
CASE_PREDICTION_COLUMNS = (
    'run',
    'case_id',
    'label',
    'probability',
    'split',
    'kind',
    'hard_vote',
    'num_views',
)
CASE_PREDICTIONS_FILE = 'case_predictions.csv'
KINDS = ('per_view', 'multi_view')
VALIDATION = 'validation'
PROTOCOLS = ('paper', 'honest')
LEVEL_TITLES = {'image': 'single view', 'case': 'all views (case)'}


# ------------------------------------------------------- predictions.csv
def feature_columns(header: Sequence[str]) -> list[str]:
  """The per-view feature columns of a predictions.csv header: those after
  PREDICTION_COLUMNS but the further probabilities (probability_...)."""
  return [
      c
      for c in header[len(PREDICTION_COLUMNS) :]
      if c not in PREDICTION_COLUMNS and not c.startswith('probability')
  ]


def write_predictions_csv(
    path: str,
    run_names: Sequence[str],
    by_split: Mapping[str, SplitPredictions],
) -> None:
  """One row per run and view; probabilities written exactly (repr).

  After PREDICTION_COLUMNS, one column per feature of the views
  (SplitPredictions.features_v: view_position, num_views, FracAtlas flags),
  named after it; '' in a split without it. None without features.
  """
  features = list(
      dict.fromkeys(k for p in by_split.values() for k in p.features_v or {})
  )
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow([*PREDICTION_COLUMNS, *features])
    for split, preds in by_split.items():
      columns = [
          (preds.features_v or {}).get(k, [''] * len(preds.labels_v))
          for k in features
      ]
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
                  *(column[v] for column in columns),
              ]
          )


def _features_from_rows(
    rows: Sequence[dict[str, str]], view_pos: Mapping[tuple[str, int], int]
) -> dict[str, np.ndarray] | None:
  """{field: str [views]} of the feature columns with a value in `rows`."""
  names = feature_columns(list(rows[0]))
  features = {k: np.full(len(view_pos), '', dtype=object) for k in names}
  for r in rows:
    v = view_pos[(r['case_id'], int(r['view_index']))]
    for k in names:
      features[k][v] = r[k] or ''
  kept = {k: f.astype(str) for k, f in features.items() if any(f)}
  return kept or None


def _split_from_rows(
    path: str, split: str, rows: Sequence[dict], run_names: Sequence[str]
) -> SplitPredictions:
  views = list(
      dict.fromkeys((r['case_id'], int(r['view_index'])) for r in rows)
  )
  view_pos = {k: i for i, k in enumerate(views)}
  run_index = {n: i for i, n in enumerate(run_names)}
  probs_rv = np.full((len(run_names), len(views)), np.nan)
  labels_v = np.zeros(len(views), np.int64)
  for r in rows:
    v = view_pos[(r['case_id'], int(r['view_index']))]
    probs_rv[run_index[r['run']], v] = float(r['probability'])
    labels_v[v] = int(r['label'])
  if np.isnan(probs_rv).any():
    raise ValueError(f'{path}: split {split!r} lacks some run/view rows.')
  return SplitPredictions(
      case_ids_v=np.array([c for c, _ in views], dtype=str),
      view_index_v=np.array([v for _, v in views], np.int64),
      labels_v=labels_v,
      probs_rv=probs_rv,
      features_v=_features_from_rows(rows, view_pos),
  )


def multiview_of(preds: SplitPredictions) -> np.ndarray:
  """bool [runs]: which runs are multi-view (all False when none is)."""
  if preds.multiview_r is None:
    return np.zeros(len(preds.probs_rv), dtype=bool)
  return np.asarray(preds.multiview_r, dtype=bool)


def case_rows(
    preds: SplitPredictions,
) -> tuple[voting.CaseIndex, np.ndarray, np.ndarray]:
  """(cases, float64 [runs, cases] case probabilities, bool [runs, cases]
  each run's own hard case vote) of one split."""
  cases = preds.cases()
  probs_rc = voting.run_case_probs(preds.probs_rv, cases, preds.case_probs_rc)
  votes_rc = voting.run_case_hard_votes(
      preds.probs_rv, cases, preds.case_probs_rc, preds.multiview_r
  )
  return cases, probs_rc, votes_rc


def write_case_predictions_csv(
    path: str,
    run_names: Sequence[str],
    by_split: Mapping[str, SplitPredictions],
) -> None:
  """One row per run and case (CASE_PREDICTION_COLUMNS), cases sorted by id;
  probabilities written exactly (repr)."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(CASE_PREDICTION_COLUMNS)
    for split, preds in by_split.items():
      cases, probs_rc, votes_rc = case_rows(preds)
      kinds = [KINDS[int(m)] for m in multiview_of(preds)]
      for r, run in enumerate(run_names):
        for c, case_id in enumerate(cases.case_ids_c):
          writer.writerow(
              [
                  run,
                  case_id,
                  int(cases.labels_c[c]),
                  repr(float(probs_rc[r, c])),
                  split,
                  kinds[r],
                  int(votes_rc[r, c]),
                  int(cases.views_per_case_c[c]),
              ]
          )


def _read_rows(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f'{path} has no rows.')
  missing = set(columns) - set(rows[0])
  if missing:
    raise ValueError(f'{path} lacks the column(s) {sorted(missing)}.')
  return rows


def _with_case_rows(
    path: str,
    split: str,
    preds: SplitPredictions,
    rows: Sequence[dict[str, str]],
    run_names: Sequence[str],
) -> SplitPredictions:
  """preds with case_probs_rc and multiview_r from one split's rows."""
  case_ids_c = preds.cases().case_ids_c
  case_pos = {c: i for i, c in enumerate(case_ids_c)}
  run_index = {n: i for i, n in enumerate(run_names)}
  case_probs_rc = np.full((len(run_names), len(case_ids_c)), np.nan)
  multiview_r = np.zeros(len(run_names), dtype=bool)
  for row in rows:
    if row['case_id'] not in case_pos or row['run'] not in run_index:
      raise ValueError(
          f'{path}: split {split!r} lists run {row["run"]!r} / case '
          f'{row["case_id"]!r}, which predictions.csv lacks.'
      )
    r = run_index[row['run']]
    case_probs_rc[r, case_pos[row['case_id']]] = float(row['probability'])
    multiview_r[r] = row['kind'] == 'multi_view'
  if np.isnan(case_probs_rc).any():
    raise ValueError(f'{path}: split {split!r} lacks some run/case rows.')
  return dataclasses.replace(
      preds, case_probs_rc=case_probs_rc, multiview_r=multiview_r
  )


def read_case_predictions_csv(
    path: str,
    run_names: Sequence[str],
    by_split: Mapping[str, SplitPredictions],
) -> dict[str, SplitPredictions]:
  """by_split with case_probs_rc and multiview_r read from `path`.

  When no run there is multi-view, by_split comes back as it was (every case
  probability is then a soft vote of predictions.csv).
  """
  rows = _read_rows(path, CASE_PREDICTION_COLUMNS[:6])
  unknown = {r['kind'] for r in rows} - set(KINDS)
  if unknown:
    raise ValueError(f'{path}: unknown kind(s) {sorted(unknown)}.')
  if all(r['kind'] == 'per_view' for r in rows):
    return dict(by_split)
  out = {}
  for split, preds in by_split.items():
    split_rows = [r for r in rows if r['split'] == split]
    out[split] = _with_case_rows(path, split, preds, split_rows, run_names)
  return out


def read_predictions_csv(
    path: str,
) -> tuple[list[str], dict[str, SplitPredictions]]:
  """Reads predictions.csv back: (run names, {split: SplitPredictions}).

  Feature columns (`feature_columns`), where present, fill features_v.
  A case_predictions.csv next to it fills case_probs_rc and multiview_r
  when a run is multi-view (read_case_predictions_csv); without one (older
  evaluations), every run is per-view.
  """
  rows = _read_rows(path, PREDICTION_COLUMNS[:5])
  run_names = list(dict.fromkeys(r['run'] for r in rows))
  by_split = {}
  for split in dict.fromkeys(r.get('split', 'test') for r in rows):
    split_rows = [r for r in rows if r.get('split', 'test') == split]
    by_split[split] = _split_from_rows(path, split, split_rows, run_names)
  case_path = os.path.join(os.path.dirname(path), CASE_PREDICTIONS_FILE)
  if os.path.exists(case_path):
    by_split = read_case_predictions_csv(case_path, run_names, by_split)
  return run_names, by_split


def _pooled_case_probs(
    by_split: Mapping[str, SplitPredictions], pooled_case_ids_c: np.ndarray
) -> np.ndarray:
  """float64 [runs, pooled cases]: each split's case probabilities, columns
  in the pooled (sorted '<split>/<case_id>') order."""
  columns = {}
  for split, preds in by_split.items():
    cases = preds.cases()
    probs_rc = voting.run_case_probs(preds.probs_rv, cases, preds.case_probs_rc)
    for c, case_id in enumerate(cases.case_ids_c):
      columns[f'{split}/{case_id}'] = probs_rc[:, c]
  return np.stack([columns[c] for c in pooled_case_ids_c], axis=1)


def _pooled_features(
    parts: Sequence[SplitPredictions],
) -> dict[str, np.ndarray] | None:
  """The features every split has, concatenated (None: none in common)."""
  if any(p.features_v is None for p in parts):
    return None
  common = [
      k for k in parts[0].features_v if all(k in p.features_v for p in parts)
  ]
  pooled = {k: np.concatenate([p.features_v[k] for p in parts]) for k in common}
  return pooled or None


def pool_splits(by_split: Mapping[str, SplitPredictions]) -> SplitPredictions:
  """Concatenates splits; a pooled case is '<split>/<case_id>'.

  case_probs_rc (when a split has them) follows the pooled cases().case_ids_c
  order (sorted pooled ids, not the splits' order); features_v holds the
  features every split has.
  """
  parts = list(by_split.items())
  pooled = SplitPredictions(
      case_ids_v=np.concatenate(
          [np.char.add(f'{s}/', p.case_ids_v.astype(str)) for s, p in parts]
      ),
      view_index_v=np.concatenate([p.view_index_v for _, p in parts]),
      labels_v=np.concatenate([p.labels_v for _, p in parts]),
      probs_rv=np.concatenate([p.probs_rv for _, p in parts], axis=1),
      features_v=_pooled_features([p for _, p in parts]),
  )
  multiview = [p.multiview_r for _, p in parts if p.multiview_r is not None]
  if any(p.case_probs_rc is not None for _, p in parts):
    pooled.case_probs_rc = _pooled_case_probs(
        by_split, pooled.cases().case_ids_c
    )
    pooled.multiview_r = np.any(multiview, axis=0) if multiview else None
  return pooled


def decide_split(
    preds: SplitPredictions,
    members: Sequence[int],
    level: str,
    vote: str,
    cases: voting.CaseIndex | None = None,
) -> voting.Decisions:
  """voting.decide on one split's predictions (cases: preds.cases(), passed
  in to compute it once)."""
  return voting.decide(
      preds.probs_rv,
      preds.labels_v,
      cases if cases is not None else preds.cases(),
      members,
      level,
      vote,
      case_probs_rc=preds.case_probs_rc,
      multiview_r=preds.multiview_r,
  )


# ---------------------------------------------------------------- entries
def _finite_or_none(x: Any) -> float | None:
  return float(x) if x is not None and math.isfinite(x) else None


class ResultKey(NamedTuple):
  """What a ResultEntry is about: an ensemble (run names), split, level and
  voting."""

  members: tuple[str, ...]
  split: str
  level: str
  voting: str


@dataclasses.dataclass(frozen=True)
class ResultEntry:
  """The six metrics of one ensemble on one split, level and voting.

  Attributes:
    members: run names (one name: a single run).
    level: 'image' or 'case'. voting: 'hard' or 'soft'. split: the split.
    metrics: {metric: value or None where undefined}.
    ci95: {metric: (lo, hi)}, None where undefined (metrics_lib.INTERVALS).
  """

  members: tuple[str, ...]
  level: str
  voting: str
  split: str
  metrics: dict[str, float | None]
  ci95: dict[str, tuple[float | None, float | None]]

  @property
  def key(self) -> ResultKey:
    return ResultKey(self.members, self.split, self.level, self.voting)

  def to_json(self) -> dict[str, Any]:
    return {
        'members': list(self.members),
        'level': self.level,
        'voting': self.voting,
        'split': self.split,
        'metrics': dict(self.metrics),
        'ci95': {k: list(v) for k, v in self.ci95.items()},
        # A subgroup's entry (ankle_jax.subgroups) says which one here.
        'subgroup': None,
    }


Results = dict[ResultKey, ResultEntry]


def evaluate_subsets(
    preds: SplitPredictions,
    split: str,
    run_names: Sequence[str],
    subsets: Sequence[Sequence[int]],
    evaluator: metrics_lib.BinaryEvaluator,
    levels: Sequence[str] = voting.LEVELS,
) -> list[ResultEntry]:
  """The entries of every subset x level (of `levels`) x voting on one
  split."""
  cases = preds.cases()
  entries = []
  for members in subsets:
    for level in levels:
      for vote in voting.VOTINGS:
        d = decide_split(preds, members, level, vote, cases)
        point, ci = evaluator(d.labels, d.preds, d.scores, d.clusters)
        entries.append(
            ResultEntry(
                members=tuple(run_names[i] for i in members),
                level=level,
                voting=vote,
                split=split,
                metrics={
                    k: _finite_or_none(point[k])
                    for k in metrics_lib.METRIC_NAMES
                },
                ci95={
                    k: tuple(_finite_or_none(x) for x in ci[k])
                    for k in metrics_lib.METRIC_NAMES
                },
            )
        )
  return entries


def select_best(
    results: Results, split: str, level: str, vote: str, metric: str
) -> ResultEntry:
  """The entry with the best `metric` (ties: AUC, larger ensemble, order)."""
  candidates = [
      (i, e)
      for i, (k, e) in enumerate(results.items())
      if (k.split, k.level, k.voting) == (split, level, vote)
  ]
  if not candidates:
    raise ValueError(f'No results for split={split} level={level} {vote=}.')

  def rank(item):
    i, e = item
    m, auc = e.metrics[metric], e.metrics['roc_auc']
    return (
        -(m if m is not None else -1),
        -(auc if auc is not None else -1),
        -len(e.members),
        i,
    )

  return min(candidates, key=rank)[1]


@dataclasses.dataclass(frozen=True)
class Selection:
  """A protocol's best ensemble for one level and voting."""

  protocol: str
  level: str
  voting: str
  members: tuple[str, ...]
  chosen_on: str
  reported_on: str

  def reported_key(self) -> ResultKey:
    return ResultKey(self.members, self.reported_on, self.level, self.voting)


SelectionKey = tuple[str, str, str]  # (protocol, level, voting)


def choose_protocols(
    results: Results,
    *,
    split: str,
    pooled_split: str,
    has_validation: bool,
    metric: str = 'accuracy',
) -> dict[SelectionKey, Selection]:
  """{(protocol, level, voting): Selection} of both protocols."""
  chosen_reported = {'paper': (pooled_split, pooled_split)}
  if has_validation:
    chosen_reported['honest'] = (VALIDATION, split)
  out = {}
  for protocol, (chosen_on, reported_on) in chosen_reported.items():
    for level in voting.LEVELS:
      for vote in voting.VOTINGS:
        best = select_best(results, chosen_on, level, vote, metric)
        out[(protocol, level, vote)] = Selection(
            protocol, level, vote, best.members, chosen_on, reported_on
        )
  return out


# --------------------------------------------------------- operating points
@dataclasses.dataclass(frozen=True)
class OperatingPoint:
  """Sensitivity and specificity of soft scores at a threshold chosen on one
  split (chosen_on) and applied to another (split)."""

  members: tuple[str, ...]
  level: str
  name: str
  description: str
  chosen_on: str
  split: str
  threshold: float
  sensitivity: float | None
  specificity: float | None
  ci95: dict[str, tuple[float | None, float | None]]

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(members=list(self.members), voting='soft')
    out['ci95'] = {k: list(v) for k, v in self.ci95.items()}
    return out


def compute_operating_points(
    by_split: Mapping[str, SplitPredictions],
    run_names: Sequence[str],
    members_list: Sequence[Sequence[int]],
    split: str,
) -> list[OperatingPoint]:
  """Thresholds chosen on validation (soft scores), applied to `split`.

  For each members tuple and level: the Youden threshold and the highest
  threshold with sensitivity >= 0.90 on validation.
  """
  val, test = by_split[VALIDATION], by_split[split]
  val_cases, test_cases = val.cases(), test.cases()
  out = []
  for members in members_list:
    for level in voting.LEVELS:
      dv = decide_split(val, members, level, 'soft', val_cases)
      dt = decide_split(test, members, level, 'soft', test_cases)
      if np.unique(dv.labels).size < 2:
        continue
      for name, description in metrics_lib.OPERATING_POINTS.items():
        threshold = metrics_lib.choose_threshold(name, dv.labels, dv.scores)
        op = metrics_lib.operating_point(dt.labels, dt.scores, threshold)
        out.append(
            OperatingPoint(
                members=tuple(run_names[i] for i in members),
                level=level,
                name=name,
                description=description,
                chosen_on=VALIDATION,
                split=split,
                threshold=op['threshold'],
                sensitivity=_finite_or_none(op['sensitivity']),
                specificity=_finite_or_none(op['specificity']),
                ci95={
                    k: tuple(_finite_or_none(x) for x in v)
                    for k, v in op['ci95'].items()
                },
            )
        )
  return out


# -------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class SplitCounts:
  """Cases and views of one split, by class."""

  normal_cases: int
  fracture_cases: int
  normal_views: int
  fracture_views: int

  @property
  def cases(self) -> int:
    return self.normal_cases + self.fracture_cases

  @property
  def views(self) -> int:
    return self.normal_views + self.fracture_views

  @classmethod
  def of(cls, preds: SplitPredictions) -> SplitCounts:
    labels_c = preds.cases().labels_c
    return cls(
        normal_cases=int((labels_c == 0).sum()),
        fracture_cases=int((labels_c == 1).sum()),
        normal_views=int((preds.labels_v == 0).sum()),
        fracture_views=int((preds.labels_v == 1).sum()),
    )

  def to_json(self) -> dict[str, int]:
    return {
        'cases': self.cases,
        'views': self.views,
        **dataclasses.asdict(self),
    }


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """Which checkpoint of a run was evaluated, and its training step."""

  which: str
  step: int


@dataclasses.dataclass
class Evaluation:
  """Everything evaluate computes from predictions.csv."""

  run_names: list[str]
  split: str
  pooled_split: str
  results: Results
  protocols: dict[SelectionKey, Selection]
  operating_points: list[OperatingPoint]
  counts: dict[str, SplitCounts]
  num_subsets: int
  num_bootstrap: int
  seed: int
  selection_metric: str
  checkpoints: dict[str, CheckpointInfo] = dataclasses.field(
      default_factory=dict
  )
  # Views kept per case (the first by view position, then file name); 0 = all.
  max_eval_views: int = 0
  # The runs that read all views of a case at once (models.multiview).
  multiview_runs: tuple[str, ...] = ()
  # {key: results.json's "calibration" block} (ankle_jax.calibration).
  calibration: dict[ResultKey, dict[str, Any]] = dataclasses.field(
      default_factory=dict
  )
  # Where validation came from when not from the evaluated dataset (an
  # external test set: the runs' own dataset directory); None otherwise.
  validation_source: str | None = None
  # The headline members' entries per subgroup (ankle_jax.subgroups).
  subgroups: list[SubgroupEntry] = dataclasses.field(default_factory=list)

  @property
  def headline_protocol(self) -> str:
    """'honest' when there is a validation split to choose on, else 'paper'."""
    return 'honest' if ('honest', 'case', 'hard') in self.protocols else 'paper'

  def headline_members(self, vote: str = 'hard') -> tuple[str, ...]:
    """The headline protocol's chosen ensemble at case level under `vote`
    (roc.png and reliability.png: hard; the error gallery: soft)."""
    return self.protocols[(self.headline_protocol, 'case', vote)].members

  def step_of(self, members: Sequence[str]) -> int:
    """TensorBoard step of an ensemble: its members' largest training step."""
    steps = [self.checkpoints[m].step for m in members if m in self.checkpoints]
    return max(steps, default=0)

  def results_json(self) -> list[dict[str, Any]]:
    """Every entry ("subgroup": null, with its "calibration" block), then
    the subgroups' entries."""
    return [
        {**e.to_json(), 'calibration': self.calibration.get(k)}
        for k, e in self.results.items()
    ] + [s.to_json() for s in self.subgroups]

  def summary_json(self) -> dict[str, Any]:
    protocols: dict[str, dict[str, Any]] = {}
    for (protocol, level, vote), s in self.protocols.items():
      protocols.setdefault(protocol, {})[f'{level}_{vote}'] = {
          'members': list(s.members),
          'chosen_on': s.chosen_on,
          'reported_on': s.reported_on,
      }
    return {
        'runs': self.run_names,
        'split': self.split,
        'pooled_split': self.pooled_split,
        'num_subsets': self.num_subsets,
        'num_bootstrap': self.num_bootstrap,
        'seed': self.seed,
        'selection_metric': self.selection_metric,
        'vote_threshold': voting.THRESHOLD,
        'intervals': dict(metrics_lib.INTERVALS),
        'counts': {k: c.to_json() for k, c in self.counts.items()},
        'checkpoints': {
            k: dataclasses.asdict(c) for k, c in self.checkpoints.items()
        },
        'max_eval_views': self.max_eval_views,
        'multiview_runs': list(self.multiview_runs),
        'validation_source': self.validation_source,
        'protocols': protocols,
        'operating_points': [op.to_json() for op in self.operating_points],
    }


def headline_members(
    run_names: Sequence[str], protocols: Mapping[SelectionKey, Selection]
) -> list[tuple[int, ...]]:
  """Each single run, and the honest protocol's chosen ensembles (run
  indices): the operating points' and the subgroups' members."""
  members_list = [(i,) for i in range(len(run_names))]
  for (protocol, _, _), selection in protocols.items():
    best = tuple(run_names.index(m) for m in selection.members)
    if protocol == 'honest' and best not in members_list:
      members_list.append(best)
  return members_list


def evaluate_splits(
    by_split: Mapping[str, SplitPredictions],
    run_names: list[str],
    *,
    split: str,
    max_subsets: int | None = None,
    num_bootstrap: int = 2000,
    seed: int = 0,
    selection_metric: str = 'accuracy',
) -> Evaluation:
  """Results, protocols, operating points and counts of the predictions."""
  has_validation = VALIDATION in by_split and split != VALIDATION
  pooled_split = f'{VALIDATION}+{split}' if has_validation else split
  splits = dict(by_split)
  if has_validation:
    splits[pooled_split] = pool_splits(
        {VALIDATION: by_split[VALIDATION], split: by_split[split]}
    )
  evaluator = metrics_lib.BinaryEvaluator(
      num_resamples=num_bootstrap, seed=seed
  )
  subsets = voting.odd_subsets(len(run_names), max_subsets, seed)
  results: Results = {}
  for name, preds in splits.items():
    for e in evaluate_subsets(preds, name, run_names, subsets, evaluator):
      results[e.key] = e
  protocols = choose_protocols(
      results,
      split=split,
      pooled_split=pooled_split,
      has_validation=has_validation,
      metric=selection_metric,
  )
  operating_points = []
  if has_validation:
    operating_points = compute_operating_points(
        by_split, run_names, headline_members(run_names, protocols), split
    )
  return Evaluation(
      run_names=list(run_names),
      split=split,
      pooled_split=pooled_split,
      results=results,
      protocols=protocols,
      operating_points=operating_points,
      counts={k: SplitCounts.of(p) for k, p in splits.items()},
      num_subsets=len(subsets),
      num_bootstrap=num_bootstrap,
      seed=seed,
      selection_metric=selection_metric,
      multiview_runs=tuple(
          n for n, m in zip(run_names, multiview_of(by_split[split])) if m
      ),
  )

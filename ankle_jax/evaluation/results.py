"""The typed results of an evaluation, computed from predictions alone.

From every run's probabilities (`SplitPredictions`):
  * one `ResultEntry` per subset x level (image|case) x voting (hard|soft;
    at case level also max|noisy_or) x split, keyed by
    `ResultKey(members, split, level, voting)` (`evaluate_subsets`; the
    stacked case entries: evaluation.aggregation);
  * the protocols' `Selection`s: paper (best subset chosen on
    validation+<split> pooled and reported there, as the authors did) and
    honest (chosen on validation, reported on <split>). "Best" is the highest
    selection metric, ties broken by ROC AUC, then by the larger ensemble,
    then by the members' order;
  * `OperatingPoint`s: thresholds chosen on validation, reported on <split>;
  * the class counts of each split (`SplitCounts`).
evaluation.compute puts them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.predictions import SplitPredictions

PROTOCOLS = ('paper', 'honest')


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
    ci95_method: {metric: how its interval was computed, a key of
      metrics_lib.INTERVAL_METHODS ('' where undefined)}.
  """

  members: tuple[str, ...]
  level: str
  voting: str
  split: str
  metrics: dict[str, float | None]
  ci95: dict[str, tuple[float | None, float | None]]
  ci95_method: dict[str, str]

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
        'ci95_method': dict(self.ci95_method),
        # A subgroup's entry (ankle_jax.evaluation.subgroups) says which one here.
        'subgroup': None,
    }


Results = dict[ResultKey, ResultEntry]


def entry_of(
    d: voting.Decisions,
    members: tuple[str, ...],
    level: str,
    vote: str,
    split: str,
    evaluator: metrics_lib.BinaryEvaluator,
) -> ResultEntry:
  """The ResultEntry of one set of decisions."""
  est = evaluator(d.labels, d.preds, d.scores, d.clusters)
  return ResultEntry(
      members=members,
      level=level,
      voting=vote,
      split=split,
      metrics={
          k: _finite_or_none(est.point[k]) for k in metrics_lib.METRIC_NAMES
      },
      ci95={
          k: tuple(_finite_or_none(x) for x in est.ci95[k])
          for k in metrics_lib.METRIC_NAMES
      },
      ci95_method=dict(est.methods),
  )


def evaluate_subsets(
    preds: SplitPredictions,
    split: str,
    run_names: Sequence[str],
    subsets: Sequence[Sequence[int]],
    evaluator: metrics_lib.BinaryEvaluator,
    levels: Sequence[str] = voting.LEVELS,
    case_votings: Sequence[str] = voting.VOTINGS,
) -> list[ResultEntry]:
  """The entries of every subset x level (of `levels`) x voting on one
  split (image level: voting.VOTINGS; case level: `case_votings`, e.g.
  voting.CASE_VOTINGS)."""
  cases = preds.cases()
  entries = []
  for members in subsets:
    names = tuple(run_names[i] for i in members)
    for level in levels:
      votes = case_votings if level == 'case' else voting.VOTINGS
      for vote in votes:
        d = decide_split(preds, members, level, vote, cases)
        entries.append(entry_of(d, names, level, vote, split, evaluator))
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
  voting: str = 'soft'

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(members=list(self.members))
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
  cases = {s: by_split[s].cases() for s in (VALIDATION, split)}
  return [
      op
      for members in members_list
      for level in voting.LEVELS
      for op in vote_operating_points(
          by_split, run_names, members, level, 'soft', split, cases
      )
  ]


def vote_operating_points(
    by_split: Mapping[str, SplitPredictions],
    run_names: Sequence[str],
    members: Sequence[int],
    level: str,
    vote: str,
    split: str,
    cases: Mapping[str, voting.CaseIndex] | None = None,
) -> list[OperatingPoint]:
  """The OPERATING_POINTS of one ensemble's `vote` scores at `level`: each
  threshold chosen on validation, applied to `split` (none when validation
  holds one class; cases: {split: its cases()}, passed in to compute them
  once)."""
  cases = cases or {}
  dv = decide_split(
      by_split[VALIDATION], members, level, vote, cases.get(VALIDATION)
  )
  dt = decide_split(by_split[split], members, level, vote, cases.get(split))
  if np.unique(dv.labels).size < 2:
    return []
  out = []
  for name, description in metrics_lib.OPERATING_POINTS.items():
    threshold = metrics_lib.choose_threshold(name, dv.labels, dv.scores)
    op = metrics_lib.operating_point(
        dt.labels, dt.scores, threshold, dt.clusters
    )
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
            voting=vote,
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


def reported_members(
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

"""View votes, case votes and ensemble votes as array operations.

Every model runs once over a split; everything here works on its output, the
fracture probabilities `probs_rv` of shape [runs, views], and never runs a
model again.

Conventions (the paper's, made explicit):

* Image level: a view's vote is the argmax of the two-class softmax, i.e. the
  fracture probability against 0.5. An exact 0.5 counts as fracture (the same
  `score >= threshold` rule as `sklearn.metrics.roc_curve`).
* Case level, over all of a case's views in the split:
  - hard: the majority of the view votes. A tie (possible when a case has an
    even number of views, e.g. 2) goes to FRACTURE: a screening tool should
    rather send a doubtful case to a reader than miss it. The authors' code
    rounds the mean vote, which would send such a tie to normal; their cases
    all had 3 views, so they never met one.
  - soft: the mean probability over the views.
  - max: the largest view probability (one view that sees a fracture is
    enough; a mean over three views would dilute it to a third).
  - noisy_or: 1 - prod(1 - p) over the views, the probability that at least
    one view is right about a fracture if the views erred independently.
    It rises with the number of views: three views at 0.3 give 0.657.
  max and noisy_or exist at case level only (CASE_VOTINGS); their score for
  ROC AUC is their own case probability, their decision score >= 0.5. A
  stacked aggregator fitted on validation: evaluation.aggregation.
* Ensembles of runs:
  - hard: per view, the majority of the members' votes (odd-size ensembles
    have no ties; an even-size one would tie to fracture as above). At case
    level the per-view ensemble votes then vote over the views (members
    first, then views, as the authors did).
  - soft: the mean of the members' probabilities (at case level, also over
    the views).
* Scores for ROC AUC are always the soft ones (mean probabilities), also for
  hard-voting entries; max and noisy_or entries score with their own.
* Ensembles vote max and noisy_or members first (the mean of the members'
  probabilities per view), then over the views.

Multi-view runs (models.multiview) read all views of a case at once and give
a case probability directly (`case_probs_rc`); their per-view probabilities
(their case head on each view alone) stay in `probs_rv`. A run's case
probability is then: a multi-view run's own, a per-view run's soft vote.
  - image level: unchanged (a multi-view run's per-view probabilities).
  - case level, soft: the mean over the members of their case probabilities.
  - case level, hard, no member multi-view: unchanged (members first, then
    views). With a multi-view member, each member votes once per case (a
    per-view member: the majority of its view votes, ties to fracture; a
    multi-view member: its case probability >= 0.5), then the members' case
    votes vote (majority, ties to fracture). The views-first order is the only
    one a multi-view run has: it never votes per view.
  - case level, max and noisy_or: the mean over the members of their case
    probabilities (a per-view member's max or noisy-OR over its views, a
    multi-view member's own).
Without any multi-view run (`case_probs_rc` None) every number is computed
exactly as before they existed.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import itertools
import math

import numpy as np

LEVELS = ('image', 'case')
VOTINGS = ('hard', 'soft')
# Case-level votes of per-view probabilities: VOTINGS and those that exist at
# case level only.
CASE_VOTINGS = (*VOTINGS, 'max', 'noisy_or')
THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class CaseIndex:
  """Which case each view belongs to.

  Attributes:
    case_index_v: int [views], the case (0..num_cases-1) of each view.
    case_ids_c: str [cases], the (already salted-hash) case identifiers, sorted.
    labels_c: int [cases], the label of each case.
    views_per_case_c: int [cases], how many views each case has.
  """

  case_index_v: np.ndarray
  case_ids_c: np.ndarray
  labels_c: np.ndarray
  views_per_case_c: np.ndarray

  @property
  def num_cases(self) -> int:
    return len(self.case_ids_c)

  @property
  def num_views(self) -> int:
    return len(self.case_index_v)


def index_cases(
    case_ids_v: Sequence[str], labels_v: Sequence[int]
) -> CaseIndex:
  """Groups views into cases.

  Args:
    case_ids_v: [views] case identifier of each view.
    labels_v: int [views] label of each view (0 normal, 1 fracture).

  Returns:
    The CaseIndex of these views.

  Raises:
    ValueError: if the views of one case disagree on the label.
  """
  case_ids_v = np.asarray(case_ids_v).astype(str)
  labels_v = np.asarray(labels_v, dtype=np.int64)
  if case_ids_v.shape != labels_v.shape or case_ids_v.ndim != 1:
    raise ValueError(
        f'case_ids_v and labels_v must be 1-D of equal length, got '
        f'{case_ids_v.shape} and {labels_v.shape}.'
    )
  case_ids_c, case_index_v = np.unique(case_ids_v, return_inverse=True)
  num_cases = len(case_ids_c)
  views_per_case_c = np.bincount(case_index_v, minlength=num_cases)
  label_sum_c = np.bincount(case_index_v, weights=labels_v, minlength=num_cases)
  labels_c = (label_sum_c > 0).astype(np.int64)
  mixed = (label_sum_c > 0) & (label_sum_c < views_per_case_c)
  if mixed.any():
    raise ValueError(
        f'The views of case(s) {list(case_ids_c[mixed][:5])} disagree on the '
        'label; a case has one label.'
    )
  return CaseIndex(
      case_index_v=case_index_v.astype(np.int64),
      case_ids_c=case_ids_c,
      labels_c=labels_c,
      views_per_case_c=views_per_case_c,
  )


def image_votes(probs: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
  """Votes (bool, True = fracture) of probabilities of any shape."""
  return np.asarray(probs) >= threshold


def case_means(values_xv: np.ndarray, cases: CaseIndex) -> np.ndarray:
  """Mean of per-view values over each case's views.

  Args:
    values_xv: float [..., views].
    cases: the CaseIndex of the views.

  Returns:
    float [..., cases].
  """
  values_xv = np.asarray(values_xv, dtype=np.float64)
  onehot_vc = np.zeros((cases.num_views, cases.num_cases))
  onehot_vc[np.arange(cases.num_views), cases.case_index_v] = 1.0
  return (values_xv @ onehot_vc) / cases.views_per_case_c


def case_hard_votes(votes_xv: np.ndarray, cases: CaseIndex) -> np.ndarray:
  """Majority of each case's view votes; ties go to fracture. bool [..., cases]."""
  return case_means(np.asarray(votes_xv, dtype=np.float64), cases) >= 0.5


def case_soft_probs(probs_xv: np.ndarray, cases: CaseIndex) -> np.ndarray:
  """Mean probability over each case's views. float [..., cases]."""
  return case_means(probs_xv, cases)


def case_max_probs(probs_xv: np.ndarray, cases: CaseIndex) -> np.ndarray:
  """Largest probability over each case's views. float [..., cases]."""
  probs_xv = np.asarray(probs_xv, dtype=np.float64)
  out = np.full((*probs_xv.shape[:-1], cases.num_cases), -np.inf)
  np.maximum.at(
      np.moveaxis(out, -1, 0),
      cases.case_index_v,
      np.moveaxis(probs_xv, -1, 0),
  )
  return out


def case_noisy_or_probs(probs_xv: np.ndarray, cases: CaseIndex) -> np.ndarray:
  """1 - prod(1 - p) over each case's views. float [..., cases].

  Summed in log space (log1p), so that many views near 0 or a view at
  exactly 1 stay exact.
  """
  probs_xv = np.clip(np.asarray(probs_xv, dtype=np.float64), 0.0, 1.0)
  with np.errstate(divide='ignore'):
    log_normal_xv = np.log1p(-probs_xv)  # -inf for a view at exactly 1
  log_normal_xc = np.zeros((*probs_xv.shape[:-1], cases.num_cases))
  np.add.at(
      np.moveaxis(log_normal_xc, -1, 0),
      cases.case_index_v,
      np.moveaxis(log_normal_xv, -1, 0),
  )
  return -np.expm1(log_normal_xc)


def case_vote_probs(
    probs_xv: np.ndarray, cases: CaseIndex, vote: str
) -> np.ndarray:
  """A case-level vote's case probability. float [..., cases].

  'hard': the fraction of fracture votes (>= 0.5 decides as case_hard_votes);
  'soft', 'max', 'noisy_or': case_soft_probs, case_max_probs,
  case_noisy_or_probs.
  """
  if vote == 'hard':
    return case_means(image_votes(probs_xv).astype(np.float64), cases)
  functions = {
      'soft': case_soft_probs,
      'max': case_max_probs,
      'noisy_or': case_noisy_or_probs,
  }
  if vote not in functions:
    raise ValueError(f'vote must be one of {CASE_VOTINGS}, got {vote!r}.')
  return functions[vote](probs_xv, cases)


def ensemble_hard_votes(
    probs_rv: np.ndarray, members: Sequence[int]
) -> np.ndarray:
  """Per-view majority of the members' votes (ties to fracture). bool [views]."""
  member_votes_mv = image_votes(np.asarray(probs_rv)[list(members)])
  return member_votes_mv.mean(axis=0) >= 0.5


def ensemble_soft_probs(
    probs_rv: np.ndarray, members: Sequence[int]
) -> np.ndarray:
  """Per-view mean of the members' probabilities. float [views]."""
  return np.asarray(probs_rv, dtype=np.float64)[list(members)].mean(axis=0)


@dataclasses.dataclass(frozen=True)
class Decisions:
  """What one (members, level, voting) combination decides on a split.

  Attributes:
    labels: int [n] true labels (n = views at image level, cases at case level).
    preds: bool [n] decisions (True = fracture).
    scores: float [n] soft scores (mean probability), for ROC AUC.
    clusters: int [n] the case of each item, for the case-level bootstrap.
  """

  labels: np.ndarray
  preds: np.ndarray
  scores: np.ndarray
  clusters: np.ndarray


def run_case_probs(
    probs_rv: np.ndarray,
    cases: CaseIndex,
    case_probs_rc: np.ndarray | None = None,
) -> np.ndarray:
  """Each run's case probability. float64 [runs, cases].

  Args:
    probs_rv: float [runs, views] fracture probabilities.
    cases: the CaseIndex of the views.
    case_probs_rc: float [runs, cases] or None (no run is multi-view).

  Returns:
    case_probs_rc when given, else each run's soft vote, computed as `decide`
    computes a single run's soft case score (bit for bit).
  """
  if case_probs_rc is not None:
    return np.asarray(case_probs_rc, dtype=np.float64)
  return np.stack(
      [
          case_soft_probs(ensemble_soft_probs(probs_rv, [r]), cases)
          for r in range(len(probs_rv))
      ]
  )


def run_case_hard_votes(
    probs_rv: np.ndarray,
    cases: CaseIndex,
    case_probs_rc: np.ndarray | None = None,
    multiview_r: np.ndarray | None = None,
) -> np.ndarray:
  """Each run's own case vote. bool [runs, cases].

  A per-view run: the majority of its view votes (ties to fracture); a
  multi-view run (multiview_r, float [runs, cases] case_probs_rc needed): its
  case probability >= THRESHOLD.
  """
  votes_rc = case_hard_votes(image_votes(probs_rv), cases)
  if multiview_r is not None and np.any(multiview_r):
    multiview_r = np.asarray(multiview_r, dtype=bool)
    votes_rc[multiview_r] = image_votes(np.asarray(case_probs_rc)[multiview_r])
  return votes_rc


def _has_multiview(
    multiview_r: np.ndarray | None, members: Sequence[int]
) -> bool:
  return multiview_r is not None and bool(
      np.asarray(multiview_r, dtype=bool)[list(members)].any()
  )


def _member_first_case_probs(
    probs_rv: np.ndarray,
    cases: CaseIndex,
    members: Sequence[int],
    vote: str,
    case_probs_rc: np.ndarray | None,
    multiview_r: np.ndarray | None,
) -> np.ndarray:
  """max or noisy_or case probabilities of an ensemble. float64 [cases].

  Per-view members only: the vote over the views of the members' mean
  probability per view. With a multi-view member: the mean over the members
  of their case probabilities (per-view members voted over their views).
  """
  if not _has_multiview(multiview_r, members):
    return case_vote_probs(ensemble_soft_probs(probs_rv, members), cases, vote)
  probs_mc = case_vote_probs(np.asarray(probs_rv)[members], cases, vote)
  multiview_m = np.asarray(multiview_r, dtype=bool)[members]
  probs_mc[multiview_m] = np.asarray(case_probs_rc, dtype=np.float64)[members][
      multiview_m
  ]
  return probs_mc.mean(axis=0)


def case_decisions(
    probs_rv: np.ndarray,
    cases: CaseIndex,
    members: Sequence[int],
    voting: str,
    case_probs_rc: np.ndarray | None = None,
    multiview_r: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Case-level (preds bool [cases], scores float64 [cases]) of an ensemble.

  See the module docstring; with case_probs_rc None, exactly the per-view
  rules (members first, then views).
  """
  members = list(members)
  if voting in ('max', 'noisy_or'):
    scores_c = _member_first_case_probs(
        probs_rv, cases, members, voting, case_probs_rc, multiview_r
    )
    return image_votes(scores_c), scores_c
  if case_probs_rc is None:
    scores_c = case_soft_probs(ensemble_soft_probs(probs_rv, members), cases)
  else:
    scores_c = np.asarray(case_probs_rc, dtype=np.float64)[members].mean(0)
  if voting == 'soft':
    return image_votes(scores_c), scores_c
  if not _has_multiview(multiview_r, members):
    votes_v = ensemble_hard_votes(probs_rv, members)
    return case_hard_votes(votes_v, cases), scores_c
  member_votes_mc = run_case_hard_votes(
      np.asarray(probs_rv)[members],
      cases,
      np.asarray(case_probs_rc)[members],
      np.asarray(multiview_r)[members],
  )
  return member_votes_mc.mean(axis=0) >= 0.5, scores_c


def _check_case_probs(
    probs_rv: np.ndarray,
    cases: CaseIndex,
    case_probs_rc: np.ndarray | None,
    multiview_r: np.ndarray | None,
) -> None:
  """Raises ValueError when the case inputs do not fit probs_rv and cases."""
  num_runs = len(probs_rv)
  if case_probs_rc is not None and np.shape(case_probs_rc) != (
      num_runs,
      cases.num_cases,
  ):
    raise ValueError(
        f'case_probs_rc must be [runs, cases] = {(num_runs, cases.num_cases)}'
        f', got {np.shape(case_probs_rc)}.'
    )
  if multiview_r is not None:
    if np.shape(multiview_r) != (num_runs,):
      raise ValueError(
          f'multiview_r must be [runs] = ({num_runs},), got '
          f'{np.shape(multiview_r)}.'
      )
    if case_probs_rc is None and np.any(multiview_r):
      raise ValueError('Multi-view runs need case_probs_rc.')


def decide(
    probs_rv: np.ndarray,
    labels_v: np.ndarray,
    cases: CaseIndex,
    members: Sequence[int],
    level: str,
    voting: str,
    *,
    case_probs_rc: np.ndarray | None = None,
    multiview_r: np.ndarray | None = None,
) -> Decisions:
  """Decisions of an ensemble (1 member = a single model) on one split.

  Args:
    probs_rv: float [runs, views] fracture probabilities.
    labels_v: int [views] labels.
    cases: the CaseIndex of the views.
    members: indices into the runs axis.
    level: 'image' (each view on its own) or 'case' (vote over the views).
    voting: 'hard' (majority votes) or 'soft' (mean probabilities); at case
      level also 'max' or 'noisy_or' (module docstring).
    case_probs_rc: float [runs, cases] each run's case probability (a
      multi-view run's own, a per-view run's soft vote), cases in
      cases.case_ids_c order; None: no run is multi-view.
    multiview_r: bool [runs], which runs are multi-view (None: none).

  Returns:
    The Decisions.
  """
  if level not in LEVELS:
    raise ValueError(f'level must be one of {LEVELS}, got {level!r}.')
  allowed = CASE_VOTINGS if level == 'case' else VOTINGS
  if voting not in allowed:
    raise ValueError(
        f'voting at {level} level must be one of {allowed}, got {voting!r}.'
    )
  if not members:
    raise ValueError('An ensemble needs at least one member.')
  _check_case_probs(probs_rv, cases, case_probs_rc, multiview_r)
  if level == 'image':
    soft_v = ensemble_soft_probs(probs_rv, members)
    preds = (
        ensemble_hard_votes(probs_rv, members)
        if voting == 'hard'
        else image_votes(soft_v)
    )
    return Decisions(
        labels=np.asarray(labels_v, dtype=np.int64),
        preds=preds,
        scores=soft_v,
        clusters=cases.case_index_v,
    )
  preds, scores_c = case_decisions(
      probs_rv, cases, members, voting, case_probs_rc, multiview_r
  )
  return Decisions(
      labels=cases.labels_c,
      preds=preds,
      scores=scores_c,
      clusters=np.arange(cases.num_cases),
  )


def num_odd_subsets(num_runs: int) -> int:
  """Number of odd-size subsets of num_runs runs: 2**(num_runs - 1)."""
  return 2 ** (num_runs - 1) if num_runs > 0 else 0


def odd_subsets(
    num_runs: int, max_subsets: int | None = None, seed: int = 0
) -> list[tuple[int, ...]]:
  """Every odd-size subset of range(num_runs), or a capped, seeded selection.

  Subsets are ordered by size, then lexicographically. With a cap smaller than
  2**(num_runs-1), the result always holds every single run and the largest
  odd-size ensemble, and the rest is a seeded uniform sample of the other odd
  subsets (never enumerating all of them).

  Args:
    num_runs: number of runs.
    max_subsets: cap on the number of subsets (None = no cap).
    seed: seed of the sample when capped.

  Returns:
    A list of sorted tuples of run indices.
  """
  if num_runs < 1:
    raise ValueError(f'Need at least one run, got {num_runs}.')
  total = num_odd_subsets(num_runs)
  if max_subsets is None or max_subsets >= total:
    return [
        c
        for k in range(1, num_runs + 1, 2)
        for c in itertools.combinations(range(num_runs), k)
    ]
  largest = num_runs if num_runs % 2 else num_runs - 1
  required = [(i,) for i in range(num_runs)] + [tuple(range(largest))]
  required = list(dict.fromkeys(required))
  if max_subsets < len(required):
    raise ValueError(
        f'max_subsets={max_subsets} is too small for {num_runs} runs: it must '
        f'be at least {len(required)} (every single run and the full ensemble).'
    )
  chosen = set(required)
  rng = np.random.default_rng(seed)
  sizes = np.arange(3, num_runs + 1, 2)
  # The number of subsets of each size, as weights for a uniform draw.
  weights = np.array([math.comb(num_runs, int(k)) for k in sizes], dtype=float)
  if largest in sizes:
    weights[sizes == largest] -= 1
  weights /= weights.sum()
  while len(chosen) < max_subsets:
    size = int(rng.choice(sizes, p=weights))
    chosen.add(
        tuple(sorted(rng.choice(num_runs, size=size, replace=False).tolist()))
    )
  return sorted(chosen, key=lambda c: (len(c), c))

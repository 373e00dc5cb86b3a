"""One evaluation, computed once and frozen: `compute(predictions, ...)`.

`Evaluation` holds everything the reporting writers need: the predictions
it came from, every `ResultEntry`, the protocols' selections, the operating
points, the class counts, the calibration blocks, the subgroups' entries
and ONE `Headline`.

The Headline is the model every figure, table caption, the model card, the
error gallery, TensorBoard and the console name and show: the honest
protocol's choice (chosen on validation, reported on the asked split; the
paper protocol's without a validation split) at case level under ONE voting
rule, HEADLINE_VOTING = 'soft' by default: the soft vote's mean probability
is the score ROC AUC and calibration use, and its decisions (score >= 0.5)
are those the confusion matrices and the gallery count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import types
from typing import Any

from ankle_jax.evaluation import aggregation as aggregation_lib
from ankle_jax.evaluation import calibration as calibration_lib
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation import subgroups as subgroups_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.predictions import VALIDATION
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.predictions import multiview_of
from ankle_jax.evaluation.results import CheckpointInfo
from ankle_jax.evaluation.results import OperatingPoint
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.evaluation.results import Results
from ankle_jax.evaluation.results import Selection
from ankle_jax.evaluation.results import SelectionKey
from ankle_jax.evaluation.results import SplitCounts

HEADLINE_LEVEL = 'case'
HEADLINE_VOTING = 'soft'


@dataclasses.dataclass(frozen=True)
class Headline(Selection):
  """The one model an evaluation's documents lead with: a protocol's
  Selection (protocol 'honest', chosen on validation, or 'paper' without a
  validation split; level 'case'; the one voting rule, 'soft' by default).
  """

  @classmethod
  def of(cls, selection: Selection) -> Headline:
    return cls(**dataclasses.asdict(selection))

  @property
  def key(self) -> ResultKey:
    """Its results entry on the reported split."""
    return self.reported_key()

  @property
  def label(self) -> str:
    """'run_a+run_b'."""
    return '+'.join(self.members)

  @property
  def rule(self) -> str:
    """How it was chosen, in words, for captions."""
    return (
        f"the {self.protocol} protocol's choice (case level, {self.voting} "
        f'voting, chosen on `{self.chosen_on}`)'
    )

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), 'members': list(self.members)}


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Everything an evaluation computes, from its predictions alone; frozen,
  its mappings read-only (types.MappingProxyType).

  Attributes:
    predictions: {split: SplitPredictions} the asked split and validation
      (as predicted; not the pooled split).
    run_names: the runs, in the predictions' order.
    split: the reported split. pooled_split: 'validation+<split>' (the
      split itself without validation).
    results: every subset x level x voting x split entry (the stacked case
      entries on validation, out of fold, and on the reported split).
    protocols: {(protocol, level, voting): Selection}; the honest protocol's
      also for case level max, noisy_or and stacked.
    headline: the one model the documents lead with (module docstring).
    operating_points: thresholds chosen on validation.
    counts: {split: SplitCounts}, the pooled split included.
    calibration: the calibration blocks and calibrators.
    subgroups: the subgroups' entries (results.reported_members).
    num_subsets, num_bootstrap, seed, selection_metric: the settings.
    checkpoints: {run: CheckpointInfo}.
    max_eval_views: views kept per case (0 = all).
    multiview_runs: the runs that read all views of a case at once.
    validation_source: the runs' own data_dir when validation came from
      there (an external test set), else None.
    aggregation: the honest protocol's case aggregation, chosen on
      validation (evaluation.aggregation); None without validation (the
      paper protocol keeps hard voting).
    oof_source: for a fold ensemble, where its 'validation' came from: the
      out-of-fold predictions (evaluation.oof.as_validation), else None.
  """

  predictions: Mapping[str, SplitPredictions]
  run_names: tuple[str, ...]
  split: str
  pooled_split: str
  results: Mapping[ResultKey, results_lib.ResultEntry]
  protocols: Mapping[SelectionKey, Selection]
  headline: Headline
  operating_points: tuple[OperatingPoint, ...]
  counts: Mapping[str, SplitCounts]
  calibration: calibration_lib.Calibration
  subgroups: tuple[subgroups_lib.SubgroupEntry, ...]
  num_subsets: int
  num_bootstrap: int
  seed: int
  selection_metric: str
  checkpoints: Mapping[str, CheckpointInfo]
  max_eval_views: int
  multiview_runs: tuple[str, ...]
  validation_source: str | None
  aggregation: aggregation_lib.AggregationChoice | None
  oof_source: str | None = None

  def step_of(self, members: Sequence[str]) -> int:
    """TensorBoard step of an ensemble: its members' largest training step."""
    steps = [self.checkpoints[m].step for m in members if m in self.checkpoints]
    return max(steps, default=0)

  def decisions(
      self, members: Sequence[str], level: str, vote: str
  ) -> voting.Decisions:
    """The members' decisions on the reported split."""
    idx = [self.run_names.index(m) for m in members]
    return results_lib.decide_split(
        self.predictions[self.split], idx, level, vote
    )

  def results_json(self) -> list[dict[str, Any]]:
    """Every entry ("subgroup": null, with its "calibration" block), then
    the subgroups' entries."""
    blocks = self.calibration.blocks
    return [
        {**e.to_json(), 'calibration': blocks.get(k)}
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
        'runs': list(self.run_names),
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
        'oof_source': self.oof_source,
        'protocols': protocols,
        'headline': self.headline.to_json(),
        'operating_points': [op.to_json() for op in self.operating_points],
        'case_aggregation': self._aggregation_json(),
    }

  def _aggregation_json(self) -> dict[str, Any] | None:
    """The honest case aggregation and its reported entry's numbers."""
    if self.aggregation is None:
      return None
    entry = self.results[self.aggregation.reported_key()].to_json()
    return {
        **self.aggregation.to_json(),
        'reported_metrics': entry['metrics'],
        'reported_ci95': entry['ci95'],
        'operating_points': [
            op.to_json() for op in self._aggregation_operating_points()
        ],
    }

  def _aggregation_operating_points(self) -> list[OperatingPoint]:
    """The chosen aggregation's thresholds chosen on validation (its
    reported metrics are at 0.5, where max and noisy-OR lean to fracture);
    none for the stacked aggregator (its validation scores are out of
    fold)."""
    choice = self.aggregation
    if choice.voting == aggregation_lib.STACKED or (
        VALIDATION not in self.predictions
    ):
      return []
    members = [self.run_names.index(m) for m in choice.members]
    return results_lib.vote_operating_points(
        self.predictions,
        self.run_names,
        members,
        'case',
        choice.voting,
        self.split,
    )


@dataclasses.dataclass(frozen=True)
class Settings:
  """How compute() evaluates (the command's flags).

  Attributes:
    split: the split to report on.
    max_subsets: cap on the number of ensembles (None: all odd subsets).
    num_bootstrap: bootstrap resamples. seed: bootstrap and subset seed.
    selection_metric: the metric that picks the protocols' best ensembles.
    headline_voting: the Headline's voting rule ('soft' or 'hard').
    checkpoints: {run: CheckpointInfo}, stated in the documents.
    max_eval_views: views kept per case (0 = all), stated in the documents.
    validation_source: the runs' own data_dir when validation came from
      there (an external test set), else None.
    oof_source: a fold ensemble's OOF predictions file (or 'the fold runs')
      when its 'validation' is their out-of-fold predictions, else None.
  """

  split: str
  max_subsets: int | None = None
  num_bootstrap: int = 2000
  seed: int = 0
  selection_metric: str = 'accuracy'
  headline_voting: str = HEADLINE_VOTING
  checkpoints: Mapping[str, CheckpointInfo] = dataclasses.field(
      default_factory=dict
  )
  max_eval_views: int = 0
  validation_source: str | None = None
  oof_source: str | None = None


def _with_pooled(
    predictions: Mapping[str, SplitPredictions], split: str
) -> tuple[dict[str, SplitPredictions], str]:
  """(every split to evaluate, the pooled 'validation+<split>' included when
  there is a validation split; the pooled split's name)."""
  splits = dict(predictions)
  if VALIDATION not in predictions or split == VALIDATION:
    return splits, split
  pooled_split = f'{VALIDATION}+{split}'
  splits[pooled_split] = results_lib.pool_splits(
      {VALIDATION: predictions[VALIDATION], split: predictions[split]}
  )
  return splits, pooled_split


@dataclasses.dataclass(frozen=True)
class _Chosen:
  """What _choose returns: every entry, the protocols' selections, the
  number of subsets and the honest case aggregation (None: no validation)."""

  results: Results
  protocols: dict[SelectionKey, Selection]
  num_subsets: int
  aggregation: aggregation_lib.AggregationChoice | None


def _choose(
    splits: Mapping[str, SplitPredictions],
    run_names: Sequence[str],
    pooled_split: str,
    settings: Settings,
    evaluator: metrics_lib.BinaryEvaluator,
) -> _Chosen:
  """Every entry, both protocols' selections, the honest aggregation."""
  subsets = voting.odd_subsets(
      len(run_names), settings.max_subsets, settings.seed
  )
  results: Results = {}
  for name, preds in splits.items():
    for e in results_lib.evaluate_subsets(
        preds,
        name,
        run_names,
        subsets,
        evaluator,
        voting.LEVELS,
        voting.CASE_VOTINGS,
    ):
      results[e.key] = e
  has_validation = pooled_split != settings.split
  protocols = results_lib.choose_protocols(
      results,
      split=settings.split,
      pooled_split=pooled_split,
      has_validation=has_validation,
      metric=settings.selection_metric,
  )
  if not has_validation:
    return _Chosen(results, protocols, len(subsets), None)
  stacked_entries, stacked = aggregation_lib.evaluate_stacked(
      splits[VALIDATION],
      splits[settings.split],
      settings.split,
      run_names,
      subsets,
      evaluator,
      settings.seed,
  )
  results.update((e.key, e) for e in stacked_entries)
  choice, selections = aggregation_lib.choose_aggregation(
      results, settings.split, settings.selection_metric, stacked
  )
  protocols.update(selections)
  return _Chosen(results, protocols, len(subsets), choice)


def compute(
    predictions: Mapping[str, SplitPredictions],
    run_names: Sequence[str],
    settings: Settings,
) -> Evaluation:
  """The one frozen Evaluation of the predictions (module docstring).

  Args:
    predictions: {split: SplitPredictions}: settings.split and, when there
      is one, 'validation'.
    run_names: the runs, in the predictions' order.
    settings: how to evaluate.
  """
  split, run_names = settings.split, list(run_names)
  splits, pooled_split = _with_pooled(predictions, split)
  evaluator = metrics_lib.BinaryEvaluator()
  chosen = _choose(splits, run_names, pooled_split, settings, evaluator)
  results, protocols = chosen.results, chosen.protocols
  reported = results_lib.reported_members(run_names, protocols)
  has_validation = pooled_split != split
  protocol = 'honest' if has_validation else 'paper'
  return Evaluation(
      predictions=types.MappingProxyType(dict(predictions)),
      run_names=tuple(run_names),
      split=split,
      pooled_split=pooled_split,
      results=types.MappingProxyType(results),
      protocols=types.MappingProxyType(protocols),
      headline=Headline.of(
          protocols[(protocol, HEADLINE_LEVEL, settings.headline_voting)]
      ),
      operating_points=tuple(
          results_lib.compute_operating_points(
              predictions, run_names, reported, split
          )
          if has_validation
          else ()
      ),
      counts=types.MappingProxyType(
          {k: SplitCounts.of(p) for k, p in splits.items()}
      ),
      calibration=calibration_lib.compute_calibration(
          list(results),
          run_names,
          splits,
          split=split,
          num_resamples=settings.num_bootstrap,
          seed=settings.seed,
      ),
      subgroups=tuple(
          subgroups_lib.compute_subgroups(
              predictions[split], split, run_names, reported, evaluator
          )
      ),
      num_subsets=chosen.num_subsets,
      num_bootstrap=settings.num_bootstrap,
      seed=settings.seed,
      selection_metric=settings.selection_metric,
      checkpoints=types.MappingProxyType(dict(settings.checkpoints)),
      max_eval_views=settings.max_eval_views,
      multiview_runs=tuple(
          n for n, m in zip(run_names, multiview_of(predictions[split])) if m
      ),
      validation_source=settings.validation_source,
      aggregation=chosen.aggregation,
      oof_source=settings.oof_source,
  )

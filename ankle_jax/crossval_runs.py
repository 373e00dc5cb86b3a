"""The runs of a K-fold cross-validation (shared by `ankle_jax.crossval`,
which trains and scores them, and `ankle_jax.evaluate`, which evaluates
their ensemble on test).

A cross-validation workdir DIR holds fold k's ordinary training run in
DIR/fold_<k>, trained with data.cv_folds=K and data.cv_fold=k (its train
split: the other K-1 folds of train+validation; its 'validation' split:
fold k), and the out-of-fold evaluation in DIR/cv/ (OOF_FILE, results.json,
report.md, report.html).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import copy
import dataclasses
import json
import os
import re
from typing import Any

from ankle_jax import console
from ankle_jax import evaluation_inputs
from ankle_jax import inference
from ankle_jax import writers
from ankle_jax.data import folds
from ankle_jax.evaluation import oof as oof_lib
from ankle_jax.evaluation.predictions import VALIDATION

FOLD_PREFIX = 'fold_'
CV_DIR = 'cv'
OOF_FILE = oof_lib.OOF_FILE
RESULTS_FILE = oof_lib.RESULTS_FILE
SUMMARY_FILE = 'summary.json'
# The config fields of the fold API (configs/default.py).
FOLDS_FIELD, FOLD_FIELD = 'cv_folds', 'cv_fold'
MIN_FOLDS = 2
_FOLD_DIR = re.compile(re.escape(FOLD_PREFIX) + r'(\d+)')


def fold_name(fold: int) -> str:
  """'fold_<k>': fold k's run directory name (and run name in evaluate)."""
  return f'{FOLD_PREFIX}{fold}'


def fold_dir(workdir: str, fold: int) -> str:
  """DIR/fold_<k>."""
  return os.path.join(workdir, fold_name(fold))


def cv_dir(workdir: str) -> str:
  """DIR/cv, where the OOF evaluation goes."""
  return os.path.join(workdir, CV_DIR)


def existing_folds(workdir: str) -> dict[int, str]:
  """{k: DIR/fold_<k>} of the fold directories present, by k."""
  if not os.path.isdir(workdir):
    return {}
  found = {}
  for name in os.listdir(workdir):
    match = _FOLD_DIR.fullmatch(name)
    if match and os.path.isdir(os.path.join(workdir, name)):
      found[int(match.group(1))] = os.path.join(workdir, name)
  return dict(sorted(found.items()))


def is_crossval_workdir(path: str) -> bool:
  """A directory that holds fold runs and is no run itself."""
  return not os.path.exists(os.path.join(path, writers.CONFIG_FILE)) and bool(
      existing_folds(path)
  )


def expand_runs(run_dirs: Sequence[str]) -> list[str]:
  """run_dirs with each cross-validation workdir replaced by its folds."""
  out = []
  for path in run_dirs:
    if is_crossval_workdir(path):
      out += list(existing_folds(path).values())
    else:
      out.append(path)
  return out


def check_num_folds(num_folds: int) -> None:
  """Raises console.UserError for fewer than MIN_FOLDS folds."""
  if num_folds < MIN_FOLDS:
    raise console.UserError(
        f'--folds={num_folds}: a cross-validation needs at least '
        f'{MIN_FOLDS} folds (data.{FOLDS_FIELD}; 5 is usual).'
    )


# ------------------------------------------------------------------ configs
@dataclasses.dataclass(frozen=True)
class FoldSpec:
  """A run's place in a cross-validation: fold `fold` of `num_folds`."""

  num_folds: int
  fold: int


def fold_spec(config: Any) -> FoldSpec | None:
  """The run config's FoldSpec, None when it is no fold run (cv_fold < 0 or
  a config without the fold API's fields)."""
  spec = folds.cv_fold_of(config.get('data') or {})
  return None if spec is None else FoldSpec(*(int(x) for x in spec))


def fold_config(config: Any, num_folds: int, fold: int) -> Any:
  """A copy of config with data.cv_folds=num_folds, data.cv_fold=fold (as
  `launch.py --config.data.cv_folds=K --config.data.cv_fold=k`).

  Raises:
    console.UserError: the config has no such fields.
  """
  missing = [f for f in (FOLDS_FIELD, FOLD_FIELD) if f not in config.data]
  if missing:
    raise console.UserError(
        f'the config has no data.{" nor data.".join(missing)} (the fold API '
        'of configs/default.py); cannot train folds.'
    )
  out = copy.deepcopy(config)
  setattr(out.data, FOLDS_FIELD, num_folds)
  setattr(out.data, FOLD_FIELD, fold)
  return out


def _saved_spec(run_dir: str) -> FoldSpec | None:
  path = os.path.join(run_dir, writers.CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return fold_spec(json.load(f))


def check_workdir(workdir: str, num_folds: int) -> None:
  """Raises console.UserError when DIR's fold runs were trained with
  another K (or are not folds), or DIR holds a fold k >= K."""
  for k, path in existing_folds(workdir).items():
    spec = _saved_spec(path)
    saved = os.path.exists(os.path.join(path, writers.CONFIG_FILE))
    if k >= num_folds or (saved and spec != FoldSpec(num_folds, k)):
      found = (
          f'data.{FOLDS_FIELD}={spec.num_folds}, data.{FOLD_FIELD}='
          f'{spec.fold}'
          if spec
          else 'no fold'
          if saved
          else f'fold {k}'
      )
      raise console.UserError(
          f'{path} was trained as {found}, not as fold {k} of '
          f'{num_folds}: the folds of {workdir} disagree with '
          f'--folds={num_folds}; pass their K or another --workdir.'
      )


def fold_finished(run_dir: str) -> bool:
  """Whether the run wrote its summary.json at its last step (or stopped
  early): train.py writes it when training ends."""
  path = os.path.join(run_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    summary = json.load(f)
  return bool(summary.get('stopped_early')) or int(
      summary['final_step']
  ) >= int(summary['num_train_steps'])


def check_fold_ensemble(runs: Sequence[inference.Run]) -> int | None:
  """K when the runs are the K folds of one cross-validation, None when
  none of them is a fold run, or for one fold run alone (an ordinary
  evaluation: its 'validation' is its fold).

  Raises:
    console.UserError: some runs are folds and some not, the folds disagree
      on K, or a fold is missing or repeated.
  """
  specs = [fold_spec(r.config) for r in runs]
  if len(runs) == 1 or all(s is None for s in specs):
    return None
  names = [r.name for r, s in zip(runs, specs) if s is None]
  if names:
    raise console.UserError(
        f'--runs mixes fold runs with runs that are no fold ({names}); '
        'evaluate a fold ensemble alone.'
    )
  ks = sorted({s.num_folds for s in specs})
  if len(ks) > 1:
    raise console.UserError(
        f'--runs: the fold runs disagree on data.{FOLDS_FIELD} ({ks}).'
    )
  folds = sorted(s.fold for s in specs)
  if folds != list(range(ks[0])):
    raise console.UserError(
        f'--runs: a fold ensemble needs each of the {ks[0]} folds once; '
        f'got folds {folds}.'
    )
  return ks[0]


# -------------------------------------------------------------- predictions
def predict_oof(
    runs: Sequence[inference.Run],
    *,
    batch_size: int,
    max_eval_views: int,
    batches_fn_of: (
        Callable[[inference.Run], evaluation_inputs.BatchesFn] | None
    ) = None,
) -> oof_lib.OofPredictions:
  """Each fold run's predictions on its own 'validation' split (fold k),
  merged (runs in fold order; batches_fn_of: a run's injected batches_fn,
  tests only).

  Raises:
    console.UserError: a split missing, or a case in two folds.
  """
  per_fold = []
  for run in runs:
    print(f'Out-of-fold: {run.name} on its validation fold...', flush=True)
    inputs = evaluation_inputs.EvaluationInputs.of(
        [run],
        VALIDATION,
        batches_fn=batches_fn_of(run) if batches_fn_of else None,
        data_dir=None,
        dataset_config=None,
        batch_size=batch_size,
        max_eval_views=max_eval_views,
    )
    batches_for = inputs.batches_fn(VALIDATION)
    if batches_for is None:
      raise console.UserError(f'{run.workdir}: no {VALIDATION!r} split.')
    per_fold.append(inference.predict_split([run], batches_for))
  try:
    return oof_lib.merge_folds(per_fold, [r.name for r in runs])
  except ValueError as e:
    raise console.UserError(str(e)) from e


def in_fold_order(runs: Sequence[inference.Run]) -> list[inference.Run]:
  """The fold runs sorted by their fold."""
  return sorted(runs, key=lambda r: fold_spec(r.config).fold)


def checkpoints_of(runs: Sequence[inference.Run]) -> dict[str, dict]:
  """{run: {'which', 'step'}}: the checkpoints the OOF predictions came
  from (results.json's 'checkpoints')."""
  return {r.name: {'which': r.which, 'step': r.step} for r in runs}


def saved_oof(runs: Sequence[inference.Run]) -> str | None:
  """DIR/cv/oof_predictions.csv when the fold runs all sit in one DIR that
  has it, made from the checkpoints restored now (DIR/cv/results.json's
  'checkpoints'), and none is multi-view (the file holds view probabilities
  only); else None (predict_oof then predicts them again)."""
  parents = {os.path.dirname(os.path.normpath(r.workdir)) for r in runs}
  multiview = any(
      (r.config.model.get('multiview') or {}).get('enabled', False)
      for r in runs
  )
  if len(parents) != 1 or multiview:
    return None
  out_dir = cv_dir(parents.pop())
  path = os.path.join(out_dir, OOF_FILE)
  results = os.path.join(out_dir, RESULTS_FILE)
  if not (os.path.exists(path) and os.path.exists(results)):
    return None
  with open(results) as f:
    saved = json.load(f).get('checkpoints')
  return path if saved == checkpoints_of(runs) else None

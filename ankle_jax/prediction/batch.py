"""Every case of a batch through the runs' vmapped forward.

The views of all cases stream, in case order, into fixed-size batches of
`batch_size` views (the last one padded and masked) that go through
`inference.predict_split`: one jitted forward per model group, compiled once
for the batch shape, whatever the number of cases (multi-view runs regroup
them into batches of cases, `inference.case_batches`). Views are read with
`dicom.load_radiograph` at each group's image size, as in the one-case
command, then (`stored_size` > 0, the default) exactly as `evaluate` sees
them: stored as the dataset builder stores a view (uint16 at its image
size, 300 px by default) and resized to the run's image size by
`pipeline.to_image` (`load_view`), so that a case's probability is
evaluate's for the same checkpoint. A view that cannot be read is skipped and recorded; a case left
with no readable view fails with its reason; the other cases go on.

The case probability is `voting.decide`'s case score of the ensemble of all
runs (`vote`, 'soft' by default: the mean over runs of each run's case
probability, a multi-view run's own fused one), exactly as `evaluate`
scores a case; a view's, the mean over runs of its probability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import dataclasses

import numpy as np

from ankle_jax import inference
from ankle_jax.data import dicom
from ankle_jax.data import pipeline
from ankle_jax.data.radiograph_studies import config as builder_config
from ankle_jax.data.radiograph_studies import decoding
from ankle_jax.evaluation import results as results_lib
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.prediction import inputs as inputs_lib

DEFAULT_BATCH_SIZE = 16
# The builder's stored image side (its config's default).
STORED_SIZE = builder_config.RadiographStudiesConfig.image_size
NO_VIEWS = 'The split has no views to evaluate.'


@dataclasses.dataclass(frozen=True)
class ViewResult:
  """One view's prediction.

  Attributes:
    file: the view file.
    probs_r: float fracture probability of each run.
    prob_raw: their mean (the view's soft ensemble probability).
  """

  file: inputs_lib.InputFile
  probs_r: tuple[float, ...]
  prob_raw: float


@dataclasses.dataclass(frozen=True)
class CaseResult:
  """One case's prediction: its readable views and its case probability."""

  case: inputs_lib.InputCase
  views: tuple[ViewResult, ...]
  prob_raw: float


@dataclasses.dataclass(frozen=True)
class CaseFailure:
  """A case that could not be predicted, and why."""

  case: inputs_lib.InputCase
  reason: str


@dataclasses.dataclass
class BatchOutcome:
  """What `predict_cases` returns: results and failures in case order, and
  the files that could not be decoded."""

  results: list[CaseResult]
  failures: list[CaseFailure]
  unreadable: list[inputs_lib.SkippedFile]


def load_view(path: str, image_size: int, stored_size: int) -> np.ndarray:
  """float32 [S, S, 1] in [0, 1]: the view as evaluate sees it (stored as
  the builder stores it at stored_size, then resized), or read directly at
  image_size when stored_size is 0.

  Raises:
    dicom.DicomReadError: the file cannot be read.
  """
  if not stored_size:
    return dicom.load_radiograph(path, image_size=image_size)
  ok, stored, _ = decoding.decode_job(path, stored_size)
  if not ok:
    raise dicom.DicomReadError(path, stored)
  return pipeline.to_image(stored, image_size)


def _load(path: str, image_size: int, stored_size: int) -> np.ndarray | str:
  """load_view, or the reason the file cannot be read."""
  try:
    return load_view(path, image_size, stored_size)
  except dicom.DicomReadError as e:
    return e.reason.split(' (')[0]
  except Exception as e:  # noqa: BLE001 - one bad file never stops a batch.
    return f'unreadable file ({type(e).__name__})'


def view_batches(
    cases: Sequence[inputs_lib.InputCase],
    image_size: int,
    batch_size: int,
    unreadable: dict[str, str],
    on_case: Callable[[], None] = lambda: None,
    stored_size: int = STORED_SIZE,
) -> Iterator[dict[str, np.ndarray]]:
  """Eval batches of views (inference.predict_split's input) of `cases`.

  Yields {'image': float32 [B, S, S, 1], 'label': int32 [B] (0: unknown),
  'case_id': object [B] (the case's position, zero-padded, so that sorted
  ids keep the case order), 'view_index': int64 [B] (the file's index in
  the case), 'mask': bool [B]}. Unreadable files go to `unreadable` {path:
  reason}; `on_case` is called after each case's views.
  """

  def empty():
    return {
        'image': np.zeros((batch_size, image_size, image_size, 1), np.float32),
        'label': np.zeros((batch_size,), np.int32),
        'case_id': np.full((batch_size,), '', dtype=object),
        'view_index': np.full((batch_size,), -1, np.int64),
        'mask': np.zeros((batch_size,), bool),
    }

  batch, filled = empty(), 0
  for c, case in enumerate(cases):
    for v, item in enumerate(case.files):
      image = _load(item.path, image_size, stored_size)
      if isinstance(image, str):
        unreadable[item.path] = image
        continue
      batch['image'][filled] = image
      batch['case_id'][filled] = f'{c:09d}'
      batch['view_index'][filled] = v
      batch['mask'][filled] = True
      filled += 1
      if filled == batch_size:
        yield batch
        batch, filled = empty(), 0
    on_case()
  if filled:
    yield batch


def case_results(
    cases: Sequence[inputs_lib.InputCase],
    preds: SplitPredictions,
    vote: str = 'soft',
) -> dict[int, CaseResult]:
  """{case position: CaseResult} of the cases that have predictions."""
  index = preds.cases()
  members = list(range(len(preds.probs_rv)))
  case_scores = results_lib.decide_split(
      preds, members, 'case', vote, index
  ).scores
  view_scores = results_lib.decide_split(
      preds, members, 'image', 'soft', index
  ).scores
  out = {}
  for c, case_id in enumerate(index.case_ids_c):
    position = int(case_id)
    rows = np.flatnonzero(index.case_index_v == c)
    rows = rows[np.argsort(preds.view_index_v[rows], kind='stable')]
    views = tuple(
        ViewResult(
            cases[position].files[int(preds.view_index_v[i])],
            tuple(float(p) for p in preds.probs_rv[:, i]),
            float(view_scores[i]),
        )
        for i in rows
    )
    out[position] = CaseResult(cases[position], views, float(case_scores[c]))
  return out


def _failure_reason(case: inputs_lib.InputCase, unreadable) -> str:
  bad = [unreadable[f.path] for f in case.files if f.path in unreadable]
  if len(bad) == len(case.files):
    return (
        f'no readable view ({len(bad)} file(s): {"; ".join(sorted(set(bad)))})'
    )
  return 'no prediction'


def predict_cases(
    runs: Sequence[inference.Run],
    cases: Sequence[inputs_lib.InputCase],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    vote: str = 'soft',
    on_case: Callable[[], None] = lambda: None,
    stored_size: int = STORED_SIZE,
) -> BatchOutcome:
  """Every case's prediction (module docstring); on_case is called once per
  case.

  A failure of the whole stream (not of one file) is retried case by case,
  so that one case's failure never stops the others.
  """
  unreadable: dict[str, str] = {}
  counted = 0

  def count_case() -> None:
    nonlocal counted
    counted += 1
    on_case()

  try:
    preds = inference.predict_split(
        runs,
        lambda size: view_batches(
            cases, size, batch_size, unreadable, count_case, stored_size
        ),
        cases_per_batch=batch_size,
    )
    by_position = case_results(cases, preds, vote)
  except ValueError as e:
    if str(e) != NO_VIEWS:
      raise
    by_position = {}
  except Exception:  # noqa: BLE001 - isolate the case that fails.
    if len(cases) == 1:
      raise
    return _case_by_case(
        runs, cases, batch_size, vote, stored_size, on_case, counted
    )
  outcome = BatchOutcome([], [], [])
  for position, case in enumerate(cases):
    if position in by_position:
      outcome.results.append(by_position[position])
    else:
      reason = _failure_reason(case, unreadable)
      outcome.failures.append(CaseFailure(case, reason))
  outcome.unreadable = [
      inputs_lib.SkippedFile(p, r) for p, r in unreadable.items()
  ]
  return outcome


def _case_by_case(
    runs, cases, batch_size, vote, stored_size, on_case, already_counted
) -> BatchOutcome:
  """predict_cases one case at a time; a case that raises fails alone.
  on_case is called for each case after the first already_counted (those
  the failed stream counted)."""
  outcome = BatchOutcome([], [], [])
  for position, case in enumerate(cases):
    try:
      one = predict_cases(
          runs,
          [case],
          batch_size=batch_size,
          vote=vote,
          stored_size=stored_size,
      )
    except Exception as e:  # noqa: BLE001 - listed with its reason.
      outcome.failures.append(CaseFailure(case, f'{type(e).__name__}: {e}'))
      continue
    else:
      outcome.results += one.results
      outcome.failures += one.failures
      outcome.unreadable += one.unreadable
    finally:
      if position >= already_counted:
        on_case()
  return outcome

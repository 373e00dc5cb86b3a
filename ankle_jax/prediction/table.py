"""predictions.csv and errors.csv of a batch, and its closing lines.

predictions.csv: one 'case' row per predicted case, then its 'view' rows
(PREDICTION_COLUMNS). Identifiers are UIDs and case ids only (salted hashes
unless --hash_ids=false); no path, no name. Probabilities are written
exactly (repr). errors.csv: one row per failed case and per skipped file
(ERROR_COLUMNS); a skipped file is named by its SOP Instance UID when known,
else by the salted hash of its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import dataclasses
import os

from ankle_jax.data.radiograph_studies import layouts
from ankle_jax.prediction import batch as batch_lib
from ankle_jax.prediction import decision as decision_lib
from ankle_jax.prediction import inputs as inputs_lib

PREDICTIONS_FILE = 'predictions.csv'
ERRORS_FILE = 'errors.csv'
PREDICTION_COLUMNS = (
    'row_type',
    'case_id',
    'study_instance_uid',
    'series_instance_uid',
    'sop_instance_uid',
    'view_number',
    'num_views',
    'prob_raw',
    'prob_calibrated',
    'decision',
    'threshold',
    'threshold_applies_to',
    'operating_point',
    'chosen_on',
    'calibration',
    'evaluation',
    'evaluation_date',
    'runs',
    'checkpoint_steps',
    'vote',
)
ERROR_COLUMNS = ('row_type', 'case_id', 'file', 'reason')


@dataclasses.dataclass(frozen=True)
class Provenance:
  """What produced the predictions: the runs, their steps and the vote."""

  run_names: tuple[str, ...]
  steps: tuple[int, ...]
  vote: str = 'soft'


def _rule_fields(rule: decision_lib.DecisionRule, prob_raw: float) -> dict:
  return {
      'prob_raw': repr(float(prob_raw)),
      'prob_calibrated': repr(rule.calibrated(prob_raw)),
      'decision': 'fracture' if rule.is_fracture(prob_raw) else 'normal',
      'threshold': repr(rule.threshold),
      'threshold_applies_to': rule.applies_to,
      'operating_point': rule.operating_point,
      'chosen_on': rule.chosen_on,
      'calibration': rule.calibration,
      'evaluation': rule.source,
      'evaluation_date': rule.date,
  }


def prediction_rows(
    results: Sequence[batch_lib.CaseResult],
    rules: Mapping[str, decision_lib.DecisionRule],
    provenance: Provenance,
) -> list[dict[str, str]]:
  """The rows of predictions.csv (module docstring)."""
  common = {
      'runs': ';'.join(provenance.run_names),
      'checkpoint_steps': ';'.join(str(s) for s in provenance.steps),
      'vote': provenance.vote,
  }
  rows = []
  for result in results:
    case = result.case
    rows.append(
        {
            'row_type': 'case',
            'case_id': case.case_id,
            'study_instance_uid': case.study_uid,
            'num_views': str(len(result.views)),
            **_rule_fields(rules['case'], result.prob_raw),
            **common,
        }
    )
    for number, view in enumerate(result.views, start=1):
      rows.append(
          {
              'row_type': 'view',
              'case_id': case.case_id,
              'study_instance_uid': view.file.study_uid,
              'series_instance_uid': view.file.series_uid,
              'sop_instance_uid': view.file.sop_uid,
              'view_number': str(number),
              'num_views': str(len(result.views)),
              **_rule_fields(rules['image'], view.prob_raw),
              **{**common, 'vote': ''},
          }
      )
  return rows


def file_id(path: str, sop_uid: str, salt: str | None) -> str:
  """How errors.csv names a file: its SOP Instance UID, else the salted hash
  of its path (the path itself when salt is None)."""
  if sop_uid:
    return sop_uid
  return layouts.case_id_for(path, salt) if salt is not None else path


def error_rows(
    outcome: batch_lib.BatchOutcome,
    skipped: Sequence[inputs_lib.SkippedFile],
    salt: str | None,
) -> list[dict[str, str]]:
  """The rows of errors.csv: failed cases, then skipped files."""
  sop_of = {
      f.path: f.sop_uid
      for r in outcome.failures + outcome.results
      for f in r.case.files
  }
  case_of = {
      f.path: r.case.case_id
      for r in outcome.failures + outcome.results
      for f in r.case.files
  }
  rows = [
      {'row_type': 'case', 'case_id': f.case.case_id, 'reason': f.reason}
      for f in outcome.failures
  ]
  for item in list(skipped) + list(outcome.unreadable):
    rows.append(
        {
            'row_type': 'file',
            'case_id': case_of.get(item.path, ''),
            'file': file_id(item.path, sop_of.get(item.path, ''), salt),
            'reason': item.reason,
        }
    )
  return rows


def write_csv(path: str, columns: Sequence[str], rows) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns, restval='')
    writer.writeheader()
    writer.writerows(rows)


def summary_lines(
    out_dir: str,
    num_cases: int,
    outcome: batch_lib.BatchOutcome,
    skipped: Sequence[inputs_lib.SkippedFile],
    seconds: float,
) -> list[str]:
  """The closing lines: counts, speed, failed cases (ids and reasons)."""
  bad_files = list(skipped) + list(outcome.unreadable)
  reasons: dict[str, int] = {}
  for item in bad_files:
    reasons[item.reason] = reasons.get(item.reason, 0) + 1
  done = len(outcome.results)
  lines = [
      f'predicted {done} of {num_cases} case(s) in {seconds:.1f} s '
      f'({done / max(seconds, 1e-9):.2f} cases/s); '
      f'{os.path.join(out_dir, PREDICTIONS_FILE)}'
  ]
  if bad_files:
    lines.append(f'skipped {len(bad_files)} unreadable file(s):')
    lines += [f'  {n} x {r}' for r, n in sorted(reasons.items())]
  if outcome.failures:
    lines.append(f'{len(outcome.failures)} case(s) failed:')
    lines += [f'  {f.case.case_id}: {f.reason}' for f in outcome.failures]
  if bad_files or outcome.failures:
    lines.append(f'details: {os.path.join(out_dir, ERRORS_FILE)}')
  return lines

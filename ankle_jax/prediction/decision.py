"""The decision rule of a batch: calibration and operating point.

Without an evaluation: calibrated = raw and the threshold is 0.5 on the raw
probability (the one-case command's vote). With `--evaluation=EVAL_DIR`
(a directory `python -m ankle_jax.evaluate` wrote): its results.json gives
the calibrator the evaluation fitted on validation for the ensemble of the
predicting runs, at each level (`evaluation.calibrators.Calibrator`:
temperature or Platt, or none with its reason); its summary.json the runs,
their checkpoint steps (which must equal the predicting runs', else a
`console.UserError`) and the operating points chosen on validation.

Operating points: 'youden' and 'sens90' are evaluate's thresholds, on the
raw soft score as evaluate chose them (calibration is monotone, so the
decision is the same as on the calibrated probability at the mapped
threshold); '0.5' is 0.5 on the calibrated probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import datetime
import json
import os
from typing import Any

from ankle_jax import console
from ankle_jax.evaluation import calibrators

OPERATING_POINTS = ('youden', 'sens90', '0.5')
RESULTS_FILE = 'results.json'
SUMMARY_FILE = 'summary.json'
RAW = 'prob_raw'
# evaluate fits its calibrators on validation (evaluation.calibrators).
CALIBRATED_ON = 'validation'
CALIBRATED = 'prob_calibrated'


@dataclasses.dataclass(frozen=True)
class DecisionRule:
  """How one level's probability becomes a decision.

  Attributes:
    level: 'case' or 'image' (a view).
    operating_point: 'youden', 'sens90' or '0.5'.
    threshold: fracture when the probability named by `applies_to` >= it.
    applies_to: RAW or CALIBRATED.
    calibrator: maps the raw probability to the calibrated one.
    chosen_on: the split the threshold was chosen on ('' for a fixed 0.5).
    source: the evaluation directory ('' for the default rule).
    date: when the evaluation was written (UTC, ISO 8601; '' for none).
  """

  level: str
  operating_point: str
  threshold: float
  applies_to: str
  calibrator: calibrators.Calibrator
  chosen_on: str = ''
  source: str = ''
  date: str = ''

  def calibrated(self, prob_raw: float) -> float:
    return float(self.calibrator.apply(prob_raw))

  def is_fracture(self, prob_raw: float) -> bool:
    value = prob_raw if self.applies_to == RAW else self.calibrated(prob_raw)
    return bool(value >= self.threshold)

  @property
  def calibration(self) -> str:
    """The calibrator in words: 'none (reason)', or 'temperature T=...' /
    'platt slope=... intercept=...' and where it was fitted."""
    c = self.calibrator
    if not c.applied:
      return 'none' + (f' ({c.reason})' if c.reason else '')
    if c.temperature is not None:
      words = f'temperature T={c.temperature:.6g}'
    else:
      words = f'platt slope={c.slope:.6g} intercept={c.intercept:.6g}'
    return f'{words} (fitted on {CALIBRATED_ON})'


def default_rules() -> dict[str, DecisionRule]:
  """{level: rule} without an evaluation: 0.5 on the raw probability."""
  none = calibrators.Calibrator(calibrators.NONE, reason='no --evaluation')
  return {
      level: DecisionRule(level, '0.5', 0.5, RAW, none)
      for level in ('case', 'image')
  }


def _read_json(eval_dir: str, name: str) -> Any:
  path = os.path.join(eval_dir, name)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise console.UserError(
        f'--evaluation={eval_dir}: cannot read {name} ({type(e).__name__}); '
        'pass a directory written by python -m ankle_jax.evaluate.'
    ) from e


def check_runs(
    summary: Mapping[str, Any], steps: Mapping[str, int], eval_dir: str
) -> None:
  """Raises console.UserError unless the evaluation's runs and checkpoint
  steps are the predicting runs' ({run name: step})."""
  evaluated = {
      name: int(info['step'])
      for name, info in summary.get('checkpoints', {}).items()
  }
  if set(summary.get('runs', [])) != set(steps):
    raise console.UserError(
        f'--evaluation={eval_dir} evaluated runs '
        f'{", ".join(summary.get("runs", []))} but --runs names '
        f'{", ".join(steps)}: pass the same runs.'
    )
  for name, step in steps.items():
    if evaluated.get(name) != step:
      raise console.UserError(
          f'--evaluation={eval_dir} evaluated run {name} at checkpoint step '
          f'{evaluated.get(name)} but --runs restored step {step}: pass the '
          '--checkpoint that evaluation used, or evaluate this one.'
      )


def _calibrator(entries, members: Sequence[str], level: str):
  for e in entries:
    if (
        e.get('subgroup') is None
        and sorted(e['members']) == sorted(members)
        and e['level'] == level
        and (e.get('calibration') or {}).get('calibrator')
    ):
      fields = e['calibration']['calibrator']
      return calibrators.Calibrator(
          kind=fields['kind'],
          slope=float(fields['slope']),
          intercept=float(fields['intercept']),
          applied=bool(fields['applied']),
          reason=fields.get('reason'),
          aic=dict(fields.get('aic') or {}),
      )
  return calibrators.Calibrator(
      calibrators.NONE,
      reason=f'the evaluation has no {level} calibration of these runs',
  )


def _threshold(summary, members, level: str, name: str, eval_dir: str):
  """(threshold, chosen_on) of a named operating point."""
  for op in summary.get('operating_points', []):
    if (
        sorted(op['members']) == sorted(members)
        and op['level'] == level
        and op['name'] == name
    ):
      return float(op['threshold']), str(op['chosen_on'])
  raise console.UserError(
      f'--evaluation={eval_dir} has no {level}-level operating point '
      f'{name!r} for the ensemble of {", ".join(members)} (evaluate chooses '
      'them on a validation split holding both classes); pass '
      '--operating_point=0.5.'
  )


def evaluation_rules(
    eval_dir: str, steps: Mapping[str, int], operating_point: str
) -> dict[str, DecisionRule]:
  """{level: rule} of an evaluation (module docstring).

  Raises:
    console.UserError: unreadable files, other runs or steps, or no such
      operating point.
  """
  if operating_point not in OPERATING_POINTS:
    raise console.UserError(
        f'--operating_point={operating_point}: expected one of '
        f'{", ".join(OPERATING_POINTS)}.'
    )
  summary = _read_json(eval_dir, SUMMARY_FILE)
  entries = _read_json(eval_dir, RESULTS_FILE)
  check_runs(summary, steps, eval_dir)
  mtime = os.path.getmtime(os.path.join(eval_dir, RESULTS_FILE))
  date = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
  members = list(steps)
  rules = {}
  for level in ('case', 'image'):
    calibrator = _calibrator(entries, members, level)
    if operating_point == '0.5':
      threshold, applies_to, chosen_on = 0.5, CALIBRATED, ''
    else:
      threshold, chosen_on = _threshold(
          summary, members, level, operating_point, eval_dir
      )
      applies_to = RAW
    rules[level] = DecisionRule(
        level,
        operating_point,
        threshold,
        applies_to,
        calibrator,
        chosen_on,
        os.path.abspath(eval_dir),
        date.isoformat(timespec='seconds'),
    )
  return rules

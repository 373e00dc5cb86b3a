"""The batch command (`python -m ankle_jax.predict --out=DIR PATH...`).

Steps: restore the runs; find and group the cases (`inputs`); the decision
rule (`decision`: an evaluation's calibration and operating point, or 0.5
on the raw probability); every case through the forward (`batch`, with a
progress bar in cases/s); predictions.csv and errors.csv (`table`); with
dicom_out, an SR per case and a Secondary Capture per view
(`ankle_jax.dicom_out`); the closing lines.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
import logging
import os
import sys
import time

import tqdm

from ankle_jax import console
from ankle_jax import inference
from ankle_jax import saliency
from ankle_jax.data import prepare
from ankle_jax.data.radiograph_studies import config as builder_config
from ankle_jax.dicom_out import identity as identity_lib
from ankle_jax.dicom_out import write as write_lib
from ankle_jax.prediction import batch as batch_lib
from ankle_jax.prediction import decision as decision_lib
from ankle_jax.prediction import heatmaps as heatmaps_lib
from ankle_jax.prediction import inputs as inputs_lib
from ankle_jax.prediction import table

NON_DICOM_REFUSED = (
    '--dicom_out: {n} case(s) of PNG/JPEG files get no DICOM objects (an SR '
    'or a Secondary Capture needs the source DICOM study); their rows are in '
    'the CSV.'
)


@dataclasses.dataclass(frozen=True)
class BatchSettings:
  """The batch command's flags, as plain values."""

  run_dirs: Sequence[str]
  paths: Sequence[str]
  out_dir: str
  checkpoint: str | None = None
  group_by: str = 'study'
  hash_ids: bool = True
  salt_file: str | None = None
  evaluation: str | None = None
  operating_point: str | None = None
  dicom_out: bool = False
  uid_root: str | None = None
  batch_size: int = batch_lib.DEFAULT_BATCH_SIZE
  panel_size: int = saliency.PANEL_SIZE
  vote: str = 'soft'
  stored_size: int = batch_lib.STORED_SIZE
  progress: bool = True


@dataclasses.dataclass
class BatchReport:
  """What a batch did (for tests and the closing lines)."""

  inputs: inputs_lib.Inputs
  outcome: batch_lib.BatchOutcome
  rules: dict[str, decision_lib.DecisionRule]
  written: write_lib.Written
  seconds: float


def decision_rules(settings: BatchSettings, runs) -> dict:
  """The evaluation's rules, or the default one (0.5 on raw)."""
  if settings.evaluation is None:
    if settings.operating_point not in (None, '0.5'):
      raise console.UserError(
          f'--operating_point={settings.operating_point} needs '
          '--evaluation=EVAL_DIR (the evaluation that chose it).'
      )
    return decision_lib.default_rules()
  steps = {r.name: int(r.step) for r in runs}
  return decision_lib.evaluation_rules(
      settings.evaluation, steps, settings.operating_point or 'youden'
  )


def _salt(settings: BatchSettings) -> str | None:
  if not settings.hash_ids:
    return None
  if settings.salt_file:
    return prepare.read_salt_file(settings.salt_file)
  return builder_config.DEFAULT_SALT


def _predict(settings, runs, cases) -> tuple[batch_lib.BatchOutcome, float]:
  groups = len(inference.group_runs([r.config for r in runs]))
  bar = tqdm.tqdm(
      total=len(cases) * groups,
      unit='case',
      desc='predict' if groups == 1 else f'predict ({groups} model groups)',
      dynamic_ncols=True,
      disable=not settings.progress,
  )
  start = time.perf_counter()
  with bar:
    outcome = batch_lib.predict_cases(
        runs,
        cases,
        batch_size=settings.batch_size,
        vote=settings.vote,
        on_case=lambda: bar.update(1),
        stored_size=settings.stored_size,
    )
  return outcome, time.perf_counter() - start


def _write_dicom(settings, runs, outcome, rules, provenance, identity):
  non_dicom = sum(1 for r in outcome.results if not r.case.is_dicom)
  if non_dicom:
    print(NON_DICOM_REFUSED.format(n=non_dicom), file=sys.stderr)
  maker = heatmaps_lib.HeatmapMaker(
      runs, settings.panel_size, settings.stored_size
  )
  return write_lib.write_all(
      outcome.results,
      settings.out_dir,
      rules,
      provenance,
      identity,
      lambda paths: (maker.backgrounds(paths), maker(paths)),
  )


def run_batch(settings: BatchSettings) -> BatchReport:
  """The whole batch command (module docstring).

  pydicom's decoders log a traceback for each file they cannot decode; the
  batch counts those files by reason instead (unless --verbosity >= 1).
  """
  if not logging.getLogger('pydicom').isEnabledFor(logging.INFO):
    logging.getLogger('pydicom').setLevel(logging.CRITICAL)
  uid_root = _checked_uid_root(settings.uid_root)
  when = datetime.datetime.now()
  runs = inference.load_runs(settings.run_dirs, settings.checkpoint)
  rules = decision_rules(settings, runs)
  salt = _salt(settings)
  os.makedirs(settings.out_dir, exist_ok=True)
  found = inputs_lib.find_cases(
      settings.paths,
      group_by=settings.group_by,
      salt=salt,
      exclude=[settings.out_dir],
  )
  if not found.cases:
    raise console.UserError(
        f'no readable DICOM, PNG or JPEG file under {", ".join(settings.paths)}'
        f' ({len(found.skipped)} file(s) skipped).'
    )
  outcome, seconds = _predict(settings, runs, found.cases)
  provenance = table.Provenance(
      tuple(r.name for r in runs),
      tuple(int(r.step) for r in runs),
      settings.vote,
  )
  written = write_lib.Written()
  if settings.dicom_out:
    identity = identity_lib.Identity(uid_root, when)
    written = _write_dicom(settings, runs, outcome, rules, provenance, identity)
  _write_tables(
      settings.out_dir, found, outcome, rules, provenance, salt, written
  )
  for line in table.summary_lines(
      settings.out_dir, len(found.cases), outcome, found.skipped, seconds
  ):
    print(line)
  if settings.dicom_out:
    print(
        f'DICOM out: {len(written.paths)} object(s) under '
        f'{os.path.join(settings.out_dir, write_lib.DICOM_DIR)}'
    )
    for case_id, reason in written.failures:
      print(f'  {case_id}: {reason}')
  return BatchReport(found, outcome, rules, written, seconds)


def _write_tables(out_dir, found, outcome, rules, provenance, salt, written):
  table.write_csv(
      os.path.join(out_dir, table.PREDICTIONS_FILE),
      table.PREDICTION_COLUMNS,
      table.prediction_rows(outcome.results, rules, provenance),
  )
  errors = table.error_rows(outcome, found.skipped, salt)
  errors += [
      {'row_type': 'case', 'case_id': c, 'reason': r}
      for c, r in written.failures
  ]
  table.write_csv(
      os.path.join(out_dir, table.ERRORS_FILE), table.ERROR_COLUMNS, errors
  )


def _checked_uid_root(uid_root: str | None) -> str | None:
  try:
    return identity_lib.check_uid_root(uid_root)
  except ValueError as e:
    raise console.UserError(str(e)) from e

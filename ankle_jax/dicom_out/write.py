"""Writes the SR and the Secondary Captures of each predicted DICOM case.

Files: <out>/dicom/<case_id>/SR.dcm and SC_<n>.dcm (n: the view's number
in the CSV). A case whose objects cannot be built is listed with its
reason; the others go on. Cases of PNG/JPEG files get none (refused by the
command with a message).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import os
import warnings

import numpy as np

from ankle_jax.dicom_out import identity as identity_lib
from ankle_jax.dicom_out import sc as sc_lib
from ankle_jax.dicom_out import sr as sr_lib
from ankle_jax.prediction import batch as batch_lib
from ankle_jax.prediction import decision as decision_lib
from ankle_jax.prediction import table

DICOM_DIR = 'dicom'
SR_FILE = 'SR.dcm'
SC_FILE = 'SC_{number}.dcm'


@dataclasses.dataclass
class Written:
  """What was written: paths, and the cases that failed with their reason."""

  paths: list[str] = dataclasses.field(default_factory=list)
  failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _title(prob: float, decision: str, rule, number: int) -> str:
  return (
      f'view {number}: p(fracture) = {prob:.3f} ({"calibrated" if rule.calibrator.applied else "raw"})\n'
      f'case: {decision} at {rule.operating_point} (threshold {rule.threshold:.3g})'
  )


def write_case(
    result: batch_lib.CaseResult,
    out_dir: str,
    rules: dict[str, decision_lib.DecisionRule],
    provenance: table.Provenance,
    identity: identity_lib.Identity,
    heatmaps: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
) -> list[str]:
  """The case's SR and Secondary Captures; returns their paths.

  heatmaps(paths) -> (backgrounds [V, P, P], Grad-CAM [V, P, P]).
  """
  folder = os.path.join(out_dir, DICOM_DIR, result.case.case_id)
  os.makedirs(folder, exist_ok=True)
  sources = [identity_lib.read_header(v.file.path) for v in result.views]
  paths = [os.path.join(folder, SR_FILE)]
  sr_lib.case_report(result, sources, rules, provenance, identity).save_as(
      paths[0]
  )
  backgrounds, cams = heatmaps([v.file.path for v in result.views])
  decision = (
      'fracture' if rules['case'].is_fracture(result.prob_raw) else 'normal'
  )
  series_uid = identity.new_uid()
  for number, (view, source) in enumerate(zip(result.views, sources), start=1):
    prob = rules['image'].calibrated(view.prob_raw)
    title = _title(prob, decision, rules['case'], number)
    pixels = sc_lib.render(backgrounds[number - 1], cams[number - 1], title)
    capture = sc_lib.view_capture(source, pixels, identity, series_uid, number)
    paths.append(os.path.join(folder, SC_FILE.format(number=number)))
    capture.save_as(paths[-1])
  return paths


def write_all(
    results: Sequence[batch_lib.CaseResult],
    out_dir: str,
    rules: dict[str, decision_lib.DecisionRule],
    provenance: table.Provenance,
    identity: identity_lib.Identity,
    heatmaps: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
) -> Written:
  """write_case for every DICOM case; a failing case is listed, not fatal."""
  written = Written()
  for result in results:
    if not result.case.is_dicom:
      continue
    try:
      with warnings.catch_warnings():
        # highdicom's warnings quote the source's values (person names).
        warnings.filterwarnings('ignore', module='highdicom')
        written.paths += write_case(
            result, out_dir, rules, provenance, identity, heatmaps
        )
    except Exception as e:  # noqa: BLE001 - one case never stops the others.
      written.failures.append(
          (result.case.case_id, f'DICOM out: {type(e).__name__}: {e}')
      )
  return written

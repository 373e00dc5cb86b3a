"""report.md: the evaluation's tables for people (reporting.document's
sections: protocols, operating points, calibration, subgroups)."""

from __future__ import annotations

import os

from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.reporting import document
from ankle_jax.reporting.context import ReportContext

REPORT_FILE = 'report.md'


def write(out_dir: str, ev: Evaluation, context: ReportContext) -> str:
  """Writes OUT/report.md; returns its path."""
  del context  # report.md needs nothing beyond the evaluation.
  lines = [document.TITLE]
  for section in document.sections(ev).values():
    lines += document.markdown_lines(section)
  path = os.path.join(out_dir, REPORT_FILE)
  with open(path, 'w') as f:
    f.write('\n'.join(lines).rstrip('\n') + '\n')
  return path

"""The evaluation's figures as PNG files (reporting.plots: reliability.png,
roc.png, confusion.png, all of the Headline)."""

from __future__ import annotations

import os

from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.reporting import plots
from ankle_jax.reporting.context import ReportContext

FILES = tuple(plots.FIGURES)


def write(out_dir: str, ev: Evaluation, context: ReportContext) -> None:
  """Writes every figure of plots.FIGURES into OUT."""
  del context  # The figures show the evaluation only.
  for name, figure in plots.FIGURES.items():
    figure(ev).savefig(os.path.join(out_dir, name), dpi=plots.FIGURE_DPI)

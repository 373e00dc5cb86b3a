"""The Headline's metrics as TensorBoard scalars (everything else is in
results.json).

Tags: `verdict/<level>_<metric>`: the six metrics of the Headline's members
on the reported split, at case level under its voting rule and at single-view
level under the same rule; 12 cards at most, undefined metrics left out.
`verdict` is the evaluation's judgement of the Headline on held-out data; the
name sorts after a training run's `train/` and `val/` groups, so a training
run's own curves open first when an evaluation writes into its directory.
Each scalar is written at the training step of the evaluated checkpoint (an
ensemble of runs at different steps: the largest).
"""

from __future__ import annotations

from tensorboardX import SummaryWriter

from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting.context import ReportContext

GROUP = 'verdict'


def scalars(ev: Evaluation) -> list[tuple[str, float, int]]:
  """(tag, value, step) of every scalar written (module docstring)."""
  h = ev.headline
  step = ev.step_of(h.members)
  out = []
  for level in reversed(voting.LEVELS):  # the case level first
    entry = ev.results[ResultKey(h.members, h.reported_on, level, h.voting)]
    for metric, value in entry.metrics.items():
      if value is not None:
        out.append((f'{GROUP}/{level}_{metric}', value, step))
  return out


def write(out_dir: str, ev: Evaluation, context: ReportContext) -> None:
  """The scalars as TensorBoard events in OUT."""
  del context  # The scalars are the evaluation's only.
  writer = SummaryWriter(out_dir)
  for tag, value, step in scalars(ev):
    writer.add_scalar(tag, value, step)
  writer.close()

"""The evaluation's figures as matplotlib Figures, all of the Headline on
the reported split (shared by reporting.figures, which saves them, and
reporting.html, which embeds them; no writer itself):
  reliability  the Headline's case probability before and after temperature
               scaling (NUM_BINS equal-width bins), a histogram under it;
  roc          single-view and case-level ROC of the Headline's members, each
               with a case-bootstrap band and their operating points;
  confusion    the Headline's confusion matrices at single-view and case
               level, under its voting rule (the decisions the error gallery
               lists).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import io

from matplotlib.figure import Figure
import numpy as np
from sklearn import metrics as sk

from ankle_jax.evaluation import calibration
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.results import OperatingPoint
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting.format import LEVEL_TITLES
from ankle_jax.reporting.format import format_threshold
from ankle_jax.reporting.format import format_value

FIGURE_DPI = 200


def _headline_title(ev: Evaluation) -> str:
  """'<members>, <protocol> protocol (case level, <voting> voting, chosen on
  <split>)': how every figure names the Headline."""
  h = ev.headline
  return (
      f'{h.label}, {h.protocol} protocol (case level, {h.voting} voting, '
      f'chosen on {h.chosen_on})'
  )


def reliability(ev: Evaluation) -> Figure:
  """Reliability diagram of the Headline at case level (observed fracture
  rate against mean probability, before and after scaling), with a
  histogram of the probabilities under it."""
  h = ev.headline
  d = ev.decisions(h.members, 'case', 'soft')
  temperature = ev.calibration.temperatures[(h.members, 'case')]
  scaled = (
      None
      if temperature is None
      else calibration.apply_temperature(d.scores, temperature)
  )
  t = (
      'no validation: not scaled'
      if temperature is None
      else f'T = {temperature:.3g}, fitted on validation'
  )
  return _reliability_figure(
      d.scores,
      scaled,
      d.labels,
      f'{_headline_title(ev)}\nall views (case), on {ev.split} ({t})',
  )


def _reliability_figure(probs, probs_calibrated, labels, title: str) -> Figure:
  """Reliability diagram (calibration.NUM_BINS equal-width bins: observed fracture rate
  against mean probability, before and after scaling), with a histogram of
  the probabilities under it."""
  fig = Figure(figsize=(5.5, 6.5), dpi=FIGURE_DPI)
  top, bottom = fig.subplots(
      2, 1, sharex=True, gridspec_kw={'height_ratios': [3, 1]}
  )
  y = np.asarray(labels, np.float64)
  edges = np.linspace(0.0, 1.0, calibration.NUM_BINS + 1)
  top.plot([0, 1], [0, 1], 'k:', lw=0.8, label='perfectly calibrated')
  variants = [('before', probs, 'tab:blue')]
  if probs_calibrated is not None:
    variants.append(('after temperature scaling', probs_calibrated, 'tab:red'))
  for name, p, color in variants:
    p = np.asarray(p, np.float64)
    bins = calibration.equal_width_bins(p)
    count = np.bincount(bins, minlength=calibration.NUM_BINS)
    seen = count > 0
    mean_p = np.bincount(bins, p, calibration.NUM_BINS)[seen] / count[seen]
    rate = np.bincount(bins, y, calibration.NUM_BINS)[seen] / count[seen]
    top.plot(
        mean_p,
        rate,
        'o-',
        color=color,
        label=f'{name} (ECE ' f'{calibration.ece(p, y):.3f})',
    )
    bottom.hist(p, bins=edges, histtype='step', color=color, lw=1.2)
  top.set(xlim=(0, 1), ylim=(0, 1), ylabel='observed fracture rate')
  top.set_title(title, fontsize=8)
  top.legend(loc='upper left', fontsize=7)
  bottom.set(xlabel='predicted fracture probability', ylabel='count')
  fig.tight_layout()
  return fig


def _roc_label(ev: Evaluation, level: str, members, d) -> str:
  e = ev.results[ResultKey(tuple(members), ev.split, level, 'soft')]
  auc = format_value(e.metrics['roc_auc'], e.ci95['roc_auc'])
  positives = int(d.labels.sum())
  if level == 'image':
    n = f'{d.labels.size} views of {len(np.unique(d.clusters))} cases'
  else:
    n = f'{d.labels.size} cases'
  return f'{LEVEL_TITLES[level]}: AUC {auc}\n{n}, {positives} fracture'


def _mark_operating_points(ax, ops: Sequence[OperatingPoint], color) -> None:
  for op, marker in zip(ops, ('o', 's', '^', 'D')):
    if op.sensitivity is None or op.specificity is None:
      continue
    ax.plot(
        1.0 - op.specificity,
        op.sensitivity,
        marker,
        color=color,
        markeredgecolor='black',
        label=f'{op.name} (t = {format_threshold(op.threshold)}, chosen on '
        f'{op.chosen_on})',
    )


def roc(ev: Evaluation) -> Figure:
  """ROC of the Headline's members on the reported split: single view and
  case level (soft scores), each with a case-bootstrap band and the
  operating points chosen for these members."""
  members = ev.headline.members
  fig = Figure(figsize=(6.5, 6.5), dpi=FIGURE_DPI)
  ax = fig.add_subplot()
  fpr_grid = np.linspace(0.0, 1.0, 101)
  for level, color in zip(voting.LEVELS, ('tab:blue', 'tab:orange')):
    d = ev.decisions(members, level, 'soft')
    if np.unique(d.labels).size < 2:
      continue
    fpr, tpr, _ = sk.roc_curve(d.labels, d.scores)
    ax.plot(fpr, tpr, color=color, label=_roc_label(ev, level, members, d))
    lo, hi = metrics_lib.bootstrap_roc_band(
        d.labels,
        d.scores,
        d.clusters,
        fpr_grid=fpr_grid,
        num_resamples=ev.num_bootstrap,
        seed=ev.seed,
    )
    ax.fill_between(fpr_grid, lo, hi, color=color, alpha=0.15, lw=0)
    ops = [
        op
        for op in ev.operating_points
        if op.members == members and op.level == level and op.split == ev.split
    ]
    _mark_operating_points(ax, ops, color)
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect='equal')
  ax.set_xlabel('1 - specificity')
  ax.set_ylabel('sensitivity')
  ax.set_title(
      f'ROC on {ev.split} of {_headline_title(ev)}\nbands: 95% case '
      'bootstrap',
      fontsize=8,
  )
  ax.legend(loc='lower right', fontsize=7)
  fig.tight_layout()
  return fig


def confusion(ev: Evaluation) -> Figure:
  """Confusion matrices of the Headline under its voting rule."""
  h = ev.headline
  fig = Figure(figsize=(8, 4), dpi=FIGURE_DPI)
  axes = fig.subplots(1, 2)
  for ax, level in zip(axes, voting.LEVELS):
    d = ev.decisions(h.members, level, h.voting)
    cm = sk.confusion_matrix(d.labels, d.preds.astype(int), labels=[0, 1])
    sk.ConfusionMatrixDisplay(cm, display_labels=['normal', 'fracture']).plot(
        ax=ax, colorbar=False, cmap='Blues'
    )
    ax.set_title(LEVEL_TITLES[level])
  fig.suptitle(f'{_headline_title(ev)}, on {ev.split}', fontsize=8)
  fig.tight_layout()
  return fig


FIGURES: dict[str, Callable[[Evaluation], Figure]] = {
    'roc.png': roc,
    'confusion.png': confusion,
    'reliability.png': reliability,
}


def png_bytes(figure: Figure) -> bytes:
  """The figure as PNG bytes at FIGURE_DPI."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=FIGURE_DPI)
  return buffer.getvalue()

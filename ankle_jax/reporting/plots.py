"""The evaluation's figures as matplotlib Figures, all of the Headline on
the reported split (shared by reporting.figures, which saves them, and
reporting.html, which embeds them; no writer itself):
  reliability  the Headline's case probability before and after its
               calibrator (equal-mass bins, fewer for small n, with counts
               and Wilson intervals), a histogram under it;
  roc          single-view and case-level ROC of the Headline's members, each
               with a case-bootstrap band and their operating points;
  confusion    the Headline's confusion matrices at single-view and case
               level, under its voting rule (the decisions the error gallery
               lists).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import io
import textwrap

from matplotlib.figure import Figure
import numpy as np
from sklearn import metrics as sk

from ankle_jax.evaluation import calibration
from ankle_jax.evaluation import metrics as metrics_lib
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation.results import OperatingPoint
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting import format as format_lib
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
  rate against mean probability, before and after its calibrator), with a
  histogram of the probabilities under it."""
  h = ev.headline
  d = ev.decisions(h.members, 'case', 'soft')
  calibrator = ev.calibration.calibrators[(h.members, 'case')]
  calibrated = calibrator.apply(d.scores) if calibrator.applied else None
  label = format_lib.calibrator_label(calibrator.to_json())
  block = ev.calibration.blocks.get(h.key)
  note = format_lib.calibration_note(block) if block else ''
  return _reliability_figure(
      d.scores,
      calibrated,
      d.labels,
      '\n'.join(
          [_headline_title(ev), f'all views (case), on {ev.split}']
          + textwrap.wrap(label, 90)
          + textwrap.wrap(note, 90)
      ),
  )


def _reliability_bins(probs, labels, bins, num_bins: int):
  """(mean p, observed rate, Wilson lo, Wilson hi, count), each [bins
  holding items], of the equal-mass bins."""
  count = np.bincount(bins, minlength=num_bins)
  seen = count > 0
  positives = np.bincount(bins, labels, num_bins)[seen]
  mean_p = np.bincount(bins, probs, num_bins)[seen] / count[seen]
  wilson = np.array(
      [
          metrics_lib.wilson_interval(int(k), int(n))
          for k, n in zip(positives, count[seen])
      ]
  )
  rate = positives / count[seen]
  return mean_p, rate, wilson[:, 0], wilson[:, 1], count[seen]


def _reliability_figure(probs, probs_calibrated, labels, title: str) -> Figure:
  """Reliability diagram over calibration.adaptive_num_bins(n) equal-mass
  bins (fewer for small n): observed fracture rate with its Wilson 95%
  interval against mean probability, each bin's count written beside it,
  before and after calibration; a histogram of the probabilities under it."""
  fig = Figure(figsize=(5.5, 6.5), dpi=FIGURE_DPI)
  top, bottom = fig.subplots(
      2, 1, sharex=True, gridspec_kw={'height_ratios': [3, 1]}
  )
  p_raw, y = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
  num_bins = calibration.adaptive_num_bins(p_raw.size)
  bins = calibration.equal_mass_bins(p_raw, num_bins)  # kept by calibration
  top.plot([0, 1], [0, 1], 'k:', lw=0.8, label='perfectly calibrated')
  variants = [('before', p_raw, 'tab:blue')]
  if probs_calibrated is not None:
    variants.append(('calibrated', probs_calibrated, 'tab:red'))
  for name, p, color in variants:
    p = np.asarray(p, np.float64)
    mean_p, rate, lo, hi, count = _reliability_bins(p, y, bins, num_bins)
    top.errorbar(
        mean_p,
        rate,
        yerr=np.maximum([rate - lo, hi - rate], 0.0),  # rounding at 0, 1
        fmt='o-',
        color=color,
        capsize=2,
        label=f'{name} (ECE debiased {calibration.ece_debiased(p, y):.3f})',
    )
    for x, r, n in zip(mean_p, rate, count):
      top.annotate(
          str(n),
          (x, r),
          fontsize=6,
          color=color,
          xytext=(3, -8),
          textcoords='offset points',
      )
    bottom.hist(p, bins=np.linspace(0, 1, 21), histtype='step', color=color)
  top.set(xlim=(0, 1), ylim=(0, 1), ylabel='observed fracture rate')
  top.set_title(
      f'{title}\n{num_bins} equal-mass bins (count beside each), '
      'Wilson 95% intervals',
      fontsize=7,
  )
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

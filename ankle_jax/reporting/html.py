"""report.html: one self-contained page a radiologist opens (images embedded
as base64 PNG data URIs, a little inline CSS, no script, no external file),
so it can be mailed, archived and read offline.

Sections (each a <section id=...>, in SECTIONS order):
  protocol     the protocol and the data: report.md's overview (runs,
               checkpoints and steps, class counts, voting, intervals, the
               Headline) and the protocols' chosen ensembles;
  tables       report.md's other sections but the operating points, as HTML;
  roc          the ROC figure and report.md's operating points;
  reliability  the reliability figure and the Headline's calibration table;
  confusion    the Headline's confusion matrices;
  subgroups    the subgroups' table;
  gallery      the error gallery (reporting.gallery, via
               ReportContext.gallery): the Headline's most confident wrong
               case-level calls.
Everything is rendered from the Evaluation (reporting.document's report.md
text, reporting.plots' figures); no file of another writer is read.
Each gallery case is a <div class="case"> with data-kind ('false_negative'
or 'false_positive'), data-case-id and data-probability (repr of the float).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
import html
import io
import os
import re

from matplotlib import image as mpl_image
import numpy as np

from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.reporting import document
from ankle_jax.reporting import plots
from ankle_jax.reporting.context import MAX_PER_KIND
from ankle_jax.reporting.context import ErrorCase
from ankle_jax.reporting.context import ReportContext
from ankle_jax.reporting.format import SAME_CASES
from ankle_jax.reporting.format import Table
from ankle_jax.reporting.format import calibration_table
from ankle_jax.reporting.format import html_table
from ankle_jax.reporting.format import inline_html
from ankle_jax.reporting.format import members_label
from ankle_jax.reporting.format import same_cases
from ankle_jax.reporting.format import subgroup_table

HTML_FILE = 'report.html'
SECTIONS = {
    'protocol': 'Protocol and data',
    'tables': 'Results',
    'roc': 'ROC and operating points',
    'reliability': 'Reliability',
    'confusion': 'Confusion matrices',
    'subgroups': 'Subgroups',
    'gallery': 'Error gallery',
}
KIND_TITLES = {
    'false_negative': 'False negatives (fracture called normal)',
    'false_positive': 'False positives (normal called fracture)',
}
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f2f2f2}
img.figure{max-width:720px;width:100%}
.cases{display:flex;flex-wrap:wrap;gap:8px}
.case{border:2px solid #ccc;padding:4px;border-radius:4px}
.false_negative{border-color:#c62828}.false_positive{border-color:#ef6c00}
.case figure{display:inline-block;margin:2px;text-align:center;font-size:11px}
.case .head{font-size:12px}
.note{color:#666}
"""


def png_data_uri(image: np.ndarray | bytes) -> str:
  """A data: URI of PNG bytes, or of an image array (uint8 RGB [H, W, 3]
  or float [H, W] in [0, 1], grey)."""
  if not isinstance(image, bytes):
    buffer = io.BytesIO()
    array = np.asarray(image)
    cmap = 'gray' if array.ndim == 2 else None
    mpl_image.imsave(buffer, array, format='png', cmap=cmap, vmin=0, vmax=1)
    image = buffer.getvalue()
  return 'data:image/png;base64,' + base64.b64encode(image).decode('ascii')


def _figure(ev: Evaluation, name: str, alt: str) -> str:
  uri = png_data_uri(plots.png_bytes(plots.FIGURES[name](ev)))
  return f'<img class="figure" src="{uri}" alt="{html.escape(alt)}">'


def blocks_html(blocks: Sequence[document.Block]) -> str:
  """reporting.document's blocks as HTML: tables as tables, '#' headings one
  level down, lines between blank ones as a paragraph."""
  out, paragraph = [], []

  def flush():
    if paragraph:
      out.append(f'<p>{inline_html(" ".join(paragraph))}</p>')
      paragraph.clear()

  for block in blocks:
    heading = isinstance(block, str) and re.match(r'(#+) (.*)', block)
    if isinstance(block, Table):
      flush()
      out.append(html_table(block))
    elif heading:
      flush()
      level = min(len(heading.group(1)) + 1, 6)
      out.append(f'<h{level}>{inline_html(heading.group(2))}</h{level}>')
    elif not block.strip():
      flush()
    else:
      paragraph.append(block.strip())
  flush()
  return '\n'.join(out)


def _protocol_body(ev: Evaluation, overview: Sequence[document.Block]) -> str:
  rows = [
      [
          protocol,
          f'{level}, {vote}',
          members_label(s.members),
          f'`{s.chosen_on}`',
          f'`{s.reported_on}`',
      ]
      for (protocol, level, vote), s in ev.protocols.items()
  ]
  header = ['Protocol', 'Level, voting', 'Chosen', 'Chosen on', 'Reported on']
  return blocks_html(overview) + html_table(Table.of(header, rows))


def _reliability_body(ev: Evaluation) -> str:
  h = ev.headline
  table = calibration_table(ev, [h.members])
  caption = (
      f'<p>{inline_html(f"Headline model **{h.label}**, {h.rule}, on `{ev.split}`")}'
      f': its probability before and after calibration. '
      f'{inline_html(document.calibration_method(ev))}'
      + (f' {SAME_CASES}' if same_cases(ev) else '')
      + '</p>'
  )
  return _figure(ev, 'reliability.png', 'reliability diagram') + (
      caption + html_table(table) if table.rows else ''
  )


def _subgroups_body(ev: Evaluation) -> str:
  table = subgroup_table(ev)
  if not table.rows:
    return '<p class="note">No subgroup results in this evaluation.</p>'
  return html_table(table)


def _calibrated_html(error: ErrorCase) -> str:
  """', calibrated 0.123' beside the raw probability ('' without one)."""
  if error.probability_calibrated is None:
    return ''
  return f', calibrated {error.probability_calibrated:.3f}'


def _case_html(rank: int, error: ErrorCase) -> str:
  views = []
  for v, (index, p) in enumerate(zip(error.view_index_v, error.view_probs_v)):
    image = ''
    if error.thumbnails_vhw3 is not None:
      uri = png_data_uri(error.thumbnails_vhw3[v])
      image = f'<img src="{uri}" alt="view {index}"><br>'
    views.append(
        f'<figure data-view-index="{index}" data-probability="{p!r}">{image}'
        f'<figcaption>view {index}: p={p:.3f}</figcaption></figure>'
    )
  case_id = html.escape(error.case_id)
  return (
      f'<div class="case {error.kind}" data-kind="{error.kind}" '
      f'data-case-id="{case_id}" data-probability="{error.probability!r}" '
      f'data-probability-calibrated="{error.probability_calibrated!r}">'
      f'<div class="head">#{rank} <b>p(fracture) = {error.probability:.3f}'
      f'</b>{_calibrated_html(error)} case <code>{case_id}</code></div>'
      f'{"".join(views)}</div>'
  )


def _gallery_body(ev: Evaluation, gallery: Sequence[ErrorCase] | None) -> str:
  if gallery is None:
    return '<p class="note">Not computed (no images or runs given).</p>'
  h = ev.headline
  parts = [
      f'<p>{inline_html(f"Headline model **{h.label}**, {h.rule}")} on '
      f'<code>{html.escape(ev.split)}</code>, threshold {voting.THRESHOLD}: '
      f'the most confident wrong calls first (up to {MAX_PER_KIND} of each). '
      'Overlays: Grad-CAM of the fracture evidence (red = strong).</p>'
  ]
  for kind, title in KIND_TITLES.items():
    cases = [e for e in gallery if e.kind == kind]
    parts.append(f'<h3>{title}: {len(cases)}</h3>')
    if not cases:
      parts.append('<p class="note">None.</p>')
      continue
    cards = ''.join(_case_html(i + 1, e) for i, e in enumerate(cases))
    parts.append(f'<div class="cases">{cards}</div>')
  return '\n'.join(parts)


def _bodies(ev: Evaluation, context: ReportContext) -> dict[str, str]:
  md = document.sections(ev)
  tables = [
      line
      for title, lines in md.items()
      if title not in ('', 'Operating points')
      for line in lines
  ]
  return {
      'protocol': _protocol_body(ev, md['']),
      'tables': blocks_html(tables),
      'roc': _figure(ev, 'roc.png', 'ROC')
      + blocks_html(md.get('Operating points', [])),
      'reliability': _reliability_body(ev),
      'confusion': _figure(ev, 'confusion.png', 'confusion matrices'),
      'subgroups': _subgroups_body(ev),
      'gallery': _gallery_body(ev, context.gallery),
  }


def write(out_dir: str, ev: Evaluation, context: ReportContext) -> str | None:
  """Writes OUT/report.html when context.html (else removes an older one);
  returns its path, or None."""
  path = os.path.join(out_dir, HTML_FILE)
  if not context.html:
    if os.path.exists(path):
      os.remove(path)
    return None
  bodies = _bodies(ev, context)
  nav = ''.join(f'<a href="#{k}">{t}</a>' for k, t in SECTIONS.items())
  sections = ''.join(
      f'<section id="{k}"><h2>{t}</h2>\n{bodies[k]}\n</section>\n'
      for k, t in SECTIONS.items()
  )
  title = f'Evaluation report: {html.escape(ev.split)}'
  page = (
      '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
      f'<title>{title}</title><style>{_CSS}</style></head><body>'
      f'<h1>{title}</h1><nav>{nav}</nav>\n{sections}</body></html>\n'
  )
  with open(path, 'w') as f:
    f.write(page)
  return path

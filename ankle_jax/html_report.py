"""report.html: one self-contained page a radiologist opens (images embedded
as base64 PNG data URIs, a little inline CSS, no script, no external file),
so it can be mailed, archived and read offline.

Sections (each a <section id=...>, in SECTIONS order):
  protocol     the protocol and the data: report.md's overview (runs,
               checkpoints and steps, class counts, voting, intervals) and
               the protocols' chosen ensembles;
  tables       report.md's other sections (the protocol tables, and any
               section appended to report.md), rendered as HTML tables;
  roc          roc.png and report.md's operating points;
  reliability  reliability.png and the headline model's calibration blocks
               from results.json ('not computed' without them);
  confusion    confusion.png;
  subgroups    results.json's subgroup entries (their 'subgroup' not null);
  gallery      the error gallery (below).
Numbers come from the written files (report.md, results.json) and the
predictions' own decisions; nothing is recomputed here.

Error gallery: the headline model (the honest protocol's ensemble chosen at
case level with soft voting; the paper protocol's without a validation split)
on the reported split, at case level with soft voting and the vote threshold
(0.5). The false negatives ranked by their case probability, lowest first,
and the false positives, highest first (the most confident wrong calls
first; ties by case id), up to 12 of each. Each case shows its evaluated
views as thumbnails (THUMBNAIL_PX) with the Grad-CAM overlay (the mean of the
members' maps; a multi-view member's maps show its case evidence,
saliency.make_case_grad_cam), each view's probability (the members' mean,
as at single-view level), the case probability and the case id. Each case
is a <div class="case"> with data-kind ('false_negative' or
'false_positive'), data-case-id and data-probability (repr of the float).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
import dataclasses
import html
import io
import os
import re

import jax.numpy as jnp
from matplotlib import image as mpl_image
import numpy as np

from ankle_jax import inference
from ankle_jax import model_card
from ankle_jax import models
from ankle_jax import saliency
from ankle_jax import voting
from ankle_jax.data import augment
from ankle_jax.inference import SplitPredictions
from ankle_jax.report import members_label
from ankle_jax.results import Evaluation
from ankle_jax.results import decide_split

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
MAX_PER_KIND = 12
THUMBNAIL_PX = 160
KIND_TITLES = {
    'false_negative': 'False negatives (fracture called normal)',
    'false_positive': 'False positives (normal called fracture)',
}
# (case_id, image_size) -> float32 [V, S, S, 1] in [0, 1]: the case's
# evaluated views in view_index order.
CaseImagesFn = Callable[[str, int], np.ndarray]
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


# ------------------------------------------------------------- the gallery
@dataclasses.dataclass(frozen=True)
class ErrorCase:
  """One wrong case-level call of the headline model.

  Attributes:
    case_id: the dataset's case id.
    kind: 'false_negative' or 'false_positive'.
    probability: the case probability (soft vote of the members).
    view_index_v: int [V] the evaluated views, in view_index order.
    view_probs_v: float [V] each view's probability (the members' mean).
    thumbnails_vhw3: uint8 [V, T, T, 3] Grad-CAM overlays, None without.
  """

  case_id: str
  kind: str
  probability: float
  view_index_v: tuple[int, ...]
  view_probs_v: tuple[float, ...]
  thumbnails_vhw3: np.ndarray | None = None


def find_errors(
    ev: Evaluation, preds: SplitPredictions, max_per_kind: int = MAX_PER_KIND
) -> list[ErrorCase]:
  """The headline model's most confident false negatives, then false
  positives, on the reported split (module docstring), without images."""
  members = [ev.run_names.index(m) for m in ev.headline_members('soft')]
  cases = preds.cases()
  case_d = decide_split(preds, members, 'case', 'soft', cases)
  view_d = decide_split(preds, members, 'image', 'soft', cases)
  out = []
  for kind, label, sign in (
      ('false_negative', 1, 1),
      ('false_positive', 0, -1),
  ):
    wrong = np.flatnonzero((case_d.labels == label) & (case_d.preds != label))
    ranked = sorted(
        wrong, key=lambda c: (sign * case_d.scores[c], cases.case_ids_c[c])
    )
    for c in ranked[:max_per_kind]:
      views = np.flatnonzero(cases.case_index_v == c)
      views = views[np.argsort(preds.view_index_v[views], kind='stable')]
      out.append(
          ErrorCase(
              case_id=str(cases.case_ids_c[c]),
              kind=kind,
              probability=float(case_d.scores[c]),
              view_index_v=tuple(int(v) for v in preds.view_index_v[views]),
              view_probs_v=tuple(float(p) for p in view_d.scores[views]),
          )
      )
  return out


def _thumbnail(image_hw: np.ndarray, size: int) -> np.ndarray:
  return np.clip(saliency.resize_map(image_hw, size), 0.0, 1.0)


def add_grad_cams(
    errors: Sequence[ErrorCase],
    runs: Sequence[inference.Run],
    case_images: CaseImagesFn,
    thumbnail: int = THUMBNAIL_PX,
) -> list[ErrorCase]:
  """The cases with Grad-CAM thumbnails: one pass of each run over each case.

  Args:
    errors: the cases (find_errors).
    runs: the headline model's member runs.
    case_images: the evaluated views of a case (CaseImagesFn).
    thumbnail: side of each thumbnail in pixels.
  """
  maps = [[] for _ in errors]
  backgrounds: list[np.ndarray | None] = [None] * len(errors)
  for indices in inference.group_runs([r.config for r in runs]).values():
    config = runs[indices[0]].config
    grad_cam = saliency.make_case_grad_cam(models.from_run_config(config))
    for i, error in enumerate(errors):
      images = np.asarray(case_images(error.case_id, int(config.image_size)))
      if len(images) != len(error.view_index_v):
        raise ValueError(
            f'case {error.case_id}: {len(images)} images for '
            f'{len(error.view_index_v)} evaluated views.'
        )
      standardized = augment.standardize_per_image(jnp.asarray(images))
      for r in indices:
        cam_vhw, _ = grad_cam(runs[r].variables, standardized)
        maps[i].append([saliency.resize_map(c, thumbnail) for c in cam_vhw])
      if backgrounds[i] is None:
        backgrounds[i] = np.stack(
            [_thumbnail(x[..., 0], thumbnail) for x in images]
        )
  out = []
  for error, case_maps, background in zip(errors, maps, backgrounds):
    heat_vhw = np.mean(case_maps, axis=0)
    overlays = np.stack(
        [saliency.overlay(b, h) for b, h in zip(background, heat_vhw)]
    )
    out.append(dataclasses.replace(error, thumbnails_vhw3=overlays))
  return out


def build_gallery(
    ev: Evaluation,
    preds: SplitPredictions,
    runs: Sequence[inference.Run],
    case_images: CaseImagesFn,
    max_per_kind: int = MAX_PER_KIND,
) -> list[ErrorCase]:
  """find_errors + add_grad_cams with the headline model's runs (`runs`: at
  least those members, by name)."""
  errors = find_errors(ev, preds, max_per_kind)
  by_name = {r.name: r for r in runs}
  members = [by_name[m] for m in ev.headline_members('soft')]
  return add_grad_cams(errors, members, case_images) if errors else []


# --------------------------------------------------------------- rendering
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


def _img(out_dir: str, name: str, alt: str) -> str | None:
  path = os.path.join(out_dir, name)
  if not os.path.exists(path):
    return None
  with open(path, 'rb') as f:
    uri = png_data_uri(f.read())
  return f'<img class="figure" src="{uri}" alt="{html.escape(alt)}">'


def _inline(text: str) -> str:
  """Markdown inline code and bold to HTML (text escaped)."""
  text = html.escape(text, quote=False)
  text = re.sub(r'`([^`]*)`', r'<code>\1</code>', text)
  return re.sub(r'\*\*([^*]+)\*\*', r'<b>\1</b>', text)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  head = ''.join(f'<th>{_inline(h)}</th>' for h in header)
  body = ''.join(
      '<tr>' + ''.join(f'<td>{_inline(c)}</td>' for c in r) + '</tr>'
      for r in rows
  )
  return f'<table><tr>{head}</tr>{body}</table>'


def markdown_to_html(lines: Sequence[str]) -> str:
  """The markdown report.md uses (headings, pipe tables, paragraphs, inline
  code, bold) as HTML."""
  out, table, paragraph = [], [], []

  def flush():
    if table:
      cells = [[c.strip() for c in t.strip('|').split('|')] for t in table]
      out.append(html_table(cells[0], cells[2:]))
      table.clear()
    if paragraph:
      out.append(f'<p>{_inline(" ".join(paragraph))}</p>')
      paragraph.clear()

  for line in lines:
    heading = re.match(r'(#+) (.*)', line)
    if line.startswith('|'):
      if paragraph:
        flush()
      table.append(line)
    elif heading or not line.strip():
      flush()
      if heading:
        level = min(len(heading.group(1)) + 1, 6)
        out.append(f'<h{level}>{_inline(heading.group(2))}</h{level}>')
    else:
      if table:
        flush()
      paragraph.append(line.strip())
  flush()
  return '\n'.join(out)


def report_md_sections(out_dir: str) -> dict[str, list[str]]:
  """report.md split at its '## ' headings: {title: lines}; the text before
  the first one (the overview) under ''."""
  with open(os.path.join(out_dir, 'report.md')) as f:
    lines = f.read().splitlines()
  sections: dict[str, list[str]] = {'': []}
  title = ''
  for line in lines:
    if line.startswith('## '):
      title = line[3:].strip()
      sections[title] = []
    if not line.startswith('# '):
      sections[title].append(line)
  return sections


def _protocol_body(ev: Evaluation, md: Mapping[str, list[str]]) -> str:
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
  return markdown_to_html(md['']) + html_table(header, rows)


def _figure_body(out_dir: str, name: str, alt: str, missing: str) -> str:
  image = _img(out_dir, name, alt)
  return image if image else f'<p class="note">{html.escape(missing)}</p>'


def _reliability_body(out_dir: str, ev: Evaluation, entries) -> str:
  body = _figure_body(
      out_dir, 'reliability.png', 'reliability diagram', 'Not computed.'
  )
  table = model_card.calibration_table(
      entries, list(ev.headline_members('soft'))
  )
  if table[1]:
    body += html_table(*table)
  return body


def _subgroups_body(entries) -> str:
  table = model_card.subgroup_table(entries)
  if not table[1]:
    return '<p class="note">No subgroup results in this evaluation.</p>'
  return html_table(*table)


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
      f'data-case-id="{case_id}" data-probability="{error.probability!r}">'
      f'<div class="head">#{rank} <b>p(fracture) = {error.probability:.3f}'
      f'</b> case <code>{case_id}</code></div>{"".join(views)}</div>'
  )


def _gallery_body(ev: Evaluation, gallery: Sequence[ErrorCase] | None) -> str:
  if gallery is None:
    return '<p class="note">Not computed (no images or runs given).</p>'
  members = members_label(ev.headline_members('soft'))
  parts = [
      f'<p>{html.escape(members)} on <code>{html.escape(ev.split)}</code>, '
      f'case level, soft voting, threshold {voting.THRESHOLD}: the most '
      f'confident wrong calls first (up to {MAX_PER_KIND} of each). Overlays: '
      'Grad-CAM of the fracture evidence (red = strong).</p>'
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


def write_html(
    out_dir: str, ev: Evaluation, gallery: Sequence[ErrorCase] | None
) -> str:
  """Writes OUT/report.html from OUT's report.md, results.json and figures,
  and the gallery (None: said not computed). Returns the path."""
  md = report_md_sections(out_dir)
  entries = model_card.read_json(out_dir, 'results.json')
  tables = [
      line
      for title, lines in md.items()
      if title not in ('', 'Operating points')
      for line in lines
  ]
  bodies = {
      'protocol': _protocol_body(ev, md),
      'tables': markdown_to_html(tables),
      'roc': _figure_body(out_dir, 'roc.png', 'ROC', 'roc.png is missing.')
      + markdown_to_html(md.get('Operating points', [])),
      'reliability': _reliability_body(out_dir, ev, entries),
      'confusion': _figure_body(
          out_dir, 'confusion.png', 'confusion matrices', 'missing.'
      ),
      'subgroups': _subgroups_body(entries),
      'gallery': _gallery_body(ev, gallery),
  }
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
  path = os.path.join(out_dir, HTML_FILE)
  with open(path, 'w') as f:
    f.write(page)
  return path

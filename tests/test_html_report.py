"""Tests of the reporting writers (ankle_jax.reporting): report.html,
MODEL_CARD.md, the figures, TensorBoard and the console, and the one
Headline all of them show.

Synthetic predictions go through the real evaluation.compute; the error
gallery gets fake images, and the end-to-end tests use test_evaluate's tiny
stand-in runs (real checkpoints, a conv net of a few parameters).
"""

import base64
import dataclasses
import html.parser
import io
import json
import os
import pathlib
import re

from matplotlib import image as mpl_image
import numpy as np
import pytest
import test_evaluate as te

from ankle_jax import evaluate
from ankle_jax import models
from ankle_jax.evaluation import voting
from ankle_jax.evaluation.evaluation import Settings
from ankle_jax.evaluation.evaluation import compute
from ankle_jax.evaluation.predictions import SplitPredictions
from ankle_jax.evaluation.results import ResultKey
from ankle_jax.reporting import document
from ankle_jax.reporting import format as format_lib
from ankle_jax.reporting import gallery as gallery_lib
from ankle_jax.reporting import html as html_lib
from ankle_jax.reporting import model_card
from ankle_jax.reporting import plots
from ankle_jax.reporting import tensorboard
from ankle_jax.reporting import terminal
from ankle_jax.reporting.context import ReportContext


class _Page(html.parser.HTMLParser):
  """What the tests read from report.html."""

  def __init__(self):
    super().__init__()
    self.section_ids, self.images, self.cases, self.links = [], [], [], []
    self.external = []
    self._case = None

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == 'section':
      self.section_ids.append(a.get('id'))
    if tag == 'img':
      self.images.append(a['src'])
      if self._case is not None:
        self._case['images'] += 1
    if tag in ('script', 'link') or (
        tag in ('img', 'script') and not a.get('src', '').startswith('data:')
    ):
      self.external.append((tag, a))
    if tag == 'div' and 'data-kind' in a:
      self._case = {
          'kind': a['data-kind'],
          'case_id': a['data-case-id'],
          'probability': float(a['data-probability']),
          'views': [],
          'images': 0,
      }
      self.cases.append(self._case)
    if tag == 'figure' and self._case is not None:
      self._case['views'].append(
          (int(a['data-view-index']), float(a['data-probability']))
      )
    if tag == 'a':
      self.links.append(a.get('href'))


def parse_page(path) -> _Page:
  page = _Page()
  page.feed(pathlib.Path(path).read_text())
  page.close()
  return page


def decode_png(uri: str) -> np.ndarray:
  prefix = 'data:image/png;base64,'
  assert uri.startswith(prefix), uri[:40]
  return mpl_image.imread(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def _split_predictions(split, num_cases, seed, num_runs=3):
  """Synthetic predictions: 1-3 views per case, three runs, some errors."""
  rng = np.random.default_rng(seed)
  case_ids, view_index, labels = [], [], []
  for c in range(num_cases):
    for v in range(1 + c % 3):
      case_ids.append(f'{split[:1]}{c:03d}')
      view_index.append(v)
      labels.append(c % 2)
  labels = np.array(labels)
  noise = rng.normal(0, 0.3, (num_runs, len(labels)))
  probs_rv = np.clip(0.3 + 0.35 * labels + noise, 0.001, 0.999)
  return SplitPredictions(
      case_ids_v=np.array(case_ids),
      view_index_v=np.array(view_index),
      labels_v=labels,
      probs_rv=probs_rv,
  )


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  """An evaluation of synthetic predictions whose honest protocol chooses
  different ensembles under hard and soft voting (seeds 16, 17), written by
  the writers that need no runs."""
  out_dir = str(tmp_path_factory.mktemp('synthetic'))
  by_split = {
      'test': _split_predictions('test', 40, 16),
      'validation': _split_predictions('validation', 30, 17),
  }
  ev = compute(
      by_split,
      ['run_a', 'run_b', 'run_c'],
      Settings(split='test', num_bootstrap=50, seed=0),
  )
  evaluate.write_all(
      out_dir, ev, ReportContext(html=False), evaluate.PREDICTION_WRITERS
  )
  return {'out_dir': out_dir, 'ev': ev, 'by_split': by_split}


def _fake_thumbnails(error, size=20):
  rng = np.random.default_rng(len(error.case_id))
  return rng.integers(
      0, 255, (len(error.view_index_v), size, size, 3), np.uint8
  )


def _fake_gallery(ev, max_per_kind=gallery_lib.MAX_PER_KIND):
  return tuple(
      dataclasses.replace(e, thumbnails_vhw3=_fake_thumbnails(e))
      for e in gallery_lib.find_errors(ev, max_per_kind)
  )


def test_the_evaluation_is_frozen(synthetic):
  ev = synthetic['ev']
  with pytest.raises(dataclasses.FrozenInstanceError):
    ev.headline = None
  with pytest.raises(dataclasses.FrozenInstanceError):
    ev.headline.members = ('run_a',)
  with pytest.raises(TypeError):  # read-only mappings
    ev.results[ev.headline.key] = None


def test_the_headline_is_the_honest_soft_choice(synthetic):
  ev = synthetic['ev']
  h = ev.headline
  assert (h.protocol, h.level, h.voting) == ('honest', 'case', 'soft')
  assert h.members == ev.protocols[('honest', 'case', 'soft')].members
  # The fixture's point: the hard-vote choice is another ensemble.
  assert ev.protocols[('honest', 'case', 'hard')].members != h.members
  summary = json.loads(
      pathlib.Path(synthetic['out_dir'], 'summary.json').read_text()
  )
  assert summary['headline']['members'] == list(h.members)
  assert summary['headline']['voting'] == 'soft'


def test_every_writer_names_and_uses_the_one_headline(synthetic, tmp_path):
  ev = synthetic['ev']
  h = ev.headline
  hard = format_lib.members_label(
      ev.protocols[('honest', 'case', 'hard')].members
  )
  named = f'{h.label}, honest protocol (case level, soft voting'
  for name, figure in plots.FIGURES.items():
    fig = figure(ev)
    titles = [ax.get_title() for ax in fig.axes]
    titles.append(fig._suptitle.get_text() if fig._suptitle else '')
    assert any(named in t for t in titles), (name, titles)
    assert not any(t.startswith(hard + ',') for t in titles), name
  # The confusion matrices count the decisions the gallery lists.
  d = ev.decisions(h.members, 'case', h.voting)
  errors = gallery_lib.find_errors(ev, max_per_kind=1000)
  wrong = {
      'false_negative': int(((d.labels == 1) & (d.preds == 0)).sum()),
      'false_positive': int(((d.labels == 0) & (d.preds == 1)).sum()),
  }
  assert wrong == {k: sum(e.kind == k for e in errors) for k in wrong}
  card = pathlib.Path(
      model_card.write(str(tmp_path), ev, ReportContext())
  ).read_text()
  assert card.startswith(f'# Model card: {h.label}\n')
  assert f'Headline model: **{h.label}**' in card
  console = terminal.summary(ev, str(tmp_path), ['report.md'])
  assert console.startswith(f'Headline: {h.label}, ')
  marked = [line for line in console.splitlines() if line.startswith('*')]
  assert len(marked) == 1 and h.label in marked[0] and 'soft' in marked[0]
  report_md = pathlib.Path(synthetic['out_dir'], 'report.md').read_text()
  assert f'Headline model: **{h.label}**' in report_md
  page = html_lib.write(
      str(tmp_path), ev, ReportContext(gallery=_fake_gallery(ev))
  )
  text = pathlib.Path(page).read_text()
  for section in ('reliability', 'gallery'):
    body = text.split(f'id="{section}"')[1].split('</section>')[0]
    assert f'Headline model <b>{html.escape(h.label)}</b>' in body, section
  scalars = dict((tag, value) for tag, value, _ in tensorboard.scalars(ev))
  entry = ev.results[h.key]
  assert scalars['verdict/case_roc_auc'] == entry.metrics['roc_auc']


def test_tensorboard_writes_a_dozen_headline_scalars_after_training(
    synthetic, tmp_path
):
  ev = synthetic['ev']
  scalars = tensorboard.scalars(ev)
  assert 6 <= len(scalars) <= 12
  groups = {tag.split('/')[0] for tag, _, _ in scalars}
  assert groups == {tensorboard.GROUP}
  assert sorted(['train', 'val', tensorboard.GROUP])[-1] == tensorboard.GROUP
  tensorboard.write(str(tmp_path), ev, ReportContext())
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(tmp_path))


def test_gallery_lists_the_most_confident_errors_in_order(synthetic):
  ev, preds = synthetic['ev'], synthetic['by_split']['test']
  members = ev.headline.members
  errors = gallery_lib.find_errors(ev, max_per_kind=1)
  # Independently: the members' mean probability per view, then per case.
  idx = [ev.run_names.index(m) for m in members]
  view_p = preds.probs_rv[idx].mean(axis=0)
  case_p, case_label = {}, {}
  for c, p, y in zip(preds.case_ids_v, view_p, preds.labels_v):
    case_p.setdefault(c, []).append(p)
    case_label[c] = y
  case_p = {c: float(np.mean(p)) for c, p in case_p.items()}
  fn = sorted(
      (p, c) for c, p in case_p.items() if case_label[c] == 1 and p < 0.5
  )
  fp = sorted(
      ((-p, c) for c, p in case_p.items() if case_label[c] == 0 and p >= 0.5)
  )
  assert len(fn) > 1 and len(fp) > 1  # so the cap and the order matter
  expected = [('false_negative', fn[0][1]), ('false_positive', fp[0][1])]
  assert [(e.kind, e.case_id) for e in errors] == expected
  for e in errors:
    np.testing.assert_allclose(e.probability, case_p[e.case_id], rtol=1e-12)
    views = np.flatnonzero(preds.case_ids_v == e.case_id)
    assert e.view_index_v == tuple(range(len(views)))
    np.testing.assert_allclose(e.view_probs_v, view_p[views], rtol=1e-12)


def test_html_sections_figures_tables_and_gallery(synthetic, tmp_path):
  ev = synthetic['ev']
  gallery = _fake_gallery(ev)
  page = parse_page(
      html_lib.write(str(tmp_path), ev, ReportContext(gallery=gallery))
  )
  assert page.section_ids == list(html_lib.SECTIONS)
  assert not page.external  # no script, stylesheet or image from elsewhere
  assert {f'#{s}' for s in html_lib.SECTIONS} <= set(page.links)
  images = [decode_png(uri) for uri in page.images]
  # roc, reliability and confusion (200 dpi), then one thumbnail per view.
  assert [i.shape[:2] for i in images[:3]] == [
      (1300, 1300),
      (1300, 1100),
      (800, 1600),
  ]
  for figure in images[:3]:  # drawn, not blank
    assert np.ptp(figure[..., :3]) > 0.5
  assert [i.shape[:2] for i in images[3:]] == [(20, 20)] * sum(
      len(e.view_index_v) for e in gallery
  )
  assert [(c['kind'], c['case_id']) for c in page.cases] == [
      (e.kind, e.case_id) for e in gallery
  ]
  for card, e in zip(page.cases, gallery):
    assert card['probability'] == e.probability  # repr round-trips exactly
    assert card['views'] == list(zip(e.view_index_v, e.view_probs_v))
    assert card['images'] == len(e.view_index_v)
  text = pathlib.Path(tmp_path, 'report.html').read_text()
  # report.md's tables, rendered from the same text.
  assert 'Honest protocol, soft voting</h3>' in text
  assert '<th>ROC AUC</th>' in text
  # The Headline's calibration under its reliability diagram.
  h = ev.headline
  reliability = text.split('id="reliability"')[1].split('</section>')[0]
  calibrator = ev.calibration.calibrators[(h.members, 'case')]
  label = format_lib.calibrator_label(calibrator.to_json())
  assert f'<td>{format_lib.inline_html(label)}</td>' in reliability
  block = ev.calibration.blocks[ResultKey(h.members, 'test', 'case', 'soft')]
  for name in ('ece_debiased', 'ece_debiased_calibrated', 'ece'):
    cell = format_lib.format_value(block[name], block['ci95'][name])
    assert f'<td>{cell}</td>' in reliability
  # 40 test cases: too few to judge calibration, said next to the numbers.
  assert block['too_few_cases'] and 'too few cases to judge' in reliability
  # The gallery shows each error's calibrated probability beside the raw.
  for e in gallery:
    assert e.probability_calibrated == pytest.approx(
        float(calibrator.apply(e.probability))
    )
    assert f', calibrated {e.probability_calibrated:.3f} case' in text
  subgroups = text.split('id="subgroups"')[1].split('</section>')[0]
  assert (
      'num_views = 1' in subgroups and '<th>Fracture / normal</th>' in subgroups
  )


def test_html_without_gallery_and_no_html_removes_an_old_page(
    synthetic, tmp_path
):
  ev = synthetic['ev']
  path = html_lib.write(str(tmp_path), ev, ReportContext(gallery=None))
  assert 'Not computed (no images' in pathlib.Path(path).read_text()
  assert html_lib.write(str(tmp_path), ev, ReportContext(html=False)) is None
  assert not os.path.exists(path)


def _card_calibrators(card: str) -> dict[tuple[str, str, str], list[str]]:
  """(split, model, views) -> the cells after them of the card's
  calibration table (the first: the calibrator, the last: the note)."""
  calibration = card.split('## Calibration\n')[1].split('\n## ')[0]
  rows = [r for r in calibration.splitlines() if r.startswith('|')]
  header = [c.strip() for c in rows[0].strip('|').split('|')]
  assert header[:4] == ['Split', 'Model', 'Views', 'Calibrator'], header
  cells = [[c.strip() for c in r.strip('|').split('|')] for r in rows[2:]]
  return {(c[0], c[1], c[2]): c[3:] for c in cells}


def _assert_card_shows_the_headline_calibrators(card: str, ev) -> None:
  """The headline model's row of every split but the pooled one, at each
  level, in the card's calibration table shows the calibrator the
  Evaluation fitted, and the validation rows say they are in sample."""
  members = ev.headline.members
  shown = _card_calibrators(card)
  assert all(split != ev.pooled_split for split, _, _ in shown), shown
  for split in ev.counts:
    for level in ('image', 'case'):
      key = ResultKey(members, split, level, 'soft')
      if key not in ev.calibration.blocks or split == ev.pooled_split:
        continue
      calibrator = ev.calibration.calibrators[(members, level)]
      label = format_lib.members_label(members)
      row = (split, label, format_lib.LEVEL_TITLES[level])
      cells = shown.get(row)
      assert cells, (row, shown)
      assert cells[0] == format_lib.calibrator_label(calibrator.to_json())
      in_sample = ev.calibration.blocks[key]['in_sample']
      assert (format_lib.IN_SAMPLE in cells[-1]) == in_sample, row
      assert in_sample == (split == 'validation'), row
  assert any(k[1] == format_lib.members_label(members) for k in shown)


def test_model_card_shows_calibration_and_subgroups(synthetic, tmp_path):
  ev = synthetic['ev']
  h = ev.headline
  context = ReportContext(data_dir='/data', dataset_config='fracatlas')
  card = pathlib.Path(model_card.write(str(tmp_path), ev, context)).read_text()
  _assert_card_shows_the_headline_calibrators(card, ev)
  # 40 test cases: the card says calibration cannot be judged, next to the
  # numbers; chosen on validation, so no "same cases" warning.
  calibration_text = card.split('## Calibration\n')[1].split('\n## ')[0]
  assert 'too few cases to judge calibration' in calibration_text
  assert format_lib.SAME_CASES not in card
  subgroups = card.split('## Subgroups\n')[1].split('\n## ')[0]
  rows = [r for r in subgroups.splitlines() if r.startswith(f'| {h.label} |')]
  assert rows and len(rows) == sum(
      s.entry.members == h.members and s.entry.voting == 'soft'
      for s in ev.subgroups
  )
  if any(
      s.subgroup.small for s in ev.subgroups if s.entry.members == h.members
  ):
    assert format_lib.SUBGROUP_FOOTNOTE in subgroups
  assert 'FracAtlas has no patient ids' in card


def test_report_sections_start_with_their_headings(synthetic):
  sections = document.sections(synthetic['ev'])
  assert list(sections)[0] == ''
  for title, lines in list(sections.items())[1:]:
    assert lines[0] == f'## {title}'


@pytest.fixture(scope='module')
def fake_runs_evaluation(tmp_path_factory):
  """evaluate_runs on test_evaluate's tiny runs and fake splits, html on."""
  root = tmp_path_factory.mktemp('fake_html')
  run_dirs = [
      te.make_fake_run(str(root / 'run_a'), 0),
      te.make_fake_run(str(root / 'run_b'), 1),
      te.make_fake_run(str(root / 'run_c'), 2, image_size=48),
  ]
  splits = {
      'test': te.fake_split('test', 30, 0),
      'validation': te.fake_split('validation', 11, 1),
  }
  mp = pytest.MonkeyPatch()
  mp.setattr(models, 'from_run_config', te.tiny_create_model)
  outs = {}
  try:
    for html in (True, False):
      out_dir = str(root / f'out_{html}')
      ev = evaluate.evaluate_runs(
          run_dirs,
          split='test',
          out_dir=out_dir,
          num_bootstrap=50,
          batches_fn=te.fake_batches_fn(splits),
          html=html,
      )
      outs[html] = (out_dir, ev)
  finally:
    mp.undo()
  return outs


def test_evaluate_writes_html_with_grad_cams_and_no_html_skips_it(
    fake_runs_evaluation,
):
  out_dir, ev = fake_runs_evaluation[True]
  page = parse_page(os.path.join(out_dir, 'report.html'))
  assert page.section_ids == list(html_lib.SECTIONS)
  errors = gallery_lib.find_errors(ev)
  assert errors  # the tiny untrained runs make mistakes
  assert len(errors) <= 2 * gallery_lib.MAX_PER_KIND
  assert [c['case_id'] for c in page.cases] == [e.case_id for e in errors]
  # roc, reliability and confusion come first.
  thumbnails = [decode_png(u) for u in page.images[3:]]
  assert len(thumbnails) == sum(len(e.view_index_v) for e in errors)
  side = gallery_lib.THUMBNAIL_PX
  assert all(t.shape[:2] == (side, side) for t in thumbnails)
  # A Grad-CAM overlay is coloured somewhere; the radiograph alone is grey.
  assert any(np.ptp(t[..., :3], axis=-1).max() > 0.1 for t in thumbnails)
  for card in page.cases:
    wrong = card['probability'] >= voting.THRESHOLD
    assert wrong == (card['kind'] == 'false_positive')
  no_html_dir, _ = fake_runs_evaluation[False]
  assert not os.path.exists(os.path.join(no_html_dir, 'report.html'))
  card = pathlib.Path(no_html_dir, 'MODEL_CARD.md').read_text()
  assert '--no_html' in card


def _numbers(text):
  return set(re.findall(r'(?<![\d.])\d+\.\d{3}(?![\d])', text))


def test_model_card_numbers_come_from_results_json(fake_runs_evaluation):
  out_dir, ev = fake_runs_evaluation[True]
  card = pathlib.Path(out_dir, 'MODEL_CARD.md').read_text()
  entries = json.loads(pathlib.Path(out_dir, 'results.json').read_text())
  summary = json.loads(pathlib.Path(out_dir, 'summary.json').read_text())
  headline = summary['headline']
  assert headline['protocol'] == 'honest'
  assert headline['members'] == list(ev.headline.members)
  for e in entries:
    if (e['members'], e['split'], e['subgroup']) == (
        headline['members'],
        'test',
        None,
    ):
      for metric in ('accuracy', 'sensitivity', 'roc_auc'):
        cell = format_lib.format_value(e['metrics'][metric], e['ci95'][metric])
        assert f' {cell} |' in card, (e['level'], e['voting'], metric)
  # Every 3-decimal number in the card is a value of the JSON files.
  json_numbers = set()
  for value in re.findall(
      r'-?\d+\.\d+(?:e-?\d+)?', json.dumps([entries, summary])
  ):
    json_numbers.add(f'{float(value):.3f}')
  assert _numbers(card) and _numbers(card) <= json_numbers
  c = summary['counts']['test']
  assert f'| `test` | {c["cases"]} ({c["normal_cases"]} / ' in card
  steps = summary['checkpoints']
  assert f'best, step {steps["run_a"]["step"]}' in card
  for heading in (
      'Model details',
      'Intended use',
      'Out-of-scope use',
      'Data',
      'Metrics',
      'Calibration',
      'Subgroups',
      'Failure analysis',
      'Caveats',
  ):
    assert f'## {heading}\n' in card
  assert 'report.html#gallery' in card and 'not a medical device' in card
  # The headline model's calibration rows show its calibrators, as the
  # Evaluation fitted them and as results.json has them.
  _assert_card_shows_the_headline_calibrators(card, ev)
  shown = _card_calibrators(card)
  label = format_lib.members_label(headline['members'])
  checked = 0
  for e in entries:
    if e['members'] == headline['members'] and e.get('calibration'):
      row = (e['split'], label, format_lib.LEVEL_TITLES[e['level']])
      if row in shown and e['voting'] in ('soft', None):
        want = format_lib.calibrator_label(e['calibration']['calibrator'])
        assert shown[row][0] == want, row
        checked += 1
  assert checked >= 2  # At least the reported split's two levels.


def test_writers_import_no_other_writer():
  """Each writer imports the shared modules (format, document, plots,
  context) only, never another writer."""
  package = pathlib.Path(evaluate.__file__).parent / 'reporting'
  names = {m.__name__.split('.')[-1] for m in evaluate.WRITERS}
  names.add('gallery')
  assert names == {
      'files',
      'markdown',
      'figures',
      'tensorboard',
      'model_card',
      'html',
      'gallery',
  }
  for name in names:
    source = (package / f'{name}.py').read_text()
    imported = set(
        re.findall(
            r'^from ankle_jax\.reporting(?:\.(\w+))? import (\w+)', source, re.M
        )
    )
    modules = {sub or what for sub, what in imported}
    assert not modules & (names - {name}), (name, modules)

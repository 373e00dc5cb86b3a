"""Tests of report.html (ankle_jax.html_report) and MODEL_CARD.md
(ankle_jax.model_card).

Synthetic predictions go through the real results/report code; the error
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
from ankle_jax import html_report
from ankle_jax import inference
from ankle_jax import model_card
from ankle_jax import models
from ankle_jax import report
from ankle_jax import results as results_lib
from ankle_jax import voting


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


def _split_predictions(split, num_cases, seed, num_runs=2):
  """Synthetic predictions: 1-3 views per case, two runs, some errors."""
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
  return inference.SplitPredictions(
      case_ids_v=np.array(case_ids),
      view_index_v=np.array(view_index),
      labels_v=labels,
      probs_rv=probs_rv,
  )


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  """An evaluation of synthetic predictions, written by report.write_all."""
  out_dir = str(tmp_path_factory.mktemp('synthetic'))
  by_split = {
      'test': _split_predictions('test', 40, 0),
      'validation': _split_predictions('validation', 30, 1),
  }
  ev = results_lib.evaluate_splits(
      by_split, ['run_a', 'run_b'], split='test', num_bootstrap=50, seed=0
  )
  report.write_all(out_dir, ev, by_split)
  return {'out_dir': out_dir, 'ev': ev, 'by_split': by_split}


def _fake_thumbnails(error, size=20):
  rng = np.random.default_rng(len(error.case_id))
  return rng.integers(
      0, 255, (len(error.view_index_v), size, size, 3), np.uint8
  )


def test_gallery_lists_the_most_confident_errors_in_order(synthetic):
  ev, preds = synthetic['ev'], synthetic['by_split']['test']
  members = ev.headline_members('soft')
  assert members == ev.protocols[('honest', 'case', 'soft')].members
  errors = html_report.find_errors(ev, preds, max_per_kind=3)
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
  assert len(fn) > 3 and len(fp) > 3  # so the cap and the order matter
  expected = [('false_negative', c) for _, c in fn[:3]]
  expected += [('false_positive', c) for _, c in fp[:3]]
  assert [(e.kind, e.case_id) for e in errors] == expected
  for e in errors:
    np.testing.assert_allclose(e.probability, case_p[e.case_id], rtol=1e-12)
    views = np.flatnonzero(preds.case_ids_v == e.case_id)
    assert e.view_index_v == tuple(range(len(views)))
    np.testing.assert_allclose(e.view_probs_v, view_p[views], rtol=1e-12)


def test_html_sections_images_and_gallery(synthetic, tmp_path):
  ev = synthetic['ev']
  out_dir = synthetic['out_dir']
  errors = html_report.find_errors(ev, synthetic['by_split']['test'])
  gallery = [
      dataclasses.replace(e, thumbnails_vhw3=_fake_thumbnails(e))
      for e in errors
  ]
  page = parse_page(html_report.write_html(out_dir, ev, gallery))
  assert page.section_ids == list(html_report.SECTIONS)
  assert not page.external  # no script, stylesheet or image from elsewhere
  assert {f'#{s}' for s in html_report.SECTIONS} <= set(page.links)
  sizes = [decode_png(uri).shape[:2] for uri in page.images]
  # roc.png and confusion.png (200 dpi), then one thumbnail per view.
  assert sizes[0] == (1300, 1300) and sizes[1] == (800, 1600)
  assert sizes[2:] == [(20, 20)] * sum(len(e.view_index_v) for e in errors)
  assert [(c['kind'], c['case_id']) for c in page.cases] == [
      (e.kind, e.case_id) for e in errors
  ]
  for card, e in zip(page.cases, errors):
    assert card['probability'] == e.probability  # repr round-trips exactly
    assert card['views'] == list(zip(e.view_index_v, e.view_probs_v))
    assert card['images'] == len(e.view_index_v)
  text = pathlib.Path(out_dir, 'report.html').read_text()
  # report.md's tables, rendered; calibration and subgroups absent.
  assert 'Honest protocol, soft voting</h3>' in text
  assert '<th>ROC AUC</th>' in text
  reliability = text.split('id="reliability"')[1].split('</section>')[0]
  assert 'Not computed' in reliability
  assert 'No subgroup results' in text


def _with_calibration_and_subgroups(out_dir, members):
  """results.json with hand-made calibration blocks and subgroup entries."""
  path = os.path.join(out_dir, 'results.json')
  entries = json.loads(pathlib.Path(path).read_text())
  for i, e in enumerate(entries):
    e['subgroup'] = None
    e['calibration'] = {
        'temperature': 1.5 + 0.01 * i,
        'ece': 0.1 + 0.001 * i,
        'ece_calibrated': 0.05,
        'brier': 0.2,
        'brier_calibrated': 0.18,
        'fitted_on': 'validation',
        'ci95': {'ece': [0.05, 0.2]},
    }
  template = next(
      e for e in entries if e['members'] == members and e['split'] == 'test'
  )
  for value, small in (('AP', False), ('lateral', True)):
    entry = json.loads(json.dumps(template))
    entry.pop('calibration')
    entry['subgroup'] = {
        'field': 'view_position',
        'value': value,
        'positives': 12 if not small else 3,
        'negatives': 14,
        'small': small,
    }
    entry['metrics']['sensitivity'] = 0.4322 if small else 0.8766
    entries.append(entry)
  pathlib.Path(path).write_text(json.dumps(entries))
  return entries


def test_html_and_card_show_calibration_and_subgroups(synthetic, tmp_path):
  out_dir = str(tmp_path)
  for name in ('report.md', 'results.json', 'summary.json', 'roc.png'):
    src = pathlib.Path(synthetic['out_dir'], name)
    pathlib.Path(out_dir, name).write_bytes(src.read_bytes())
  ev = synthetic['ev']
  members = list(ev.headline_members('soft'))
  entries = _with_calibration_and_subgroups(out_dir, members)
  mpl_image.imsave(os.path.join(out_dir, 'reliability.png'), np.zeros((30, 40)))
  page = parse_page(html_report.write_html(out_dir, ev, None))
  assert page.section_ids == list(html_report.SECTIONS)
  assert [decode_png(u).shape[:2] for u in page.images] == [
      (1300, 1300),
      (30, 40),
  ]  # roc and reliability; confusion.png missing here, said so
  text = pathlib.Path(out_dir, 'report.html').read_text()
  assert '0.877' in text and '0.432' in text and 'small (&lt; 10' in text
  assert 'Not computed (no images' in text
  test_entry = model_card.find_entry(entries, members, 'test', 'case', 'soft')
  temperature = f'{test_entry["calibration"]["temperature"]:.3f}'
  assert temperature in text.split('id="reliability"')[1]
  card_path = model_card.write_model_card(
      out_dir, {}, data_dir='/data', dataset_config='fracatlas'
  )
  card = pathlib.Path(card_path).read_text()
  assert temperature in card
  assert '| view_position | lateral |' in card and '3 / 14' in card
  assert 'small (< 10 of a class)' in card
  assert 'FracAtlas has no patient ids' in card


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
  assert page.section_ids == list(html_report.SECTIONS)
  _, by_split = results_lib.read_predictions_csv(
      os.path.join(out_dir, 'predictions.csv')
  )
  errors = html_report.find_errors(ev, by_split['test'])
  assert errors  # the tiny untrained runs make mistakes
  assert len(errors) <= 2 * html_report.MAX_PER_KIND
  assert [c['case_id'] for c in page.cases] == [e.case_id for e in errors]
  # roc.png, reliability.png and confusion.png come first.
  thumbnails = [decode_png(u) for u in page.images[3:]]
  assert len(thumbnails) == sum(len(e.view_index_v) for e in errors)
  side = html_report.THUMBNAIL_PX
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
  out_dir, _ = fake_runs_evaluation[True]
  card = pathlib.Path(out_dir, 'MODEL_CARD.md').read_text()
  entries = json.loads(pathlib.Path(out_dir, 'results.json').read_text())
  summary = json.loads(pathlib.Path(out_dir, 'summary.json').read_text())
  protocol, members = model_card.headline(summary)
  assert protocol == 'honest'
  for level in ('image', 'case'):
    for vote in ('hard', 'soft'):
      e = model_card.find_entry(entries, members, 'test', level, vote)
      for metric in ('accuracy', 'sensitivity', 'roc_auc'):
        cell = report.format_value(e['metrics'][metric], e['ci95'][metric])
        assert f' {cell} |' in card, (level, vote, metric)
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
  calibration = card.split('## Calibration\n')[1].split('\n## ')[0]
  temperatures = {
      f'{e["calibration"]["temperature"]:.3f}'
      for e in entries
      if e.get('calibration') and e['calibration']['temperature']
  }
  assert any(t in calibration for t in temperatures)

"""One case through trained runs (python -m ankle_jax.predict without --out):
its files, each run's and the ensemble's view and case probabilities and
votes, printed, and Grad-CAM (and occlusion) heatmaps as a PNG. The command's
docstring says what is printed."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
import sys

import jax.numpy as jnp
import numpy as np

from ankle_jax import console
from ankle_jax import inference
from ankle_jax import models
from ankle_jax import saliency
from ankle_jax.data import dicom
from ankle_jax.evaluation import voting
from ankle_jax.prediction import batch as batch_lib

USAGE = (
    'usage: python -m ankle_jax.predict --runs=RUN_DIR[,RUN_DIR...] '
    '[--heatmap=OUT.png [--occlusion]] CASE_FOLDER_OR_FILES...'
)


def case_files(paths: Sequence[str]) -> list[str]:
  """The view files of one case: files as given, folders' files sorted."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      inside = sorted(
          os.path.join(path, f)
          for f in os.listdir(path)
          if not f.startswith('.') and os.path.isfile(os.path.join(path, f))
      )
      if not inside:
        raise console.UserError(f'{path} holds no files.')
      files += inside
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise console.UserError(f'{path}: no such file or folder.')
  if not files:
    raise console.UserError(f'no radiograph given.\n{USAGE}')
  return files


def load_views(
    files: Sequence[str],
    image_size: int,
    stored_size: int = batch_lib.STORED_SIZE,
) -> np.ndarray:
  """float32 [views, S, S, 1] in [0, 1] (not standardized), read as evaluate
  and the batch read them (`batch.load_view`: stored at the builder's size,
  then resized; stored_size 0: directly at image_size)."""
  return np.stack(
      [batch_lib.load_view(f, image_size, stored_size) for f in files]
  )


def readable_files(files: Sequence[str], image_size: int) -> list[str]:
  """The files that load as radiographs; a warning line for each other one.

  Raises:
    console.UserError: when none of them can be read.
  """
  readable = []
  for f in files:
    try:
      dicom.load_radiograph(f, image_size=image_size)
    except dicom.DicomReadError as e:
      reason = e.reason.split(' (')[0]
      print(
          f'warning: skipped {os.path.basename(f)}: {reason}.', file=sys.stderr
      )
      continue
    readable.append(f)
  if not readable:
    raise console.UserError(
        f'none of the {len(files)} file(s) given is a readable DICOM, PNG or '
        'JPEG radiograph (warnings above).'
    )
  return readable


@dataclasses.dataclass
class CasePrediction:
  """Every run's probabilities for the views of one case, and saliency maps.

  Attributes:
    files: the view files predicted from.
    probs_rv: float64 [runs, views] fracture probabilities (a multi-view
      run's: each view alone).
    gradcam_vhw: float [views, P, P] mean over runs, if asked.
    occlusion_vhw: float [views, P, P] mean over runs, if asked.
    case_probs_r: float64 [runs] multi-view runs' case probabilities (NaN
      for per-view runs), None when no run is multi-view.
    attention_rv: float [runs, views] multi-view runs' fusion weights (NaN
      for per-view runs), None when no run is multi-view.
  """

  files: list[str]
  probs_rv: np.ndarray
  gradcam_vhw: np.ndarray | None = None
  occlusion_vhw: np.ndarray | None = None
  case_probs_r: np.ndarray | None = None
  attention_rv: np.ndarray | None = None


def _group_saliency(
    module, variables_list, images, *, heatmap, occlusion, panel_size
):
  """Grad-CAM / occlusion maps [runs, views, P, P] of one group's runs.

  A multi-view model's Grad-CAM differentiates its case evidence over all
  views at once (one map per view); its occlusion judges each view alone.
  """
  standardized = models.forward.standardized(jnp.asarray(images))
  size = images.shape[1]
  cams, occs = [], []
  occlusion_module = module
  if isinstance(module, models.multiview.Model):
    occlusion_module = inference.ViewsAsCase(module, one_case=False)
  grad_cam = saliency.make_case_grad_cam(module) if heatmap else None
  occlude = (
      saliency.make_occlusion(
          occlusion_module, patch=max(size // 8, 1), stride=max(size // 16, 1)
      )
      if occlusion
      else None
  )
  for variables in variables_list:
    if grad_cam is not None:
      cam_vhw, _ = grad_cam(variables, standardized)
      cams.append([saliency.resize_map(c, panel_size) for c in cam_vhw])
    if occlude is not None:
      occs.append(
          [
              saliency.resize_map(occlude(variables, image), panel_size)
              for image in standardized
          ]
      )
  return cams, occs


def predict_case(
    runs: Sequence[inference.Run],
    files: Sequence[str],
    *,
    heatmap: bool = False,
    occlusion: bool = False,
    panel_size: int = saliency.PANEL_SIZE,
    stored_size: int = batch_lib.STORED_SIZE,
) -> CasePrediction:
  """Every run's probabilities for the views (readable files), and maps;
  views read by `load_views` (stored_size)."""
  probs_rv = np.zeros((len(runs), len(files)))
  case_probs_r = np.full(len(runs), np.nan)
  attention_rv = np.full((len(runs), len(files)), np.nan)
  cams, occs = [], []
  for indices in inference.group_runs([r.config for r in runs]).values():
    config = runs[indices[0]].config
    module = models.from_run_config(config)
    images = load_views(files, int(config.image_size), stored_size)
    variables_list = [runs[i].variables for i in indices]
    stacked = inference.stack_variables(variables_list)
    if isinstance(module, models.multiview.Model):
      case_log, view_log, attention = inference.make_case_forward(
          module, with_attention=True
      )(stacked, jnp.asarray(images)[None], jnp.ones((1, len(files)), bool))
      probs_rv[indices] = inference.probability_from_log(view_log[:, 0])
      case_probs_r[indices] = inference.probability_from_log(case_log[:, 0])
      attention_rv[indices] = np.asarray(attention[:, 0])
    else:
      log_probs = inference.make_forward(module)(stacked, jnp.asarray(images))
      probs_rv[indices] = inference.probability_from_log(log_probs)
    if heatmap or occlusion:
      group_cams, group_occs = _group_saliency(
          module,
          variables_list,
          images,
          heatmap=heatmap,
          occlusion=occlusion,
          panel_size=panel_size,
      )
      cams += group_cams
      occs += group_occs
  return CasePrediction(
      files=list(files),
      probs_rv=probs_rv,
      gradcam_vhw=np.mean(cams, axis=0) if cams else None,
      occlusion_vhw=np.mean(occs, axis=0) if occs else None,
      case_probs_r=None if np.isnan(case_probs_r).all() else case_probs_r,
      attention_rv=None if np.isnan(case_probs_r).all() else attention_rv,
  )


def _vote(p: float) -> str:
  return 'fracture' if p >= voting.THRESHOLD else 'normal'


def _run_lines(name, files, probs_v, cases) -> list[str]:
  lines = [f'run {name}:']
  for v, (f, p) in enumerate(zip(files, probs_v)):
    lines.append(
        f'  view {v + 1} ({os.path.basename(f)}): '
        f'p(fracture)={p:.4f} vote={_vote(p)}'
    )
  case_p = float(voting.case_soft_probs(probs_v, cases)[0])
  votes_v = voting.image_votes(probs_v)
  case_hard = bool(voting.case_hard_votes(votes_v, cases)[0])
  lines.append(
      f'  case: p(fracture)={case_p:.4f} soft vote={_vote(case_p)} '
      f'hard vote={"fracture" if case_hard else "normal"} '
      f'({int(votes_v.sum())} of {len(files)} views)'
  )
  return lines


def _multiview_lines(name, files, probs_v, case_p, attention_v) -> list[str]:
  lines = [f'run {name} (multi-view):']
  for v, (f, p) in enumerate(zip(files, probs_v)):
    lines.append(
        f'  view {v + 1} ({os.path.basename(f)}): attention={attention_v[v]:.3f}'
        f' p(fracture) alone={p:.4f}'
    )
  lines.append(f'  case: p(fracture)={case_p:.4f} vote={_vote(case_p)}')
  return lines


def _ensemble_lines(num_runs, num_views, probs_rv, cases) -> list[str]:
  members = list(range(num_runs))
  hard_v = voting.ensemble_hard_votes(probs_rv, members)
  soft_v = voting.ensemble_soft_probs(probs_rv, members)
  lines = [f'ensemble of {num_runs} runs:']
  for v in range(num_views):
    lines.append(
        f'  view {v + 1}: mean p(fracture)={soft_v[v]:.4f} '
        f'soft vote={_vote(soft_v[v])} hard vote='
        f'{"fracture" if hard_v[v] else "normal"} '
        f'({int(voting.image_votes(probs_rv[:, v]).sum())} of '
        f'{num_runs} runs)'
    )
  case_p = float(voting.case_soft_probs(soft_v, cases)[0])
  case_hard = bool(voting.case_hard_votes(hard_v, cases)[0])
  lines.append(
      f'  case: mean p(fracture)={case_p:.4f} soft vote={_vote(case_p)} '
      f'hard vote={"fracture" if case_hard else "normal"}'
  )
  return lines


def _vote_line(probs_rv, cases, members, vote, case_probs_rc, multiview_r):
  """'  case, <vote> vote: ...' of runs `members` (--vote)."""
  preds, scores = voting.case_decisions(
      probs_rv, cases, members, vote, case_probs_rc, multiview_r
  )
  decision = 'fracture' if preds[0] else 'normal'
  if vote == 'hard':  # decided by the votes; its score is the soft one
    return f'  case, hard vote: {decision}'
  return f'  case, {vote} vote: p(fracture)={float(scores[0]):.4f} {decision}'


def format_predictions(
    run_names: Sequence[str],
    files: Sequence[str],
    probs_rv: np.ndarray,
    case_probs_r: np.ndarray | None = None,
    attention_rv: np.ndarray | None = None,
    vote: str | None = None,
) -> str:
  """The text predict prints (case_probs_r, attention_rv: CasePrediction's;
  NaN rows are per-view runs). vote (--vote, a voting.CASE_VOTINGS): adds
  each per-view run's and the ensemble's case vote by that rule."""
  cases = voting.index_cases(['case'] * len(files), [0] * len(files))
  multiview_r = np.zeros(len(run_names), bool)
  if case_probs_r is not None:
    multiview_r = ~np.isnan(case_probs_r)
  lines = []
  for r, (name, probs_v) in enumerate(zip(run_names, probs_rv)):
    if multiview_r[r]:
      lines += _multiview_lines(
          name, files, probs_v, case_probs_r[r], attention_rv[r]
      )
    else:
      lines += _run_lines(name, files, probs_v, cases)
      if vote:
        lines.append(_vote_line(probs_rv, cases, [r], vote, None, None))
  if len(run_names) > 1 and multiview_r.any():
    lines += _mixed_ensemble_lines(probs_rv, case_probs_r, multiview_r, cases)
  elif len(run_names) > 1:
    lines += _ensemble_lines(len(run_names), len(files), probs_rv, cases)
  if vote and len(run_names) > 1:
    case_probs_rc = voting.run_case_probs(probs_rv, cases)
    if multiview_r.any():
      case_probs_rc[multiview_r, 0] = case_probs_r[multiview_r]
    members = list(range(len(run_names)))
    lines.append(
        _vote_line(probs_rv, cases, members, vote, case_probs_rc, multiview_r)
    )
  return '\n'.join(lines)


def _mixed_ensemble_lines(probs_rv, case_probs_r, multiview_r, cases):
  """An ensemble with multi-view runs votes per case (ankle_jax.evaluation.voting)."""
  members = list(range(len(probs_rv)))
  case_probs_rc = voting.run_case_probs(probs_rv, cases)
  case_probs_rc[multiview_r, 0] = case_probs_r[multiview_r]
  soft, case_p = voting.case_decisions(
      probs_rv, cases, members, 'soft', case_probs_rc, multiview_r
  )
  hard, _ = voting.case_decisions(
      probs_rv, cases, members, 'hard', case_probs_rc, multiview_r
  )
  return [
      f'ensemble of {len(members)} runs (multi-view runs vote per case):',
      f'  case: mean p(fracture)={float(case_p[0]):.4f} soft vote='
      f'{_vote(float(case_p[0]))} hard vote='
      f'{"fracture" if hard[0] else "normal"}',
  ]


def write_heatmap(
    path: str,
    prediction: CasePrediction,
    panel_size: int = saliency.PANEL_SIZE,
) -> tuple[int, int]:
  """Writes the overlays PNG; returns its (height, width)."""
  files = prediction.files
  backgrounds = load_views(files, panel_size, stored_size=0)[..., 0]
  soft_v = prediction.probs_rv.mean(axis=0)
  rows, titles = [], []
  names = [f'view {v + 1}: {os.path.basename(f)}' for v, f in enumerate(files)]
  if prediction.gradcam_vhw is not None:
    rows.append(saliency.HeatmapRow('Grad-CAM', prediction.gradcam_vhw))
    titles.append(
        [f'{n}\nGrad-CAM, p(fracture)={p:.2f}' for n, p in zip(names, soft_v)]
    )
  if prediction.occlusion_vhw is not None:
    rows.append(saliency.HeatmapRow('occlusion', prediction.occlusion_vhw))
    titles.append([f'{n}\nocclusion' for n in names])
  if not rows:
    raise ValueError('No saliency maps to draw.')
  return saliency.save_heatmap_png(path, backgrounds, rows, titles)


def run_predict(
    run_dirs: Sequence[str],
    paths: Sequence[str],
    *,
    checkpoint: str | None = None,
    heatmap_path: str | None = None,
    occlusion: bool = False,
    panel_size: int = saliency.PANEL_SIZE,
    vote: str | None = None,
    stored_size: int = batch_lib.STORED_SIZE,
) -> CasePrediction:
  """The whole command: prints the votes, writes the heatmap if asked."""
  files = case_files(paths)
  runs = inference.load_runs(run_dirs, checkpoint)
  files = readable_files(files, int(runs[0].config.image_size))
  prediction = predict_case(
      runs,
      files,
      heatmap=heatmap_path is not None,
      occlusion=occlusion and heatmap_path is not None,
      panel_size=panel_size,
      stored_size=stored_size,
  )
  print(
      format_predictions(
          [r.name for r in runs],
          files,
          prediction.probs_rv,
          prediction.case_probs_r,
          prediction.attention_rv,
          vote,
      )
  )
  if heatmap_path:
    height, width = write_heatmap(heatmap_path, prediction, panel_size)
    print(f'heatmap: {heatmap_path} ({width}x{height} px)')
  return prediction

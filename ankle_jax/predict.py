r"""Predicts one case from its radiographs with one or more trained runs.

  python -m ankle_jax.predict --runs=RUN1,RUN2,... [--checkpoint=best] \
      [--heatmap=OUT.png] [--occlusion] [--panel_size=300] PATH...

PATH: the DICOM (or PNG/JPEG) files of ONE case, or the case's folder (all
its files, sorted by name). Each view is read with
`ankle_jax.data.dicom.load_radiograph` at each run's image size and
standardized per image, exactly as in evaluation; runs of one architecture
are applied together with one vmapped forward (ankle_jax.evaluate).

Printed: for every run, each view's fracture probability and vote, the case
probability (mean over views) and the case vote (majority of the view votes,
ties to fracture); then the same for the ensemble of all runs, with hard
(majority of the runs' votes) and soft (mean probability) voting.

--heatmap=OUT.png writes Grad-CAM overlays (last conv stage, the mean of the
runs' normalized maps) of each view; --occlusion adds a second row of
occlusion maps. The PNG is (rows * panel_size) x (views * panel_size) pixels
(see ankle_jax.saliency).
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from typing import Any

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from ankle_jax import evaluate
from ankle_jax import saliency
from ankle_jax import voting


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
        raise ValueError(f'{path} holds no files.')
      files += inside
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise FileNotFoundError(f'{path}: no such file or folder.')
  if not files:
    raise ValueError('No radiograph given.')
  return files


def load_views(files: Sequence[str], image_size: int) -> np.ndarray:
  """float32 [views, S, S, 1] in [0, 1] (not standardized)."""
  from ankle_jax.data import dicom  # pylint: disable=g-import-not-at-top

  return np.stack(
      [dicom.load_radiograph(f, image_size=image_size) for f in files]
  )


def predict_case(
    runs: Sequence[evaluate.Run],
    files: Sequence[str],
    *,
    heatmap: bool = False,
    occlusion: bool = False,
    panel_size: int = saliency.PANEL_SIZE,
) -> dict[str, Any]:
  """Every run's probabilities for the views, and optional saliency maps.

  Returns:
    {'probs_rv': float [runs, views], 'gradcam_vhw': float [views, P, P]
     (mean over runs, if heatmap), 'occlusion_vhw': float [views, P, P]
     (mean over runs, if occlusion)}.
  """
  from ankle_jax.data import augment  # pylint: disable=g-import-not-at-top

  probs_rv = np.zeros((len(runs), len(files)))
  cams, occs = [], []
  for indices in evaluate.group_runs([r.config for r in runs]).values():
    config = runs[indices[0]].config
    module = evaluate.create_model(config)
    images = load_views(files, int(config.image_size))
    variables_r = evaluate.stack_variables([runs[i].variables for i in indices])
    probs_rv[indices] = np.asarray(
        evaluate.make_forward(module)(variables_r, jnp.asarray(images))
    )
    if not (heatmap or occlusion):
      continue
    standardized = augment.standardize_per_image(jnp.asarray(images))
    grad_cam = saliency.make_grad_cam(module) if heatmap else None
    size = int(config.image_size)
    occlude = (
        saliency.make_occlusion(
            module, patch=max(size // 8, 1), stride=max(size // 16, 1)
        )
        if occlusion
        else None
    )
    for i in indices:
      variables = runs[i].variables
      if grad_cam is not None:
        cam_vhw, _ = grad_cam(variables, standardized)
        cams.append(
            np.stack(
                [
                    saliency.resize_map(c, panel_size)
                    for c in np.asarray(cam_vhw)
                ]
            )
        )
      if occlude is not None:
        occs.append(
            np.stack(
                [
                    saliency.resize_map(
                        occlude(variables, standardized[v]), panel_size
                    )
                    for v in range(len(files))
                ]
            )
        )
  out = {'probs_rv': probs_rv}
  if cams:
    out['gradcam_vhw'] = np.mean(cams, axis=0)
  if occs:
    out['occlusion_vhw'] = np.mean(occs, axis=0)
  return out


def _vote(p: float) -> str:
  return 'fracture' if p >= voting.THRESHOLD else 'normal'


def format_predictions(
    run_names: Sequence[str], files: Sequence[str], probs_rv: np.ndarray
) -> str:
  """The text predict prints."""
  cases = voting.index_cases(['case'] * len(files), [0] * len(files))
  lines = []
  for name, probs_v in zip(run_names, probs_rv):
    lines.append(f'run {name}:')
    for v, (f, p) in enumerate(zip(files, probs_v)):
      lines.append(
          f'  view {v + 1} ({os.path.basename(f)}): '
          f'p(fracture)={p:.4f} vote={_vote(p)}'
      )
    case_p = float(voting.case_soft_probs(probs_v, cases)[0])
    case_hard = bool(
        voting.case_hard_votes(voting.image_votes(probs_v), cases)[0]
    )
    lines.append(
        f'  case: p(fracture)={case_p:.4f} '
        f'soft vote={_vote(case_p)} '
        f'hard vote={"fracture" if case_hard else "normal"} '
        f'({int(voting.image_votes(probs_v).sum())} of {len(files)} '
        'views)'
    )
  if len(run_names) > 1:
    members = list(range(len(run_names)))
    hard_v = voting.ensemble_hard_votes(probs_rv, members)
    soft_v = voting.ensemble_soft_probs(probs_rv, members)
    lines.append(f'ensemble of {len(run_names)} runs:')
    for v in range(len(files)):
      lines.append(
          f'  view {v + 1}: mean p(fracture)={soft_v[v]:.4f} '
          f'soft vote={_vote(soft_v[v])} hard vote='
          f'{"fracture" if hard_v[v] else "normal"} '
          f'({int(voting.image_votes(probs_rv[:, v]).sum())} of '
          f'{len(run_names)} runs)'
      )
    case_p = float(voting.case_soft_probs(soft_v, cases)[0])
    case_hard = bool(voting.case_hard_votes(hard_v, cases)[0])
    lines.append(
        f'  case: mean p(fracture)={case_p:.4f} '
        f'soft vote={_vote(case_p)} '
        f'hard vote={"fracture" if case_hard else "normal"}'
    )
  return '\n'.join(lines)


def write_heatmap(
    path: str,
    files: Sequence[str],
    result: dict[str, Any],
    panel_size: int = saliency.PANEL_SIZE,
) -> tuple[int, int]:
  """Writes the overlays PNG; returns its (height, width)."""
  backgrounds = load_views(files, panel_size)[..., 0]
  soft_v = result['probs_rv'].mean(axis=0)
  rows, captions = [], []
  if 'gradcam_vhw' in result:
    rows.append(
        [
            saliency.overlay(b, h)
            for b, h in zip(backgrounds, result['gradcam_vhw'])
        ]
    )
    captions.append(
        [f'view {v + 1} Grad-CAM p={p:.2f}' for v, p in enumerate(soft_v)]
    )
  if 'occlusion_vhw' in result:
    rows.append(
        [
            saliency.overlay(b, h, signed=True)
            for b, h in zip(backgrounds, result['occlusion_vhw'])
        ]
    )
    captions.append([f'view {v + 1} occlusion' for v in range(len(files))])
  if not rows:
    raise ValueError('No saliency maps to draw.')
  return saliency.save_heatmap_png(path, rows, captions)


def run_predict(
    run_dirs: Sequence[str],
    paths: Sequence[str],
    *,
    checkpoint: str = 'best',
    heatmap_path: str | None = None,
    occlusion: bool = False,
    panel_size: int = saliency.PANEL_SIZE,
) -> dict[str, Any]:
  """The whole command; returns the result dict (and prints the summary)."""
  files = case_files(paths)
  runs = evaluate.load_runs(run_dirs, checkpoint)
  result = predict_case(
      runs,
      files,
      heatmap=heatmap_path is not None,
      occlusion=occlusion and heatmap_path is not None,
      panel_size=panel_size,
  )
  result['text'] = format_predictions(
      [r.name for r in runs], files, result['probs_rv']
  )
  print(result['text'])
  if heatmap_path:
    result['heatmap_shape'] = write_heatmap(
        heatmap_path, files, result, panel_size
    )
    print(
        f'heatmap: {heatmap_path} ({result["heatmap_shape"][1]}x'
        f'{result["heatmap_shape"][0]} px)'
    )
  return result


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_list('runs', None, 'Comma-separated training run directories.')
  flags.DEFINE_enum(
      'checkpoint', 'best', ['best', 'latest'], 'Which checkpoint of each run.'
  )
  flags.DEFINE_string('heatmap', None, 'Write Grad-CAM overlays to this PNG.')
  flags.DEFINE_bool(
      'occlusion',
      False,
      'Add occlusion maps to the --heatmap PNG (slow: one '
      'forward per patch position).',
  )
  flags.DEFINE_integer(
      'panel_size',
      saliency.PANEL_SIZE,
      'Side in pixels of each view panel of the PNG.',
  )


def main(argv):
  paths = argv[1:]
  if not flags.FLAGS.runs or not paths:
    raise app.UsageError(
        'Usage: python -m ankle_jax.predict --runs=DIR[,DIR] ' 'PATH...'
    )
  if flags.FLAGS.occlusion and not flags.FLAGS.heatmap:
    raise app.UsageError('--occlusion needs --heatmap=OUT.png.')
  run_predict(
      flags.FLAGS.runs,
      paths,
      checkpoint=flags.FLAGS.checkpoint,
      heatmap_path=flags.FLAGS.heatmap,
      occlusion=flags.FLAGS.occlusion,
      panel_size=flags.FLAGS.panel_size,
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)

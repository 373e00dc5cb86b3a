"""The error gallery: the Headline's most confident wrong case-level calls
on the reported split, with Grad-CAM thumbnails (the one reporting module
that runs a model; reporting.html shows what `build` returns, handed over in
ReportContext.gallery).

The Headline at case level under its voting rule (soft by default) and the
vote threshold (0.5): the false negatives ranked by their case probability,
lowest first, and the false positives, highest first (ties by case id), up
to MAX_PER_KIND of each. Each case holds its evaluated views' Grad-CAM
overlays (THUMBNAIL_PX; the mean of the members' maps; a multi-view member's
maps show its case evidence, saliency.make_case_grad_cam) and each view's
probability (the members' mean, as at single-view level); the case
probability also by the Headline's case-level calibrator.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import jax.numpy as jnp
import numpy as np

from ankle_jax import inference
from ankle_jax import models
from ankle_jax import saliency
from ankle_jax.evaluation.evaluation import Evaluation
from ankle_jax.evaluation_inputs import CaseImagesFn
from ankle_jax.models import forward
from ankle_jax.reporting.context import MAX_PER_KIND
from ankle_jax.reporting.context import ErrorCase

THUMBNAIL_PX = 160


def find_errors(
    ev: Evaluation, max_per_kind: int = MAX_PER_KIND
) -> list[ErrorCase]:
  """The Headline's most confident false negatives, then false positives,
  on the reported split (module docstring), without images."""
  h = ev.headline
  preds = ev.predictions[ev.split]
  cases = preds.cases()
  case_d = ev.decisions(h.members, 'case', h.voting)
  view_d = ev.decisions(h.members, 'image', 'soft')
  calibrated_c = ev.calibration.calibrators[(h.members, 'case')].apply(
      case_d.scores
  )
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
              probability_calibrated=float(calibrated_c[c]),
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
      standardized = forward.standardized(jnp.asarray(images))
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


def build(
    ev: Evaluation,
    runs: Sequence[inference.Run],
    case_images: CaseImagesFn,
    max_per_kind: int = MAX_PER_KIND,
) -> tuple[ErrorCase, ...]:
  """find_errors + add_grad_cams with the Headline's runs (`runs`: at least
  those members, by name): ReportContext.gallery."""
  errors = find_errors(ev, max_per_kind)
  by_name = {r.name: r for r in runs}
  members = [by_name[m] for m in ev.headline.members]
  return tuple(add_grad_cams(errors, members, case_images) if errors else [])

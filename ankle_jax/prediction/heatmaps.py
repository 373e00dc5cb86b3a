"""Grad-CAM maps of a predicted case, for its Secondary Captures.

The maps are `saliency.make_case_grad_cam`'s (last conv stage; a multi-view
run's case evidence over all views at once), per run, resized to the panel
and averaged over runs, as the one-case command's --heatmap draws them. One
jitted Grad-CAM per model group, built once per batch (`HeatmapMaker`);
it compiles once per number of views. The views are read as the forward
reads them (`batch.load_view`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ankle_jax import inference
from ankle_jax import models
from ankle_jax import saliency
from ankle_jax.data import dicom
from ankle_jax.prediction import batch as batch_lib


class HeatmapMaker:
  """Grad-CAM [views, P, P] of a case's files, mean over the runs."""

  def __init__(
      self,
      runs: Sequence[inference.Run],
      panel_size: int,
      stored_size: int = batch_lib.STORED_SIZE,
  ):
    self.runs = list(runs)
    self.panel_size = panel_size
    self.stored_size = stored_size
    self.groups = []
    for indices in inference.group_runs([r.config for r in runs]).values():
      config = runs[indices[0]].config
      module = models.from_run_config(config)
      self.groups.append(
          (
              int(config.image_size),
              saliency.make_case_grad_cam(module),
              [runs[i].variables for i in indices],
          )
      )

  def __call__(self, paths: Sequence[str]) -> np.ndarray:
    """float32 [views, P, P] in [0, 1], the views being readable files."""
    cams = []
    for image_size, grad_cam, variables_list in self.groups:
      images = np.stack(
          [batch_lib.load_view(p, image_size, self.stored_size) for p in paths]
      )
      standardized = models.forward.standardized(jnp.asarray(images))
      for variables in variables_list:
        cam_vhw, _ = grad_cam(variables, standardized)
        cams.append(
            [
                saliency.resize_map(c, self.panel_size)
                for c in np.asarray(cam_vhw)
            ]
        )
    return np.mean(np.asarray(cams, np.float32), axis=0)

  def backgrounds(self, paths: Sequence[str]) -> np.ndarray:
    """float32 [views, P, P] in [0, 1]: the views as the model sees them."""
    return np.stack(
        [
            dicom.load_radiograph(p, image_size=self.panel_size)[..., 0]
            for p in paths
        ]
    )

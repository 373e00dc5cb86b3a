"""What the reporting writers need beyond the Evaluation: `ReportContext`,
and the error gallery's cases (`ErrorCase`, built by reporting.gallery, the
one module here that runs a model, and shown by reporting.html)."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

import numpy as np

# The most confident wrong calls of each kind the error gallery shows.
MAX_PER_KIND = 12


@dataclasses.dataclass(frozen=True)
class ErrorCase:
  """One wrong case-level call of the Headline.

  Attributes:
    case_id: the dataset's case id.
    kind: 'false_negative' or 'false_positive'.
    probability: the case probability (soft vote of the members).
    probability_calibrated: it by the Headline's case-level calibrator
      (= probability where that is not applied); None when not given.
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
  probability_calibrated: float | None = None


@dataclasses.dataclass(frozen=True)
class ReportContext:
  """The facts of an evaluation that are not computed from its predictions.

  Attributes:
    run_dirs: {run name: its training run directory} (config.json there).
    data_dir: the evaluated TFDS dataset directory (None: data injected).
    dataset_config: its builder config ('dicom_cases', 'mura', 'fracatlas').
    html: whether report.html is written (evaluate --html).
    gallery: the Headline's error cases with their Grad-CAM thumbnails
      (reporting.gallery), None when not built.
  """

  run_dirs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  data_dir: str | None = None
  dataset_config: str | None = None
  html: bool = True
  gallery: tuple[ErrorCase, ...] | None = None

"""The maps that calibrate a fracture probability, fitted on validation.

Both families are affine maps of the fracture logit z = log(p / (1 - p))
(p clipped to [1e-12, 1 - 1e-12]): p_cal = sigmoid(slope * z + intercept).
  * temperature: intercept 0, slope 1 / T (one parameter; rescales z, so it
    cannot remove a shift of every logit, e.g. by training class weights);
  * platt: slope and intercept free (Platt scaling, two parameters; the
    intercept absorbs a prior shift).
Each is the maximum-likelihood logistic fit on validation (Newton's method,
vectorised over bootstrap resamples). `fit_calibrator` fits both and keeps
the one of lower AIC (2 * summed log-loss + 2 * parameters: Platt must buy
its second parameter). It is NOT applied (calibrated = raw, with a reason)
when validation holds one class, when validation is separable (every
fracture scored above every normal: the fit has no finite optimum), or when
the chosen slope leaves SLOPE_BOUNDS (T outside [0.05, 20]).
`bootstrap_maps` refits the chosen family on validation resamples, so that
intervals of calibrated metrics carry the calibrator's own uncertainty (a
resample where the fit fails keeps the raw probability, as the point fit
would).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import numpy as np
from scipy import special

PROB_CLIP = 1e-12
TEMPERATURE = 'temperature'
PLATT = 'platt'
NONE = 'none'
PARAMETERS = {TEMPERATURE: 1, PLATT: 2}
# Slope 1 / T within [1 / 20, 1 / 0.05]: T in [0.05, 20].
TEMPERATURE_BOUNDS = (0.05, 20.0)
SLOPE_BOUNDS = (1.0 / TEMPERATURE_BOUNDS[1], 1.0 / TEMPERATURE_BOUNDS[0])
NO_VALIDATION = 'no validation split to fit it on'
ONE_CLASS = 'validation holds one class only'
SEPARABLE = (
    'validation is separable (every fracture scored above every normal): '
    'the fit has no finite optimum'
)


def logit(probs) -> np.ndarray:
  """float64 [...]: log(p / (1 - p)) of probabilities clipped to
  [1e-12, 1 - 1e-12] (finite for p = 0 or 1)."""
  p = np.clip(np.asarray(probs, np.float64), PROB_CLIP, 1.0 - PROB_CLIP)
  return np.log(p) - np.log1p(-p)


def apply_map(probs, slope, intercept) -> np.ndarray:
  """float64: sigmoid(slope * logit(p) + intercept) (broadcasting: slope
  and intercept [B, 1] against p [n] give [B, n])."""
  return special.expit(slope * logit(probs) + intercept)


def apply_temperature(probs, temperature) -> np.ndarray:
  """float64 [...]: sigmoid(logit(p) / T)."""
  return apply_map(probs, 1.0 / np.asarray(temperature, np.float64), 0.0)


def _newton_step(w, z, y, a, b):
  """One capped Newton step of the weighted logistic log-likelihood of
  y ~ sigmoid(a z + b) for rows of weights w [B, n]; (d_a, d_b) [B]."""
  p = special.expit(a[:, None] * z + b[:, None])
  r, s = w * (y - p), w * p * (1.0 - p)
  g_a, g_b = r @ z, r.sum(axis=1)
  h_aa, h_ab, h_bb = s @ (z * z), s @ z, s.sum(axis=1)
  det = h_aa * h_bb - h_ab * h_ab
  d_a = np.clip((h_bb * g_a - h_ab * g_b) / det, -2.0, 2.0)
  d_b = np.clip((h_aa * g_b - h_ab * g_a) / det, -2.0, 2.0)
  return d_a, d_b


def _affine_fits(w, z, y, iterations: int) -> tuple[np.ndarray, np.ndarray]:
  """Newton's method from a = 0 and b the log-odds of the rate."""
  rate = np.clip((w @ y) / w.sum(axis=1), 1e-6, 1 - 1e-6)
  a, b = np.zeros(len(w)), np.log(rate) - np.log1p(-rate)
  converged = np.zeros(len(w), bool)
  active = np.arange(len(w))  # the fits still moving
  with np.errstate(all='ignore'):
    for _ in range(iterations):
      d_a, d_b = _newton_step(w[active], z, y, a[active], b[active])
      a[active], b[active] = a[active] + d_a, b[active] + d_b
      step = np.maximum(np.abs(d_a), np.abs(d_b))
      converged[active] = step < 1e-10
      # Coefficients past 1e3 only grow: separable classes, no finite fit.
      bounded = (np.abs(a[active]) < 1e3) & (np.abs(b[active]) < 1e3)
      active = active[~(step <= 1e-10) & np.isfinite(step) & bounded]
      if not active.size:
        break
  return np.where(converged, a, np.nan), np.where(converged, b, np.nan)


def _slope_fits(w, z, y, iterations: int) -> np.ndarray:
  """Bisection for the root of the score sum w (y - sigmoid(a z)) z, which
  falls as a grows (Newton oscillates here when every logit is shifted).
  Searched within [SLOPE_BOUNDS[0] / 2, 2 * SLOPE_BOUNDS[1]]: a root
  outside gives that end (outside SLOPE_BOUNDS, so rejected)."""
  lo = np.full(len(w), SLOPE_BOUNDS[0] / 2)
  hi = np.full(len(w), 2 * SLOPE_BOUNDS[1])
  for _ in range(iterations):
    mid = (lo + hi) / 2
    score = (w * (y - special.expit(mid[:, None] * z)) * z).sum(axis=1)
    lo, hi = np.where(score > 0, mid, lo), np.where(score > 0, hi, mid)
  return (lo + hi) / 2


def logistic_fits(
    weights_bn, logits, labels, *, intercept: bool, iterations: int = 60
) -> tuple[np.ndarray, np.ndarray]:
  """Weighted logistic regressions y ~ sigmoid(a z + b) for all rows of
  weights [B, n] at once. intercept=True: Newton's method (each step capped
  at 2 per coordinate); NaN where a fit does not converge (e.g. separable
  classes, where |a| only grows). intercept=False: b = 0 and a by
  bisection (_slope_fits). Returns (a [B], b [B])."""
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
  if intercept:
    return _affine_fits(w, z, y, iterations)
  return _slope_fits(w, z, y, iterations), np.zeros(len(w))


def log_loss_sum(probs, labels, slope: float, intercept: float) -> float:
  """Summed negative log-likelihood (nats) of sigmoid(slope z + intercept)."""
  s = slope * logit(probs) + intercept
  y = np.asarray(labels, np.float64)
  return float(np.sum(np.logaddexp(0.0, s) - y * s))


def is_separable(logits, labels) -> bool:
  """Whether every fracture's logit is above every normal's."""
  z, y = np.asarray(logits), np.asarray(labels)
  return bool(z[y == 1].min() > z[y == 0].max())


@dataclasses.dataclass(frozen=True)
class Calibrator:
  """The calibration map of one model and level (module docstring).

  Attributes:
    kind: 'temperature' or 'platt' (the family chosen by AIC), 'none' when
      nothing could be fitted.
    slope, intercept: p_cal = sigmoid(slope * logit(p) + intercept).
    applied: False: calibrated = raw (reason says why).
    reason: why it is not applied; None when it is.
    aic: {family: AIC on validation} of the fitted families (chosen: the
      lowest).
  """

  kind: str
  slope: float = 1.0
  intercept: float = 0.0
  applied: bool = False
  reason: str | None = None
  aic: Mapping[str, float] = dataclasses.field(default_factory=dict)

  @property
  def temperature(self) -> float | None:
    """T = 1 / slope of an applied temperature; else None."""
    if self.applied and self.kind == TEMPERATURE:
      return 1.0 / self.slope
    return None

  def apply(self, probs) -> np.ndarray:
    """float64 [...]: the calibrated probabilities (raw when not applied)."""
    if not self.applied:
      return np.asarray(probs, np.float64)
    return apply_map(probs, self.slope, self.intercept)

  def to_json(self) -> dict[str, Any]:
    return {
        'kind': self.kind,
        'applied': self.applied,
        'reason': self.reason,
        'slope': self.slope,
        'intercept': self.intercept,
        'temperature': self.temperature,
        'aic': dict(self.aic),
        'chosen_by': 'AIC on validation (2 * log-loss sum + 2 * parameters)',
    }


def _in_bounds(slope: float) -> bool:
  return SLOPE_BOUNDS[0] <= slope <= SLOPE_BOUNDS[1]


def fit_calibrator(probs, labels) -> Calibrator:
  """The calibrator of validation probabilities [n] and labels [n]
  (1 = fracture): both families fitted, the lower AIC kept (module
  docstring)."""
  y = np.asarray(labels, np.int64).ravel()
  if np.unique(y).size < 2:
    return Calibrator(NONE, reason=ONE_CLASS)
  z = logit(probs).ravel()
  if is_separable(z, y):
    return Calibrator(NONE, reason=SEPARABLE)
  fits, aic = {}, {}
  for kind, k in PARAMETERS.items():
    a, b = logistic_fits(np.ones(z.size), z, y, intercept=kind == PLATT)
    if np.isfinite(a[0]):
      fits[kind] = (float(a[0]), float(b[0]))
      aic[kind] = 2.0 * log_loss_sum(probs, y, *fits[kind]) + 2.0 * k
  if not fits:
    return Calibrator(NONE, reason=SEPARABLE)
  kind = min(aic, key=aic.get)
  slope, intercept = fits[kind]
  if not _in_bounds(slope):
    t = 'T' if kind == TEMPERATURE else '1 / slope'
    reason = (
        f'{t} = {1 / slope:.3g} hit its bounds [{TEMPERATURE_BOUNDS[0]}, '
        f'{TEMPERATURE_BOUNDS[1]}]'
    )
    return Calibrator(kind, slope, intercept, False, reason, aic)
  return Calibrator(kind, slope, intercept, True, None, aic)


def bootstrap_maps(
    calibrator: Calibrator, probs, labels, weights_bn
) -> tuple[np.ndarray, np.ndarray]:
  """(slope [B], intercept [B]) of the calibrator's family refitted on each
  resample (weights [B, n]) of validation probabilities [n] and labels [n];
  (1, 0), the raw probability, where the calibrator is not applied or a
  resample's fit fails or leaves SLOPE_BOUNDS."""
  w = np.atleast_2d(np.asarray(weights_bn, np.float64))
  ones, zeros = np.ones(len(w)), np.zeros(len(w))
  if not calibrator.applied:
    return ones, zeros
  a, b = logistic_fits(
      w, logit(probs), labels, intercept=calibrator.kind == PLATT
  )
  with np.errstate(invalid='ignore'):
    ok = np.isfinite(a) & (a >= SLOPE_BOUNDS[0]) & (a <= SLOPE_BOUNDS[1])
  return np.where(ok, a, ones), np.where(ok, b, zeros)

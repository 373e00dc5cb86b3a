"""Image geometry of a loaded radiograph: border crop, square padding, resizing.

Steps 7 and 8 of `dicom.load_radiograph` (see its module docstring): constant
borders are cropped, the image is shrunk by integer block averaging, zero-padded
(centred) to a square and resized to the model's input size. All functions take
and return float [H, W] arrays with values in [0, 1].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage

# A row/column counts as constant (part of a border) when the means of its
# consecutive runs of BORDER_RUN_PIXELS pixels spread at most BORDER_TOLERANCE
# of the image's dynamic range (max - min). Averaging along the line first makes
# the test see the line's structure, not its pixel noise, which lossy coding
# removes: on the max - min of raw pixels, a 10:1 JPEG 2000 twin of a hip
# radiograph lost 15 faint edge columns that its lossless original kept.
BORDER_TOLERANCE = 5e-3
BORDER_RUN_PIXELS = 32


@dataclasses.dataclass(frozen=True)
class BorderBox:
  """The part of an image inside its constant borders: rows [top, bottom),
  columns [left, right), in pixels."""

  top: int
  bottom: int
  left: int
  right: int


def crop_constant_borders(
    image_hw: np.ndarray,
    tolerance: float = BORDER_TOLERANCE,
    run_pixels: int = BORDER_RUN_PIXELS,
) -> np.ndarray:
  """Removes the constant edge rows/columns found by `constant_border_box`.

  Args:
    image_hw: float [H, W] image.
    tolerance: see `constant_border_box`.
    run_pixels: see `constant_border_box`.

  Returns:
    A view [h, w] of `image_hw`, h <= H, w <= W.
  """
  box = constant_border_box(image_hw, tolerance, run_pixels)
  return image_hw[box.top : box.bottom, box.left : box.right]


def constant_border_box(
    image_hw: np.ndarray,
    tolerance: float = BORDER_TOLERANCE,
    run_pixels: int = BORDER_RUN_PIXELS,
) -> BorderBox:
  """The box inside the contiguous runs of constant rows/columns at the four
  edges; the whole image when it is constant.

  Args:
    image_hw: float [H, W] image.
    tolerance: the largest spread of a line's run means, as a fraction of the
      image's max - min, that still counts as constant.
    run_pixels: pixels per run averaged along a line (fewer when the line has
      fewer than 4 runs).

  Returns:
    A `BorderBox` in pixels of `image_hw`.
  """
  height, width = image_hw.shape
  limit = tolerance * float(image_hw.max() - image_hw.min())
  row_flat = _run_mean_spreads(image_hw.T, run_pixels) <= limit
  col_flat = _run_mean_spreads(image_hw, run_pixels) <= limit
  if row_flat.all() or col_flat.all():
    return BorderBox(0, height, 0, width)
  return BorderBox(
      top=int(np.argmin(row_flat)),
      bottom=height - int(np.argmin(row_flat[::-1])),
      left=int(np.argmin(col_flat)),
      right=width - int(np.argmin(col_flat[::-1])),
  )


def _run_mean_spreads(image_hw: np.ndarray, run_pixels: int) -> np.ndarray:
  """float32 [W]: per column, max - min of the means of its consecutive runs
  of `run_pixels` rows (at least 4 runs; the last run ends at the last row)."""
  height = image_hw.shape[0]
  run = max(1, min(run_pixels, height // 4))
  whole = height // run * run
  means = (
      image_hw[:whole]
      .reshape(height // run, run, -1)
      .mean(axis=1, dtype=np.float32)
  )
  if whole < height:
    tail = image_hw[height - run :].mean(axis=0, dtype=np.float32)
    means = np.concatenate([means, tail[None]])
  return means.max(axis=0) - means.min(axis=0)


def pad_to_square(image_hw: np.ndarray) -> np.ndarray:
  """Zero-pads [H, W] symmetrically to [max(H, W), max(H, W)]."""
  h, w = image_hw.shape
  if h == w:
    return image_hw
  side = max(h, w)
  out = np.zeros((side, side), image_hw.dtype)
  top, left = (side - h) // 2, (side - w) // 2
  out[top : top + h, left : left + w] = image_hw
  return out


def resize_image(img_hw: np.ndarray, size: int) -> np.ndarray:
  """Resizes [H, W] to float32 [size, size] with SciPy, anti-aliased when
  shrinking, clipped to [0, 1].

  Shrinking first averages integer blocks (exact box anti-aliasing, cheap on 2k
  x 2k images), then Gaussian-prefilters for the remaining fractional factor and
  interpolates linearly (`scipy.ndimage.zoom`, order 1). Enlarging interpolates
  linearly.

  Args:
    img_hw: [H, W] image with values in [0, 1].
    size: output side in pixels.

  Returns:
    float32 [size, size] in [0, 1].
  """
  img = np.asarray(img_hw, np.float32)
  if img.ndim != 2:
    raise ValueError(
        f'resize_image expects a 2-D [H, W] image, got shape {img.shape}'
    )
  if img.shape == (size, size):
    return np.clip(img, 0.0, 1.0)
  # Integer block averaging per axis.
  img = block_mean(
      img, max(1, img.shape[0] // size), max(1, img.shape[1] // size)
  )
  zoom = (size / img.shape[0], size / img.shape[1])
  sigma = [max(0.0, (1.0 / z - 1.0) / 2.0) if z < 1.0 else 0.0 for z in zoom]
  if any(s > 0 for s in sigma):
    img = scipy.ndimage.gaussian_filter(img, sigma, mode='nearest')
  out = scipy.ndimage.zoom(img, zoom, order=1, mode='nearest', grid_mode=True)
  if out.shape != (size, size):  # zoom rounds the output shape; fix off-by-one.
    out = _fit(out, size)
  return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def square_and_resize(image_hw: np.ndarray, size: int) -> np.ndarray:
  """Step 8: block-mean shrink, zero-pad (centred) to a square, resize; ->
  float32 [size, size].

  The integer block averaging of `resize_image` happens *before* padding (same
  factor on both axes, so the aspect ratio is kept), so the padded square is
  never materialised at full
  resolution: a 20000 x 1 image must not become a 20000 x 20000 float32 array
    (1.6 GB).
  """
  img = np.asarray(image_hw, np.float32)
  factor = max(1, max(img.shape) // size)
  img = block_mean(img, min(factor, img.shape[0]), min(factor, img.shape[1]))
  return resize_image(pad_to_square(img), size)


def block_mean(img_hw: np.ndarray, fh: int, fw: int) -> np.ndarray:
  """float32 [H // fh, W // fw]: the means of fh x fw blocks (the ragged
  bottom rows and right columns dropped); `img_hw` itself when fh = fw = 1."""
  if fh == 1 and fw == 1:
    return img_hw
  h, w = (img_hw.shape[0] // fh) * fh, (img_hw.shape[1] // fw) * fw
  return (
      img_hw[:h, :w]
      .reshape(h // fh, fh, w // fw, fw)
      .mean(axis=(1, 3), dtype=np.float32)
  )


def _fit(img: np.ndarray, size: int) -> np.ndarray:
  out = np.zeros((size, size), img.dtype)
  h, w = min(size, img.shape[0]), min(size, img.shape[1])
  out[:h, :w] = img[:h, :w]
  if h < size:
    out[h:, :w] = img[h - 1 : h, :w]
  if w < size:
    out[:, w:] = out[:, w - 1 : w]
  return out

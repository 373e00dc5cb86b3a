"""Saliency maps: Grad-CAM on the last convolutional stage, and occlusion.

Grad-CAM works for every family without touching the models: the main head,
`ankle_jax.models.layers.ClassifierHead`, receives the last conv feature map
(after the final BN/ReLU). We intercept its `__call__` with
`flax.linen.intercept_methods`, add a zero perturbation `eps` to that feature
map and differentiate the fracture evidence (logit[fracture] -
logit[normal], the quantity the softmax depends on) with respect to `eps`:
that is the gradient with respect to the feature map, in one forward and one
backward pass.

Occlusion: a grey patch (0 in the standardized image, i.e. the image's mean)
slides over the image; the heat at a pixel is the mean drop of the fracture
probability over the patches covering it (positive = the region supports
"fracture"). The occluded images go through the model in fixed-size batches.

Heatmap PNGs (`save_heatmap_png`): one panel per view, each panel_size x
panel_size pixels (default 300), side by side under a title band that names
the view's file; one row of Grad-CAM overlays, plus a row of occlusion
overlays when given; a colour bar at the right of each row. A map with no
value above its threshold (`is_empty`) is drawn as the bare radiograph with
"no activation above threshold" written on it. `heatmap_png_size` gives the
PNG's exact size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
from matplotlib import cm as mpl_cm
from matplotlib import colors as mpl_colors
from matplotlib.figure import Figure
import numpy as np

from ankle_jax import inference
from ankle_jax import models
from ankle_jax.models import layers

PANEL_SIZE = 300
# A Grad-CAM map (in [0, 1], per-image max 1) is empty below this everywhere;
# an occlusion map (a change of p(fracture)) below this in magnitude.
EMPTY_THRESHOLD = {'Grad-CAM': 0.01, 'occlusion': 1e-3}
EMPTY_NOTE = 'no activation\nabove threshold'
_DPI = 100


def _apply_with_head_hook(module, variables, images_bhwc, hook):
  """module.apply in eval mode, with hook(features) replacing the head input."""

  def interceptor(next_fun, args, kwargs, context):
    if (
        isinstance(context.module, layers.ClassifierHead)
        and context.method_name == '__call__'
    ):
      return next_fun(hook(args[0]), *args[1:], **kwargs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    return module.apply(variables, images_bhwc, train=False)


def head_feature_shape(module, variables, images_bhwc) -> tuple[int, ...]:
  """Shape [B, h, w, C] of the feature map entering the ClassifierHead."""
  shapes = []

  def hook(features):
    shapes.append(features.shape)
    return features

  jax.eval_shape(
      lambda v, x: _apply_with_head_hook(module, v, x, hook).logits,
      variables,
      images_bhwc,
  )
  if len(shapes) != 1:
    raise ValueError(
        f'Expected exactly one layers.ClassifierHead call in '
        f'{type(module).__name__}, saw {len(shapes)}; Grad-CAM needs the main '
        'head to be a ClassifierHead.'
    )
  return tuple(shapes[0])


def make_grad_cam(module) -> Callable:
  """A jitted Grad-CAM of `module`.

  Returns:
    f(variables, images_bhwc) -> (cam_bhw, logits_bk): images standardized
    [B, H, W, 1]; cam float32 [B, H, W] in [0, 1] (per-image max = 1, all 0
    when no positive evidence), upsampled bilinearly to the input size.
  """

  def grad_cam(variables, images_bhwc):
    shape = head_feature_shape(module, variables, images_bhwc)

    def evidence(eps):
      captured = []

      def hook(features):
        captured.append(features)
        return features + eps.astype(features.dtype)

      logits = _apply_with_head_hook(
          module, variables, images_bhwc, hook
      ).logits.astype(jnp.float32)
      return (logits[:, 1] - logits[:, 0]).sum(), (captured[0], logits)

    grads, (features, logits) = jax.grad(evidence, has_aux=True)(
        jnp.zeros(shape, jnp.float32)
    )
    features = features.astype(jnp.float32)
    weights_bc = grads.mean(axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum('bhwc,bc->bhw', features, weights_bc))
    cam = cam / jnp.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12)
    b, h, w = images_bhwc.shape[:3]
    cam = jax.image.resize(cam, (b, h, w), 'bilinear')
    return jnp.clip(cam, 0.0, 1.0), logits

  return jax.jit(grad_cam)


def make_case_grad_cam(module) -> Callable:
  """make_grad_cam for any run's module: a multi-view model reads the images
  as ONE case (inference.ViewsAsCase), so each view's map shows the case
  evidence; a per-view model judges each image alone.

  Returns:
    f(variables, images_vhwc) -> (cam_vhw, logits): as make_grad_cam, the
    images being one case's standardized views [V, H, W, 1].
  """
  if isinstance(module, models.multiview.Model):
    module = inference.ViewsAsCase(module, one_case=True)
  return make_grad_cam(module)


def occlusion_positions(
    image_size: int, patch: int, stride: int
) -> list[tuple[int, int]]:
  """Top-left corners of the patches; the last row/column touch the edge."""
  if not 0 < patch <= image_size or stride <= 0:
    raise ValueError(
        f'Bad occlusion patch={patch} stride={stride} for '
        f'image_size={image_size}.'
    )
  starts = list(range(0, image_size - patch + 1, stride))
  if starts[-1] != image_size - patch:
    starts.append(image_size - patch)
  return [(r, c) for r in starts for c in starts]


def make_occlusion(
    module, *, patch: int, stride: int, batch_size: int = 32
) -> Callable:
  """An occlusion-map function of `module`.

  Returns:
    f(variables, image_hw1) -> heat float32 [H, W]: image standardized
    [H, W, 1]; heat[y, x] = mean over patches covering (y, x) of
    p(fracture | image) - p(fracture | image with the patch greyed out).
  """

  @jax.jit
  def probs(variables, images_bhwc):
    return jnp.exp(
        inference.fracture_log_probability(
            module, variables, images_bhwc, standardize=False
        )
    )

  def occlusion(variables, image_hw1):
    image_hw1 = np.asarray(image_hw1, np.float32)
    size = image_hw1.shape[0]
    positions = occlusion_positions(size, patch, stride)
    base = float(probs(variables, image_hw1[None])[0])
    drops = []
    for start in range(0, len(positions), batch_size):
      chunk = positions[start : start + batch_size]
      batch = np.repeat(image_hw1[None], batch_size, axis=0)
      for i, (r, c) in enumerate(chunk):
        batch[i, r : r + patch, c : c + patch] = 0.0
      drops.append(base - np.asarray(probs(variables, batch))[: len(chunk)])
    drops = np.concatenate(drops)
    heat = np.zeros(image_hw1.shape[:2], np.float64)
    count = np.zeros_like(heat)
    for d, (r, c) in zip(drops, positions):
      heat[r : r + patch, c : c + patch] += d
      count[r : r + patch, c : c + patch] += 1
    return (heat / np.maximum(count, 1)).astype(np.float32)

  return occlusion


def resize_map(heat_hw: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a 2-D map to size x size."""
  heat_hw = np.asarray(heat_hw, np.float32)
  return np.asarray(
      jax.image.resize(jnp.asarray(heat_hw), (size, size), 'bilinear')
  )


def overlay(
    image_hw: np.ndarray,
    heat_hw: np.ndarray,
    *,
    alpha: float = 0.6,
    signed: bool = False,
    scale: float | None = None,
) -> np.ndarray:
  """A heat map over a grey radiograph; zero heat leaves the radiograph bare.

  Args:
    image_hw: float [S, S] in [0, 1].
    heat_hw: float [S, S]; in [0, 1] (Grad-CAM, colour map 'jet'), or signed
      (occlusion, blue < 0 < red, 'bwr'), divided by `scale`.
    alpha: opacity of the heat map where |heat| / scale = 1.
    signed: whether heat is signed.
    scale: the heat of full colour (default: 1, or for signed heat its
      largest magnitude).

  Returns:
    uint8 RGB [S, S, 3].
  """
  image = np.clip(np.asarray(image_hw, np.float32), 0, 1)
  heat = np.asarray(heat_hw, np.float32)
  if heat.shape != image.shape:
    raise ValueError(f'heat {heat.shape} and image {image.shape} differ.')
  if scale is None:
    scale = float(np.abs(heat).max()) if signed else 1.0
  relative = heat / max(scale, 1e-12)
  if signed:
    rgb = matplotlib.colormaps['bwr'](0.5 + 0.5 * np.clip(relative, -1, 1))
  else:
    rgb = matplotlib.colormaps['jet'](np.clip(relative, 0, 1))
  weight = alpha * np.clip(np.abs(relative), 0, 1)[..., None]
  grey = np.repeat(image[..., None], 3, axis=-1)
  out = (1 - weight) * grey + weight * rgb[..., :3]
  return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class HeatmapRow:
  """One row of the heatmap PNG: one map per view.

  Attributes:
    kind: 'Grad-CAM' (in [0, 1]) or 'occlusion' (signed change of
      p(fracture)).
    maps_vhw: float [views, P, P].
  """

  kind: str
  maps_vhw: np.ndarray

  @property
  def signed(self) -> bool:
    return self.kind == 'occlusion'

  @property
  def scale(self) -> float:
    """The heat of full colour, shared by the row (its colour bar)."""
    if self.signed:
      largest = float(np.abs(self.maps_vhw).max())
      return max(largest, EMPTY_THRESHOLD[self.kind])
    return 1.0


def is_empty(heat_hw: np.ndarray, kind: str) -> bool:
  """Whether no value of a map reaches its kind's EMPTY_THRESHOLD."""
  return float(np.abs(np.asarray(heat_hw)).max()) < EMPTY_THRESHOLD[kind]


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Pixel geometry of the heatmap PNG."""

  panel: int
  font_pt: float
  title_px: int
  colorbar_px: int

  @classmethod
  def of(cls, panel: int) -> _Layout:
    font_pt = min(max(panel / 28.0, 7.0), 11.0)
    line_px = font_pt * _DPI / 72.0 * 1.3
    return cls(panel, font_pt, math.ceil(2 * line_px + 6), max(80, panel // 3))

  def size(self, num_views: int, num_rows: int) -> tuple[int, int]:
    return (
        num_rows * (self.panel + self.title_px),
        num_views * self.panel + self.colorbar_px,
    )


def heatmap_png_size(
    num_views: int, num_rows: int, panel_size: int = PANEL_SIZE
) -> tuple[int, int]:
  """(height, width) in pixels of save_heatmap_png's PNG."""
  return _Layout.of(panel_size).size(num_views, num_rows)


def _shorten(text: str, max_chars: int) -> str:
  if len(text) <= max_chars:
    return text
  keep = max(max_chars - 3, 2)
  return f'{text[: keep - keep // 2]}...{text[-(keep // 2) :]}'


def _draw_row(fig, layout, r, row, images_vhw, titles, size) -> None:
  """Panels, titles, empty-map notes and the colour bar of row r."""
  height, width = size
  panel = layout.panel
  bottom = 1 - ((r + 1) * (panel + layout.title_px)) / height
  max_chars = int(panel / (layout.font_pt * _DPI / 72.0 * 0.6))
  for v, (image, heat) in enumerate(zip(images_vhw, row.maps_vhw)):
    ax = fig.add_axes(
        (v * panel / width, bottom, panel / width, panel / height)
    )
    ax.imshow(
        overlay(image, heat, signed=row.signed, scale=row.scale),
        interpolation='nearest',
    )
    ax.set_axis_off()
    lines = [_shorten(t, max_chars) for t in titles[v].split('\n')]
    ax.set_title('\n'.join(lines), fontsize=layout.font_pt, pad=3)
    if is_empty(heat, row.kind):
      ax.text(
          0.5,
          0.5,
          EMPTY_NOTE,
          transform=ax.transAxes,
          ha='center',
          va='center',
          color='white',
          fontsize=layout.font_pt,
          bbox={'facecolor': 'black', 'alpha': 0.6, 'edgecolor': 'none'},
      )
  cax = fig.add_axes(
      (
          (len(images_vhw) * panel + 8) / width,
          bottom + 0.1 * panel / height,
          12 / width,
          0.8 * panel / height,
      )
  )
  if row.signed:
    norm = mpl_colors.Normalize(-row.scale, row.scale)
    cmap, label = 'bwr', 'drop of p(fracture) when occluded'
  else:
    norm, cmap, label = mpl_colors.Normalize(0, 1), 'jet', 'Grad-CAM'
  mappable = mpl_cm.ScalarMappable(norm=norm, cmap=cmap)
  colorbar = fig.colorbar(mappable, cax=cax)
  colorbar.ax.tick_params(labelsize=layout.font_pt - 1)
  colorbar.set_label(label, fontsize=layout.font_pt - 1)


def save_heatmap_png(
    path: str,
    images_vhw: np.ndarray,
    rows: Sequence[HeatmapRow],
    titles: Sequence[Sequence[str]],
) -> tuple[int, int]:
  """Writes the heatmap PNG (module docstring); returns its (height, width).

  Args:
    path: output file.
    images_vhw: float [views, P, P] in [0, 1], the radiographs.
    rows: the maps to overlay, one HeatmapRow per row.
    titles: per row, per view: the panel's title (lines split by newline,
      each shortened to the panel's width).
  """
  layout = _Layout.of(int(images_vhw.shape[1]))
  size = layout.size(len(images_vhw), len(rows))
  fig = Figure(figsize=(size[1] / _DPI, size[0] / _DPI), dpi=_DPI)
  for r, (row, row_titles) in enumerate(zip(rows, titles)):
    _draw_row(fig, layout, r, row, images_vhw, row_titles, size)
  fig.savefig(path, dpi=_DPI, facecolor='white')
  return size

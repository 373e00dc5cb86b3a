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
panel_size pixels (default 300), side by side; one row of Grad-CAM overlays,
plus a second row of occlusion overlays when given. The PNG is therefore
exactly (rows * panel_size) high and (views * panel_size) wide, RGB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ankle_jax.models import layers

PANEL_SIZE = 300


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
    logits = module.apply(variables, images_bhwc, train=False).logits
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1]

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
    alpha: float = 0.45,
    signed: bool = False,
) -> np.ndarray:
  """A heat map over a grey radiograph.

  Args:
    image_hw: float [S, S] in [0, 1].
    heat_hw: float [S, S]; in [0, 1] (Grad-CAM), or signed (occlusion, scaled
      by its largest magnitude, blue < 0 < red).
    alpha: opacity of the heat map.
    signed: whether heat is signed.

  Returns:
    uint8 RGB [S, S, 3].
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  image = np.clip(np.asarray(image_hw, np.float32), 0, 1)
  heat = np.asarray(heat_hw, np.float32)
  if heat.shape != image.shape:
    raise ValueError(f'heat {heat.shape} and image {image.shape} differ.')
  if signed:
    scale = max(float(np.abs(heat).max()), 1e-12)
    rgb = matplotlib.colormaps['bwr'](0.5 + 0.5 * heat / scale)[..., :3]
    weight = alpha * np.abs(heat / scale)[..., None]
  else:
    rgb = matplotlib.colormaps['jet'](np.clip(heat, 0, 1))[..., :3]
    weight = alpha * np.ones_like(heat)[..., None]
  grey = np.repeat(image[..., None], 3, axis=-1)
  out = (1 - weight) * grey + weight * rgb
  return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def save_heatmap_png(
    path: str,
    rows: Sequence[Sequence[np.ndarray]],
    captions: Sequence[Sequence[str]] | None = None,
) -> tuple[int, int]:
  """Writes a grid of equal-size RGB panels as one PNG.

  Args:
    path: output file.
    rows: rows of uint8 [P, P, 3] panels (all rows equally long).
    captions: optional text per panel, drawn in its top-left corner.

  Returns:
    (height, width) of the PNG in pixels: (len(rows) * P, len(rows[0]) * P).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top

  grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
  img = Image.fromarray(grid, mode='RGB')
  if captions is not None:
    draw = ImageDraw.Draw(img)
    panel = rows[0][0].shape[0]
    for i, row in enumerate(captions):
      for j, text in enumerate(row):
        draw.text((j * panel + 4, i * panel + 4), text, fill=(255, 255, 0))
  img.save(path)
  return img.height, img.width

"""The one eval-mode preprocessing and forward, shared by training's eval step
and inference (per-view and multi-view models alike).

Images come in [0, 1]; each image is standardized on its own (zero mean, unit
variance, `augment.standardize_per_image`), as in training, then the model is
applied in eval mode (running BatchNorm statistics, no dropout).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ankle_jax.data import augment


def per_image(
    fn: Callable[[jax.Array], jax.Array], images_xhwc: jax.Array
) -> jax.Array:
  """Applies `fn` ([N, H, W, C] -> [N, H, W, C]) to images of any leading
  shape, [..., H, W, C] (e.g. [B, H, W, 1] or case batches [B, V, H, W, 1]),
  and returns them in that shape."""
  shape = images_xhwc.shape
  return fn(images_xhwc.reshape((-1,) + shape[-3:])).reshape(shape)


def standardized(images_xhwc: jax.Array) -> jax.Array:
  """Each image standardized on its own: float [..., H, W, 1] in [0, 1] ->
  float32 [..., H, W, 1]."""
  return per_image(
      augment.standardize_per_image, images_xhwc.astype(jnp.float32)
  )


def apply_eval(
    apply_fn: Callable[..., Any],
    variables: Any,
    images_xhwc: jax.Array,
    view_mask_bv: jax.Array | None = None,
    *,
    standardize: bool = True,
) -> Any:
  """The model's eval-mode outputs.

  Args:
    apply_fn: the module's `apply` (or a TrainState's apply_fn).
    variables: {'params', 'batch_stats'}.
    images_xhwc: float [B, H, W, 1] for a per-view model, [B, V, H, W, 1]
      (with view_mask_bv) for a multi-view model; in [0, 1], or already
      standardized (standardize=False).
    view_mask_bv: bool [B, V], the real views of each case (multi-view only).
    standardize: whether to standardize the images first.

  Returns:
    layers.ModelOutputs (per-view) or multiview.MultiViewOutputs.
  """
  if standardize:
    images_xhwc = standardized(images_xhwc)
  inputs = (
      (images_xhwc,) if view_mask_bv is None else (images_xhwc, view_mask_bv)
  )
  return apply_fn(variables, *inputs, train=False)

"""On-device, jittable image augmentation and per-image standardization.

Everything here is a pure function of an explicit `jax.random` key and a batch
of images `images_bhwc` (float32 [B, H, W, C], intensities in [0, 1] before
standardization). Each example gets its own key (split from the batch key), so
the result does not depend on how the batch is sharded across devices.

Order of operations in `augment_batch` (each step off at its neutral value):
  1. rotation by an angle drawn uniformly from [-rotation_degrees,
     rotation_degrees] about the image centre, bilinear; pixels from outside
     the image are 0.0 (black, the background of a [0, 1] radiograph). The
     paper lists rotation; the authors' code did not use it (docs/paper.md,
     section 2).
  2. scale/translate crop (`crop_scale_lower` < 1): a square window of side
     s * H, s uniform in [crop_scale_lower, 1], at a uniform random position
     inside the image, resized back to H x W (bilinear): framing differs
     between views and sites.
  3. left-right flip with probability 1/2 (`flip_lr`), up-down flip with
     probability 1/2 (`flip_ud`).
  4. brightness: add a delta uniform in [-brightness_delta, brightness_delta]
     (like `tf.image.random_brightness`), then clip to [0, 1].
  5. contrast: scale around the image mean by a factor uniform in
     `contrast_range = (lower, upper)` (like `tf.image.random_contrast`), then
     clip to [0, 1].
  6. gamma: x ** g with log(g) uniform in [log(lower), log(upper)] of
     `gamma_range` (x is clipped to [0, 1] first: a power needs x >= 0).
  7. VOI window jitter (`window_jitter` = j > 0): a narrower display window
     [lo, hi] with lo uniform in [0, j] and 1 - hi uniform in [0, j]; x maps
     to (x - lo) / (hi - lo), clipped to [0, 1], as a viewer's window does.

Why the clips. `standardize_per_image` follows in the train step, and
`(x - mean) / std` cancels any affine change of intensity exactly: unclipped
brightness and contrast (and a window without its clip) leave the network's
input unchanged to 1e-6. Real exposure saturates, so the clips make the
intensity steps act. `clip=False` drops the clips of steps 4, 5 and 7 and
reproduces the inert behaviour of the authors' TensorFlow code, where only the
flips acted (`random_brightness` and `random_contrast`, then
`per_image_standardization`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ankle_jax.data import pipeline


def to_unit_float(images: jax.Array) -> jax.Array:
  """A batch's images as float32 in [0, 1]: uint16 (the stored intensities,
  as the loaders carry them) times `pipeline.UNIT_SCALE`, exactly the host's
  `pipeline.to_image`; float images (resized on the host) unchanged."""
  if images.dtype == jnp.uint16:
    # The barrier keeps XLA from fusing the scaling into what follows (an
    # FMA there rounds differently from the host's product).
    return jax.lax.optimization_barrier(
        images.astype(jnp.float32) * jnp.float32(pipeline.UNIT_SCALE)
    )
  return images.astype(jnp.float32)


def gather_images(
    split_images: jax.Array,
    index: jax.Array,
    view_mask: jax.Array | None = None,
) -> jax.Array:
  """A batch of a split resident on the device (data.on_device), as float32
  in [0, 1]: the rows `index` of `split_images`, converted (`to_unit_float`).

  Args:
    split_images: uint16 (float32 where resized) [N, S, S, 1], every record of
      the split (`pipeline.split_images`).
    index: int [B] (views) or [B, V] (cases' view slots) record indices.
    view_mask: bool [B, V] for case batches: padded slots become 0, as the
      host loaders pad them.

  Returns:
    float32 [B, S, S, 1] or [B, V, S, S, 1].
  """
  images = to_unit_float(jnp.take(split_images, index, axis=0, mode='clip'))
  if view_mask is not None:
    mask = view_mask.reshape(view_mask.shape + (1,) * (images.ndim - 2))
    images = jnp.where(mask, images, 0.0)
  return images


def _resample(
    image_hwc: jax.Array, src_r: jax.Array, src_c: jax.Array
) -> jax.Array:
  """image_hwc [H, W, C] read at (src_r, src_c) [H', W'] (bilinear, fill 0)."""
  channels_out = [
      jax.scipy.ndimage.map_coordinates(
          image_hwc[..., c], [src_r, src_c], order=1, mode='constant', cval=0.0
      )
      for c in range(image_hwc.shape[-1])
  ]
  return jnp.stack(channels_out, axis=-1).astype(image_hwc.dtype)


def _pixel_grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
  return jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32),
      jnp.arange(width, dtype=jnp.float32),
      indexing='ij',
  )


def _rotate_image(image_hwc: jax.Array, angle_rad: jax.Array) -> jax.Array:
  """Rotates one image [H, W, C] about its centre by `angle_rad` (bilinear, fill 0)."""
  height, width, _ = image_hwc.shape
  rows, cols = _pixel_grid(height, width)
  center_r = (height - 1) / 2.0
  center_c = (width - 1) / 2.0
  cos, sin = jnp.cos(angle_rad), jnp.sin(angle_rad)
  # Inverse mapping: for each output pixel, the input pixel it comes from.
  dr, dc = rows - center_r, cols - center_c
  src_r = cos * dr - sin * dc + center_r
  src_c = sin * dr + cos * dc + center_c
  return _resample(image_hwc, src_r, src_c)


def _random_crop(
    key: jax.Array, image_hwc: jax.Array, scale_lower: float
) -> jax.Array:
  """A random window of side s * size (s ~ U[scale_lower, 1]), resized back."""
  height, width, _ = image_hwc.shape
  k_scale, k_r, k_c = jax.random.split(key, 3)
  scale = jax.random.uniform(k_scale, (), minval=scale_lower, maxval=1.0)
  # Pixel centres of the output grid span the window [top, top + s * H).
  top = jax.random.uniform(k_r, ()) * (1.0 - scale) * height
  left = jax.random.uniform(k_c, ()) * (1.0 - scale) * width
  rows, cols = _pixel_grid(height, width)
  src_r = top + (rows + 0.5) * scale - 0.5
  src_c = left + (cols + 0.5) * scale - 0.5
  return _resample(image_hwc, src_r, src_c)


def _check_range(name: str, value_range: Sequence[float], lowest: float):
  lower, upper = value_range
  if not lowest <= lower <= upper:
    raise ValueError(
        f'{name} must satisfy {lowest} <= lower <= upper, got {value_range}'
    )


def _is_on(value_range: Sequence[float] | None) -> bool:
  return value_range is not None and tuple(value_range) != (1.0, 1.0)


def _geometry(
    keys: dict[str, jax.Array],
    image: jax.Array,
    *,
    rotation_degrees: float,
    crop_scale_lower: float,
    flip_lr: bool,
    flip_ud: bool,
) -> jax.Array:
  """Steps 1-3 of the module docstring on one image [H, W, C]."""
  if rotation_degrees:
    max_rad = jnp.deg2rad(float(rotation_degrees))
    angle = jax.random.uniform(
        keys['rotation'], (), minval=-max_rad, maxval=max_rad
    )
    image = _rotate_image(image, angle)
  if crop_scale_lower < 1.0:
    image = _random_crop(keys['crop'], image, crop_scale_lower)
  if flip_lr:
    flip = jax.random.bernoulli(keys['flip_lr'])
    image = jnp.where(flip, image[:, ::-1, :], image)
  if flip_ud:
    flip = jax.random.bernoulli(keys['flip_ud'])
    image = jnp.where(flip, image[::-1, :, :], image)
  return image


def _intensity(
    keys: dict[str, jax.Array],
    image: jax.Array,
    *,
    brightness_delta: float,
    contrast_range: Sequence[float] | None,
    gamma_range: Sequence[float] | None,
    window_jitter: float,
    clip: bool,
) -> jax.Array:
  """Steps 4-7 of the module docstring on one image [H, W, C]."""
  maybe_clip = (lambda x: jnp.clip(x, 0.0, 1.0)) if clip else (lambda x: x)
  if brightness_delta:
    delta = jax.random.uniform(
        keys['brightness'],
        (),
        minval=-brightness_delta,
        maxval=brightness_delta,
    )
    image = maybe_clip(image + delta.astype(image.dtype))
  if _is_on(contrast_range):
    lower, upper = contrast_range
    factor = jax.random.uniform(
        keys['contrast'], (), minval=lower, maxval=upper
    )
    mean = jnp.mean(image, axis=(0, 1), keepdims=True)
    image = maybe_clip((image - mean) * factor.astype(image.dtype) + mean)
  if _is_on(gamma_range):
    log_gamma = jax.random.uniform(
        keys['gamma'],
        (),
        minval=jnp.log(gamma_range[0]),
        maxval=jnp.log(gamma_range[1]),
    )
    image = jnp.clip(image, 0.0, 1.0) ** jnp.exp(log_gamma).astype(image.dtype)
  if window_jitter:
    low, high_cut = jax.random.uniform(
        keys['window'], (2,), minval=0.0, maxval=window_jitter
    )
    image = maybe_clip((image - low) / (1.0 - high_cut - low))
  return image


def _step_keys(key: jax.Array) -> dict[str, jax.Array]:
  """One key per step. The first five are as before the crop, gamma and window
  steps were added, so a config without them draws the same numbers."""
  names = ('rotation', 'flip_lr', 'flip_ud', 'brightness', 'contrast')
  keys = dict(zip(names, jax.random.split(key, 5)))
  new_keys = jax.random.split(jax.random.fold_in(key, 1), 3)
  keys.update(zip(('crop', 'gamma', 'window'), new_keys))
  return keys


def augment_batch(
    key: jax.Array,
    images_bhwc: jax.Array,
    *,
    rotation_degrees: float = 0.0,
    flip_lr: bool = False,
    flip_ud: bool = False,
    brightness_delta: float = 0.0,
    contrast_range: Sequence[float] | None = None,
    gamma_range: Sequence[float] | None = None,
    window_jitter: float = 0.0,
    crop_scale_lower: float = 1.0,
    clip: bool = True,
) -> jax.Array:
  """Randomly augments a batch of images; the identity when every option is off.

  Args:
    key: a `jax.random` key for the whole batch (split per example inside).
    images_bhwc: float [B, H, W, C], intensities in [0, 1].
    rotation_degrees: maximum absolute rotation angle in degrees (0 = off).
    flip_lr: random left-right flips (p = 1/2).
    flip_ud: random up-down flips (p = 1/2).
    brightness_delta: maximum absolute additive brightness change (0 = off).
    contrast_range: (lower, upper) contrast factor range, or None (off).
    gamma_range: (lower, upper) gamma range, 0 < lower <= upper, drawn
      log-uniformly, or None (off).
    window_jitter: how far each end of the display window may move inwards,
      as a fraction of [0, 1] (0 = off; below 0.5).
    crop_scale_lower: smallest side of the random crop window as a fraction of
      the image side (1 = off).
    clip: clip to [0, 1] after brightness, contrast and window (False: the
      authors' behaviour, which standardization cancels).

  Returns:
    The augmented images, same shape and dtype as `images_bhwc`.
  """
  if contrast_range is not None:
    _check_range('contrast_range', contrast_range, 0.0)
  if gamma_range is not None:
    _check_range('gamma_range', gamma_range, 1e-6)
  if not 0.0 <= window_jitter < 0.5:
    raise ValueError(f'window_jitter must be in [0, 0.5), got {window_jitter}')
  if not 0.0 < crop_scale_lower <= 1.0:
    raise ValueError(
        f'crop_scale_lower must be in (0, 1], got {crop_scale_lower}'
    )

  def one(k, image):
    keys = _step_keys(k)
    image = _geometry(
        keys,
        image,
        rotation_degrees=rotation_degrees,
        crop_scale_lower=crop_scale_lower,
        flip_lr=flip_lr,
        flip_ud=flip_ud,
    )
    return _intensity(
        keys,
        image,
        brightness_delta=brightness_delta,
        contrast_range=contrast_range,
        gamma_range=gamma_range,
        window_jitter=window_jitter,
        clip=clip,
    )

  keys = jax.random.split(key, images_bhwc.shape[0])
  return jax.vmap(one)(keys, images_bhwc).astype(images_bhwc.dtype)


def standardize_per_image(images_bhwc: jax.Array) -> jax.Array:
  """Per-image standardization: (x - mean) / max(std, 1/sqrt(N)) over H, W, C.

  Same as `tf.image.per_image_standardization`: the lower bound on the standard
  deviation keeps uniform images finite (they map to all zeros).

  Args:
    images_bhwc: float [B, H, W, C].

  Returns:
    float [B, H, W, C] with mean 0 and standard deviation 1 per image.
  """
  num_pixels = (
      images_bhwc.shape[1] * images_bhwc.shape[2] * images_bhwc.shape[3]
  )
  images = images_bhwc.astype(jnp.float32)
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(images, axis=(1, 2, 3), keepdims=True)
  min_std = 1.0 / jnp.sqrt(jnp.float32(num_pixels))
  return ((images - mean) / jnp.maximum(std, min_std)).astype(images_bhwc.dtype)

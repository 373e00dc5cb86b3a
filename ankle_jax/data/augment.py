"""On-device, jittable image augmentation and per-image standardization.

Everything here is a pure function of an explicit `jax.random` key and a batch
of images `images_bhwc` (float32 [B, H, W, C], intensities in [0, 1] before
standardization). Each example gets its own key (split from the batch key), so
the result does not depend on how the batch is sharded across devices.

Order of operations in `augment_batch` (each step switched off by its neutral
value):
  1. rotation by an angle drawn uniformly from [-rotation_degrees,
    rotation_degrees],
     about the image centre, bilinear resampling; pixels that come from outside
     the image are filled with 0.0 (black, the background of a [0, 1]
     radiograph). The paper lists rotation; the authors' code did not use it
     (docs/paper.md, section 2).
  2. left-right flip with probability 1/2 (`flip_lr`), up-down flip with
    probability
     1/2 (`flip_ud`);
  3. brightness: add a delta drawn uniformly from [-brightness_delta,
    brightness_delta]
     (like `tf.image.random_brightness`);
  4. contrast: scale around the image mean by a factor drawn uniformly from
     `contrast_range = (lower, upper)` (like `tf.image.random_contrast`).
No clipping is applied after 3-4 (as in TensorFlow); `standardize_per_image`
follows in the train step, for train and eval images alike.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _rotate_image(image_hwc: jax.Array, angle_rad: jax.Array) -> jax.Array:
  """Rotates one image [H, W, C] about its centre by `angle_rad` (bilinear, fill 0)."""
  height, width, channels = image_hwc.shape
  rows, cols = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32),
      jnp.arange(width, dtype=jnp.float32),
      indexing='ij',
  )
  center_r = (height - 1) / 2.0
  center_c = (width - 1) / 2.0
  cos, sin = jnp.cos(angle_rad), jnp.sin(angle_rad)
  # Inverse mapping: for each output pixel, the input pixel it comes from.
  dr, dc = rows - center_r, cols - center_c
  src_r = cos * dr - sin * dc + center_r
  src_c = sin * dr + cos * dc + center_c
  channels_out = [
      jax.scipy.ndimage.map_coordinates(
          image_hwc[..., c], [src_r, src_c], order=1, mode='constant', cval=0.0
      )
      for c in range(channels)
  ]
  return jnp.stack(channels_out, axis=-1).astype(image_hwc.dtype)


def _augment_one(
    key: jax.Array,
    image_hwc: jax.Array,
    *,
    rotation_degrees: float,
    flip_lr: bool,
    flip_ud: bool,
    brightness_delta: float,
    contrast_range: Sequence[float] | None,
) -> jax.Array:
  """Augments one image [H, W, C]; see the module docstring for the order."""
  k_rot, k_lr, k_ud, k_bright, k_contrast = jax.random.split(key, 5)
  image = image_hwc
  if rotation_degrees:
    max_rad = jnp.deg2rad(float(rotation_degrees))
    angle = jax.random.uniform(k_rot, (), minval=-max_rad, maxval=max_rad)
    image = _rotate_image(image, angle)
  if flip_lr:
    image = jnp.where(jax.random.bernoulli(k_lr), image[:, ::-1, :], image)
  if flip_ud:
    image = jnp.where(jax.random.bernoulli(k_ud), image[::-1, :, :], image)
  if brightness_delta:
    delta = jax.random.uniform(
        k_bright, (), minval=-brightness_delta, maxval=brightness_delta
    )
    image = image + delta.astype(image.dtype)
  if contrast_range is not None and tuple(contrast_range) != (1.0, 1.0):
    lower, upper = contrast_range
    if not 0.0 <= lower <= upper:
      raise ValueError(
          f'contrast_range must satisfy 0 <= lower <= upper, got {contrast_range}'
      )
    factor = jax.random.uniform(k_contrast, (), minval=lower, maxval=upper)
    mean = jnp.mean(image, axis=(0, 1), keepdims=True)
    image = (image - mean) * factor.astype(image.dtype) + mean
  return image


def augment_batch(
    key: jax.Array,
    images_bhwc: jax.Array,
    *,
    rotation_degrees: float = 0.0,
    flip_lr: bool = False,
    flip_ud: bool = False,
    brightness_delta: float = 0.0,
    contrast_range: Sequence[float] | None = None,
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

  Returns:
    The augmented images, same shape and dtype as `images_bhwc`.
  """
  keys = jax.random.split(key, images_bhwc.shape[0])

  def one(k, image):
    return _augment_one(
        k,
        image,
        rotation_degrees=rotation_degrees,
        flip_lr=flip_lr,
        flip_ud=flip_ud,
        brightness_delta=brightness_delta,
        contrast_range=contrast_range,
    )

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

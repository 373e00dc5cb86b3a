"""Tests of ankle_jax.data.augment: shapes, identity when off, each transform's effect."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ankle_jax.data import augment

ALL_ON = dict(
    rotation_degrees=15.0,
    flip_lr=True,
    flip_ud=True,
    brightness_delta=0.3,
    contrast_range=(0.7, 1.3),
)


def _images(batch=6, size=24, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).uniform(size=(batch, size, size, 1)),
      jnp.float32,
  )


def test_keeps_shape_and_dtype_and_is_jittable():
  images = _images()
  out = jax.jit(lambda k, x: augment.augment_batch(k, x, **ALL_ON))(
      jax.random.PRNGKey(0), images
  )
  assert out.shape == images.shape
  assert out.dtype == images.dtype
  assert np.all(np.isfinite(np.asarray(out)))
  assert not np.allclose(np.asarray(out), np.asarray(images))


def test_identity_when_all_off():
  images = _images()
  out = augment.augment_batch(jax.random.PRNGKey(1), images)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))
  out = augment.augment_batch(
      jax.random.PRNGKey(1), images, contrast_range=(1.0, 1.0)
  )
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))


def test_flips_give_flipped_copies_and_both_outcomes():
  images = _images(batch=32)
  out = np.asarray(
      augment.augment_batch(jax.random.PRNGKey(2), images, flip_lr=True)
  )
  x = np.asarray(images)
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
  same = [np.array_equal(o, i) for o, i in zip(out, x)]
  assert all(f or s for f, s in zip(flipped, same))
  assert any(flipped) and any(same)


def test_brightness_adds_a_bounded_constant_per_image():
  images = _images(batch=16)
  out = np.asarray(
      augment.augment_batch(jax.random.PRNGKey(3), images, brightness_delta=0.3)
  )
  delta = out - np.asarray(images)
  per_image = delta.reshape(16, -1)
  np.testing.assert_allclose(
      per_image, np.broadcast_to(per_image[:, :1], per_image.shape), atol=1e-5
  )
  assert np.all(np.abs(per_image[:, 0]) <= 0.3 + 1e-6)
  assert np.std(per_image[:, 0]) > 0.01  # Different images, different deltas.


def test_contrast_keeps_the_mean_and_scales_deviations():
  images = _images(batch=8)
  out = np.asarray(
      augment.augment_batch(
          jax.random.PRNGKey(4), images, contrast_range=(0.7, 1.3)
      )
  )
  x = np.asarray(images)
  np.testing.assert_allclose(
      out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5
  )
  ratio = out.std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
  assert np.all((ratio >= 0.7 - 1e-4) & (ratio <= 1.3 + 1e-4))


def test_rotation_moves_an_off_centre_dot_around_the_centre():
  image = np.zeros((1, 21, 21, 1), np.float32)
  image[0, 10, 18, 0] = 1.0  # Right of the centre (10, 10).
  out = np.asarray(
      augment.augment_batch(
          jax.random.PRNGKey(5), jnp.asarray(image), rotation_degrees=90.0
      )
  )[0, ..., 0]
  rows, cols = np.nonzero(out > 1e-3)
  weights = out[rows, cols]
  centre_r, centre_c = np.average(rows, weights=weights), np.average(
      cols, weights=weights
  )
  radius = np.hypot(centre_r - 10, centre_c - 10)
  assert radius == pytest.approx(8.0, abs=0.6)  # Stays on its circle...
  assert out[10, 18] < 0.9  # ...but moved (the angle is almost surely not 0).


def test_standardize_per_image_mean_zero_std_one_and_uniform_safe():
  images = _images(batch=4) * 5 + 2
  out = np.asarray(augment.standardize_per_image(images))
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-4)
  uniform = jnp.full((2, 8, 8, 1), 0.7, jnp.float32)
  np.testing.assert_allclose(
      np.asarray(augment.standardize_per_image(uniform)), 0.0, atol=1e-5
  )

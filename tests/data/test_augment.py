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
    gamma_range=(0.7, 1.4),
    window_jitter=0.1,
    crop_scale_lower=0.8,
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
  neutral = dict(
      contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0), crop_scale_lower=1.0
  )
  out = augment.augment_batch(jax.random.PRNGKey(1), images, **neutral)
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
      augment.augment_batch(
          jax.random.PRNGKey(3), images, brightness_delta=0.3, clip=False
      )
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
          jax.random.PRNGKey(4), images, contrast_range=(0.7, 1.3), clip=False
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


def _radiograph_like(batch=8, size=32, seed=0):
  """[B, H, W, 1] in [0, 1]: black background, soft tissue, saturated bone."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[0:size, 0:size] / (size - 1)
  images = []
  for _ in range(batch):
    leg = np.abs(cols - rng.uniform(0.4, 0.6)) < rng.uniform(0.2, 0.3)
    bone = np.abs(cols - 0.5) < 0.08
    image = 0.45 * leg + 0.55 * bone + 0.1 * rows * leg
    images.append(np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1))
  return jnp.asarray(np.stack(images)[..., None], jnp.float32)


# Each transform alone, at the strength the FracAtlas measurements used.
EACH_TRANSFORM = {
    'brightness': dict(brightness_delta=0.1),
    'contrast': dict(contrast_range=(0.8, 1.2)),
    'gamma': dict(gamma_range=(0.7, 1.4)),
    'window': dict(window_jitter=0.1),
    'crop': dict(crop_scale_lower=0.8),
    'rotation': dict(rotation_degrees=10.0),
    'flip_lr': dict(flip_lr=True),
}


def _composed_change(options, seed=0):
  """max |standardize(augment(x)) - standardize(x)| over a batch."""
  images = _radiograph_like(seed=seed)
  augmented = augment.augment_batch(jax.random.PRNGKey(seed), images, **options)
  return float(
      jnp.max(
          jnp.abs(
              augment.standardize_per_image(augmented)
              - augment.standardize_per_image(images)
          )
      )
  )


def _changed_fraction(options, seed=0, tolerance=0.05):
  """Fraction of the batch's pixels that standardized augmentation moves by
  more than `tolerance` (in standard deviations of the image)."""
  images = _radiograph_like(seed=seed)
  augmented = augment.augment_batch(jax.random.PRNGKey(seed), images, **options)
  change = jnp.abs(
      augment.standardize_per_image(augmented)
      - augment.standardize_per_image(images)
  )
  return float(jnp.mean(change > tolerance))


@pytest.mark.parametrize('name', sorted(EACH_TRANSFORM))
def test_each_transform_survives_standardization(name):
  # What the network sees must change: the bug was brightness and contrast
  # that standardization cancelled to 1e-6. Not just somewhere: at least 5%
  # of the batch's pixels (one changed edge pixel per image is 0.1%; the
  # weakest transform here, contrast, moves about 11%).
  assert _changed_fraction(EACH_TRANSFORM[name]) >= 0.05


def test_everything_off_is_standardize_alone():
  assert _composed_change({}) == 0.0


def test_clip_false_reproduces_the_authors_inert_intensity_augmentation():
  # The authors' TF code: random_brightness, random_contrast, then
  # per_image_standardization, with no clip in between.
  authors = dict(brightness_delta=0.3, contrast_range=(0.7, 1.3), clip=False)
  assert _composed_change(authors) < 1e-5
  assert _composed_change({**authors, 'clip': True}) > 0.05


def test_intensity_steps_stay_in_unit_range_when_clipping():
  images = _radiograph_like()
  options = dict(
      brightness_delta=0.3,
      contrast_range=(0.5, 1.5),
      gamma_range=(0.5, 2.0),
      window_jitter=0.2,
  )
  out = np.asarray(
      augment.augment_batch(jax.random.PRNGKey(6), images, **options)
  )
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert np.all(np.isfinite(out))


def test_gamma_is_a_monotone_power_within_range():
  images = _radiograph_like(batch=16)
  out = np.asarray(
      augment.augment_batch(
          jax.random.PRNGKey(7), images, gamma_range=(0.5, 2.0)
      )
  )
  x = np.asarray(images).reshape(16, -1)
  y = out.reshape(16, -1)
  for xi, yi in zip(x, y):
    inside = (xi > 0.05) & (xi < 0.95)
    gammas = np.log(yi[inside]) / np.log(xi[inside])
    assert np.ptp(gammas) < 1e-3  # One gamma per image...
    assert 0.5 - 1e-4 <= gammas.mean() <= 2.0 + 1e-4  # ...inside the range.


def test_window_jitter_maps_a_narrower_window_onto_unit_range():
  ramp = jnp.linspace(0.0, 1.0, 101, dtype=jnp.float32)
  images = jnp.broadcast_to(ramp, (4, 101, 101))[..., None]
  out = np.asarray(
      augment.augment_batch(jax.random.PRNGKey(8), images, window_jitter=0.2)
  )[:, 0, :, 0]
  for row in out:
    assert row[0] == 0.0 and row[-1] == 1.0  # Both ends saturate...
    step = np.diff(row)[(row[:-1] > 0) & (row[1:] < 1)]
    # ...and the window between them is narrower than [0, 1]: each step of
    # the ramp (0.01) grows.
    assert np.all(step > 0.01)


def test_crop_zooms_in_around_a_point_inside_the_image():
  # A linear ramp: bilinear resampling reproduces it exactly, so each output
  # pixel step is the crop's scale s times the input step, and its values say
  # where the window lies.
  size, batch = 40, 8
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
  ramp = (rows + 2.0 * cols) / (3.0 * (size - 1))  # In [0, 1].
  images = jnp.asarray(np.broadcast_to(ramp, (batch, size, size))[..., None])
  out = np.asarray(
      augment.augment_batch(jax.random.PRNGKey(9), images, crop_scale_lower=0.5)
  )[..., 0]
  inner = out[:, 2:-2, 2:-2]  # Away from the window's edge pixels.
  row_scale = np.diff(inner, axis=1) * 3.0 * (size - 1)
  col_scale = np.diff(inner, axis=2) * 3.0 * (size - 1) / 2.0
  scales = np.median(row_scale, axis=(1, 2))
  # One zoom per image, the same along rows and columns (a square window)...
  assert np.max(np.abs(row_scale - scales[:, None, None])) < 1e-3
  assert np.max(np.abs(col_scale - scales[:, None, None])) < 1e-3
  # ...drawn from [0.5, 1], zooming in (s < 1) and not the same for all.
  assert np.all((scales >= 0.5 - 1e-4) & (scales < 1.0 - 1e-3)), scales
  assert np.ptp(scales) > 0.05, scales
  # The window lies inside the image: the ramp's values, not the fill.
  assert out.min() >= -1e-5 and out.max() <= 1.0 + 1e-5
  assert np.all(inner > 0.0)
  # Each image's window sits at its own place (a random translation).
  assert np.ptp(out[:, 0, 0]) > 0.05


def test_new_options_keep_old_random_draws_when_off():
  # Configs that predate gamma, window and crop draw the same numbers.
  images = _radiograph_like()
  old = dict(rotation_degrees=10.0, flip_lr=True, brightness_delta=0.1)
  a = augment.augment_batch(jax.random.PRNGKey(10), images, **old)
  b = augment.augment_batch(
      jax.random.PRNGKey(10),
      images,
      **old,
      gamma_range=None,
      window_jitter=0.0,
      crop_scale_lower=1.0,
  )
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    'options',
    [
        dict(gamma_range=(0.0, 1.0)),
        dict(window_jitter=0.5),
        dict(crop_scale_lower=0.0),
        dict(contrast_range=(1.2, 0.8)),
    ],
)
def test_rejects_out_of_range_options(options):
  with pytest.raises(ValueError):
    augment.augment_batch(jax.random.PRNGKey(0), _images(), **options)

"""Tests of ankle_jax.saliency: Grad-CAM by hand, occlusion, the PNG grid."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from ankle_jax import models
from ankle_jax import saliency
from ankle_jax.models import layers


class IdentityNet(nn.Module):
  """The image itself is the last feature map: Grad-CAM is known by hand."""

  @nn.compact
  def __call__(self, x, train=False):
    return layers.ModelOutputs(
        layers.ClassifierHead(num_classes=2)(x, train), None
    )


def identity_variables(gain=5.0):
  """logit[fracture] - logit[normal] = gain * mean(image)."""
  return {
      'params': {
          'ClassifierHead_0': {
              'dense': {
                  'kernel': jnp.array([[0.0, gain]]),
                  'bias': jnp.zeros(2),
              }
          }
      }
  }


def bright_square_image(size=32):
  img = np.full((size, size, 1), -0.5, np.float32)
  img[4:12, 20:28] = 3.0
  return img


def test_grad_cam_of_identity_net_is_the_positive_image():
  images = jnp.stack([bright_square_image(), -bright_square_image()])
  cam, logits = saliency.make_grad_cam(IdentityNet())(
      identity_variables(), images
  )
  assert cam.shape == (2, 32, 32)
  # weights = d(evidence)/dA averaged = gain / (h w) > 0, so
  # cam = relu(A) / max(relu(A)).
  expected = np.maximum(np.asarray(images[0, ..., 0]), 0) / 3.0
  np.testing.assert_allclose(cam[0], expected, atol=1e-5)
  # The second image's bright part is negative: it is the -0.5 background
  # turned to +0.5 that supports fracture.
  assert cam[1, 0, 0] == pytest.approx(1.0) and cam[1, 6, 22] == 0.0
  np.testing.assert_allclose(
      logits[:, 1] - logits[:, 0],
      5.0 * np.asarray(images).mean(axis=(1, 2, 3)),
      rtol=1e-5,
  )


class ConvNet(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(3, (3, 3), strides=(2, 2), name='conv')(x))
    return layers.ModelOutputs(
        layers.ClassifierHead(num_classes=2)(x, train), None
    )


def test_grad_cam_matches_explicit_gradient_on_a_conv_net():
  module = ConvNet()
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 1))
  variables = module.init(jax.random.key(1), x)
  cam, _ = saliency.make_grad_cam(module)(variables, x)
  # By hand: features, and the gradient of the head's evidence w.r.t. them.
  conv = nn.Conv(3, (3, 3), strides=(2, 2))
  features = nn.relu(conv.apply({'params': variables['params']['conv']}, x))
  dense = variables['params']['ClassifierHead_0']['dense']
  h, w = features.shape[1:3]
  weights = (dense['kernel'][:, 1] - dense['kernel'][:, 0]) / (h * w)
  raw = np.maximum(np.einsum('bhwc,c->bhw', features, weights), 0)
  raw = raw / np.maximum(raw.max(axis=(1, 2), keepdims=True), 1e-12)
  expected = jax.image.resize(raw, (3, 16, 16), 'bilinear')
  np.testing.assert_allclose(cam, np.clip(expected, 0, 1), atol=1e-5)


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_grad_cam_reaches_the_last_conv_stage_of_every_family(name):
  """Traced abstractly (no compile): the interceptor finds the head input."""
  module = models.build(name, width_multiplier=0.0625, aux_head=True)
  images = jax.ShapeDtypeStruct((2, 96, 96, 1), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), images)
  shape = saliency.head_feature_shape(module, variables, images)
  assert len(shape) == 4 and shape[0] == 2 and shape[1] == shape[2] <= 6
  cam, logits = jax.eval_shape(
      saliency.make_grad_cam(module), variables, images
  )
  assert cam.shape == (2, 96, 96) and logits.shape == (2, 2)


def test_head_feature_shape_needs_a_classifier_head():
  class NoHead(nn.Module):

    @nn.compact
    def __call__(self, x, train=False):
      return layers.ModelOutputs(nn.Dense(2)(x.mean(axis=(1, 2))), None)

  x = jnp.zeros((1, 8, 8, 1))
  with pytest.raises(ValueError, match='ClassifierHead'):
    saliency.head_feature_shape(
        NoHead(), NoHead().init(jax.random.key(0), x), x
    )


def test_occlusion_finds_the_bright_square():
  image = bright_square_image()
  occlude = saliency.make_occlusion(
      IdentityNet(), patch=8, stride=4, batch_size=16
  )
  heat = occlude(identity_variables(), image)
  assert heat.shape == (32, 32)
  # Occluding the square (set to 0 from 3.0) lowers p(fracture) most;
  # occluding background (set to 0 from -0.5) raises it.
  assert heat[8, 24] > 0 > heat[28, 4]
  assert heat[8, 24] == heat.max()


def test_occlusion_positions_cover_the_edges():
  pos = saliency.occlusion_positions(30, 8, 8)
  starts = sorted({r for r, _ in pos})
  assert starts == [0, 8, 16, 22] and len(pos) == 16
  with pytest.raises(ValueError):
    saliency.occlusion_positions(30, 40, 8)


def test_overlay_and_png_size(tmp_path):
  image = np.linspace(0, 1, 50 * 50).reshape(50, 50)
  heat = np.zeros((50, 50))
  heat[10:20, 10:20] = 1.0
  rgb = saliency.overlay(image, heat)
  assert rgb.shape == (50, 50, 3) and rgb.dtype == np.uint8
  # The hot region is coloured (red-ish in 'jet'); where the map is 0 the
  # radiograph stays grey (no blue wash).
  assert rgb[15, 15, 0] > rgb[15, 15, 2] + 50
  np.testing.assert_array_equal(rgb[40, 40, 0], rgb[40, 40, 2])
  grey = saliency.overlay(image, np.zeros((50, 50)))
  assert (grey[..., 0] == grey[..., 1]).all() and (
      grey[..., 1] == grey[..., 2]
  ).all()
  signed = saliency.overlay(image, heat - 0.5, signed=True)
  assert signed[15, 15, 0] > signed[15, 15, 2]  # > 0 red
  assert signed[40, 40, 2] > signed[40, 40, 0]  # < 0 blue
  rows = [
      saliency.HeatmapRow('Grad-CAM', np.stack([heat, heat * 0, heat])),
      saliency.HeatmapRow('occlusion', np.stack([heat - 0.5] * 3)),
  ]
  titles = [[f'view {v + 1}: IM000{v}_AP.dcm\nGrad-CAM' for v in range(3)]] * 2
  path = str(tmp_path / 'h.png')
  hw = saliency.save_heatmap_png(path, np.stack([image] * 3), rows, titles)
  assert hw == saliency.heatmap_png_size(3, 2, 50)
  with Image.open(path) as img:
    assert img.size == (hw[1], hw[0]) and img.mode in ('RGB', 'RGBA')
    pixels = np.asarray(img.convert('RGB')).astype(int)
  # Three panels, then a colour bar column: saturated colours to the right
  # of the panels, in each row.
  bar = pixels[:, 3 * 50 :]
  saturation = bar.max(axis=-1) - bar.min(axis=-1)
  assert hw[1] > 3 * 50 and saturation.max() > 150
  with pytest.raises(ValueError, match='differ'):
    saliency.overlay(image, heat[:10])


def test_empty_maps_are_stated():
  assert saliency.is_empty(np.zeros((8, 8)), 'Grad-CAM')
  assert not saliency.is_empty(np.full((8, 8), 0.5), 'Grad-CAM')
  assert saliency.is_empty(np.full((8, 8), -1e-5), 'occlusion')
  assert not saliency.is_empty(np.full((8, 8), -0.01), 'occlusion')
  assert 'no activation' in saliency.EMPTY_NOTE

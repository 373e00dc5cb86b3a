"""depthwise_conv2d equals lax's grouped convolution: values and gradients."""

import itertools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from ankle_jax.models import depthwise
from ankle_jax.models.depthwise import depthwise_conv2d

# (H, W) odd, even and mixed, so that SAME padding is split both evenly and
# unevenly (stride 2 on an even size puts the extra pad at the bottom/right).
SIZES = ((7, 7), (6, 9))
STRIDES = ((1, 1), (2, 2), (1, 2))
PADDINGS = ('SAME', 'VALID')


def _reference(x, kernel, strides, padding):
  return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=strides,
      padding=padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1],
      precision=lax.Precision.HIGHEST,
  )


def _inputs(
    size_hw, channels=5, kernel_hw=(3, 3), batch=2, seed=0, dtype=jnp.float32
):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, *size_hw, channels), jnp.float32)
  kernel = jax.random.normal(kk, (*kernel_hw, 1, channels), jnp.float32)
  return x.astype(dtype), kernel.astype(dtype)


def _value_and_grads(conv, x, kernel, cotangent):
  """y and (dx, dkernel) of conv at (x, kernel) for the given cotangent."""
  y, vjp_fn = jax.vjp(conv, x, kernel)
  return y, vjp_fn(cotangent)


def _compare(
    strides,
    padding,
    size_hw,
    kernel_hw=(3, 3),
    dtype=jnp.float32,
    compute_reference_in_f32=False,
):
  """(y, dx, dkernel) of ours and of the lax reference, one compile per case."""
  x, kernel = _inputs(size_hw, kernel_hw=kernel_hw, dtype=dtype)
  ours = lambda x, k: depthwise_conv2d(x, k, strides=strides, padding=padding)
  ref = lambda x, k: _reference(x, k, strides, padding)
  y_ref_shape = jax.eval_shape(ref, x, kernel)
  cot = jax.random.normal(jax.random.key(7), y_ref_shape.shape, jnp.float32)

  @jax.jit
  def both(x, kernel, cot):
    y, (dx, dk) = _value_and_grads(ours, x, kernel, cot.astype(dtype))
    if compute_reference_in_f32:
      f32 = lambda a: a.astype(jnp.float32)
      refs = _value_and_grads(ref, f32(x), f32(kernel), cot)
    else:
      refs = _value_and_grads(ref, x, kernel, cot.astype(dtype))
    return (y, dx, dk), refs

  (y, dx, dk), (y_ref, (dx_ref, dk_ref)) = both(x, kernel, cot)
  assert y.shape == y_ref_shape.shape
  assert y.dtype == y_ref_shape.dtype
  assert dx.shape == x.shape and dx.dtype == x.dtype
  assert dk.shape == kernel.shape and dk.dtype == kernel.dtype
  return (y, dx, dk), (y_ref, dx_ref, dk_ref)


@pytest.mark.parametrize(
    'strides,padding,size_hw', list(itertools.product(STRIDES, PADDINGS, SIZES))
)
def test_matches_grouped_conv_f32(strides, padding, size_hw):
  ours, ref = _compare(strides, padding, size_hw)
  for name, a, b in zip(('y', 'dx', 'dkernel'), ours, ref):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name
    )


@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((2, 0), (0, 3))])
@pytest.mark.parametrize('kernel_hw', [(1, 1), (5, 3)])
def test_other_kernel_sizes_and_explicit_padding(padding, kernel_hw):
  ours, ref = _compare((2, 1), padding, (9, 8), kernel_hw=kernel_hw)
  for name, a, b in zip(('y', 'dx', 'dkernel'), ours, ref):
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name
    )


@pytest.mark.parametrize(
    'strides,padding', [((1, 1), 'SAME'), ((2, 2), 'SAME'), ((2, 2), 'VALID')]
)
def test_bfloat16_close_to_f32_reference(strides, padding):
  """bf16 in -> bf16 out, float32 accumulation: within bf16 rounding."""
  ours, ref = _compare(
      strides,
      padding,
      (8, 8),
      dtype=jnp.bfloat16,
      compute_reference_in_f32=True,
  )
  for name, a, b in zip(('y', 'dx', 'dkernel'), ours, ref):
    assert a.dtype == jnp.bfloat16, name
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = np.max(np.abs(b))
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * scale, err_msg=name)


def test_bfloat16_matches_lax_bf16_loosely():
  ours, ref = _compare((1, 1), 'SAME', (7, 7), dtype=jnp.bfloat16)
  for name, a, b in zip(('y', 'dx', 'dkernel'), ours, ref):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(
        a, b, rtol=5e-2, atol=5e-2 * np.max(np.abs(b)), err_msg=name
    )


def test_same_padding_is_asymmetric_for_stride_2_like_lax():
  """SAME, stride 2, even size: one pad row at the bottom, none at the top."""
  x = jnp.arange(1 * 4 * 4 * 1, dtype=jnp.float32).reshape(1, 4, 4, 1)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)  # Top-left tap.
  y = depthwise_conv2d(x, kernel, strides=(2, 2), padding='SAME')
  # Pads are (0, 1) per dim, so the top-left tap of output (0, 0) is x[0, 0].
  np.testing.assert_array_equal(
      np.asarray(y[0, :, :, 0]), [[0.0, 2.0], [8.0, 10.0]]
  )


def test_vmap_and_second_order():
  x, kernel = _inputs((6, 6), channels=3)
  # vmap over an extra leading axis.
  ys = jax.jit(jax.vmap(lambda x: depthwise_conv2d(x, kernel)))(
      jnp.stack([x, 2 * x])
  )
  np.testing.assert_allclose(ys[1], 2 * ys[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      ys[0], _reference(x, kernel, (1, 1), 'SAME'), rtol=1e-5, atol=1e-5
  )

  # Reverse-over-reverse (the custom VJP's backward is differentiable).
  def hvp(conv):
    loss = lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) ** 2)
    return jax.jit(
        jax.grad(
            lambda x, k: jnp.vdot(jax.grad(loss, argnums=1)(x, k), k),
            argnums=(0, 1),
        )
    )(x, kernel)

  ours = hvp(depthwise_conv2d)
  ref = hvp(lambda x, k: _reference(x, k, (1, 1), 'SAME'))
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_no_grouped_convolution_in_compiled_gradient():
  """The point of the module: neither pass lowers to a (grouped) conv."""
  x, kernel = _inputs((8, 8), channels=4)
  fn = jax.jit(
      jax.grad(
          lambda x, k: jnp.sum(depthwise_conv2d(x, k) ** 2), argnums=(0, 1)
      )
  )
  hlo = fn.lower(x, kernel).as_text()
  assert 'convolution' not in hlo
  ref_hlo = (
      jax.jit(
          jax.grad(
              lambda x, k: jnp.sum(_reference(x, k, (1, 1), 'SAME') ** 2),
              argnums=(0, 1),
          )
      )
      .lower(x, kernel)
      .as_text()
  )
  assert 'convolution' in ref_hlo  # The check above can fail.


@pytest.mark.parametrize('kernel_shape', [(3, 3, 2, 4), (3, 3, 1, 5), (3, 3)])
def test_bad_kernel_shape_raises(kernel_shape):
  x = jnp.zeros((1, 5, 5, 4))
  with pytest.raises(ValueError, match='kernel must be'):
    depthwise_conv2d(x, jnp.zeros(kernel_shape))


def test_bad_padding_raises():
  with pytest.raises(ValueError, match='padding'):
    depthwise_conv2d(
        jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 1, 2)), padding=((1, 1),)
    )


def test_reference_helper_is_lax_grouped_conv():
  x, kernel = _inputs((7, 6))
  np.testing.assert_allclose(
      depthwise.grouped_conv_reference(
          x, kernel, strides=(2, 2), padding='SAME'
      ),
      _reference(x, kernel, (2, 2), 'SAME'),
      rtol=1e-6,
      atol=1e-6,
  )


# conv_general_dilated: the drop-in used by flax nn.Conv (1x1 convs as matmuls,
# depthwise as above, anything else lax unchanged).
@pytest.mark.parametrize(
    'features,kernel_size,strides,groups,padding',
    [
        (5, (1, 1), (1, 1), 1, 'SAME'),
        (5, (1, 1), (2, 2), 1, 'VALID'),
        (5, (1, 1), (2, 1), 1, ((0, 0), (0, 0))),
        (4, (3, 3), (2, 2), 4, 'SAME'),
        (5, (3, 3), (1, 1), 1, 'SAME'),  # Falls back to lax.
        (5, (1, 1), (1, 1), 1, ((1, 0), (0, 1))),
    ],
)  # Padded 1x1: lax.
def test_flax_conv_with_fast_conv_general_dilated(
    features, kernel_size, strides, groups, padding
):
  x, _ = _inputs((7, 6), channels=4)
  kwargs = dict(
      features=features,
      kernel_size=kernel_size,
      strides=strides,
      feature_group_count=groups,
      padding=padding,
  )
  plain = nn.Conv(**kwargs)
  fast = nn.Conv(**kwargs, conv_general_dilated=depthwise.conv_general_dilated)
  variables = plain.init(jax.random.key(1), x)
  assert jax.tree.structure(fast.init(jax.random.key(1), x)) == (
      jax.tree.structure(variables)
  )

  @jax.jit
  def both(variables, x):
    out = []
    for module in (plain, fast):
      loss = lambda v, x, m=module: jnp.sum(jnp.sin(m.apply(v, x)))
      out.append(
          (
              module.apply(variables, x),
              jax.grad(loss, argnums=(0, 1))(variables, x),
          )
      )
    return out

  (y_ref, g_ref), (y, g) = both(variables, x)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_pointwise_is_a_matmul_and_checks_its_kernel():
  x, _ = _inputs((6, 5), channels=3)
  kernel = jax.random.normal(jax.random.key(3), (1, 1, 3, 4))
  hlo = (
      jax.jit(
          jax.grad(
              lambda x, k: jnp.sum(
                  depthwise.pointwise_conv2d(x, k, strides=(2, 2)) ** 2
              ),
              argnums=(0, 1),
          )
      )
      .lower(x, kernel)
      .as_text()
  )
  assert 'convolution' not in hlo and 'dot_general' in hlo
  with pytest.raises(ValueError, match=r'\[1, 1, C, F\]'):
    depthwise.pointwise_conv2d(x, jnp.zeros((3, 3, 3, 4)))

"""Building blocks shared by the three model families.

Conventions (all modules here):
  * Images and feature maps are NHWC: [batch, height, width, channels].
  * Parameters are float32; `dtype` is the computation dtype (e.g. bfloat16 for
    mixed precision). BatchNorm statistics are always kept in float32.
  * `train` selects batch statistics + active dropout (True) or running
    statistics + no dropout (False).
  * Fully connected weights are exactly the params named 'kernel' with
    ndim == 2 (the L2 "dense" scope); conv kernels are 4-D.
"""

from collections.abc import Sequence
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax.models import depthwise

Dtype = Any
Padding = str | Sequence[tuple[int, int]]

# Keras BatchNormalization defaults (momentum 0.99, epsilon 1e-3).
KERAS_BN_MOMENTUM = 0.99
KERAS_BN_EPSILON = 1e-3

# Every convolution of the models. XLA:CPU runs the gradients of grouped
# (depthwise) and 1x1 `lax.conv_general_dilated` calls ~10x below the equivalent
# slice sums / matmuls, so those two cases go through
# ankle_jax.models.depthwise; all other convolutions reach lax unchanged.
# Parameter names and shapes are those of nn.Conv.
Conv = functools.partial(
    nn.Conv, conv_general_dilated=depthwise.conv_general_dilated
)


class ModelOutputs(NamedTuple):
  """What every model returns from `apply`.

  Attributes:
    logits: float32 [batch, num_classes], main-head logits (pre-softmax).
    aux_logits: float32 [batch, num_classes] from the auxiliary tower, or None
      when the model was built with aux_head=False.
  """

  logits: jax.Array
  aux_logits: jax.Array | None


def scale_width(channels: int, width_multiplier: float) -> int:
  """Channel count scaled by `width_multiplier` (at least 1)."""
  return max(1, int(round(channels * width_multiplier)))


def depthwise_conv2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, int] = (1, 1),
    padding: Padding = 'SAME',
) -> jax.Array:
  """Depthwise 2-D convolution (channel multiplier 1), a pure function.

  This is the only place the depthwise convolution is computed: a shifted-slice
  sum with a custom VJP (ankle_jax.models.depthwise), equal to lax's grouped
  convolution in values and gradients but fast forward and backward under XLA.

  Args:
    x: [B, H, W, C] input.
    kernel: [kh, kw, 1, C] one spatial filter per channel.
    strides: spatial strides (sh, sw).
    padding: 'SAME', 'VALID' or explicit ((top, bottom), (left, right)).

  Returns:
    [B, H', W', C], in the dtype of `x` and `kernel` (they must agree).
  """
  channels = x.shape[-1]
  if kernel.shape[-2:] != (1, channels):
    raise ValueError(
        f'depthwise_conv2d: kernel shape {kernel.shape} does not match input '
        f'channels {channels}; expected [kh, kw, 1, {channels}].'
    )
  return depthwise.depthwise_conv2d(x, kernel, strides=strides, padding=padding)


class ConvBN(nn.Module):
  """Conv2D -> BatchNorm -> optional ReLU.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: 'SAME', 'VALID' or explicit pairs.
    use_bias: conv bias (Keras families use none before BN).
    use_scale: BN scale (gamma); Keras InceptionV3 has none.
    relu: apply ReLU after BN.
    epsilon: BN epsilon.
    momentum: BN running-average momentum (Keras convention, 0.99).
    dtype: computation dtype.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Padding = 'SAME'
  use_bias: bool = False
  use_scale: bool = True
  relu: bool = True
  epsilon: float = KERAS_BN_EPSILON
  momentum: float = KERAS_BN_MOMENTUM
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Conv(
        self.features,
        self.kernel_size,
        strides=self.strides,
        padding=self.padding,
        use_bias=self.use_bias,
        dtype=self.dtype,
        name='conv',
    )(x)
    x = nn.BatchNorm(
        use_running_average=not train,
        momentum=self.momentum,
        epsilon=self.epsilon,
        use_scale=self.use_scale,
        dtype=self.dtype,
        name='bn',
    )(x)
    return nn.relu(x) if self.relu else x


class SeparableConv(nn.Module):
  """Depthwise KxK + pointwise 1x1 convolution, no bias (Keras SeparableConv2D).

  Params: 'depthwise_kernel' [kh, kw, 1, C_in] and 'pointwise/kernel'
  [1, 1, C_in, features].
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Padding = 'SAME'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param(
        'depthwise_kernel',
        nn.initializers.lecun_normal(),
        (*self.kernel_size, 1, channels),
        jnp.float32,
    )
    x = depthwise_conv2d(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        self.strides,
        self.padding,
    )
    return Conv(
        self.features,
        (1, 1),
        use_bias=False,
        dtype=self.dtype,
        name='pointwise',
    )(x)


class AuxTower(nn.Module):
  """Auxiliary classifier: AvgPool 5x5/3 VALID -> 1x1 conv + BN + ReLU ->
  flatten -> Dense + ReLU -> Dense(num_classes).

  With a 17x17 or 19x19 input the pooled map is 5x5, so the flatten dimension
  is 5*5*conv_features (3200 at full width). Smaller inputs work too: the pool
  window shrinks to the map when the map is under 5 pixels, and the flatten
  dimension follows the pooled map.

  Returns float32 logits [batch, num_classes].
  """

  num_classes: int
  conv_features: int = 128
  hidden_features: int = 700
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    window = (min(5, x.shape[1]), min(5, x.shape[2]))
    x = nn.avg_pool(x, window, strides=(3, 3), padding='VALID')
    x = ConvBN(self.conv_features, (1, 1), dtype=self.dtype, name='conv')(
        x, train
    )
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden_features, dtype=self.dtype, name='dense1')(x)
    x = nn.relu(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='dense2')(x)
    return x.astype(jnp.float32)


class ClassifierHead(nn.Module):
  """Main head on the last conv feature map (after its final BN/ReLU).

  [B, h, w, C] -> global average pool -> Dropout(rate) -> Dense(num_classes).
  Grad-CAM intercepts this module's __call__ input, so every family feeds it
  the final feature map. Returns float32 logits [B, num_classes].
  """

  num_classes: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features_bhwc: jax.Array, train: bool) -> jax.Array:
    x = jnp.mean(features_bhwc, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='dense')(x)
    return x.astype(jnp.float32)

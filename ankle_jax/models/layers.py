"""Building blocks shared by the three model families.

Conventions (all modules here):
  * Images and feature maps are NHWC: [batch, height, width, channels].
  * Parameters are float32; `dtype` is the computation dtype (e.g. bfloat16 for
    mixed precision). BatchNorm statistics are always kept in float32.
  * `train` selects batch statistics + active dropout (True) or running
    statistics + no dropout (False).
  * Fully connected weights are exactly the params named 'kernel' with
    ndim == 2 (the L2 "dense" scope); conv kernels are 4-D.
  * `kernel_init` names the initialization of every Conv and Dense kernel (and
    bias), one of KERNEL_INITS; see `initializers`.
  * `conv_impl` ('cpu' | 'gpu', resolved from 'auto' by
    backends.resolve_conv_impl) names the kernels of every convolution; see
    `conv_module`. Parameters do not depend on it.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax.models import depthwise

# The resolved backends.CONV_IMPLS values the modules below take.
CPU_KERNELS = 'cpu'
GPU_KERNELS = 'gpu'

Dtype = Any
Padding = str | Sequence[tuple[int, int]]
Initializer = Callable[..., jax.Array]

# config.model.kernel_init values; the first is the default.
KERNEL_INITS = ('lecun_normal', 'glorot_uniform', 'authors')
DEFAULT_KERNEL_INIT = KERNEL_INITS[0]
# The authors' TensorFlow code: tf.truncated_normal_initializer(stddev=0.1)
# for every weight, tf.constant(0.1) for every bias (docs/paper.md, section 2).
AUTHORS_STDDEV = 0.1
AUTHORS_BIAS = 0.1

# Keras BatchNormalization defaults (momentum 0.99, epsilon 1e-3).
KERAS_BN_MOMENTUM = 0.99
KERAS_BN_EPSILON = 1e-3

# Every convolution of the models under conv_impl='cpu'. XLA:CPU runs the
# gradients of grouped (depthwise) and 1x1 `lax.conv_general_dilated` calls ~10x
# below the equivalent slice sums / matmuls, so those two cases go through
# ankle_jax.models.depthwise; all other convolutions reach lax unchanged.
# Parameter names and shapes are those of nn.Conv.
Conv = functools.partial(
    nn.Conv, conv_general_dilated=depthwise.conv_general_dilated
)


def conv_module(conv_impl: str = CPU_KERNELS) -> Callable[..., nn.Module]:
  """The nn.Conv of `conv_impl`: `Conv` for 'cpu', flax's own nn.Conv (plain
  `lax.conv_general_dilated`, XLA choosing the algorithm) for 'gpu'. Both make
  the same parameters.

  Raises:
    ValueError: a conv_impl other than 'cpu' or 'gpu'.
  """
  if conv_impl == CPU_KERNELS:
    return Conv
  if conv_impl == GPU_KERNELS:
    return nn.Conv
  raise ValueError(
      f'conv_impl={conv_impl!r}: the modules take {CPU_KERNELS!r} or '
      f"{GPU_KERNELS!r} (backends.resolve_conv_impl resolves 'auto')"
  )


class Initializers(NamedTuple):
  """The kernel and bias initializers of every Conv and Dense of a model."""

  kernel: Initializer
  bias: Initializer

  def as_kwargs(self) -> dict[str, Initializer]:
    """{'kernel_init', 'bias_init'}: keyword arguments of nn.Conv/nn.Dense."""
    return {'kernel_init': self.kernel, 'bias_init': self.bias}


@functools.cache
def initializers(kernel_init: str = DEFAULT_KERNEL_INIT) -> Initializers:
  """The initializers a KERNEL_INITS name stands for.

  'lecun_normal' (default): Flax's own defaults, truncated normal with
    variance 1/fan_in, zero biases (nn.Conv / nn.Dense when given nothing, so
    existing checkpoints and seeds give the same parameters as before).
  'glorot_uniform': Keras' defaults, uniform in +-sqrt(6 / (fan_in +
    fan_out)), zero biases.
  'authors': the authors' code (docs/paper.md, section 2): a normal of std
    0.1 truncated at 2 std (TF's tf.truncated_normal_initializer(stddev=0.1);
    the values have std 0.1 * 0.8796 = 0.088), whatever the layer's size, and
    biases 0.1.
  BatchNorm keeps scale 1, offset 0 under every choice. Fans follow Flax
  (in_axis -2, out_axis -1, the rest the receptive field); a depthwise kernel
  [kh, kw, 1, C] has fan_in kh*kw.

  Raises:
    ValueError: an unknown name.
  """
  zeros = nn.initializers.zeros_init()
  if kernel_init == 'lecun_normal':
    return Initializers(nn.initializers.lecun_normal(), zeros)
  if kernel_init == 'glorot_uniform':
    return Initializers(nn.initializers.glorot_uniform(), zeros)
  if kernel_init == 'authors':
    return Initializers(
        nn.initializers.truncated_normal(AUTHORS_STDDEV),
        nn.initializers.constant(AUTHORS_BIAS),
    )
  raise ValueError(
      f'kernel_init={kernel_init!r} is unknown; valid values: '
      + ', '.join(KERNEL_INITS)
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
    kernel_init: the conv's initialization (KERNEL_INITS).
    conv_impl: the conv's kernels, 'cpu' or 'gpu' (`conv_module`).
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
  kernel_init: str = DEFAULT_KERNEL_INIT
  conv_impl: str = CPU_KERNELS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv_module(self.conv_impl)(
        self.features,
        self.kernel_size,
        strides=self.strides,
        padding=self.padding,
        use_bias=self.use_bias,
        dtype=self.dtype,
        name='conv',
        **initializers(self.kernel_init).as_kwargs(),
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
  [1, 1, C_in, features], both initialized by `kernel_init` (KERNEL_INITS).
  conv_impl 'cpu': `depthwise_conv2d` (shifted slices) and a matmul; 'gpu':
  lax's grouped convolution (feature_group_count=C_in) and a 1x1 convolution.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Padding = 'SAME'
  dtype: Dtype = jnp.float32
  kernel_init: str = DEFAULT_KERNEL_INIT
  conv_impl: str = CPU_KERNELS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    init = initializers(self.kernel_init)
    kernel = self.param(
        'depthwise_kernel',
        init.kernel,
        (*self.kernel_size, 1, channels),
        jnp.float32,
    )
    pointwise = conv_module(self.conv_impl)  # ValueError for a bad conv_impl.
    depthwise_fn = (
        depthwise.grouped_conv_reference
        if self.conv_impl == GPU_KERNELS
        else depthwise_conv2d
    )
    x = depthwise_fn(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        strides=self.strides,
        padding=self.padding,
    )
    return pointwise(
        self.features,
        (1, 1),
        use_bias=False,
        dtype=self.dtype,
        name='pointwise',
        **init.as_kwargs(),
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
  kernel_init: str = DEFAULT_KERNEL_INIT
  conv_impl: str = CPU_KERNELS
  momentum: float = KERAS_BN_MOMENTUM  # Of the BatchNorm (ConvBN).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    window = (min(5, x.shape[1]), min(5, x.shape[2]))
    x = nn.avg_pool(x, window, strides=(3, 3), padding='VALID')
    x = ConvBN(
        self.conv_features,
        (1, 1),
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        conv_impl=self.conv_impl,
        momentum=self.momentum,
        name='conv',
    )(x, train)
    x = x.reshape((x.shape[0], -1))
    dense = functools.partial(
        nn.Dense,
        dtype=self.dtype,
        **initializers(self.kernel_init).as_kwargs(),
    )
    x = nn.relu(dense(self.hidden_features, name='dense1')(x))
    x = dense(self.num_classes, name='dense2')(x)
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
  kernel_init: str = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, features_bhwc: jax.Array, train: bool) -> jax.Array:
    x = jnp.mean(features_bhwc, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        name='dense',
        **initializers(self.kernel_init).as_kwargs(),
    )(x)
    return x.astype(jnp.float32)

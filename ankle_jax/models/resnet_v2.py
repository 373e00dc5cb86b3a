"""ResNet-101 with full pre-activation (He et al. 2016), Table 2 of Kitamura
et al. (2019).

Layers, biases and BatchNorm settings follow keras.applications.ResNet101V2
(stem conv and the 1x1 projection/expansion convs with bias, the other convs
without; BN epsilon 1.001e-5; final BN + ReLU before pooling), so the
variables match Keras one to one. Two layouts:

  * stride_in_first_unit=True (paper, default): VALID 7x7/2 stem conv
    (300 -> 147), SAME 3x3/2 max pool (-> 74), and the first unit of conv3,
    conv4 and conv5 downsamples: 74 -> 37 -> 19 -> 10.
  * stride_in_first_unit=False (Keras): zero-padded stem (300 -> 150 -> 75)
    and the LAST unit of conv2, conv3 and conv4 downsamples: 38 -> 19 -> 10.

`keras_stem` overrides the stem choice independently (None = follow the
stride placement). The optional auxiliary tower sits on the output of the
first conv4 unit (19x19x1024 at 300 px in both layouts).

Stage outputs are sown into the 'intermediates' collection as '<row>_output'
for Table 2's rows:
conv1, max_pool1, conv2, conv3, conv4, conv5 (after the final BN + ReLU).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax.models import layers

BN_EPSILON = 1.001e-5  # keras.applications ResNetV2


class PreActBottleneck(nn.Module):
  """Full pre-activation bottleneck unit (Keras residual_block_v2).

  BN+ReLU (preact) -> 1x1 conv, BN, ReLU -> 3x3 conv (stride), BN, ReLU ->
  1x1 conv (4 * filters, bias) + shortcut. The shortcut is a 1x1 projection
  conv of the preact (with bias) in the first unit of a stage, else the
  identity subsampled by `stride` (Keras' MaxPooling2D(1, stride)).
  """

  filters: int
  stride: int = 1
  projection: bool = False
  dtype: Any = jnp.float32
  kernel_init: str = layers.DEFAULT_KERNEL_INIT
  conv_impl: str = layers.CPU_KERNELS
  momentum: float = layers.KERAS_BN_MOMENTUM  # Of every BatchNorm.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=self.momentum,
        epsilon=BN_EPSILON,
        dtype=self.dtype,
    )
    conv_bn = functools.partial(
        layers.ConvBN,
        use_bias=False,
        epsilon=BN_EPSILON,
        momentum=self.momentum,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        conv_impl=self.conv_impl,
    )
    conv = functools.partial(
        layers.conv_module(self.conv_impl),
        dtype=self.dtype,
        **layers.initializers(self.kernel_init).as_kwargs(),
    )
    strides = (self.stride, self.stride)
    preact = nn.relu(bn(name='preact_bn')(x))
    if self.projection:
      shortcut = conv(
          4 * self.filters,
          (1, 1),
          strides=strides,
          padding='VALID',
          use_bias=True,
          name='shortcut_conv',
      )(preact)
    else:
      shortcut = x[:, :: self.stride, :: self.stride, :]
    y = conv_bn(self.filters, (1, 1), name='conv1')(preact, train)
    y = conv_bn(
        self.filters,
        (3, 3),
        strides=strides,
        padding=((1, 1), (1, 1)),
        name='conv2',
    )(y, train)
    y = conv(4 * self.filters, (1, 1), use_bias=True, name='conv3')(y)
    return shortcut + y


class Model(nn.Module):
  """Pre-activation ResNet for [B, H, W, 1] images (H, W >= 75).

  Attributes:
    num_classes: classifier outputs.
    aux_head: add the auxiliary tower on the first conv4 unit's output.
    dropout_rate: dropout before the final Dense (train mode only).
    width_multiplier: scales every channel width (1.0 = Table 2 / Keras).
    dtype: computation dtype; params and BN statistics stay float32.
    stride_in_first_unit: True = paper (first unit of conv3..conv5
      downsamples); False = Keras (last unit of conv2..conv4).
    keras_stem: zero-padded Keras stem (300 -> 150 -> 75) instead of the
      paper's VALID conv + SAME pool (300 -> 147 -> 74); None = Keras stem
      exactly when stride_in_first_unit is False.
    stage_sizes: units per stage conv2..conv5 ((3, 4, 23, 3) = ResNet-101).
    kernel_init: initialization of every conv and dense layer
      (layers.KERNEL_INITS).
    conv_impl: the kernels of every convolution, 'cpu' or 'gpu'
      (layers.conv_module); the parameters do not depend on it.
    bn_momentum: momentum of every BatchNorm's running statistics (Keras'
      0.99).
  """

  num_classes: int = 2
  aux_head: bool = False
  dropout_rate: float = 0.0
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  stride_in_first_unit: bool = True
  keras_stem: bool | None = None
  stage_sizes: tuple[int, ...] = (3, 4, 23, 3)
  kernel_init: str = layers.DEFAULT_KERNEL_INIT
  conv_impl: str = layers.CPU_KERNELS
  bn_momentum: float = layers.KERAS_BN_MOMENTUM

  def _unit_stride(self, stage: int, unit: int) -> int:
    """Stride of unit `unit` (0-based) of stage `stage` (0 = conv2)."""
    last = len(self.stage_sizes) - 1
    if self.stride_in_first_unit:
      return 2 if stage > 0 and unit == 0 else 1
    return 2 if stage < last and unit == self.stage_sizes[stage] - 1 else 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> layers.ModelOutputs:
    w = functools.partial(
        layers.scale_width, width_multiplier=self.width_multiplier
    )
    keras_stem = (
        not self.stride_in_first_unit
        if self.keras_stem is None
        else self.keras_stem
    )
    init = {'dtype': self.dtype, 'kernel_init': self.kernel_init}
    conv_init = {
        **init,
        'conv_impl': self.conv_impl,
        'momentum': self.bn_momentum,
    }

    def stage(name, y):
      self.sow('intermediates', f'{name}_output', y)
      return y

    # Conv 1 (with bias, no BN: the first unit pre-activates) and Max pool 1.
    stem_padding = ((3, 3), (3, 3)) if keras_stem else 'VALID'
    x = stage(
        'conv1',
        layers.conv_module(self.conv_impl)(
            w(64),
            (7, 7),
            strides=(2, 2),
            padding=stem_padding,
            use_bias=True,
            dtype=self.dtype,
            name='conv1',
            **layers.initializers(self.kernel_init).as_kwargs(),
        )(x),
    )
    if keras_stem:  # ZeroPadding2D(1) then a VALID max pool, as Keras.
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
    else:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    x = stage('max_pool1', x)

    aux_logits = None
    for s, num_units in enumerate(self.stage_sizes):
      filters = w(64 * 2**s)
      for u in range(num_units):
        x = PreActBottleneck(
            filters,
            stride=self._unit_stride(s, u),
            projection=(u == 0),
            **conv_init,
            name=f'conv{s + 2}_block{u + 1}',
        )(x, train)
        if self.aux_head and s == 2 and u == 0:
          aux_logits = layers.AuxTower(
              self.num_classes,
              conv_features=w(128),
              hidden_features=w(700),
              **conv_init,
              name='aux_tower',
          )(x, train)
      if s < len(self.stage_sizes) - 1:
        x = stage(f'conv{s + 2}', x)

    x = nn.BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=BN_EPSILON,
        dtype=self.dtype,
        name='post_bn',
    )(x)
    x = stage(f'conv{len(self.stage_sizes) + 1}', nn.relu(x))
    logits = layers.ClassifierHead(
        self.num_classes, self.dropout_rate, **init, name='head'
    )(x, train)
    return layers.ModelOutputs(logits, aux_logits)


ResNet101V2 = functools.partial(Model, stage_sizes=(3, 4, 23, 3))

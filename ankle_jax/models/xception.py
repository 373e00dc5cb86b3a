"""Xception (Chollet 2017) as in Table 3 of Kitamura et al. (2019).

Layers follow keras.applications.Xception (separable convs without bias, BN
with scale, epsilon 1e-3, 1x1/2 projection shortcuts with BN), so the
variables match Keras one to one. Two stems:

  * valid_stem=False (paper Table 3, default): SAME 3x3/2 and 3x3 convs,
    300 -> 150 -> 150, then 75 -> 38 -> 19 (middle flow) -> 10.
  * valid_stem=True (Keras): VALID convs, 300 -> 149 -> 147, then
    74 -> 37 -> 19 -> 10.

The optional auxiliary tower sits after middle-flow block `aux_block`
(1-based; the paper says the third, the authors' code used the fourth).

Stage outputs are sown into the 'intermediates' collection as '<row>_output'
for Table 3's rows:
conv1, conv2, conv3, max_pool1, conv4, max_pool2, conv5, max_pool3, conv6
(after all middle-flow blocks), conv7, max_pool4, conv8, conv9. Each
max_poolN output includes its residual shortcut.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax.models import layers


class SepConvBN(nn.Module):
  """SeparableConv 3x3 (no bias) -> BatchNorm (Keras epsilon; momentum of the
  running statistics, Keras' 0.99 by default)."""

  features: int
  dtype: Any = jnp.float32
  kernel_init: str = layers.DEFAULT_KERNEL_INIT
  conv_impl: str = layers.CPU_KERNELS
  momentum: float = layers.KERAS_BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.SeparableConv(
        self.features,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        conv_impl=self.conv_impl,
        name='sepconv',
    )(x)
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=self.momentum,
        epsilon=layers.KERAS_BN_EPSILON,
        dtype=self.dtype,
        name='bn',
    )(x)


class DownBlock(nn.Module):
  """Entry/exit-flow block: [ReLU] sep+BN, ReLU, sep+BN, MaxPool 3x3/2 SAME,
  plus a 1x1/2 conv + BN projection shortcut of the block input.

  Returns (pre_pool, output): the map before the pool (a Table 3 "Conv" row)
  and the block output after pooling and the residual add.
  """

  features: tuple[int, int]
  pre_relu: bool = True
  dtype: Any = jnp.float32
  kernel_init: str = layers.DEFAULT_KERNEL_INIT
  conv_impl: str = layers.CPU_KERNELS
  momentum: float = layers.KERAS_BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    residual = layers.ConvBN(
        self.features[1],
        (1, 1),
        strides=(2, 2),
        padding='SAME',
        relu=False,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        conv_impl=self.conv_impl,
        momentum=self.momentum,
        name='residual',
    )(x, train)
    if self.pre_relu:
      x = nn.relu(x)
    sep = functools.partial(
        SepConvBN,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        conv_impl=self.conv_impl,
        momentum=self.momentum,
    )
    x = sep(self.features[0], name='sepconv1')(x, train)
    x = sep(self.features[1], name='sepconv2')(nn.relu(x), train)
    pre_pool = x
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    return pre_pool, x + residual


class MiddleBlock(nn.Module):
  """Middle-flow block: 3x (ReLU, sep+BN) plus the identity."""

  features: int
  dtype: Any = jnp.float32
  kernel_init: str = layers.DEFAULT_KERNEL_INIT
  conv_impl: str = layers.CPU_KERNELS
  momentum: float = layers.KERAS_BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    residual = x
    for i in range(3):
      x = SepConvBN(
          self.features,
          dtype=self.dtype,
          kernel_init=self.kernel_init,
          conv_impl=self.conv_impl,
          momentum=self.momentum,
          name=f'sepconv{i + 1}',
      )(nn.relu(x), train)
    return x + residual


class Xception(nn.Module):
  """Xception for [B, H, W, 1] images (H, W >= 75).

  Attributes:
    num_classes: classifier outputs.
    aux_head: add the auxiliary tower after middle-flow block `aux_block`.
    dropout_rate: dropout before the final Dense (train mode only).
    width_multiplier: scales every channel width (1.0 = Table 3 / Keras).
    dtype: computation dtype; params and BN statistics stay float32.
    valid_stem: Keras' VALID stem convs instead of Table 3's SAME ones.
    aux_block: 1-based middle-flow block after which the aux tower attaches.
    num_middle_blocks: middle-flow repetitions (8).
    kernel_init: initialization of every conv and dense layer
      (layers.KERNEL_INITS).
    conv_impl: the kernels of every convolution, 'cpu' or 'gpu'
      (layers.conv_module); the parameters do not depend on it.
    bn_momentum: momentum of every BatchNorm's running statistics (Keras'
      0.99; layers.ConvBN).
  """

  num_classes: int = 2
  aux_head: bool = False
  dropout_rate: float = 0.0
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  valid_stem: bool = False
  aux_block: int = 3
  num_middle_blocks: int = 8
  kernel_init: str = layers.DEFAULT_KERNEL_INIT
  conv_impl: str = layers.CPU_KERNELS
  bn_momentum: float = layers.KERAS_BN_MOMENTUM

  def __post_init__(self):
    if not 1 <= self.aux_block <= self.num_middle_blocks:
      raise ValueError(
          f'xception: aux_block={self.aux_block} must be in '
          f'[1, {self.num_middle_blocks}] (1-based middle-flow block).'
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> layers.ModelOutputs:
    w = functools.partial(
        layers.scale_width, width_multiplier=self.width_multiplier
    )
    init = {'dtype': self.dtype, 'kernel_init': self.kernel_init}
    conv_init = {
        **init,
        'conv_impl': self.conv_impl,
        'momentum': self.bn_momentum,
    }
    conv = functools.partial(layers.ConvBN, use_bias=False, **conv_init)
    block = functools.partial(DownBlock, **conv_init)
    stem_padding = 'VALID' if self.valid_stem else 'SAME'

    def stage(name, y):
      self.sow('intermediates', f'{name}_output', y)
      return y

    # Entry flow.
    x = stage(
        'conv1',
        conv(
            w(32),
            (3, 3),
            strides=(2, 2),
            padding=stem_padding,
            name='block1_conv1',
        )(x, train),
    )
    x = stage(
        'conv2',
        conv(w(64), (3, 3), padding=stem_padding, name='block1_conv2')(
            x, train
        ),
    )
    for name, features, pre_relu, rows in (
        ('block2', (128, 128), False, ('conv3', 'max_pool1')),
        ('block3', (256, 256), True, ('conv4', 'max_pool2')),
        ('block4', (728, 728), True, ('conv5', 'max_pool3')),
    ):
      pre_pool, x = block(
          (w(features[0]), w(features[1])), pre_relu=pre_relu, name=name
      )(x, train)
      stage(rows[0], pre_pool)
      stage(rows[1], x)

    # Middle flow.
    aux_logits = None
    for i in range(self.num_middle_blocks):
      x = MiddleBlock(w(728), **conv_init, name=f'block{i + 5}')(x, train)
      if self.aux_head and i + 1 == self.aux_block:
        aux_logits = layers.AuxTower(
            self.num_classes,
            conv_features=w(128),
            hidden_features=w(700),
            **conv_init,
            name='aux_tower',
        )(x, train)
    stage('conv6', x)

    # Exit flow.
    exit_name = f'block{self.num_middle_blocks + 5}'
    pre_pool, x = block((w(728), w(1024)), name=exit_name)(x, train)
    stage('conv7', pre_pool)
    stage('max_pool4', x)
    last_name = f'block{self.num_middle_blocks + 6}'
    x = nn.relu(
        SepConvBN(w(1536), **conv_init, name=f'{last_name}_sepconv1')(x, train)
    )
    stage('conv8', x)
    x = nn.relu(
        SepConvBN(w(2048), **conv_init, name=f'{last_name}_sepconv2')(x, train)
    )
    stage('conv9', x)

    logits = layers.ClassifierHead(
        self.num_classes, self.dropout_rate, **init, name='head'
    )(x, train)
    return layers.ModelOutputs(logits, aux_logits)

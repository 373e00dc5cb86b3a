"""Inception V3 (Szegedy et al. 2016) as in Table 1 of Kitamura et al. (2019).

Follows keras.applications.InceptionV3 exactly (conv without bias, BatchNorm
without scale, epsilon 1e-3, average pools that exclude padding), so its
variables match Keras one to one. VALID stem: 300 -> 149 -> 147 -> 73 -> 71
-> 35. The optional auxiliary tower sits on the last 17x17 block (mixed7).

Stage outputs are sown into the 'intermediates' collection as '<row>_output'
for Table 1's rows: conv1, conv2, conv3, max_pool1, conv4, conv5, max_pool2,
inception1 (after 3 blocks), inception2, inception3 (after 4 blocks),
inception5, inception6 (after 2 blocks).
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax.models import layers

ModuleDef = Callable[..., nn.Module]


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3/1 SAME average pool excluding padding (Keras AveragePooling2D)."""
  return nn.avg_pool(
      x, (3, 3), strides=(1, 1), padding='SAME', count_include_pad=False
  )


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """35x35 block (Keras mixed0-2): 1x1 | 1x1,5x5 | 1x1,3x3,3x3 | pool,1x1."""

  pool_features: int
  conv: ModuleDef
  width: Callable[[int], int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    w, conv = self.width, self.conv
    branch1x1 = conv(w(64), (1, 1), name='branch1x1')(x, train)
    branch5x5 = conv(w(48), (1, 1), name='branch5x5_1')(x, train)
    branch5x5 = conv(w(64), (5, 5), name='branch5x5_2')(branch5x5, train)
    branch3x3dbl = conv(w(64), (1, 1), name='branch3x3dbl_1')(x, train)
    branch3x3dbl = conv(w(96), (3, 3), name='branch3x3dbl_2')(
        branch3x3dbl, train
    )
    branch3x3dbl = conv(w(96), (3, 3), name='branch3x3dbl_3')(
        branch3x3dbl, train
    )
    branch_pool = conv(w(self.pool_features), (1, 1), name='branch_pool')(
        _avg_pool_3x3_same(x), train
    )
    return jnp.concatenate(
        [branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1
    )


class InceptionB(nn.Module):
  """35 -> 17 reduction (Keras mixed3)."""

  conv: ModuleDef
  width: Callable[[int], int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    w, conv = self.width, self.conv
    branch3x3 = conv(
        w(384), (3, 3), strides=(2, 2), padding='VALID', name='branch3x3'
    )(x, train)
    branch3x3dbl = conv(w(64), (1, 1), name='branch3x3dbl_1')(x, train)
    branch3x3dbl = conv(w(96), (3, 3), name='branch3x3dbl_2')(
        branch3x3dbl, train
    )
    branch3x3dbl = conv(
        w(96), (3, 3), strides=(2, 2), padding='VALID', name='branch3x3dbl_3'
    )(branch3x3dbl, train)
    branch_pool = _max_pool_3x3_s2(x)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorized 7x7 convolutions (Keras mixed4-7)."""

  channels_7x7: int
  conv: ModuleDef
  width: Callable[[int], int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    w, conv, c7 = self.width, self.conv, self.width(self.channels_7x7)
    branch1x1 = conv(w(192), (1, 1), name='branch1x1')(x, train)
    branch7x7 = conv(c7, (1, 1), name='branch7x7_1')(x, train)
    branch7x7 = conv(c7, (1, 7), name='branch7x7_2')(branch7x7, train)
    branch7x7 = conv(w(192), (7, 1), name='branch7x7_3')(branch7x7, train)
    branch7x7dbl = conv(c7, (1, 1), name='branch7x7dbl_1')(x, train)
    branch7x7dbl = conv(c7, (7, 1), name='branch7x7dbl_2')(branch7x7dbl, train)
    branch7x7dbl = conv(c7, (1, 7), name='branch7x7dbl_3')(branch7x7dbl, train)
    branch7x7dbl = conv(c7, (7, 1), name='branch7x7dbl_4')(branch7x7dbl, train)
    branch7x7dbl = conv(w(192), (1, 7), name='branch7x7dbl_5')(
        branch7x7dbl, train
    )
    branch_pool = conv(w(192), (1, 1), name='branch_pool')(
        _avg_pool_3x3_same(x), train
    )
    return jnp.concatenate(
        [branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1
    )


class InceptionD(nn.Module):
  """17 -> 8 reduction (Keras mixed8)."""

  conv: ModuleDef
  width: Callable[[int], int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    w, conv = self.width, self.conv
    branch3x3 = conv(w(192), (1, 1), name='branch3x3_1')(x, train)
    branch3x3 = conv(
        w(320), (3, 3), strides=(2, 2), padding='VALID', name='branch3x3_2'
    )(branch3x3, train)
    branch7x7x3 = conv(w(192), (1, 1), name='branch7x7x3_1')(x, train)
    branch7x7x3 = conv(w(192), (1, 7), name='branch7x7x3_2')(branch7x7x3, train)
    branch7x7x3 = conv(w(192), (7, 1), name='branch7x7x3_3')(branch7x7x3, train)
    branch7x7x3 = conv(
        w(192), (3, 3), strides=(2, 2), padding='VALID', name='branch7x7x3_4'
    )(branch7x7x3, train)
    branch_pool = _max_pool_3x3_s2(x)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with expanded 1x3/3x1 filter banks (Keras mixed9-10)."""

  conv: ModuleDef
  width: Callable[[int], int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    w, conv = self.width, self.conv
    branch1x1 = conv(w(320), (1, 1), name='branch1x1')(x, train)
    branch3x3 = conv(w(384), (1, 1), name='branch3x3_1')(x, train)
    branch3x3 = jnp.concatenate(
        [
            conv(w(384), (1, 3), name='branch3x3_2a')(branch3x3, train),
            conv(w(384), (3, 1), name='branch3x3_2b')(branch3x3, train),
        ],
        axis=-1,
    )
    branch3x3dbl = conv(w(448), (1, 1), name='branch3x3dbl_1')(x, train)
    branch3x3dbl = conv(w(384), (3, 3), name='branch3x3dbl_2')(
        branch3x3dbl, train
    )
    branch3x3dbl = jnp.concatenate(
        [
            conv(w(384), (1, 3), name='branch3x3dbl_3a')(branch3x3dbl, train),
            conv(w(384), (3, 1), name='branch3x3dbl_3b')(branch3x3dbl, train),
        ],
        axis=-1,
    )
    branch_pool = conv(w(192), (1, 1), name='branch_pool')(
        _avg_pool_3x3_same(x), train
    )
    return jnp.concatenate(
        [branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1
    )


class InceptionV3(nn.Module):
  """Inception V3 for [B, H, W, 1] images (H, W >= 75).

  Attributes:
    num_classes: classifier outputs.
    aux_head: add the auxiliary tower on the last 17x17 block (mixed7).
    dropout_rate: dropout before the final Dense (train mode only).
    width_multiplier: scales every channel width (1.0 = Table 1 / Keras).
    dtype: computation dtype; params and BN statistics stay float32.
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
  kernel_init: str = layers.DEFAULT_KERNEL_INIT
  conv_impl: str = layers.CPU_KERNELS
  bn_momentum: float = layers.KERAS_BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> layers.ModelOutputs:
    w = functools.partial(
        layers.scale_width, width_multiplier=self.width_multiplier
    )
    conv = functools.partial(
        layers.ConvBN,
        use_bias=False,
        use_scale=False,
        epsilon=1e-3,
        momentum=self.bn_momentum,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        conv_impl=self.conv_impl,
    )
    block = dict(conv=conv, width=w)
    init = {'dtype': self.dtype, 'kernel_init': self.kernel_init}

    def stage(name, y):
      self.sow('intermediates', f'{name}_output', y)
      return y

    # Stem (VALID): 300 -> 149 -> 147 -> 147 -> 73 -> 73 -> 71 -> 35.
    x = stage(
        'conv1',
        conv(w(32), (3, 3), strides=(2, 2), padding='VALID', name='conv1')(
            x, train
        ),
    )
    x = stage(
        'conv2', conv(w(32), (3, 3), padding='VALID', name='conv2')(x, train)
    )
    x = stage('conv3', conv(w(64), (3, 3), name='conv3')(x, train))
    x = stage('max_pool1', _max_pool_3x3_s2(x))
    x = stage(
        'conv4', conv(w(80), (1, 1), padding='VALID', name='conv4')(x, train)
    )
    x = stage(
        'conv5', conv(w(192), (3, 3), padding='VALID', name='conv5')(x, train)
    )
    x = stage('max_pool2', _max_pool_3x3_s2(x))

    # 3x Inception 1 (35x35).
    for i, pool_features in enumerate((32, 64, 64)):
      x = InceptionA(pool_features, **block, name=f'mixed{i}')(x, train)
    x = stage('inception1', x)
    x = stage('inception2', InceptionB(**block, name='mixed3')(x, train))

    # 4x Inception 3 (17x17).
    for i, channels_7x7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(channels_7x7, **block, name=f'mixed{4 + i}')(x, train)
    x = stage('inception3', x)
    aux_logits = None
    if self.aux_head:
      aux_logits = layers.AuxTower(
          self.num_classes,
          conv_features=w(128),
          hidden_features=w(700),
          **init,
          conv_impl=self.conv_impl,
          momentum=self.bn_momentum,
          name='aux_tower',
      )(x, train)

    x = stage('inception5', InceptionD(**block, name='mixed8')(x, train))
    for i in range(2):
      x = InceptionE(**block, name=f'mixed{9 + i}')(x, train)
    x = stage('inception6', x)

    logits = layers.ClassifierHead(
        self.num_classes, self.dropout_rate, **init, name='head'
    )(x, train)
    return layers.ModelOutputs(logits, aux_logits)

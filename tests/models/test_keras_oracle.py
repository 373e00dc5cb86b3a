"""Oracle tests against keras.applications (Keras 3 on the JAX backend).

For each family's Keras-convention variant we build the Keras model with
random weights, randomize its BatchNorm statistics / scales / offsets (so a
BN mistake cannot hide behind mean 0, var 1), copy every Keras weight into our
variables through an explicit name mapping, and compare eval-mode logits and
XLA forward FLOPs.
"""

from collections.abc import Callable
import functools
import os
import re
from typing import Any

os.environ.setdefault('KERAS_BACKEND', 'jax')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ankle_jax import models  # noqa: E402
from ankle_jax.models import layers  # noqa: E402
from ankle_jax.models import summary  # noqa: E402

keras = pytest.importorskip('keras')

IMAGE_SIZE = 300
Path = tuple[str, ...]


# ----------------------------------------------------------------------------
# Keras layer -> our variables.
# ----------------------------------------------------------------------------


def _weights(layer) -> dict[str, np.ndarray]:
  """{'kernel': ..., 'gamma': ...} of one Keras layer, as numpy."""
  return {v.path.split('/')[-1]: np.asarray(v.value) for v in layer.weights}


def _put(tree: dict, path: Path, value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise AssertionError(f'variable {path} assigned twice')
  tree[path[-1]] = value


def _copy_layer(layer, path: Path, params: dict, stats: dict) -> None:
  """Copies one Keras layer's weights to our module at `path`."""
  w = _weights(layer)
  if isinstance(layer, keras.layers.BatchNormalization):
    if 'gamma' in w:
      _put(params, path + ('scale',), w['gamma'])
    _put(params, path + ('bias',), w['beta'])
    _put(stats, path + ('mean',), w['moving_mean'])
    _put(stats, path + ('var',), w['moving_variance'])
  elif isinstance(layer, keras.layers.SeparableConv2D):
    # Keras depthwise kernel [kh, kw, C, 1] -> ours [kh, kw, 1, C].
    _put(
        params,
        path + ('depthwise_kernel',),
        w['depthwise_kernel'].transpose(0, 1, 3, 2),
    )
    _put(params, path + ('pointwise', 'kernel'), w['pointwise_kernel'])
  elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
    for name, value in w.items():
      _put(params, path + (name,), value)
  elif w:
    raise AssertionError(f'unmapped Keras layer with weights: {layer.name}')


def _auto_named(model, prefix: str) -> list:
  """Layers with Keras' auto names `prefix`, `prefix_1`, ... in creation order."""
  pattern = re.compile(rf'^{prefix}(?:_(\d+))?$')
  found = [
      (int(m.group(1) or 0), layer)
      for layer in model.layers
      if (m := pattern.match(layer.name))
  ]
  return [layer for _, layer in sorted(found, key=lambda t: t[0])]


def _conv_bn_call_order(module: nn.Module, images) -> list[Path]:
  """Paths of our ConvBN modules in the order they run."""
  paths = []

  def record(next_fun, args, kwargs, context):
    if (
        isinstance(context.module, layers.ConvBN)
        and context.method_name == '__call__'
    ):
      paths.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
        functools.partial(module.init, train=False), jax.random.key(0), images
    )
  return paths


def map_inception_v3(keras_model, module, images) -> dict[str, Path]:
  """Keras InceptionV3 layer name -> our module path.

  Keras' conv2d_bn layers are auto-named in creation order; our ConvBN modules
  run in the same order (the block code mirrors Keras'), so they pair up.
  """
  convs = _auto_named(keras_model, 'conv2d')
  bns = _auto_named(keras_model, 'batch_normalization')
  ours = _conv_bn_call_order(module, images)
  assert len(convs) == len(bns) == len(ours) == 94
  mapping = {'predictions': ('head', 'dense')}
  for conv, bn, path in zip(convs, bns, ours):
    mapping[conv.name] = path + ('conv',)
    mapping[bn.name] = path + ('bn',)
  return mapping


def map_xception(keras_model, module, images) -> dict[str, Path]:
  """Keras Xception layer name -> our module path."""
  del module, images
  mapping = {'predictions': ('head', 'dense')}
  # The residual projections are the only auto-named layers, in order.
  residual_blocks = ('block2', 'block3', 'block4', 'block13')
  convs = _auto_named(keras_model, 'conv2d')
  bns = _auto_named(keras_model, 'batch_normalization')
  assert len(convs) == len(bns) == len(residual_blocks)
  for conv, bn, block in zip(convs, bns, residual_blocks):
    mapping[conv.name] = (block, 'residual', 'conv')
    mapping[bn.name] = (block, 'residual', 'bn')
  for layer in keras_model.layers:
    if m := re.fullmatch(r'block1_(conv\d)(_bn)?', layer.name):
      mapping[layer.name] = (f'block1_{m[1]}', 'bn' if m[2] else 'conv')
    elif m := re.fullmatch(r'block(\d+)_(sepconv\d)(_bn)?', layer.name):
      block, sub = int(m[1]), m[2]
      prefix = (
          (f'block{block}', sub) if block <= 13 else (f'block{block}_{sub}',)
      )
      mapping[layer.name] = prefix + ('bn' if m[3] else 'sepconv',)
  return mapping


def map_resnet101_v2(keras_model, module, images) -> dict[str, Path]:
  """Keras ResNet101V2 layer name -> our module path."""
  del module, images
  mapping = {
      'predictions': ('head', 'dense'),
      'conv1_conv': ('conv1',),
      'post_bn': ('post_bn',),
  }
  unit_layers = {
      'preact_bn': ('preact_bn',),
      '0_conv': ('shortcut_conv',),
      '1_conv': ('conv1', 'conv'),
      '1_bn': ('conv1', 'bn'),
      '2_conv': ('conv2', 'conv'),
      '2_bn': ('conv2', 'bn'),
      '3_conv': ('conv3',),
  }
  for layer in keras_model.layers:
    m = re.fullmatch(r'(conv\d_block\d+)_(.+)', layer.name)
    if m and m[2] in unit_layers:
      mapping[layer.name] = (m[1],) + unit_layers[m[2]]
  return mapping


FAMILIES: dict[str, dict[str, Any]] = {
    'inception_v3': dict(
        keras_fn='InceptionV3', kwargs={}, mapper=map_inception_v3
    ),
    'xception': dict(
        keras_fn='Xception', kwargs={'valid_stem': True}, mapper=map_xception
    ),
    'resnet101_v2': dict(
        keras_fn='ResNet101V2',
        kwargs={'stride_in_first_unit': False},
        mapper=map_resnet101_v2,
    ),
}


def keras_to_variables(
    keras_model, module: nn.Module, images, mapper: Callable
) -> dict[str, Any]:
  """Our {'params', 'batch_stats'} holding the Keras model's weights.

  Checks that every Keras weight lands somewhere and that the result has
  exactly our variables' structure and shapes.
  """
  mapping = mapper(keras_model, module, images)
  params, stats = {}, {}
  for layer in keras_model.layers:
    if layer.weights:
      assert layer.name in mapping, f'no mapping for Keras layer {layer.name}'
      _copy_layer(layer, mapping[layer.name], params, stats)
  variables = {'params': params, 'batch_stats': stats}
  expected = jax.eval_shape(
      functools.partial(module.init, train=False), jax.random.key(0), images
  )
  assert jax.tree_util.tree_structure(
      variables
  ) == jax.tree_util.tree_structure(expected)
  for (path, ours), ref in zip(
      jax.tree_util.tree_leaves_with_path(variables),
      jax.tree_util.tree_leaves(expected),
  ):
    assert ours.shape == ref.shape, (
        jax.tree_util.keystr(path),
        ours.shape,
        ref.shape,
    )
  return variables


def randomize_batchnorm(keras_model, rng: np.random.Generator) -> None:
  """Non-trivial BN statistics, scales and offsets in the Keras model."""
  for layer in keras_model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      shape = layer.moving_mean.shape
      layer.moving_mean.assign(rng.normal(0.0, 0.5, shape).astype('float32'))
      layer.moving_variance.assign(
          rng.uniform(0.5, 2.0, shape).astype('float32')
      )
      layer.beta.assign(rng.normal(0.0, 0.2, shape).astype('float32'))
      if layer.gamma is not None:
        layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype('float32'))


def _compile(fn, *args):
  """(compiled executable, its XLA cost) of jit(fn) on args."""
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, summary.compiled_cost(compiled)


@functools.cache
def oracle_run(family: str) -> dict[str, Any]:
  """Runs Keras and our model on the same image; logits and FLOPs of both."""
  spec = FAMILIES[family]
  rng = np.random.default_rng(0)
  keras.utils.set_random_seed(0)
  keras_model = getattr(keras.applications, spec['keras_fn'])(
      weights=None,
      input_shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
      classes=2,
      classifier_activation=None,
  )
  randomize_batchnorm(keras_model, rng)
  images = rng.normal(size=(1, IMAGE_SIZE, IMAGE_SIZE, 1)).astype('float32')

  def keras_forward(trainable, non_trainable, x):
    logits, _ = keras_model.stateless_call(
        trainable, non_trainable, x, training=False
    )
    return logits

  keras_args = (
      [v.value for v in keras_model.trainable_variables],
      [v.value for v in keras_model.non_trainable_variables],
      images,
  )
  keras_exe, keras_cost = _compile(keras_forward, *keras_args)
  keras_logits = np.asarray(keras_exe(*keras_args))

  module = models.build(family, **spec['kwargs'])
  variables = keras_to_variables(keras_model, module, images, spec['mapper'])
  our_exe, our_cost = _compile(
      functools.partial(module.apply, train=False), variables, images
  )
  our_logits = np.asarray(our_exe(variables, images).logits)
  return dict(
      keras_logits=keras_logits,
      our_logits=our_logits,
      keras_flops=keras_cost['flops'],
      our_flops=our_cost['flops'],
  )


@pytest.mark.slow
@pytest.mark.parametrize('family', list(FAMILIES))
def test_logits_match_keras(family):
  run = oracle_run(family)
  keras_logits, our_logits = run['keras_logits'], run['our_logits']
  assert keras_logits.shape == our_logits.shape == (1, 2)
  scale = float(np.abs(keras_logits).max())
  assert scale > 1e-3, f'degenerate Keras logits {keras_logits}'
  print(f'{family}: keras {keras_logits} ours {our_logits}')
  np.testing.assert_allclose(
      our_logits, keras_logits, rtol=1e-4, atol=1e-4 * max(1.0, scale)
  )


@pytest.mark.slow
@pytest.mark.parametrize('family', list(FAMILIES))
def test_forward_flops_match_keras(family):
  run = oracle_run(family)
  print(
      f'{family}: keras {run["keras_flops"] / 1e9:.3f} GFLOPs, '
      f'ours {run["our_flops"] / 1e9:.3f} GFLOPs'
  )
  assert run['our_flops'] == pytest.approx(run['keras_flops'], rel=0.03)

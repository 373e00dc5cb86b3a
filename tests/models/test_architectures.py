"""Architecture tests: Keras parameter parity, aux towers, Tables 1-3 stage
shapes (all through jax.eval_shape, no compute), small-variant forward passes,
dropout behaviour, `build` errors and `summarize`."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ankle_jax import models
from ankle_jax.models import layers
from ankle_jax.models import resnet_v2

# keras.applications (Keras 3), 300x300x1, 2 classes, no aux: (total incl. BN
# statistics, trainable).
KERAS_COUNTS = {
    'inception_v3': (21_806_306, 21_771_874),
    'xception': (20_865_002, 20_810_474),
    'resnet101_v2': (42_624_386, 42_526_722),
}
# Paper layout (default) and Keras layout of each family.
VARIANTS = {
    'inception_v3': ({}, {}),
    'xception': ({'valid_stem': False}, {'valid_stem': True}),
    'resnet101_v2': (
        {'stride_in_first_unit': True},
        {'stride_in_first_unit': False},
    ),
}
# Auxiliary tower at 300 px: 1x1 conv (C_in x 128) + BN scale/offset (256) +
# Dense 3200x700 (+700) + Dense 700x2 (+2) = C_in * 128 + 2_242_358, plus 256
# BN statistics. C_in = 768 (Inception mixed7), 728 (Xception middle flow),
# 1024 (ResNet first conv4 unit).
AUX_PARAMS = {
    'inception_v3': 2_340_662,
    'xception': 2_335_542,
    'resnet101_v2': 2_373_430,
}
AUX_BATCH_STATS = 256

# Tables 1-3 of the paper: (row, "Input size"). A row's output is the next
# non-auxiliary row's input; 'auxiliary' is the aux tower's input and
# 'avg_pool' the ClassifierHead's input.
TABLE_1 = (
    ('conv1', (300, 300, 1)),
    ('conv2', (149, 149, 32)),
    ('conv3', (147, 147, 32)),
    ('max_pool1', (147, 147, 64)),
    ('conv4', (73, 73, 64)),
    ('conv5', (73, 73, 80)),
    ('max_pool2', (71, 71, 192)),
    ('inception1', (35, 35, 192)),
    ('inception2', (35, 35, 288)),
    ('inception3', (17, 17, 768)),
    ('auxiliary', (17, 17, 768)),
    ('inception5', (17, 17, 768)),
    ('inception6', (8, 8, 1280)),
    ('avg_pool', (8, 8, 2048)),
)
TABLE_2 = (
    ('conv1', (300, 300, 1)),
    ('max_pool1', (147, 147, 64)),
    ('conv2', (74, 74, 64)),
    ('conv3', (74, 74, 256)),
    ('conv4', (37, 37, 512)),
    ('auxiliary', (19, 19, 1024)),
    ('conv5', (19, 19, 1024)),
    ('avg_pool', (10, 10, 2048)),
)
TABLE_3 = (
    ('conv1', (300, 300, 1)),
    ('conv2', (150, 150, 32)),
    ('conv3', (150, 150, 64)),
    ('max_pool1', (150, 150, 128)),
    ('conv4', (75, 75, 128)),
    ('max_pool2', (75, 75, 256)),
    ('conv5', (38, 38, 256)),
    ('max_pool3', (38, 38, 728)),
    ('conv6', (19, 19, 728)),
    ('auxiliary', (19, 19, 728)),
    ('conv7', (19, 19, 728)),
    ('max_pool4', (19, 19, 1024)),
    ('conv8', (10, 10, 1024)),
    ('conv9', (10, 10, 1536)),
    ('avg_pool', (10, 10, 2048)),
)
TABLES = {'inception_v3': TABLE_1, 'resnet101_v2': TABLE_2, 'xception': TABLE_3}

SMALL_WIDTH = 0.125


def _images(size: int, batch: int = 1) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((batch, size, size, 1), jnp.float32)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _random_variables(module, images, seed: int = 0):
  """Random variables with the structure of `module.init`'s, without init.

  Compiling `module.init` costs ~1-2 minutes on a loaded 2-core CPU (XLA
  compiles one inlined threefry per parameter), so the tests draw He-scaled
  kernels and non-trivial BN statistics with numpy from init's eval_shape.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name == 'scale':
      return rng.uniform(0.8, 1.2, leaf.shape).astype(np.float32)
    if name in ('mean', 'bias'):
      return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, _abstract_init(module, images))


def _abstract_init(module, images):
  return jax.eval_shape(
      functools.partial(module.init, train=False), jax.random.key(0), images
  )


@pytest.mark.parametrize('layout', ['paper', 'keras'])
@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_variable_counts_match_keras(name, layout):
  kwargs = VARIANTS[name][layout == 'keras']
  variables = _abstract_init(models.build(name, **kwargs), _images(300))
  trainable = _count(variables['params'])
  total = trainable + _count(variables['batch_stats'])
  assert (total, trainable) == KERAS_COUNTS[name]


def test_dense_scope_is_the_classifier_only():
  """The L2 'dense' scope (2-D 'kernel' params) is the heads' Dense layers."""
  module = models.build('xception', aux_head=True, width_multiplier=SMALL_WIDTH)
  params = _abstract_init(module, _images(75))['params']
  dense = [
      jax.tree_util.keystr(path)
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if path[-1].key == 'kernel' and leaf.ndim == 2
  ]
  assert dense == [
      "['aux_tower']['dense1']['kernel']",
      "['aux_tower']['dense2']['kernel']",
      "['head']['dense']['kernel']",
  ]


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_aux_tower_adds_documented_head(name):
  plain = _abstract_init(models.build(name), _images(300))
  module = models.build(name, aux_head=True)
  with_aux = _abstract_init(module, _images(300))
  aux_params = _count(with_aux['params']['aux_tower'])
  assert aux_params == AUX_PARAMS[name]
  assert 2_300_000 < aux_params < 2_400_000
  assert (
      _count(with_aux['params']) - _count(plain['params']) == AUX_PARAMS[name]
  )
  assert (
      _count(with_aux['batch_stats']) - _count(plain['batch_stats'])
      == AUX_BATCH_STATS
  )
  outputs = jax.eval_shape(
      functools.partial(module.apply, train=False),
      with_aux,
      _images(300, batch=3),
  )
  assert outputs.logits.shape == (3, 2)
  assert outputs.aux_logits.shape == (3, 2)
  assert outputs.aux_logits.dtype == jnp.float32


def _stage_shapes(module, images) -> dict[str, tuple[int, ...]]:
  """Sown stage outputs, plus the aux tower's and ClassifierHead's inputs."""
  captured = {}

  def capture_inputs(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      if isinstance(context.module, layers.AuxTower):
        captured['auxiliary'] = args[0].shape
      elif isinstance(context.module, layers.ClassifierHead):
        captured['avg_pool'] = args[0].shape
    return next_fun(*args, **kwargs)

  def run(variables, x):
    _, state = module.apply(
        variables, x, train=False, mutable=['intermediates']
    )
    return state['intermediates']

  variables = _abstract_init(module, images)
  with nn.intercept_methods(capture_inputs):
    sown = jax.eval_shape(run, variables, images)
  shapes = {
      name.removesuffix('_output'): value[0].shape
      for name, value in sown.items()
  }
  shapes.update(captured)
  return shapes


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_stage_shapes_follow_paper_tables(name):
  shapes = _stage_shapes(models.build(name, aux_head=True), _images(300))
  table = TABLES[name]
  rows = [row for row, _ in table if row != 'auxiliary']
  inputs = dict(table)
  for row, next_row in zip(rows[:-1], rows[1:]):
    assert shapes[row] == (1, *inputs[next_row]), (row, next_row)
  assert shapes['auxiliary'] == (1, *inputs['auxiliary'])
  assert shapes['avg_pool'] == (1, *inputs['avg_pool'])


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_keras_layout_differs_from_paper_layout_only_in_early_stages(name):
  paper, keras_layout = (models.build(name, **kw) for kw in VARIANTS[name])
  paper_shapes = _stage_shapes(paper, _images(300))
  keras_shapes = _stage_shapes(keras_layout, _images(300))
  assert paper_shapes['avg_pool'] == keras_shapes['avg_pool']
  if name != 'inception_v3':
    assert paper_shapes['conv1'] != keras_shapes['conv1']


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_smallest_input_forward(name):
  module = models.build(name, aux_head=True, width_multiplier=SMALL_WIDTH)
  images = jax.random.normal(jax.random.key(1), (2, 75, 75, 1))
  variables = _random_variables(module, images)
  assert set(variables) == {'params', 'batch_stats'}
  outputs = jax.jit(functools.partial(module.apply, train=False))(
      variables, images
  )
  assert isinstance(outputs, layers.ModelOutputs)
  assert outputs.logits.shape == outputs.aux_logits.shape == (2, 2)
  assert np.all(np.isfinite(outputs.logits))
  assert np.all(np.isfinite(outputs.aux_logits))


def test_dropout_only_in_train_mode():
  module = models.build(
      'xception', dropout_rate=0.5, width_multiplier=SMALL_WIDTH
  )
  images = jax.random.normal(jax.random.key(1), (4, 75, 75, 1))
  variables = _random_variables(module, images)
  evaluate = jax.jit(functools.partial(module.apply, train=False))
  eval_logits = evaluate(variables, images).logits
  np.testing.assert_array_equal(eval_logits, evaluate(variables, images).logits)
  no_dropout = models.build(
      'xception', dropout_rate=0.0, width_multiplier=SMALL_WIDTH
  )
  np.testing.assert_allclose(
      eval_logits,
      no_dropout.apply(variables, images, train=False).logits,
      rtol=1e-4,
  )

  @jax.jit
  def train(key):
    outputs, updates = module.apply(
        variables,
        images,
        train=True,
        rngs={'dropout': key},
        mutable=['batch_stats'],
    )
    return outputs.logits, updates

  logits_a, updates = train(jax.random.key(2))
  logits_b, _ = train(jax.random.key(3))
  logits_a_again, _ = train(jax.random.key(2))
  assert not np.allclose(logits_a, logits_b)
  np.testing.assert_array_equal(logits_a, logits_a_again)
  # Train mode updates the running statistics.
  assert not np.allclose(
      updates['batch_stats']['block1_conv1']['bn']['mean'],
      variables['batch_stats']['block1_conv1']['bn']['mean'],
  )


def test_bfloat16_computation_keeps_float32_variables():
  module = models.build(
      'resnet101_v2',
      aux_head=True,
      dtype='bfloat16',
      width_multiplier=SMALL_WIDTH,
  )
  variables = _abstract_init(module, _images(75))
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  outputs = jax.eval_shape(
      functools.partial(module.apply, train=False), variables, _images(75)
  )
  assert outputs.logits.dtype == outputs.aux_logits.dtype == jnp.float32


def test_build_rejects_unknown_names_and_kwargs():
  with pytest.raises(ValueError, match='inception_v3, resnet101_v2, xception'):
    models.build('resnet50')
  with pytest.raises(ValueError, match='stride_in_first_unit'):
    models.build('resnet101_v2', valid_stem=True)
  with pytest.raises(ValueError, match=r'\(none\)'):
    models.build('inception_v3', aux_block=2)
  with pytest.raises(ValueError, match='aux_block=9'):
    models.build('xception', aux_head=True, aux_block=9)


def test_xception_aux_block_moves_the_tower():
  """The aux tower reads the chosen middle-flow block's output."""
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(
        context.module, (layers.AuxTower, models.xception.MiddleBlock)
    ):
      seen.append(type(context.module).__name__)
    return next_fun(*args, **kwargs)

  for aux_block in (3, 4):
    seen.clear()
    module = models.build(
        'xception',
        aux_head=True,
        aux_block=aux_block,
        width_multiplier=SMALL_WIDTH,
    )
    with nn.intercept_methods(record):
      _abstract_init(module, _images(75))
    assert seen.index('AuxTower') == aux_block


def test_summarize_small_model():
  module = models.build('xception', aux_head=True, width_multiplier=SMALL_WIDTH)
  result = models.summarize(module, image_size=75, batch_size=2)
  variables = _abstract_init(module, _images(75))
  assert result['trainable_params'] == _count(variables['params'])
  assert result['batch_stats'] == _count(variables['batch_stats'])
  assert result['total_params'] == (
      result['trainable_params'] + result['batch_stats']
  )
  assert result['aux_params'] == _count(variables['params']['aux_tower'])
  assert result['output_shapes'] == {'logits': (2, 2), 'aux_logits': (2, 2)}
  assert result['forward_flops'] > 0
  text = models.format_summary(result, 'xception')
  assert f'{result["total_params"]:,}' in text


def test_summarize_full_size_counts_without_flops():
  result = models.summarize(
      models.build('xception', aux_head=True), 300, compute_flops=False
  )
  assert result['total_params'] == (
      KERAS_COUNTS['xception'][0] + AUX_PARAMS['xception'] + AUX_BATCH_STATS
  )
  assert result['aux_params'] == AUX_PARAMS['xception']
  assert result['forward_flops'] is None


def test_unknown_model_name_is_said_once_and_briefly():
  with pytest.raises(ValueError) as error:
    models.build('resnet50')
  assert str(error.value) == (
      "unknown model name 'resnet50'; valid names: inception_v3, "
      'resnet101_v2, xception'
  )


def test_from_config_checks_family_options_in_one_place():
  config = ml_collections.ConfigDict(
      {
          'name': 'resnet101_v2',
          'aux_head': False,
          'dropout_rate': 0.5,
          'width_multiplier': 0.0625,
          # An Xception option, as when --config.model.name switches family.
          'kwargs': {'aux_block': 3, 'keras_stem': True},
      }
  )
  module = models.from_config(config)
  assert isinstance(module, resnet_v2.Model)
  assert module.keras_stem and module.dropout_rate == 0.5
  config.kwargs.no_such_option = 1
  with pytest.raises(ValueError, match='no_such_option'):
    models.from_config(config)


# The layer whose output the aux tower reads (docs/paper.md, section 2):
# Inception after the last 17x17 block, ResNet the first conv4 unit, Xception
# middle-flow block 3 (block5 is the first).
AUX_SOURCE = {
    'inception_v3': ('mixed7',),
    'resnet101_v2': ('conv4_block1',),
    'xception': ('block7',),
}


def _aux_tower_source(module, images) -> list[tuple[str, ...]]:
  """Paths of the modules whose output IS the aux tower's input (the same
  traced array, not merely one of the same shape)."""
  outputs, tower_inputs = [], []

  def record(next_fun, args, kwargs, context):
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if isinstance(context.module, layers.AuxTower):
      tower_inputs.append(args[0])
    out = next_fun(*args, **kwargs)
    outputs.append((tuple(context.module.path), out))
    return out

  with nn.intercept_methods(record):
    _abstract_init(module, images)
  assert len(tower_inputs) == 1
  return [
      path
      for path, out in outputs
      if any(leaf is tower_inputs[0] for leaf in jax.tree_util.tree_leaves(out))
  ]


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_aux_tower_reads_the_documented_layer(name):
  """By the layer it reads: mixed5-7, conv4_block1-23 and block5-12 share
  their shapes, so a shape check could not tell them apart."""
  module = models.build(name, aux_head=True, width_multiplier=SMALL_WIDTH)
  assert _aux_tower_source(module, _images(75)) == [AUX_SOURCE[name]]


def test_aux_tower_source_check_has_teeth():
  """The same check names another block when the tower moves."""
  module = models.build(
      'xception', aux_head=True, aux_block=4, width_multiplier=SMALL_WIDTH
  )
  assert _aux_tower_source(module, _images(75)) == [('block8',)]


def _init_functions(module, images) -> tuple[list[Any], list[str]]:
  """The (kernel_init, bias_init) of every nn.Conv / nn.Dense the module
  calls, and the kernel_init name of every SeparableConv (whose depthwise
  kernel is its own param)."""
  dense_and_conv, separable = [], []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      if isinstance(context.module, (nn.Conv, nn.Dense)):
        dense_and_conv.append(
            (context.module.kernel_init, context.module.bias_init)
        )
      elif isinstance(context.module, layers.SeparableConv):
        separable.append(context.module.kernel_init)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = _abstract_init(module, images)
  kernels = [
      path
      for path, _ in jax.tree_util.tree_leaves_with_path(variables['params'])
      if path[-1].key == 'kernel'
  ]
  assert len(dense_and_conv) == len(kernels)
  return dense_and_conv, separable


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_kernel_init_reaches_every_conv_and_dense(name):
  module = models.from_config(
      {
          'name': name,
          'aux_head': True,
          'width_multiplier': SMALL_WIDTH,
          'kernel_init': 'authors',
      }
  )
  authors = layers.initializers('authors')
  dense_and_conv, separable = _init_functions(module, _images(75))
  assert dense_and_conv
  assert set(dense_and_conv) == {(authors.kernel, authors.bias)}
  assert set(separable) <= {'authors'}
  assert bool(separable) == (name == 'xception')


def test_kernel_init_default_is_flax_lecun_normal():
  """No kernel_init (and runs saved before the field) means lecun_normal."""
  module = models.from_config({'name': 'xception', 'aux_head': True})
  assert module.kernel_init == 'lecun_normal'
  lecun = layers.initializers('lecun_normal')
  assert set(_init_functions(module, _images(75))[0]) == {
      (lecun.kernel, lecun.bias)
  }
  with pytest.raises(ValueError, match='lecun_normal, glorot_uniform, authors'):
    models.build('xception', kernel_init='he_normal')


# sum(|kernel|) of small layers initialized with jax.random.key(0) before
# kernel_init existed (Flax's nn.Conv / nn.Dense defaults): the default must
# keep giving every existing seed the same parameters.
DEFAULT_INIT_KERNEL_ABS_SUMS = {
    'convbn': {"['conv']['kernel']": 30.726502297911793},
    'sepconv': {
        "['depthwise_kernel']": 11.282342120073736,
        "['pointwise']['kernel']": 10.968506217002869,
    },
    'aux': {
        "['conv']['conv']['kernel']": 12.72528694011271,
        "['dense1']['kernel']": 185.72193282647675,
        "['dense2']['kernel']": 5.980661457404494,
    },
    'head': {"['dense']['kernel']": 3.163863611407578},
    'unit': {
        "['conv1']['conv']['kernel']": 4.651490826159716,
        "['conv2']['conv']['kernel']": 13.29603422852233,
        "['conv3']['kernel']": 15.998040215024957,
        "['shortcut_conv']['kernel']": 21.768215842545033,
    },
}


def test_default_init_gives_the_same_parameters_as_before():
  x = jnp.ones((1, 17, 17, 4))
  modules = {
      'convbn': layers.ConvBN(6, (3, 3), use_bias=True),
      'sepconv': layers.SeparableConv(6),
      'aux': layers.AuxTower(2, conv_features=8, hidden_features=16),
      'head': layers.ClassifierHead(2),
      'unit': resnet_v2.PreActBottleneck(3, projection=True),
  }
  for name, module in modules.items():
    args = (x,) if name == 'sepconv' else (x, False)
    params = module.init(jax.random.key(0), *args)['params']
    sums = {
        jax.tree_util.keystr(path): float(np.sum(np.abs(leaf)))
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key in ('kernel', 'depthwise_kernel')
    }
    assert sums == pytest.approx(
        DEFAULT_INIT_KERNEL_ABS_SUMS[name], rel=1e-5
    ), name
    biases = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key == 'bias'
    ]
    assert all(np.all(np.asarray(b) == 0.0) for b in biases)


# Full-size aux tower (3200 -> 700 -> 2) and head (2048 -> 2) at 300 px.
# (std of the 3200x700 kernel, bound on |w|, bias, L2 sum(W^2)/2 of the
# three dense kernels): lecun_normal std sqrt(1/3200); glorot_uniform
# std sqrt(2/3900), bound sqrt(6/3900); authors 0.1 x the std of a standard
# normal cut at +-2 (0.8796), bound 0.2, biases 0.1. L2: the numbers in the
# config docstrings (x l2_alpha 0.7: ~246, ~405, ~6,080).
INIT_STATISTICS = {
    'lecun_normal': (
        np.sqrt(1 / 3200),
        2 * np.sqrt(1 / 3200) / 0.8796,
        0.0,
        352,
    ),
    'glorot_uniform': (np.sqrt(2 / 3900), np.sqrt(6 / 3900), 0.0, 578),
    'authors': (0.1 * 0.8796, 0.2, 0.1, 8687),
}


@pytest.mark.parametrize('kernel_init', layers.KERNEL_INITS)
def test_kernel_statistics_of_each_init(kernel_init):
  std, bound, bias, l2 = INIT_STATISTICS[kernel_init]
  tower = layers.AuxTower(2, kernel_init=kernel_init)
  head = layers.ClassifierHead(2, kernel_init=kernel_init)
  params = {
      'aux_tower': tower.init(
          jax.random.key(0), jnp.ones((1, 19, 19, 8)), False
      )['params'],
      'head': head.init(jax.random.key(1), jnp.ones((1, 10, 10, 2048)), False)[
          'params'
      ],
  }
  kernel = np.asarray(params['aux_tower']['dense1']['kernel'])
  assert kernel.shape == (3200, 700)
  assert kernel.std() == pytest.approx(std, rel=0.01)
  assert abs(kernel.mean()) < 0.01 * std
  assert np.abs(kernel).max() <= bound * (1 + 1e-6)
  assert np.abs(kernel).max() >= 0.97 * bound  # the tails reach the bound
  for layer in ('dense1', 'dense2'):
    np.testing.assert_array_equal(
        params['aux_tower'][layer]['bias'], np.float32(bias)
    )
  dense_l2 = sum(
      float(np.sum(np.square(leaf, dtype=np.float64))) / 2
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if path[-1].key == 'kernel' and leaf.ndim == 2
  )
  assert dense_l2 == pytest.approx(l2, rel=0.01)

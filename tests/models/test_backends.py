"""dtype='auto' and model.conv_impl: what they resolve to, and that every
choice computes the same model from the same parameters.

Tolerances, on CPU, for Xception and ResNet at 75 px, batch 2, train mode (batch
statistics), loss = CE + 0.4 CE(aux):
  * bfloat16 vs float32 computation (parameters float32 in both): loss within
    BF16_LOSS_RTOL relative, gradient (all parameters, flattened) cosine at
    least BF16_GRAD_COSINE. Measured (2026-12-07): loss 2e-5 (Xception) and
    7e-3 (ResNet) relative, cosine 0.92 and 0.90; the gradients' relative L2
    error is ~0.4: train-mode BatchNorm's backward subtracts nearly equal
    terms at batch 2, and bfloat16 keeps 8 bits of each.
  * conv_impl 'gpu' vs 'cpu' (both float32): logits within IMPL_ATOL, gradient
    relative error (L2) under IMPL_GRAD_RTOL: the two differ only in the
    order of float32 sums.
The networks are the families' own modules at reduced width and depth (one
middle-flow block, one unit per stage), so that the compilations stay cheap.
Inception V3 has no depth knob and its train-step compile costs minutes on 2
CPU cores, so it is checked by its parameter tree only (the same under each
conv_impl); what conv_impl changes in it, its 1x1 convolutions, ResNet has
too.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ankle_jax import checkpoint
from ankle_jax import console
from ankle_jax import models
from ankle_jax.models import backends
from ankle_jax.models import resnet_v2
from ankle_jax.models import xception
from ankle_jax.training import config_checks
from configs import default as default_config

BF16_LOSS_RTOL = 2e-2
BF16_GRAD_COSINE = 0.85
IMPL_ATOL = 1e-4
IMPL_GRAD_RTOL = 1e-3
IMAGE_SIZE = 75
AUX_WEIGHT = 0.4


def test_auto_resolves_by_backend_and_explicit_values_win():
  assert backends.resolve_dtype('auto', 'cpu') == jnp.float32
  assert backends.resolve_dtype('auto', 'gpu') == jnp.bfloat16
  assert backends.resolve_dtype('auto', 'tpu') == jnp.bfloat16
  assert backends.resolve_dtype('float32', 'gpu') == jnp.float32
  assert backends.resolve_dtype('bfloat16', 'cpu') == jnp.bfloat16
  assert backends.resolve_conv_impl('auto', 'cpu') == 'cpu'
  assert backends.resolve_conv_impl('auto', 'gpu') == 'gpu'
  assert backends.resolve_conv_impl('cpu', 'gpu') == 'cpu'
  assert backends.resolve_conv_impl('gpu', 'cpu') == 'gpu'
  with pytest.raises(ValueError, match='auto, cpu, gpu'):
    backends.resolve_conv_impl('cudnn', 'gpu')


def _run_config(**fields):
  config = default_config.get_config()
  config.model.width_multiplier = 0.125
  config.update_from_flattened_dict(fields)
  return config


def test_run_config_defaults_are_auto_and_resolve_once_at_build():
  config = _run_config()
  assert (config.dtype, config.model.conv_impl) == ('auto', 'auto')
  module = models.from_run_config(config)
  assert module.dtype == jnp.float32  # The tests run on CPU.
  assert module.conv_impl == 'cpu'
  module = models.from_run_config(
      _run_config(dtype='bfloat16', **{'model.conv_impl': 'gpu'})
  )
  assert (module.dtype, module.conv_impl) == (jnp.bfloat16, 'gpu')
  saved_before = _run_config().to_dict()  # A config.json of an older run.
  del saved_before['dtype'], saved_before['model']['conv_impl']
  module = models.from_run_config(saved_before)
  assert (module.dtype, module.conv_impl) == (jnp.float32, 'cpu')


def test_config_checks_name_the_valid_conv_impls_and_dtypes():
  config_checks.validate_config(_run_config())
  with pytest.raises(console.UserError, match='model.conv_impl.*auto, cpu'):
    config_checks.validate_config(_run_config(**{'model.conv_impl': 'x'}))
  with pytest.raises(console.UserError, match='dtype.*auto, float32'):
    config_checks.validate_config(_run_config(dtype='float16'))


def _images(batch_size: int = 2) -> jax.Array:
  return jax.random.uniform(
      jax.random.key(1), (batch_size, IMAGE_SIZE, IMAGE_SIZE, 1)
  )


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_every_conv_impl_makes_the_same_parameters(name):
  trees = {}
  for conv_impl in ('cpu', 'gpu'):
    module = models.build(name, aux_head=True, conv_impl=conv_impl)
    variables = jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.key(0),
        _images(1),
    )
    trees[conv_impl] = jax.tree.map(lambda x: (x.shape, x.dtype), variables)
  assert trees['cpu'] == trees['gpu']


FAMILIES = ('resnet101_v2', 'xception')


def _small_family(name: str, dtype: str, conv_impl: str):
  """The family's module, small (see the module docstring), with its aux
  tower."""
  common = {
      'aux_head': True,
      'dtype': jnp.dtype(dtype),
      'conv_impl': conv_impl,
  }
  if name == 'xception':
    return xception.Xception(
        width_multiplier=1 / 8, num_middle_blocks=1, aux_block=1, **common
    )
  return resnet_v2.Model(
      width_multiplier=1 / 8, stage_sizes=(1, 1, 1, 1), **common
  )


@functools.cache
def _initial_variables(name: str):
  module = _small_family(name, 'float32', 'cpu')
  return jax.jit(functools.partial(module.init, train=False))(
      jax.random.key(0), _images()
  )


@functools.cache
def _loss_fn(name: str, dtype: str, conv_impl: str):
  """jitted (params, batch_stats) -> ((loss, logits), d loss / d params)."""
  module = _small_family(name, dtype, conv_impl)
  labels = jnp.array([0, 1])

  def loss(params, batch_stats):
    outputs, _ = module.apply(
        {'params': params, 'batch_stats': batch_stats},
        _images(),
        train=True,
        mutable=['batch_stats'],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels
    value = ce(outputs.logits, labels).mean()
    value += AUX_WEIGHT * ce(outputs.aux_logits, labels).mean()
    return value, outputs.logits

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


@functools.cache
def _result(name: str, dtype: str, conv_impl: str):
  variables = _initial_variables(name)
  (loss, logits), grads = _loss_fn(name, dtype, conv_impl)(
      variables['params'], variables['batch_stats']
  )
  flat = np.concatenate(
      [np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(grads)]
  )
  return float(loss), np.asarray(logits), flat


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize('name', FAMILIES)
def test_bfloat16_loss_and_gradients_follow_float32(name):
  loss32, _, grads32 = _result(name, 'float32', 'cpu')
  loss16, _, grads16 = _result(name, 'bfloat16', 'cpu')
  cosine = _cosine(grads16, grads32)
  assert abs(loss16 - loss32) <= BF16_LOSS_RTOL * abs(loss32), (loss16, loss32)
  assert cosine >= BF16_GRAD_COSINE, cosine


@pytest.mark.parametrize('name', FAMILIES)
def test_conv_impls_give_the_same_logits_and_gradients(name):
  loss_cpu, logits_cpu, grads_cpu = _result(name, 'float32', 'cpu')
  loss_gpu, logits_gpu, grads_gpu = _result(name, 'float32', 'gpu')
  np.testing.assert_allclose(logits_gpu, logits_cpu, atol=IMPL_ATOL)
  assert loss_gpu == pytest.approx(loss_cpu, rel=1e-5)
  error = np.linalg.norm(grads_gpu - grads_cpu) / np.linalg.norm(grads_cpu)
  assert error <= IMPL_GRAD_RTOL, error


def test_checkpoint_saved_under_one_conv_impl_restores_under_the_other(
    tmp_path,
):
  variables = _initial_variables('xception')  # Initialized under 'cpu'.
  ckpts = checkpoint.RunCheckpoints(tmp_path, keep=1)
  tree = {
      'step': jnp.asarray(1),
      'params': variables['params'],
      'batch_stats': variables['batch_stats'],
      'opt_state': {},
      'rng': jax.random.key_data(jax.random.key(0)),
  }
  ckpts.save_latest(1, tree, [None], {})
  ckpts.close()
  restored, step = checkpoint.restore_variables(tmp_path, 'latest')
  assert step == 1
  (loss, logits), _ = _loss_fn('xception', 'float32', 'gpu')(
      restored['params'], restored['batch_stats']
  )
  loss_gpu, logits_gpu, _ = _result('xception', 'float32', 'gpu')
  np.testing.assert_array_equal(np.asarray(logits), logits_gpu)
  assert float(loss) == loss_gpu
  _, logits_cpu, _ = _result('xception', 'float32', 'cpu')
  np.testing.assert_allclose(np.asarray(logits), logits_cpu, atol=IMPL_ATOL)


def test_summary_flops_come_from_the_lowering_without_compiling(monkeypatch):
  def no_compile(self, *args, **kwargs):
    raise AssertionError('summarize compiled the forward pass')

  monkeypatch.setattr(jax.stages.Lowered, 'compile', no_compile)
  module = models.build('xception', width_multiplier=1 / 16)
  summary = models.summarize(module, IMAGE_SIZE, batch_size=2)
  assert summary['forward_flops'] > 1e6

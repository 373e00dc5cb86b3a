"""config.model.bn_momentum reaches every BatchNorm of every family, and sets
how far one train step moves the running statistics."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from ankle_jax import console
from ankle_jax import models
from ankle_jax.models import layers
from ankle_jax.training import config_checks
from configs import default as default_config

IMAGE_SIZE = 75


def _images(batch_size: int = 2) -> jax.Array:
  return jax.random.uniform(
      jax.random.key(1), (batch_size, IMAGE_SIZE, IMAGE_SIZE, 1)
  )


def _batch_norm_momenta(module: nn.Module) -> list[float]:
  """The momentum of every BatchNorm the module calls (abstract init)."""
  momenta = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      momenta.append(context.module.momentum)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.key(0),
        _images(1),
    )
  return momenta


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_every_batch_norm_takes_the_configured_momentum(name):
  config = default_config.get_config()
  config.model.name = name
  config.model.aux_head = True
  assert config.model.bn_momentum == layers.KERAS_BN_MOMENTUM
  default_momenta = _batch_norm_momenta(models.from_run_config(config))
  assert default_momenta
  assert set(default_momenta) == {layers.KERAS_BN_MOMENTUM}
  config.model.bn_momentum = 0.9
  momenta = _batch_norm_momenta(models.from_run_config(config))
  assert len(momenta) == len(default_momenta)
  assert set(momenta) == {0.9}


def test_runs_saved_before_the_field_keep_keras_momentum():
  saved_before = default_config.get_config().to_dict()
  del saved_before['model']['bn_momentum']
  module = models.from_run_config(saved_before)
  assert module.bn_momentum == layers.KERAS_BN_MOMENTUM


def test_one_train_step_moves_running_statistics_by_one_minus_momentum():
  """running = m * initial + (1 - m) * batch: with m = 0.5 each running mean
  is half of the batch's (initial 0), each variance halfway to it from 1."""

  def stats_after_one_step(momentum):
    module = models.build(
        'xception', width_multiplier=0.125, bn_momentum=momentum
    )
    variables = module.init(jax.random.key(0), _images(), train=False)
    _, updates = module.apply(
        variables, _images(), train=True, mutable=['batch_stats']
    )
    return variables['batch_stats'], updates['batch_stats']

  initial, batch = stats_after_one_step(0.0)
  _, halfway = stats_after_one_step(0.5)
  expected = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, initial, batch)
  for got, want in zip(jax.tree.leaves(halfway), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The batch's statistics differ from the initial ones, so this could fail.
  assert not all(
      np.allclose(a, b)
      for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(batch))
  )


def test_momentum_outside_the_unit_interval_is_a_config_error():
  config = default_config.get_config()
  config.model.bn_momentum = 1.0
  with pytest.raises(console.UserError, match=r'bn_momentum=1.0.*\[0, 1\)'):
    config_checks.validate_config(config)

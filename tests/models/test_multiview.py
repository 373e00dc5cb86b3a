"""The multi-view model: masking, permutation invariance, 1-view cases,
BatchNorm statistics over real views only, view dropout, the config door."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ankle_jax import models
from ankle_jax.models import layers
from ankle_jax.models import multiview

SIZE = 16


class TinyTrunk(nn.Module):
  """Conv -> BN -> ReLU -> ClassifierHead (+ a Dense aux head): the calling
  convention of the families, small enough to compile in a second."""

  aux_head: bool = True

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=(2, 2), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    x = nn.relu(x)
    aux = nn.Dense(2, name='aux')(jnp.mean(x, axis=(1, 2)))
    logits = layers.ClassifierHead(2, name='head')(x, train)
    return layers.ModelOutputs(logits, aux if self.aux_head else None)


def images(seed, shape):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def init(model, v=3):
  x = images(0, (2, v, SIZE, SIZE, 1))
  return model.init(jax.random.PRNGKey(1), x, jnp.ones((2, v), bool))


def train_apply(model, variables, x, mask):
  return model.apply(
      variables,
      x,
      mask,
      train=True,
      rngs={'dropout': jax.random.PRNGKey(5)},
      mutable=['batch_stats'],
  )


@pytest.mark.parametrize('fusion', multiview.FUSIONS)
def test_a_padded_view_changes_nothing_in_eval_and_train(fusion):
  model = multiview.Model(trunk=TinyTrunk(), fusion=fusion)
  variables = init(model)
  x3 = images(2, (2, 3, SIZE, SIZE, 1))
  mask3 = jnp.array([[True, True, False], [True, True, False]])
  # The same cases without the third slot, and with garbage in it.
  x2 = x3[:, :2]
  mask2 = jnp.ones((2, 2), bool)
  garbage = x3.at[:, 2].set(100.0)
  for x in (x3, garbage):
    out3 = model.apply(variables, x, mask3)
    out2 = model.apply(variables, x2, mask2)
    np.testing.assert_allclose(out3.logits, out2.logits, atol=1e-5)
    np.testing.assert_allclose(out3.aux_logits, out2.aux_logits, atol=1e-5)
    np.testing.assert_allclose(out3.attention[:, :2], out2.attention, atol=1e-6)
    np.testing.assert_array_equal(out3.attention[:, 2], 0.0)
    # Train mode: BatchNorm statistics see the real views only.
    (t3, stats3), (t2, stats2) = (
        train_apply(model, variables, x, mask3),
        train_apply(model, variables, x2, mask2),
    )
    np.testing.assert_allclose(t3.logits, t2.logits, atol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), stats3, stats2
    )


def test_the_mask_matters_when_a_real_view_is_hidden():
  model = multiview.Model(trunk=TinyTrunk(), fusion='mean')
  variables = init(model)
  x = images(3, (1, 3, SIZE, SIZE, 1))
  full = model.apply(variables, x, jnp.ones((1, 3), bool)).logits
  hidden = model.apply(variables, x, jnp.array([[True, True, False]])).logits
  assert float(jnp.abs(full - hidden).max()) > 1e-4


@pytest.mark.parametrize('fusion', multiview.FUSIONS)
def test_permuting_views_leaves_the_case_unchanged(fusion):
  model = multiview.Model(trunk=TinyTrunk(), fusion=fusion)
  variables = init(model)
  x = images(4, (2, 3, SIZE, SIZE, 1))
  mask = jnp.array([[True, True, True], [True, False, True]])
  perm = jnp.array([2, 0, 1])
  out = model.apply(variables, x, mask)
  permuted = model.apply(variables, x[:, perm], mask[:, perm])
  np.testing.assert_allclose(out.logits, permuted.logits, atol=1e-5)
  np.testing.assert_allclose(
      out.attention[:, perm], permuted.attention, atol=1e-6
  )
  np.testing.assert_allclose(
      out.view_logits[:, perm], permuted.view_logits, atol=1e-5
  )
  np.testing.assert_allclose(out.attention.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize('fusion', multiview.FUSIONS)
def test_a_one_view_case_is_its_own_view(fusion):
  model = multiview.Model(trunk=TinyTrunk(), fusion=fusion)
  variables = init(model, v=1)
  x = images(5, (3, 1, SIZE, SIZE, 1))
  out = model.apply(variables, x)
  assert out.logits.shape == (3, 2) and out.view_logits.shape == (3, 1, 2)
  np.testing.assert_allclose(out.logits, out.view_logits[:, 0], atol=1e-5)
  np.testing.assert_array_equal(out.attention, 1.0)
  # A one-view case inside a 3-slot batch reads the same.
  padded = jnp.concatenate([x, jnp.zeros((3, 2, SIZE, SIZE, 1))], axis=1)
  mask = jnp.array([[True, False, False]] * 3)
  np.testing.assert_allclose(
      model.apply(variables, padded, mask).logits, out.logits, atol=1e-5
  )


def test_attention_weights_follow_the_views_and_dropout_acts_in_train():
  model = multiview.Model(
      trunk=TinyTrunk(), fusion='attention', dropout_rate=0.5
  )
  variables = init(model)
  x = images(6, (2, 3, SIZE, SIZE, 1))
  mask = jnp.ones((2, 3), bool)
  out = model.apply(variables, x, mask)
  assert float(out.attention.std()) > 1e-4  # Not uniform: learned scores.
  a, _ = train_apply(model, variables, x, mask)
  b, _ = model.apply(
      variables,
      x,
      mask,
      train=True,
      rngs={'dropout': jax.random.PRNGKey(9)},
      mutable=['batch_stats'],
  )
  assert float(jnp.abs(a.logits - b.logits).max()) > 1e-4
  assert set(variables['params']) == {'trunk', 'attention', 'case_head'}


def test_empty_padding_cases_give_finite_outputs():
  model = multiview.Model(trunk=TinyTrunk(), fusion='attention')
  variables = init(model)
  x = images(7, (2, 3, SIZE, SIZE, 1))
  out = model.apply(
      variables, x, jnp.array([[True, False, False], [False] * 3])
  )
  assert np.isfinite(np.asarray(out.logits)).all()


def test_drop_views_keeps_real_views_and_at_least_one():
  mask = jnp.array(
      [[True, True, True], [True, False, False], [True, True, False]]
  )
  np.testing.assert_array_equal(
      multiview.drop_views(jax.random.PRNGKey(0), mask, 0.0), mask
  )
  kept = jnp.stack(
      [
          multiview.drop_views(jax.random.PRNGKey(i), mask, 0.9)
          for i in range(200)
      ]
  )
  assert bool((kept <= mask).all())  # Never a padded slot.
  assert bool(kept.any(axis=2).all())  # At least one view per case.
  # Full cases lose views at rate 0.9, and which view survives varies.
  assert float(kept[:, 0].sum(axis=1).mean()) < 1.5
  assert bool(kept[:, 0].any(axis=0).all())


def test_from_config_wraps_the_family_and_eval_shape_at_full_size():
  model_config = ml_collections.ConfigDict(
      {
          'name': 'xception',
          'aux_head': True,
          'dropout_rate': 0.5,
          'width_multiplier': 1.0,
          'kwargs': {'aux_block': 3},
          'multiview': {'enabled': True, 'fusion': 'attention'},
      }
  )
  model = models.from_config(model_config)
  assert isinstance(model, multiview.Model) and models.is_multiview(
      model_config
  )
  x = jax.ShapeDtypeStruct((2, 3, 300, 300, 1), jnp.float32)
  mask = jax.ShapeDtypeStruct((2, 3), jnp.bool_)
  variables = jax.eval_shape(
      lambda x, m: model.init(jax.random.PRNGKey(0), x, m), x, mask
  )
  out = jax.eval_shape(lambda v, x, m: model.apply(v, x, m), variables, x, mask)
  assert out.logits.shape == (2, 2) and out.view_logits.shape == (2, 3, 2)
  assert out.aux_logits.shape == (2, 2) and out.attention.shape == (2, 3)
  # The trunk is the per-view Xception, variable for variable.
  per_view = models.from_config(
      {**model_config.to_dict(), 'multiview': {'enabled': False}}
  )
  trunk_vars = jax.eval_shape(
      lambda x: per_view.init(jax.random.PRNGKey(0), x),
      jax.ShapeDtypeStruct((1, 300, 300, 1), jnp.float32),
  )
  same = jax.tree.map(
      lambda a, b: a.shape == b.shape,
      trunk_vars['params'],
      variables['params']['trunk'],
  )
  assert all(jax.tree.leaves(same))
  model_config.multiview.enabled = False
  assert not models.is_multiview(model_config)


def test_unknown_fusion_is_refused():
  with pytest.raises(ValueError, match='fusion'):
    multiview.Model(trunk=TinyTrunk(), fusion='sum')


def test_a_real_family_trains_through_the_masked_trunk():
  """One train-mode apply of a small Xception: the interceptor reaches its
  BatchNorms (padded slot filled with garbage changes no statistic)."""
  model = models.from_config(
      {
          'name': 'xception',
          'aux_head': True,
          'width_multiplier': 0.0625,
          'multiview': {'enabled': True, 'fusion': 'max'},
      }
  )
  x = images(8, (2, 2, 80, 80, 1))
  mask = jnp.array([[True, False], [True, True]])
  variables = model.init(jax.random.PRNGKey(0), x, mask)
  _, stats_a = train_apply(model, variables, x, mask)
  _, stats_b = train_apply(model, variables, x.at[0, 1].set(50.0), mask)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), stats_a, stats_b
  )

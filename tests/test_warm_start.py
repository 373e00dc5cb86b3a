"""Warm start of a multi-view model from a per-view run (training.warm_start),
the trunk's schedule, normal-only view dropout and the two-stage runs
(ankle_jax.stages), on tiny models."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

import test_multiview_training as mv_training  # noqa: E402
import test_train  # noqa: E402

from ankle_jax import checkpoint  # noqa: E402
from ankle_jax import console  # noqa: E402
from ankle_jax import models  # noqa: E402
from ankle_jax import stages  # noqa: E402
from ankle_jax import train  # noqa: E402
from ankle_jax.data import cases  # noqa: E402
from ankle_jax.models import forward  # noqa: E402
from ankle_jax.models import multiview  # noqa: E402
from ankle_jax.training import losses  # noqa: E402
from ankle_jax.training import state as state_lib  # noqa: E402
from ankle_jax.training import steps  # noqa: E402
from ankle_jax.training import validation  # noqa: E402
from ankle_jax.training import warm_start  # noqa: E402
from configs import multiview_demo  # noqa: E402
from tests.models.test_multiview import TinyTrunk  # noqa: E402

compilation_cache = test_train.compilation_cache
SIZE = test_train.IMAGE_SIZE


@pytest.fixture(scope='module')
def per_view_run(tmp_path_factory):
  """A 4-step per-view TinyTrunk run (its 'best' and 'latest' checkpoints)."""
  workdir = tmp_path_factory.mktemp('per_view')
  config = test_train.tiny_config(num_train_steps=4, eval_every_steps=2)
  with pytest.MonkeyPatch.context() as monkeypatch:
    test_train._validate_stub(monkeypatch)
    train.train_and_evaluate(
        config, str(workdir), model=TinyTrunk(), sources=mv_training.sources()
    )
  return workdir


def fresh_state(fusion='attention', trunk=None, seed=3):
  model = multiview.Model(trunk=TinyTrunk(), fusion=fusion)
  opt = state_lib.OptimizerSettings(learning_rate=1e-2)
  state = state_lib.create_train_state(
      opt, model, jax.random.PRNGKey(seed), SIZE, 10, trunk=trunk
  )
  return model, state


def case_images(num_cases=4, num_views=3):
  """Standardized [B, V, S, S, 1] views that differ in texture (a mix of
  noise and a ramp per view), and a mask whose last case has 2 views."""
  keys = jax.random.split(jax.random.PRNGKey(7), 2)
  shape = (num_cases, num_views, SIZE, SIZE, 1)
  noise = jax.random.normal(keys[0], shape)
  ramp = jnp.linspace(-1.0, 1.0, SIZE)[None, None, :, None, None]
  mix = jax.random.uniform(keys[1], shape[:2] + (1, 1, 1))
  images = forward.standardized(mix * noise + (1 - mix) * ramp * 3.0)
  mask = jnp.ones(shape[:2], bool).at[-1, -1].set(False)
  return images, mask


def test_warm_start_restores_the_trunk_exactly(per_view_run):
  _, state = fresh_state()
  warm = warm_start.WarmStart(str(per_view_run), 'latest')
  started = warm_start.warm_started(state, TinyTrunk(), SIZE, warm)
  source, _ = checkpoint.restore_variables(per_view_run, 'latest')
  jax.tree.map(
      np.testing.assert_array_equal, started.params['trunk'], source['params']
  )
  jax.tree.map(
      np.testing.assert_array_equal,
      started.batch_stats['trunk'],
      source['batch_stats'],
  )
  head = source['params']['head']['dense']
  jax.tree.map(np.testing.assert_array_equal, started.params['case_head'], head)
  # The fresh trunk differed: the restore did something.
  assert not np.allclose(
      state.params['trunk']['head']['dense']['kernel'], head['kernel']
  )


@pytest.mark.parametrize('fusion', ['mean', 'attention'])
def test_step_0_case_probability_is_the_per_view_models_logit_vote(
    per_view_run, fusion
):
  """At step 0 the case logits are the mean of the per-view model's logits
  over the case's views (bound 1e-5); the gap to its soft vote is printed."""
  model, state = fresh_state(fusion)
  source, _ = checkpoint.restore_variables(per_view_run, 'best')
  # A classifier whose views disagree (4 tiny steps barely move it).
  head = source['params']['head']['dense']
  head['kernel'] = 30 * np.random.default_rng(0).normal(
      size=head['kernel'].shape
  ).astype(np.float32)
  params, batch_stats = warm_start.warm_started_variables(
      state.params,
      state.batch_stats,
      source,
      warm_start.classifier_path(TinyTrunk(), SIZE),
  )
  state = state.replace(params=params, batch_stats=batch_stats)
  images, mask = case_images()
  case = model.apply(state_lib.variables_of(state), images, mask)
  b, v = mask.shape
  per_view = TinyTrunk().apply(source, images.reshape((b * v, SIZE, SIZE, 1)))
  view_logits = per_view.logits.reshape((b, v, -1))
  logit_vote = multiview.masked_mean(view_logits, mask)
  np.testing.assert_allclose(case.logits, logit_vote, atol=1e-5)
  p_mv = jax.nn.softmax(case.logits)[:, 1]
  soft_vote = multiview.masked_mean(jax.nn.softmax(view_logits), mask)[:, 1]
  print(f'{fusion}: max |p_mv - p_soft_vote| = {np.max(abs(p_mv - soft_vote))}')
  # The views disagree, so the vote is no copy of one view.
  margins = np.asarray(view_logits[..., 1] - view_logits[..., 0])
  assert np.ptp(margins, axis=1).max() > 0.5


def train_steps(state, views, num_steps):
  loader = cases.make_case_train_loader(
      mv_training.sources()[0],
      global_batch_size=4,
      max_views=3,
      image_size=SIZE,
      seed=0,
  )
  step = jax.jit(
      lambda s, b: steps.train_step(
          s,
          b,
          learning_rate_fn=lambda _: 1e-2,
          aug=steps.AugmentSettings(),
          loss_cfg=losses.LossSettings(aux_loss_weight=0.3),
          views=views,
      )
  )
  states = [state]
  for _ in range(num_steps):
    states.append(step(states[-1], next(loader))[0])
  return states


def test_freeze_keeps_the_trunk_and_its_statistics_then_they_move():
  trunk = state_lib.TrunkSchedule(freeze_steps=2, lr_scale=1.0)
  _, state = fresh_state('attention', trunk)
  views = steps.ViewSettings(max_views=3, freeze_trunk_steps=2)
  states = train_steps(state, views, 3)
  for frozen in states[1:3]:
    jax.tree.map(
        np.testing.assert_array_equal,
        (frozen.params['trunk'], frozen.batch_stats),
        (state.params['trunk'], state.batch_stats),
    )
    assert not np.allclose(
        frozen.params['case_head']['kernel'],
        state.params['case_head']['kernel'],
    )
  moved = states[3]
  conv = lambda s: s.params['trunk']['Conv_0']['kernel']
  assert not np.allclose(conv(moved), conv(state))
  stats = lambda s: s.batch_stats['trunk']['BatchNorm_0']['mean']
  assert not np.allclose(stats(moved), stats(state))


def test_trunk_lr_scale_scales_the_trunks_updates_only():
  views = steps.ViewSettings(max_views=3)
  deltas = {}
  for scale in (1.0, 0.25):
    trunk = state_lib.TrunkSchedule(freeze_steps=0, lr_scale=scale)
    _, state = fresh_state('mean', trunk)
    _, after = train_steps(state, views, 1)
    deltas[scale] = jax.tree.map(lambda a, b: a - b, after.params, state.params)
  for part, factor in (('trunk', 0.25), ('case_head', 1.0)):
    jax.tree.map(
        lambda scaled, full, f=factor: np.testing.assert_allclose(
            scaled, f * full, rtol=1e-4, atol=1e-7
        ),
        deltas[0.25][part],
        deltas[1.0][part],
    )
  assert np.abs(deltas[1.0]['trunk']['Conv_0']['kernel']).max() > 1e-4


def write_run_config(workdir, **model_fields):
  config = test_train.tiny_config()
  for key, value in model_fields.items():
    config.model[key] = value
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json())
  return workdir


def multiview_config(init_from):
  config = mv_training.multiview_config()
  config.model.multiview.init_from = str(init_from)
  return config


def check(config, workdir='runs/mv'):
  warm = warm_start.WarmStart.from_config(config)
  warm_start.check_source(warm, config, workdir)


def test_errors_name_both_runs(tmp_path):
  with pytest.raises(console.UserError, match='no training run there') as e:
    check(multiview_config(tmp_path / 'missing'))
  assert 'missing' in str(e.value) and 'runs/mv' in str(e.value)
  wide = write_run_config(tmp_path / 'wide', width_multiplier=0.5)
  with pytest.raises(console.UserError) as e:
    check(multiview_config(wide))
  message = str(e.value)
  assert 'width_multiplier' in message and '0.5 vs 0.0625' in message
  assert str(wide) in message and 'runs/mv' in message
  assert len(message.splitlines()) <= 3
  family = write_run_config(tmp_path / 'resnet', name='resnet101_v2')
  with pytest.raises(console.UserError, match="name 'resnet101_v2' vs"):
    check(multiview_config(family))
  mv_dir = tmp_path / 'mv_source'
  mv_dir.mkdir()
  (mv_dir / 'config.json').write_text(mv_training.multiview_config().to_json())
  with pytest.raises(console.UserError, match='is a multi-view run'):
    check(multiview_config(mv_dir))
  same = write_run_config(tmp_path / 'same')
  check(multiview_config(same))  # Matches: no error.
  with pytest.raises(console.UserError, match="no 'best' checkpoint"):
    warm_start.restore_source(warm_start.WarmStart(str(same), 'best'))


def test_normal_only_view_dropout_never_drops_a_fracture_cases_view():
  labels = jnp.array([0, 1] * 8)
  mask = jnp.ones((16, 3), bool).at[1, 2].set(False)
  views = steps.ViewSettings(
      max_views=3, view_dropout=0.9, view_dropout_normal_only=True
  )
  batch = {'image': jnp.zeros((16, 3, SIZE, SIZE, 1)), 'view_mask': mask}
  batch['label'] = labels
  _, state = fresh_state()
  dropped_normal = 0
  for step in range(5):
    state = state.replace(step=step)
    _, kept = steps.train_inputs(state, batch, steps.AugmentSettings(), views)
    np.testing.assert_array_equal(kept[1::2], mask[1::2])
    assert kept[0::2].any(axis=1).all()
    dropped_normal += int((mask[0::2] & ~kept[0::2]).sum())
  assert dropped_normal > 50  # Of 120 normal views, at p=0.9.


def test_multiview_demo_plans_two_stages_unless_init_from():
  config = multiview_demo.get_config()
  per_view, multi = stages.planned_stages(config, 'runs/mv')
  assert per_view.workdir == 'runs/mv/per_view' and multi.workdir == 'runs/mv'
  assert not models.is_multiview(per_view.config.model)
  assert (per_view.config.batch_size, per_view.config.num_train_steps) == (
      16,
      400,
  )
  assert multi.config.model.multiview.init_from == 'runs/mv/per_view'
  assert multi.config.num_train_steps == 356
  config.model.multiview.init_from = 'runs/demo'
  (only,) = stages.planned_stages(config, 'runs/mv')
  assert only.config.model.multiview.init_from == 'runs/demo'
  # A multi-view run chooses its best checkpoint on a case-level metric.
  assert config.best_metric in validation.MULTIVIEW_METRIC_NAMES


def test_two_stages_train_and_resume(tmp_path, monkeypatch):
  test_train._validate_stub(monkeypatch)
  monkeypatch.setattr(
      models,
      'from_run_config',
      lambda c: multiview.Model(trunk=TinyTrunk(), fusion='attention')
      if models.is_multiview(c.model)
      else TinyTrunk(),
  )
  config = mv_training.multiview_config(num_train_steps=3)
  config.model.multiview.per_view_steps = 4
  config.model.multiview.per_view_batch_size = 4
  config.model.multiview.freeze_trunk_steps = 3
  kwargs = {'sources': mv_training.sources()}
  stages.train_stages(config, str(tmp_path), **kwargs)
  per_view_dir = tmp_path / stages.PER_VIEW_DIR
  stage_one_log = (per_view_dir / 'metrics.jsonl').read_text()
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['multiview']['init_from'] == str(per_view_dir)
  # Frozen for all 3 steps: the multi-view trunk is stage one's best.
  source, _ = checkpoint.restore_variables(per_view_dir, 'best')
  step_3, _ = checkpoint.restore_variables(tmp_path, 'latest')
  trunk = lambda variables: variables['params']['trunk']
  jax.tree.map(np.testing.assert_array_equal, trunk(step_3), source['params'])
  config.num_train_steps = 6
  summary = stages.train_stages(config, str(tmp_path), **kwargs)
  assert summary['final_step'] == 6
  assert (per_view_dir / 'metrics.jsonl').read_text() == stage_one_log
  logged = mv_training.records(tmp_path)
  assert [r['step'] for r in logged if 'val_case_auc' in r] == [3, 6]
  step_6, _ = checkpoint.restore_variables(tmp_path, 'latest')
  conv = lambda variables: trunk(variables)['Conv_0']['kernel']
  assert not np.allclose(conv(step_6), conv(step_3))

"""The FracAtlas recipes (configs/fracatlas_cpu.py, configs/fracatlas_gpu.py):
they validate,
train on the fracatlas train split, choose the checkpoint on validation ROC AUC,
and their docstrings hold the commands that build, train and evaluate. No
training here.
"""

import importlib
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from ankle_jax import models  # noqa: E402
from ankle_jax.training import config_checks  # noqa: E402

CONFIG_NAMES = ('fracatlas_cpu', 'fracatlas_gpu')


def _module(name):
  return importlib.import_module(f'configs.{name}')


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_validates_and_selects_on_validation_auc(name):
  config = _module(name).get_config()
  config_checks.validate_config(config)
  assert config.data.dataset_config == 'fracatlas'
  assert config.data.train_split == 'train'
  assert config.data.eval_split == 'validation'  # never the test split
  assert config.best_metric == 'val_auc'
  assert config.model.name in models.MODEL_NAMES
  assert config.num_train_steps > 0


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_docstring_holds_the_build_train_and_evaluate_commands(name):
  doc = _module(name).__doc__
  assert 'python -m ankle_jax.data.build --config=fracatlas' in doc
  assert f'python launch.py --config=configs/{name}.py' in doc
  assert 'python -m ankle_jax.evaluate' in doc and '--split=validation' in doc


def test_gpu_recipe_is_the_papers_full_size_and_says_it_was_not_run():
  config = _module('fracatlas_gpu').get_config()
  assert config.image_size == 300
  assert config.model.width_multiplier == 1.0
  assert 'NOT RUN' in _module('fracatlas_gpu').__doc__


def test_cpu_recipe_is_small_and_balances_the_classes():
  config = _module('fracatlas_cpu').get_config()
  assert config.model.width_multiplier < 1.0 and config.image_size < 300
  weights = config.data.sample_weights_by_label
  balanced_sampling = weights is not None and weights[1] > weights[0]
  weighted_loss = (
      config.class_weights is not None
      and config.class_weights[1] > config.class_weights[0]
  )
  assert balanced_sampling or weighted_loss

"""The three model families and the one door to them, `build`.

Calling convention (every family):
  variables = module.init(key, images_bhwc, train=False)
      -> {'params': ..., 'batch_stats': ...}
  outputs = module.apply(variables, images_bhwc, train=False)
      -> layers.ModelOutputs(logits, aux_logits)   (aux_logits None if no aux)
  outputs, updates = module.apply(variables, images_bhwc, train=True,
                                  rngs={'dropout': key},
                                  mutable=['batch_stats'])
images_bhwc: float32 [B, H, W, 1], H, W >= 75. Logits are float32 [B, classes].

`from_config` with model.multiview.enabled wraps the family in
`multiview.Model`, which takes a case at a time: apply(variables,
images_bvhw1, view_mask_bv, train=...) -> multiview.MultiViewOutputs.
"""

from collections.abc import Mapping
from typing import Any

from absl import logging
import flax.linen as nn
import jax.numpy as jnp

from ankle_jax.models import backends
from ankle_jax.models import forward
from ankle_jax.models import inception_v3
from ankle_jax.models import layers
from ankle_jax.models import multiview
from ankle_jax.models import resnet_v2
from ankle_jax.models import xception
from ankle_jax.models.layers import ModelOutputs
from ankle_jax.models.summary import format_summary
from ankle_jax.models.summary import summarize

MODEL_REGISTRY: dict[str, Any] = {
    'inception_v3': inception_v3.InceptionV3,
    'resnet101_v2': resnet_v2.ResNet101V2,
    'xception': xception.Xception,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_REGISTRY)
# config.model.kernel_init values (layers.initializers says what each is).
KERNEL_INITS: tuple[str, ...] = layers.KERNEL_INITS
# config.dtype and config.model.conv_impl values ('auto' first, the default;
# backends says what each is).
DTYPES: tuple[str, ...] = backends.DTYPES
CONV_IMPLS: tuple[str, ...] = backends.CONV_IMPLS

# Family-specific keyword arguments accepted by `build`.
FAMILY_KWARGS: dict[str, tuple[str, ...]] = {
    'inception_v3': (),
    'resnet101_v2': ('stride_in_first_unit', 'keras_stem'),
    'xception': ('valid_stem', 'aux_block'),
}


def build(
    name: str,
    *,
    num_classes: int = 2,
    aux_head: bool = False,
    dropout_rate: float = 0.0,
    width_multiplier: float = 1.0,
    dtype: str | Any = jnp.float32,
    kernel_init: str = layers.DEFAULT_KERNEL_INIT,
    conv_impl: str = backends.AUTO,
    bn_momentum: float = layers.KERAS_BN_MOMENTUM,
    **family_kwargs,
) -> nn.Module:
  """Builds model `name` (one of MODEL_NAMES) as a linen Module.

  Args:
    name: 'inception_v3', 'resnet101_v2' or 'xception'.
    num_classes: classifier outputs.
    aux_head: add the auxiliary tower (positions: docs/paper.md, section 2).
    dropout_rate: dropout before the final Dense, active only in train mode.
    width_multiplier: scales channel widths (1.0 = the paper's models).
    dtype: computation dtype (jnp dtype or name, e.g. 'bfloat16', or 'auto':
      bfloat16 on GPU/TPU, float32 on CPU; backends.resolve_dtype); params
      and BatchNorm statistics stay float32.
    kernel_init: initialization of every conv and dense kernel and bias, one
      of KERNEL_INITS: 'lecun_normal' (default, Flax's), 'glorot_uniform'
      (Keras'), 'authors' (truncated normal std 0.1, biases 0.1;
      docs/paper.md, section 2). See layers.initializers.
    conv_impl: the convolution kernels, one of CONV_IMPLS: 'auto' (default:
      'cpu' on CPU, 'gpu' elsewhere), 'cpu' (ankle_jax.models.depthwise) or
      'gpu' (lax with feature_group_count). See backends; the parameters do
      not depend on it.
    bn_momentum: momentum of every BatchNorm's running statistics, in
      [0, 1): running = momentum * running + (1 - momentum) * batch at each
      train step. Keras' 0.99 (default) averages over ~100 steps; a short
      run whose weights move fast needs less (configs/demo.py: 0.9).
    **family_kwargs: resnet101_v2: stride_in_first_unit (True = paper, False =
      Keras), keras_stem; xception: valid_stem (False = paper, True = Keras),
      aux_block (1-based middle-flow block for the aux tower, default 3).

  Returns:
    The unbound module.

  Raises:
    ValueError: unknown name, kernel_init, conv_impl or family keyword
      argument, or bn_momentum outside [0, 1).
  """
  if name not in MODEL_REGISTRY:
    raise ValueError(
        f'unknown model name {name!r}; valid names: {", ".join(MODEL_NAMES)}'
    )
  unknown = sorted(set(family_kwargs) - set(FAMILY_KWARGS[name]))
  if unknown:
    raise ValueError(
        f'unknown option(s) {", ".join(unknown)} for model {name!r}; valid: '
        f'{", ".join(FAMILY_KWARGS[name]) or "(none)"}'
    )
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'dropout_rate={dropout_rate} must be in [0, 1)')
  if width_multiplier <= 0:
    raise ValueError(f'width_multiplier={width_multiplier} must be positive')
  if not 0.0 <= bn_momentum < 1.0:
    raise ValueError(f'bn_momentum={bn_momentum} must be in [0, 1)')
  layers.initializers(kernel_init)  # ValueError naming the valid values.
  return MODEL_REGISTRY[name](
      num_classes=num_classes,
      aux_head=aux_head,
      dropout_rate=dropout_rate,
      width_multiplier=width_multiplier,
      dtype=backends.resolve_dtype(dtype),
      kernel_init=kernel_init,
      conv_impl=backends.resolve_conv_impl(conv_impl),
      bn_momentum=bn_momentum,
      **family_kwargs,
  )


def from_config(
    model_config: Mapping[str, Any],
    *,
    num_classes: int = 2,
    dtype: str | Any = jnp.float32,
) -> nn.Module:
  """Builds the model a run config describes (its `config.model` block).

  Args:
    model_config: a mapping (e.g. a ConfigDict) with `name`, `aux_head`,
      `dropout_rate`, `width_multiplier`, optional `kernel_init` (default
      'lecun_normal', also for runs saved before the field existed),
      optional `conv_impl` (default 'auto'), optional `bn_momentum`
      (default 0.99, also for runs saved before the field existed) and
      optional `kwargs` (family options).
    num_classes: classifier outputs.
    dtype: computation dtype, or 'auto' (backends.resolve_dtype).

  Family options that belong to another family (a config made for Xception,
  run with `--config.model.name=resnet101_v2`) are dropped with a warning;
  options of no family raise ValueError, as in `build`. With
  model.multiview.enabled the family becomes the trunk of a
  `multiview.Model` (fusion from model.multiview.fusion; the case head gets
  the trunk's dropout_rate and kernel_init).
  """
  if hasattr(model_config, 'to_dict'):
    model_config = model_config.to_dict()
  name = model_config['name']
  kwargs = dict(model_config.get('kwargs') or {})
  other_families = {k for names in FAMILY_KWARGS.values() for k in names}
  dropped = sorted(
      k
      for k in kwargs
      if k not in FAMILY_KWARGS.get(name, ()) and k in other_families
  )
  if dropped and name in FAMILY_KWARGS:
    logging.warning(
        'config.model.kwargs %s do not apply to %s; ignored.', dropped, name
    )
    kwargs = {k: v for k, v in kwargs.items() if k not in dropped}
  kernel_init = model_config.get('kernel_init', layers.DEFAULT_KERNEL_INIT)
  dropout_rate = float(model_config.get('dropout_rate', 0.0))
  dtype = backends.resolve_dtype(dtype)
  trunk = build(
      name,
      num_classes=num_classes,
      aux_head=bool(model_config.get('aux_head', False)),
      dropout_rate=dropout_rate,
      width_multiplier=float(model_config.get('width_multiplier', 1.0)),
      dtype=dtype,
      kernel_init=kernel_init,
      conv_impl=model_config.get('conv_impl', backends.AUTO),
      bn_momentum=float(
          model_config.get('bn_momentum', layers.KERAS_BN_MOMENTUM)
      ),
      **kwargs,
  )
  if not is_multiview(model_config):
    return trunk
  return multiview.Model(
      trunk=trunk,
      num_classes=num_classes,
      fusion=model_config['multiview'].get('fusion', 'attention'),
      dropout_rate=dropout_rate,
      dtype=dtype,
      kernel_init=kernel_init,
  )


def from_run_config(config: Mapping[str, Any]) -> nn.Module:
  """The one model builder of a run: the model a run config (a launch config
  or a run's config.json) describes, `from_config` of its `model` block with
  its num_classes and dtype (2 and 'float32' for runs saved without them).
  dtype and model.conv_impl 'auto' resolve here, by JAX's default backend
  (backends), to the plain values the modules take.

  Raises:
    ValueError: as `from_config`.
  """
  return from_config(
      config['model'],
      num_classes=config.get('num_classes', 2),
      dtype=config.get('dtype', 'float32'),
  )


def is_multiview(model_config: Mapping[str, Any]) -> bool:
  """Whether a config.model block describes a multi-view model (runs saved
  before model.multiview existed are per-view)."""
  views = model_config.get('multiview') or {}
  return bool(views.get('enabled', False))


__all__ = [
    'CONV_IMPLS',
    'DTYPES',
    'FAMILY_KWARGS',
    'KERNEL_INITS',
    'MODEL_NAMES',
    'MODEL_REGISTRY',
    'ModelOutputs',
    'backends',
    'build',
    'from_config',
    'format_summary',
    'forward',
    'from_run_config',
    'is_multiview',
    'multiview',
    'inception_v3',
    'layers',
    'resnet_v2',
    'summarize',
    'xception',
]

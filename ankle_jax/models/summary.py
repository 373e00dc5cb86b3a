"""Model summaries: parameter counts, output shapes and forward FLOPs.

Everything but the FLOPs comes from jax.eval_shape (no compute, no memory);
the FLOPs come from XLA's cost analysis of the lowered (not compiled) eval-mode
forward pass, so a summary costs a trace and a lowering, not a compilation.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax.models import multiview

AUX_SCOPE = 'aux_tower'


def count_elements(tree: Any) -> int:
  """Total number of array elements in a pytree (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_variables(
    module: nn.Module, image_size: int, batch_size: int = 1
) -> tuple[Any, jax.ShapeDtypeStruct]:
  """(variables, images) as ShapeDtypeStructs for [B, S, S, 1] inputs (a
  multi-view model: B cases of one view, [B, 1, S, S, 1])."""
  shape = (batch_size, image_size, image_size, 1)
  if isinstance(module, multiview.Model):
    shape = shape[:1] + (1,) + shape[1:]
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(
      functools.partial(module.init, train=False), jax.random.key(0), images
  )
  return variables, images


def compiled_cost(compiled: Any) -> dict[str, float]:
  """XLA cost analysis of a jax Lowered or Compiled object as one dict ({}
  where the backend gives none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per computation.
    cost = cost[0] if cost else {}
  return dict(cost or {})


def forward_flops(module: nn.Module, variables: Any, images: Any) -> float:
  """FLOPs of the eval-mode forward pass, from XLA's cost analysis of its
  lowering (the HLO before optimization: no compilation). Where a backend
  has no cost analysis of a lowering, that of the compiled forward.

  Args:
    module: the model.
    variables: its variables (arrays or ShapeDtypeStructs).
    images: [B, S, S, 1] (multi-view: [B, V, S, S, 1]) array or struct.

  Returns:
    FLOPs of one forward pass over the batch (nan when XLA gives none).
  """
  apply_fn = jax.jit(functools.partial(module.apply, train=False))
  lowered = apply_fn.lower(variables, images)
  try:
    cost = compiled_cost(lowered)
  except NotImplementedError:
    cost = {}
  if 'flops' not in cost:
    cost = compiled_cost(lowered.compile())
  return float(cost.get('flops', float('nan')))


def summarize(
    module: nn.Module,
    image_size: int,
    batch_size: int = 1,
    *,
    compute_flops: bool = True,
) -> dict[str, Any]:
  """Summarizes `module` on [batch_size, image_size, image_size, 1] inputs.

  Returns a dict with:
    total_params: params + BatchNorm statistics (Keras' "total params").
    trainable_params: params only.
    batch_stats: BatchNorm running mean/var elements.
    aux_params: trainable params of the auxiliary tower (0 without one).
    aux_batch_stats: BatchNorm statistics of the auxiliary tower.
    output_shapes: {'logits': shape, 'aux_logits': shape or None}.
    forward_flops: FLOPs of one eval forward pass, from XLA's cost analysis
      of its lowering (None if not computed).
    image_size, batch_size: the inputs summarized.
  """
  variables, images = abstract_variables(module, image_size, batch_size)
  params = variables['params']
  stats = variables.get('batch_stats', {})
  outputs = jax.eval_shape(
      functools.partial(module.apply, train=False), variables, images
  )
  flops: float | None = (
      forward_flops(module, variables, images) if compute_flops else None
  )
  trainable = count_elements(params)
  num_stats = count_elements(stats)
  if isinstance(module, multiview.Model):  # The trunk holds the aux tower.
    params, stats = params['trunk'], stats.get('trunk', {})
  return {
      'total_params': trainable + num_stats,
      'trainable_params': trainable,
      'batch_stats': num_stats,
      'aux_params': count_elements(params.get(AUX_SCOPE, {})),
      'aux_batch_stats': count_elements(stats.get(AUX_SCOPE, {})),
      'output_shapes': {
          name: (None if value is None else tuple(value.shape))
          for name, value in outputs._asdict().items()
      },
      'forward_flops': flops,
      'image_size': image_size,
      'batch_size': batch_size,
  }


def format_summary(summary: dict[str, Any], title: str = 'model') -> str:
  """Human-readable multi-line text of a `summarize` result."""
  flops = summary['forward_flops']
  flops_text = 'not computed' if flops is None else f'{flops / 1e9:.2f} GFLOPs'
  lines = [
      f'{title} @ {summary["batch_size"]}x{summary["image_size"]}x'
      f'{summary["image_size"]}x1',
      f'  total params (incl. BN stats): {summary["total_params"]:,}',
      f'  trainable params:              {summary["trainable_params"]:,}',
      f'  BatchNorm statistics:          {summary["batch_stats"]:,}',
      f'  aux tower params (+BN stats):  {summary["aux_params"]:,} '
      f'(+{summary["aux_batch_stats"]:,})',
      f'  forward FLOPs (XLA, eval):     {flops_text}',
  ]
  for name, shape in summary['output_shapes'].items():
    lines.append(f'  output {name}: {shape}')
  return '\n'.join(lines)

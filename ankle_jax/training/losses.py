"""The training loss (docs/paper.md); jax and optax only.

  loss = CE(logits, labels; class weights)
       + l2_alpha * sum(W**2) / 2   over `l2_scope` ('dense': params named
                                    'kernel' with ndim == 2, main and aux
                                    heads; 'all': every 'kernel')
       + aux_loss_weight * CE(aux_logits, labels; class weights)
       + view_loss_weight * mean over real views of CE(view_logits, case label)
                                    (multi-view models only; default 0)
CE is the per-example softmax cross-entropy times the weight of the example's
class, averaged over the batch (tf.losses' SUM_BY_NONZERO_WEIGHTS with positive
weights).
"""

from collections.abc import Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static loss settings (view_loss_weight: multi-view runs only)."""

  l2_alpha: float = 0.0
  l2_scope: str = 'dense'
  aux_loss_weight: float = 0.0
  class_weights: tuple[float, ...] | None = None
  view_loss_weight: float = 0.0

  @classmethod
  def from_config(cls, config: Any) -> 'LossSettings':
    """The loss fields of a run config (read at the top of a run)."""
    class_weights = config.get('class_weights')
    views = config.model.get('multiview') or {}
    return cls(
        l2_alpha=float(config.l2_alpha),
        l2_scope=config.l2_scope,
        aux_loss_weight=float(config.aux_loss_weight),
        class_weights=(
            None
            if class_weights is None
            else tuple(float(w) for w in class_weights)
        ),
        view_loss_weight=float(views.get('view_loss_weight', 0.0)),
    )


def l2_sum(params: Any, scope: str = 'dense') -> jax.Array:
  """sum(W**2) / 2 over the kernels of `scope` ('dense': 2-D; 'all')."""
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    last = path[-1]
    name = getattr(last, 'key', getattr(last, 'name', None))
    if name != 'kernel' or (scope == 'dense' and leaf.ndim != 2):
      continue
    total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return total / 2.0


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Mean over the batch of the softmax CE times each example's class weight.

  Args:
    logits: [B, C] (any float dtype; computed in float32).
    labels: int [B].
    class_weights: None (all 1) or C weights.
  """
  return jnp.mean(weighted_cross_entropy(logits, labels, class_weights))


def weighted_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Per-example softmax CE times the class weight: [..., C], int [...] ->
  float32 [...]."""
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
  )
  if class_weights is not None:
    per_example = per_example * jnp.asarray(class_weights, jnp.float32)[labels]
  return per_example


def view_cross_entropy(
    view_logits_bvc: jax.Array,
    labels_b: jax.Array,
    view_mask_bv: jax.Array,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Mean over the real views of each view's CE against its case's label."""
  labels_bv = jnp.broadcast_to(labels_b[:, None], view_mask_bv.shape)
  per_view = weighted_cross_entropy(view_logits_bvc, labels_bv, class_weights)
  weights = view_mask_bv.astype(jnp.float32)
  return jnp.sum(per_view * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def loss_terms(
    outputs: Any,
    labels: jax.Array,
    params: Any,
    loss_cfg: LossSettings,
    view_mask: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """loss and its parts: ce, aux_ce, l2 and (multi-view, given view_mask)
  view_ce, the mean CE of each real view alone."""
  weights = loss_cfg.class_weights
  zero = jnp.zeros((), jnp.float32)
  terms = {
      'ce': cross_entropy(outputs.logits, labels, weights),
      'aux_ce': (
          zero
          if outputs.aux_logits is None
          else cross_entropy(outputs.aux_logits, labels, weights)
      ),
      'l2': loss_cfg.l2_alpha * l2_sum(params, loss_cfg.l2_scope),
  }
  loss = terms['ce'] + loss_cfg.aux_loss_weight * terms['aux_ce'] + terms['l2']
  if view_mask is not None:
    terms['view_ce'] = view_cross_entropy(
        outputs.view_logits, labels, view_mask, weights
    )
    loss = loss + loss_cfg.view_loss_weight * terms['view_ce']
  return {'loss': loss, **terms}

"""Multi-view model: one shared trunk reads every view of a case, a masked
fusion pools them, one head classifies the case.

The paper classifies each view alone, trained with the case's label, and votes
afterwards (docs/paper.md, section 3); a fracture seen in one view of three
is then a noisy label for the other two. `Model` instead reads a case as
images [B, V, H, W, 1] with a view mask [B, V] (1..V real views per case):

  trunk (any family of ankle_jax.models, shared weights, applied to the B*V
  views as one batch) -> pooled features [B, V, D] -> masked fusion over
  views -> [B, D] -> Dropout -> Dense = case logits [B, C].

Fusion (`fusion`, always masked):
  * 'mean': the mean over real views;
  * 'max': the channel-wise max over real views;
  * 'attention': gated attention MIL pooling (Ilse et al., ICML 2018):
    a_v = softmax_v(w^T (tanh(V h_v) * sigmoid(U h_v))), pooled = sum a_v h_v.

Per-view logits [B, V, C] are the same case head applied to each view's
features alone: what the model says of a case made of only that view (for
every fusion, one view fuses to itself). So each view keeps its own
probability, trained by the case loss even with no per-view loss.

Why a reshape and not `nn.vmap` over views: BatchNorm in train mode must pool
its statistics over real views only, across the whole batch. The reshape
feeds the trunk [B*V, H, W, 1] and passes the view mask to every BatchNorm
(`mask=`, Flax's masked statistics) through `nn.intercept_methods`, so the
families stay untouched and padded views never enter a statistic;
`nn.vmap` would keep statistics per view slot, and broadcast BatchNorm
variables cannot be mutated inside it. Eval-mode speed of both:
benchmarks/multiview.py.

The trunk's own classifier head (layers.ClassifierHead) still runs, and its
input, the last feature map, is read by the same interceptor; its logits are
not used (its small Dense stays in the checkpoint, so the trunk's variables
keep a per-view model's structure). Its aux tower, when built, gives per-view
aux logits whose masked mean over views is the case's aux logits.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax.models import layers

FUSIONS: tuple[str, ...] = ('mean', 'max', 'attention')


class MultiViewOutputs(NamedTuple):
  """What `Model.apply` returns.

  Attributes:
    logits: float32 [B, C], case logits.
    view_logits: float32 [B, V, C], the case head on each view alone
      (padded views: meaningless, mask them).
    aux_logits: float32 [B, C], the masked mean over views of the trunk's aux
      logits, or None without an aux tower.
    attention: float32 [B, V], each view's weight in the fusion (0 at padded
      views; sums to 1 over a case's views). 'mean': uniform; 'max': the
      share of feature channels whose max comes from that view.
  """

  logits: jax.Array
  view_logits: jax.Array
  aux_logits: jax.Array | None
  attention: jax.Array


def _with_a_view(view_mask_bv: jax.Array) -> jax.Array:
  """The mask, with slot 0 marked real in cases with no view (padding cases
  of an eval batch), so that no softmax or mean divides by zero."""
  view_mask_bv = jnp.asarray(view_mask_bv, bool)
  empty_b = ~view_mask_bv.any(axis=1)
  return view_mask_bv.at[:, 0].set(view_mask_bv[:, 0] | empty_b)


def _trunk_interceptor(view_mask_n: jax.Array, train: bool, captured: list):
  """Masks BatchNorm statistics to real views (train mode) and records the
  feature map entering the trunk's ClassifierHead."""

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      module = context.module
      if isinstance(module, layers.ClassifierHead):
        captured.append(args[0])
      elif train and isinstance(module, nn.BatchNorm) and 'mask' not in kwargs:
        ndim = args[0].ndim
        mask = view_mask_n.reshape((-1,) + (1,) * (ndim - 1))
        kwargs = {**kwargs, 'mask': mask}
    return next_fun(*args, **kwargs)

  return interceptor


def masked_mean(values_bvx: jax.Array, view_mask_bv: jax.Array) -> jax.Array:
  """Mean over the real views: [B, V, ...] -> [B, ...] (float32)."""
  weights = view_mask_bv.astype(jnp.float32)
  weights = weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0)
  weights = weights.reshape(weights.shape + (1,) * (values_bvx.ndim - 2))
  return jnp.sum(values_bvx.astype(jnp.float32) * weights, axis=1)


class GatedAttention(nn.Module):
  """Gated attention weights over views (Ilse et al. 2018, eq. 9).

  [B, V, D] features, bool [B, V] mask -> float32 [B, V] weights, 0 at
  masked views, summing to 1 over each case's real views.
  """

  hidden_features: int = 128
  dtype: Any = jnp.float32
  kernel_init: str = layers.DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, features_bvd: jax.Array, view_mask_bv: jax.Array):
    init = layers.initializers(self.kernel_init).as_kwargs()
    dense = lambda n, name, **kw: nn.Dense(
        n, dtype=self.dtype, name=name, **init, **kw
    )
    x = features_bvd.astype(self.dtype)
    gate = nn.tanh(dense(self.hidden_features, 'attention_v')(x))
    gate = gate * nn.sigmoid(dense(self.hidden_features, 'attention_u')(x))
    # No bias: the softmax over views ignores a shift (it would get no
    # gradient, and Adam would walk it on rounding noise).
    w = dense(1, 'attention_w', use_bias=False)
    scores_bv = w(gate)[..., 0].astype(jnp.float32)
    scores_bv = jnp.where(view_mask_bv, scores_bv, -jnp.inf)
    return jax.nn.softmax(scores_bv, axis=1)


def max_fusion(
    features_bvd: jax.Array, view_mask_bv: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Channel-wise max over real views: ([B, D] pooled, [B, V] the share of
  channels each view wins)."""
  masked = jnp.where(view_mask_bv[..., None], features_bvd, -jnp.inf)
  pooled_bd = jnp.max(masked, axis=1)
  winner_bd = jnp.argmax(masked, axis=1)
  num_views = features_bvd.shape[1]
  share_bv = jnp.mean(jax.nn.one_hot(winner_bd, num_views, axis=1), axis=2)
  return pooled_bd, share_bv


class Model(nn.Module):
  """A case classifier over 1..V views with a shared per-view trunk.

  Attributes:
    trunk: a family module from `ankle_jax.models.build` (any width, aux
      head and dropout); its parameters live under 'trunk'.
    num_classes: classifier outputs.
    fusion: one of FUSIONS.
    attention_features: hidden size of the gated attention (128, as Ilse et
      al.).
    dropout_rate: dropout before the case head (train mode only).
    dtype: computation dtype of the fusion and head.
    kernel_init: initialization of the fusion and head (layers.KERNEL_INITS).
  """

  trunk: nn.Module
  num_classes: int = 2
  fusion: str = 'attention'
  attention_features: int = 128
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: str = layers.DEFAULT_KERNEL_INIT

  def __post_init__(self):
    if self.fusion not in FUSIONS:
      raise ValueError(
          f'multiview fusion={self.fusion!r}; valid: {", ".join(FUSIONS)}'
      )
    super().__post_init__()

  def trunk_features(self, images_nhw1, view_mask_n, train):
    """The trunk on N views: (pooled features float32 [N, D], its outputs)."""
    captured = []
    interceptor = _trunk_interceptor(view_mask_n, train, captured)
    with nn.intercept_methods(interceptor):
      outputs = self.trunk(images_nhw1, train=train)
    if len(captured) != 1:
      raise ValueError(
          f'{type(self.trunk).__name__} called layers.ClassifierHead '
          f'{len(captured)} times; the multi-view model needs exactly one.'
      )
    pooled = jnp.mean(captured[0].astype(jnp.float32), axis=(1, 2))
    return pooled, outputs

  def fuse(self, features_bvd, view_mask_bv, attention):
    """[B, V, D] -> (fused [B, D], weights float32 [B, V]); `attention` is the
    GatedAttention submodule ('attention' fusion) or None."""
    if self.fusion == 'max':
      return max_fusion(features_bvd, view_mask_bv)
    if attention is not None:
      weights_bv = attention(features_bvd, view_mask_bv)
    else:
      real_bv = view_mask_bv.astype(jnp.float32)
      weights_bv = real_bv / real_bv.sum(axis=1, keepdims=True)
    fused = jnp.sum(features_bvd * weights_bv[..., None], axis=1)
    return fused, weights_bv.astype(jnp.float32)

  @nn.compact
  def __call__(
      self,
      images_bvhw1: jax.Array,
      view_mask_bv: jax.Array | None = None,
      train: bool = False,
  ) -> MultiViewOutputs:
    """Case and per-view logits of images [B, V, H, W, 1] (standardized per
    image, as the families expect) with view_mask_bv bool [B, V] (None: every
    slot is a view)."""
    b, v = images_bvhw1.shape[:2]
    if view_mask_bv is None:
      view_mask_bv = jnp.ones((b, v), bool)
    view_mask_bv = _with_a_view(view_mask_bv)
    images = images_bvhw1.reshape((b * v,) + images_bvhw1.shape[2:])
    pooled, trunk_outputs = self.trunk_features(
        images, view_mask_bv.reshape(-1), train
    )
    features_bvd = pooled.reshape((b, v, -1))
    attention = None
    if self.fusion == 'attention':
      attention = GatedAttention(
          self.attention_features,
          dtype=self.dtype,
          kernel_init=self.kernel_init,
          name='attention',
      )
    fused_bd, weights_bv = self.fuse(features_bvd, view_mask_bv, attention)
    head = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        name='case_head',
        **layers.initializers(self.kernel_init).as_kwargs(),
    )
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    logits = head(dropout(fused_bd.astype(self.dtype)))
    view_logits = head(dropout(features_bvd.astype(self.dtype)))
    aux_logits = trunk_outputs.aux_logits
    if aux_logits is not None:
      aux_logits = masked_mean(aux_logits.reshape((b, v, -1)), view_mask_bv)
    return MultiViewOutputs(
        logits=logits.astype(jnp.float32),
        view_logits=view_logits.astype(jnp.float32),
        aux_logits=aux_logits,
        attention=weights_bv,
    )


def drop_views(
    key: jax.Array,
    view_mask_bv: jax.Array,
    rate: float,
    droppable_b: jax.Array | None = None,
) -> jax.Array:
  """Training-time view dropout: each real view is dropped with probability
  `rate`; a case that would lose every view keeps one, drawn uniformly from
  its real views. bool [B, V] -> bool [B, V].

  droppable_b: bool [B], the cases whose views may be dropped (None: all).
  The others keep every view: with droppable_b = (label == normal), a
  fracture case never loses the view that shows its fracture, so its label
  stays true (config.model.multiview.view_dropout_normal_only).
  """
  view_mask_bv = jnp.asarray(view_mask_bv, bool)
  if rate <= 0.0:
    return view_mask_bv
  drop_key, keep_key = jax.random.split(key)
  kept = view_mask_bv & (
      jax.random.uniform(drop_key, view_mask_bv.shape) >= rate
  )
  scores = jnp.where(
      view_mask_bv, jax.random.uniform(keep_key, view_mask_bv.shape), -1.0
  )
  one_view = jax.nn.one_hot(
      jnp.argmax(scores, axis=1), view_mask_bv.shape[1], dtype=bool
  )
  dropped = jnp.where(kept.any(axis=1, keepdims=True), kept, one_view)
  if droppable_b is None:
    return dropped
  droppable_b = jnp.asarray(droppable_b, bool)[:, None]
  return jnp.where(droppable_b, dropped, view_mask_bv)

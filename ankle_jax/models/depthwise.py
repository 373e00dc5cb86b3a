"""Depthwise 2D convolution that is fast forward AND backward under XLA.

`lax.conv_general_dilated(..., feature_group_count=C)` is the textbook way to
write a depthwise convolution, but XLA:CPU lowers it (and, far worse, its two
gradients) to generic loops: on the 2-core EPYC this repo is developed on, the
forward of one Xception depthwise layer is ~10x slower than a memory-bound
elementwise pass, and the backward another ~5-10x slower than that.

Here the convolution is written as what it is for a channel multiplier of 1, a
sum of kh*kw shifted (strided) slices of the zero-padded input, each scaled by
a per-channel weight vector:

  y[b, o, p, c] = sum_{i,j} xpad[b, o*sh + i, p*sw + j, c] * kernel[i, j, 0, c]

The forward is one fused elementwise loop. Its gradients are supplied by a
`jax.custom_vjp`, so that no grouped convolution appears anywhere:

* d/dkernel: variadic reductions that read the input and the output gradient
  once and produce all kh*kw per-channel sums together (reduced over batch and
  output rows, then over output columns), instead of kh*kw separate reductions
  that each re-read both tensors; the batch is cut into up to 4 chunks so that
  the (single-threaded) reductions run in parallel.
* d/dx: the transposed convolution, itself a shifted-slice sum: the output
  gradient is dilated by the stride (interior zeros), padded and correlated
  with the spatially flipped kernel.

Products are accumulated in float32 whatever the input dtype (bf16 inputs give
bf16 outputs rounded once), like the MXU/oneDNN convolutions do.

Semantics (shapes, SAME padding split incl. the stride-2 asymmetry, dtypes)
match `lax.conv_general_dilated(x, kernel, strides, padding,
dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=C)` exactly;
tests/models/test_depthwise.py checks values and both gradients.

The same XLA:CPU weakness hits 1x1 convolutions: the kernel gradient of a 1x1
`lax.conv_general_dilated` runs ~10x slower than the equivalent matmul
(x^T @ g). `pointwise_conv2d` writes a 1x1 convolution as a `dot_general` over
the channel axis, whose gradients are matmuls too. `conv_general_dilated` is a
drop-in for `lax.conv_general_dilated` (flax `nn.Conv(...,
conv_general_dilated=conv_general_dilated)`) that routes depthwise and 1x1
convolutions here and everything else to lax unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
from jax import lax
import jax.numpy as jnp

PaddingLike = str | Sequence[tuple[int, int]]

__all__ = [
    'conv_general_dilated',
    'depthwise_conv2d',
    'grouped_conv_reference',
    'pointwise_conv2d',
]


def grouped_conv_reference(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: PaddingLike = 'SAME',
) -> jax.Array:
  """The lax grouped convolution that `depthwise_conv2d` reproduces.

  Args:
    x: [B, H, W, C] input.
    kernel: [kh, kw, 1, C] depthwise kernel (flax `nn.Conv` layout with
      `feature_group_count=C`).
    strides: (sh, sw).
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)).

  Returns:
    [B, OH, OW, C] output, `lax.conv_general_dilated` with
    `feature_group_count=C`.
  """
  return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=tuple(strides),
      padding=padding
      if isinstance(padding, str)
      else tuple(tuple(p) for p in padding),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1],
  )


def _explicit_pads(
    spatial: tuple[int, int],
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: PaddingLike,
) -> tuple[tuple[int, int], tuple[int, int]]:
  """Resolves 'SAME'/'VALID'/explicit padding to ((top, bottom), (l, r))."""
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(spatial, window, strides, padding.upper())
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if len(pads) != 2:
    raise ValueError(
        'depthwise_conv2d: padding must be "SAME", "VALID" or two '
        f'(low, high) pairs, got {padding!r}'
    )
  return pads


def _out_size(size: int, k: int, s: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // s + 1


def _tap(
    xp: jax.Array,
    i: int,
    j: int,
    out_hw: tuple[int, int],
    strides: tuple[int, int],
) -> jax.Array:
  """The strided window of xp that kernel tap (i, j) multiplies.

  Args:
    xp: [B, Hp, Wp, C] padded input.
    i: Kernel row.
    j: Kernel column.
    out_hw: (OH, OW).
    strides: (sh, sw).

  Returns:
    [B, OH, OW, C] = xp[:, i::sh, j::sw][:, :OH, :OW].
  """
  (oh, ow), (sh, sw) = out_hw, strides
  return lax.slice(
      xp,
      (0, i, j, 0),
      (xp.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, xp.shape[3]),
      (1, sh, sw, 1),
  )


def _shifted_sum(
    xp: jax.Array,
    kernel_f32: jax.Array,
    out_hw: tuple[int, int],
    strides: tuple[int, int],
    out_dtype,
) -> jax.Array:
  """sum_{i,j} tap(xp, i, j) * kernel[i, j, 0], accumulated in float32."""
  kh, kw = kernel_f32.shape[:2]
  acc = None
  for i in range(kh):
    for j in range(kw):
      term = _tap(xp, i, j, out_hw, strides).astype(jnp.float32) * (
          kernel_f32[i, j, 0]
      )
      acc = term if acc is None else acc + term
  return acc.astype(out_dtype)


def _pad_spatial(x: jax.Array, pads) -> jax.Array:
  """Zero-pads (or crops, for negative pads) H and W; pads = (h, w) triples."""
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), pads[0], pads[1], (0, 0, 0)))


def _check(x: jax.Array, kernel: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(
        f'depthwise_conv2d: x must be NHWC [B, H, W, C], got shape {x.shape}'
    )
  channels = x.shape[-1]
  if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != channels:
    raise ValueError(
        'depthwise_conv2d: kernel must be [kh, kw, 1, C] with C = '
        f'x.shape[-1] = {channels} (channel multiplier 1), got '
        f'{kernel.shape}'
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x, kernel, strides, pads):
  kh, kw = kernel.shape[:2]
  out_hw = (
      _out_size(x.shape[1], kh, strides[0], *pads[0]),
      _out_size(x.shape[2], kw, strides[1], *pads[1]),
  )
  xp = _pad_spatial(x, ((*pads[0], 0), (*pads[1], 0)))
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)
  return _shifted_sum(
      xp, kernel.astype(jnp.float32), out_hw, strides, out_dtype
  )


def _depthwise_fwd(x, kernel, strides, pads):
  return _depthwise(x, kernel, strides, pads), (x, kernel)


# Batch chunks of the kernel-gradient reduction (see _kernel_grad).
_KERNEL_GRAD_BATCH_CHUNKS = 4


def _kernel_grad(x, g, kernel_shape, kernel_dtype, strides, pads):
  """d loss / d kernel: [kh, kw, 1, C] per-channel sums of tap(x) * g."""
  kh, kw = kernel_shape[:2]
  out_hw = g.shape[1:3]
  xp = _pad_spatial(x, ((*pads[0], 0), (*pads[1], 0)))
  batch = x.shape[0]
  num_chunks = min(_KERNEL_GRAD_BATCH_CHUNKS, batch)
  bounds = [round(k * batch / num_chunks) for k in range(num_chunks + 1)]
  partial_sums = None
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    # One variadic reduction per batch chunk, over (batch, output rows): it
    # reads x and g once and keeps the contiguous (OW, C) rows as
    # accumulators. The chunks are independent, so XLA:CPU runs them on
    # different threads (one reduction fusion is single-threaded).
    g32 = g[lo:hi].astype(jnp.float32)
    xp_chunk = xp[lo:hi]
    products = tuple(
        _tap(xp_chunk, i, j, out_hw, strides).astype(jnp.float32) * g32
        for i in range(kh)
        for j in range(kw)
    )
    zeros = tuple(jnp.zeros((), jnp.float32) for _ in products)
    chunk_sums = lax.reduce(
        products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1)
    )
    partial_sums = (
        chunk_sums
        if partial_sums is None
        else tuple(u + v for u, v in zip(partial_sums, chunk_sums))
    )
  sums = jnp.stack([p.sum(axis=0) for p in partial_sums])  # [kh*kw, C]
  return sums.reshape(kernel_shape).astype(kernel_dtype)


def _input_grad(g, kernel, x_shape, x_dtype, strides, pads):
  """d loss / d x: the transposed convolution of g, [B, H, W, C]."""
  kh, kw = kernel.shape[:2]
  (sh, sw), ((top, _), (left, _)) = strides, pads
  oh, ow = g.shape[1:3]
  height, width = x_shape[1:3]
  # Dilate g by the stride and pad so that a stride-1 VALID correlation with
  # the flipped kernel yields exactly [H, W]; negative high pads crop rows or
  # columns of x that no output window reached (VALID with leftovers).
  lo_h, lo_w = kh - 1 - top, kw - 1 - left
  hi_h = height + kh - 1 - lo_h - ((oh - 1) * sh + 1)
  hi_w = width + kw - 1 - lo_w - ((ow - 1) * sw + 1)
  gp = _pad_spatial(g, ((lo_h, hi_h, sh - 1), (lo_w, hi_w, sw - 1)))
  flipped = kernel[::-1, ::-1].astype(jnp.float32)
  return _shifted_sum(gp, flipped, (height, width), (1, 1), x_dtype)


def _depthwise_bwd(strides, pads, residuals, g):
  x, kernel = residuals
  dx = _input_grad(g, kernel, x.shape, x.dtype, strides, pads)
  dkernel = _kernel_grad(x, g, kernel.shape, kernel.dtype, strides, pads)
  return dx, dkernel


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: PaddingLike = 'SAME',
) -> jax.Array:
  """Depthwise 2D convolution (channel multiplier 1), NHWC, fast gradients.

  Drop-in for `lax.conv_general_dilated(x, kernel, strides, padding,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=C)`:
  same output shape and values, same SAME-padding split (for stride 2 the
  extra row/column of padding goes at the bottom/right, as in TF/Keras), same
  gradients, but computed as shifted slices (see the module docstring).

  Reverse-mode differentiation (grad, vjp, value_and_grad, also nested) and
  vmap/jit/remat work; forward-mode (jvp/jacfwd) does not (custom_vjp).

  Args:
    x: [B, H, W, C] input, any float dtype.
    kernel: [kh, kw, 1, C] kernel, the flax `nn.Conv(features=C,
      feature_group_count=C)` layout (HWIO with I = C / groups = 1).
    strides: (sh, sw) window strides.
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)).

  Returns:
    [B, OH, OW, C] in `jnp.result_type(x, kernel)`; products are accumulated
    in float32.

  Raises:
    ValueError: if the shapes are not NHWC / [kh, kw, 1, C] or padding is
      malformed.
  """
  _check(x, kernel)
  strides = tuple(int(s) for s in strides)
  if len(strides) != 2 or min(strides) < 1:
    raise ValueError(
        f'depthwise_conv2d: strides must be two positive ints, got {strides}'
    )
  pads = _explicit_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  return _depthwise(x, kernel, strides, pads)


_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def pointwise_conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
  """1x1 convolution as a matmul over channels (no padding needed for 1x1).

  Equals `lax.conv_general_dilated(x, kernel, strides, 'SAME' or 'VALID',
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))` for a [1, 1, C, F] kernel.

  Args:
    x: [B, H, W, C].
    kernel: [1, 1, C, F].
    strides: (sh, sw); the input is subsampled x[:, ::sh, ::sw] first.
    precision: passed to `lax.dot_general`.
    preferred_element_type: passed to `lax.dot_general`.

  Returns:
    [B, ceil(H / sh), ceil(W / sw), F].
  """
  if (
      kernel.ndim != 4
      or kernel.shape[:2] != (1, 1)
      or (kernel.shape[2] != x.shape[-1])
  ):
    raise ValueError(
        'pointwise_conv2d: kernel must be [1, 1, C, F] with C = x.shape[-1] '
        f'= {x.shape[-1]}, got {kernel.shape}'
    )
  sh, sw = (int(s) for s in strides)
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  return lax.dot_general(
      x,
      kernel[0, 0],
      (((3,), (0,)), ((), ())),
      precision=precision,
      preferred_element_type=preferred_element_type,
  )


def _is_nhwc_hwio(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  if len(lhs_shape) != 4 or dimension_numbers is None:
    return False
  try:
    return lax.conv_dimension_numbers(
        lhs_shape, rhs_shape, dimension_numbers
    ) == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC_HWIO)
  except (TypeError, ValueError):
    return False


def _all_ones(values) -> bool:
  return values is None or all(int(v) == 1 for v in values)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: PaddingLike,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated` with fast depthwise and 1x1 paths.

  For NHWC/HWIO 2-D convolutions without dilation:
    * depthwise (feature_group_count == C, kernel [kh, kw, 1, C]) ->
      `depthwise_conv2d`;
    * 1x1 (kernel [1, 1, C, F], one group, no explicit non-zero padding) ->
      `pointwise_conv2d`;
  anything else goes to `lax.conv_general_dilated` unchanged. Use it as
  `flax.linen.Conv(..., conv_general_dilated=conv_general_dilated)`: the
  parameters (names, shapes, init) do not change.
  """
  simple = (
      _is_nhwc_hwio(lhs.shape, rhs.shape, dimension_numbers)
      and _all_ones(lhs_dilation)
      and _all_ones(rhs_dilation)
      and batch_group_count == 1
  )
  if simple:
    channels = lhs.shape[-1]
    if (
        feature_group_count == channels
        and rhs.shape[2] == 1
        and rhs.shape[3] == channels
        and channels > 1
        and preferred_element_type is None
        and lhs.dtype == rhs.dtype
    ):
      return depthwise_conv2d(lhs, rhs, strides=window_strides, padding=padding)
    no_padding = (
        padding.upper() in ('SAME', 'VALID')
        if isinstance(padding, str)
        else all(tuple(p) == (0, 0) for p in padding)
    )
    if feature_group_count == 1 and rhs.shape[:2] == (1, 1) and no_padding:
      return pointwise_conv2d(
          lhs,
          rhs,
          strides=window_strides,
          precision=precision,
          preferred_element_type=preferred_element_type,
      )
  return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
  )

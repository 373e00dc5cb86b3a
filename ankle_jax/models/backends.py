"""Per-backend choices of a model: its computation dtype and its convolution
kernels, each 'auto' by default and resolved once, where a model is built.

* dtype 'auto': bfloat16 on GPU and TPU (parameters, BatchNorm statistics,
  the loss and Adam stay float32), float32 on CPU, where bfloat16 has no
  faster path. 'float32' and 'bfloat16' are taken as given.
* conv_impl 'auto': 'cpu' on CPU, 'gpu' elsewhere (GPU, TPU).
  'cpu': the kernels of ankle_jax.models.depthwise (depthwise convolutions
    as shifted-slice sums with a custom VJP, 1x1 convolutions as matmuls),
    which XLA:CPU runs ~10x faster than its grouped/1x1 convolutions.
  'gpu': `lax.conv_general_dilated` everywhere, with `feature_group_count`
    for the depthwise convolutions, as XLA:GPU/TPU's convolution libraries
    expect.
  Both give the same parameters (names, shapes, initialization), so a
  checkpoint restores under either.
"""

import jax
import jax.numpy as jnp

AUTO = 'auto'
# config.dtype values; the first is the default.
DTYPES = (AUTO, 'float32', 'bfloat16')
# config.model.conv_impl values; the first is the default.
CONV_IMPLS = (AUTO, 'cpu', 'gpu')


def _platform(platform: str | None) -> str:
  """The backend a model runs on: `platform` or JAX's default backend."""
  return platform if platform is not None else jax.default_backend()


def resolve_dtype(dtype, platform: str | None = None) -> jnp.dtype:
  """The computation dtype `dtype` (a DTYPES name or a dtype) stands for.

  Args:
    dtype: 'auto', a dtype name ('float32', 'bfloat16') or a jnp dtype.
    platform: 'cpu', 'gpu' or 'tpu'; None = jax.default_backend().

  Returns:
    jnp.dtype: bfloat16 for 'auto' off CPU, float32 for 'auto' on CPU,
    otherwise jnp.dtype(dtype).
  """
  if isinstance(dtype, str) and dtype == AUTO:
    on_cpu = _platform(platform) == 'cpu'
    return jnp.dtype(jnp.float32 if on_cpu else jnp.bfloat16)
  return jnp.dtype(dtype)


def resolve_conv_impl(conv_impl: str, platform: str | None = None) -> str:
  """'cpu' or 'gpu': the convolution kernels `conv_impl` stands for.

  Args:
    conv_impl: one of CONV_IMPLS.
    platform: 'cpu', 'gpu' or 'tpu'; None = jax.default_backend().

  Raises:
    ValueError: an unknown conv_impl.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(
        f'conv_impl={conv_impl!r} is unknown; valid values: '
        + ', '.join(CONV_IMPLS)
    )
  if conv_impl != AUTO:
    return conv_impl
  return 'cpu' if _platform(platform) == 'cpu' else 'gpu'

r"""Micro-benchmark: depthwise 3x3 convolution, forward and forward+backward.

Compares, on the current JAX backend, for every distinct depthwise layer shape
of Xception at 300x300 (paper variant, SAME stem), batch 8:

* `lax`      : lax.conv_general_dilated(feature_group_count=C) (what flax's
               nn.Conv(feature_group_count=C) and Keras' DepthwiseConv2D do).
* `autodiff` : the shifted-slice sum differentiated by plain JAX autodiff.
* `ours`     : ankle_jax.models.depthwise.depthwise_conv2d (shifted slices with
               a custom VJP).

Each variant is jitted; `fwd` times y = f(x, k), `fwd_bwd` times y and its VJP
(dx, dk) for a given output cotangent, as a network's train step needs. Variants
are interleaved round by round and the median is reported, so that background
load hits all of them alike. A weighted total over Xception's 34 depthwise
layers (26 of them in the middle/exit flow at 19x19x728) is reported too.

`lax` is the form `model.conv_impl='gpu'` uses, `ours` the one of 'cpu'
(ankle_jax.models.backends); run it on each device to choose.

--op_counts instead lowers (without compiling) one train step of each
--configs file under each model.conv_impl, 'cpu' and 'gpu', and counts the
StableHLO convolutions, dot_generals, slices and reductions it runs
(benchmarks/step_lowering.py; a called function's ops count once per call).

Usage:
  python benchmarks/depthwise.py [--batch_size=8] [--repeats=5] \
      [--variants=lax,autodiff,ours] [--dtype=float32|bfloat16] [--shapes=...]
  python benchmarks/depthwise.py --op_counts \
      [--configs=configs/inception_v3.py,configs/resnet.py,configs/xception.py]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
from jax import lax
import jax.numpy as jnp

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # For `ankle_jax` and `benchmarks`.

from ankle_jax.models import depthwise  # noqa: E402

PAPER_FAMILY_CONFIGS = (
    'configs/inception_v3.py',
    'configs/resnet.py',
    'configs/xception.py',
)

# (H, W, C) of every depthwise layer in Xception at 300x300 with a SAME stem
# (paper Table 3), and how many layers have that shape.
XCEPTION_300_SAME_LAYERS = (
    ((150, 150, 64), 1),
    ((150, 150, 128), 1),
    ((75, 75, 128), 1),
    ((75, 75, 256), 1),
    ((38, 38, 256), 1),
    ((38, 38, 728), 1),
    ((19, 19, 728), 26),
    ((10, 10, 1024), 1),
    ((10, 10, 1536), 1),
)


def shifted_autodiff(x, kernel, *, strides=(1, 1), padding='SAME'):
  """Shifted-slice depthwise conv with plain autodiff (no custom VJP)."""
  kh, kw = kernel.shape[:2]
  pads = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  oh = (xp.shape[1] - kh) // strides[0] + 1
  ow = (xp.shape[2] - kw) // strides[1] + 1
  y = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(
          xp,
          (0, i, j, 0),
          (
              xp.shape[0],
              i + (oh - 1) * strides[0] + 1,
              j + (ow - 1) * strides[1] + 1,
              xp.shape[3],
          ),
          (1, strides[0], strides[1], 1),
      )
      term = tap * kernel[i, j, 0]
      y = term if y is None else y + term
  return y


VARIANTS = {
    'lax': depthwise.grouped_conv_reference,
    'autodiff': shifted_autodiff,
    'ours': depthwise.depthwise_conv2d,
}


def make_fns(conv):
  """Jitted fwd(x, k, g) -> y and fwd_bwd(x, k, g) -> (y, dx, dk).

  The output cotangent g is an input (as it is inside a network, where it
  comes from the next layer's backward), not the gradient of a scalar loss
  that XLA could fuse into the forward.
  """

  def fwd(x, kernel, cot):
    del cot
    return conv(x, kernel)

  def fwd_bwd(x, kernel, cot):
    y, vjp_fn = jax.vjp(conv, x, kernel)
    dx, dkernel = vjp_fn(cot)
    return y, dx, dkernel

  return jax.jit(fwd), jax.jit(fwd_bwd)


def _time_once(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) * 1e3


def bench_shape(shape_bhwc, dtype, variants, repeats):
  """Median ms of fwd and fwd+bwd per variant for one input shape."""
  key_x, key_k, key_g = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, shape_bhwc, dtype)
  kernel = jax.random.normal(key_k, (3, 3, 1, shape_bhwc[-1]), dtype)
  cot = jax.random.normal(key_g, shape_bhwc, dtype)
  fns = {}
  for name in variants:
    fwd, fwd_bwd = make_fns(VARIANTS[name])
    fns[(name, 'fwd')] = fwd
    fns[(name, 'fwd_bwd')] = fwd_bwd
  for fn in fns.values():  # Compile and warm up.
    jax.block_until_ready(fn(x, kernel, cot))
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      times[k].append(_time_once(fn, x, kernel, cot))
  return {
      f'{name}_{kind}_ms': round(statistics.median(t), 3)
      for (name, kind), t in times.items()
  }


def op_counts(config_paths: list[str]) -> list[dict]:
  """One row per config and conv_impl: the config's model and batch size,
  the lowering seconds and `step_lowering.count_ops` of its train step."""
  from benchmarks import step_lowering  # noqa: PLC0415 (imports the trainer)

  rows = []
  for path in config_paths:
    for conv_impl in ('cpu', 'gpu'):
      config = step_lowering.load_config(path, **{'model.conv_impl': conv_impl})
      start = time.perf_counter()
      text = step_lowering.lower_train_step(config).as_text()
      row = {
          'config': path,
          'model': config.model.name,
          'batch_size': config.batch_size,
          'image_size': config.image_size,
          'conv_impl': conv_impl,
          'lower_s': round(time.perf_counter() - start, 1),
          **step_lowering.count_ops(text),
      }
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      '--op_counts',
      action='store_true',
      help='count the ops of lowered train steps instead of timing',
  )
  parser.add_argument('--configs', default=','.join(PAPER_FAMILY_CONFIGS))
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--variants', default='lax,autodiff,ours')
  parser.add_argument(
      '--dtype', default='float32', choices=('float32', 'bfloat16')
  )
  parser.add_argument(
      '--shapes',
      default='',
      help='comma-separated HxWxC to restrict to, e.g. 19x19x728',
  )
  args = parser.parse_args()
  if args.op_counts:
    rows = op_counts(args.configs.split(','))
    print(
        json.dumps(
            {'benchmark': 'op_counts', 'jax': jax.__version__, 'rows': rows}
        )
    )
    return
  variants = args.variants.split(',')
  for v in variants:
    if v not in VARIANTS:
      raise SystemExit(f'--variants: unknown {v!r}; valid: {list(VARIANTS)}')
  dtype = jnp.dtype(args.dtype)
  wanted = {
      tuple(int(d) for d in s.split('x')) for s in args.shapes.split(',') if s
  }
  layers = [
      (s, n) for s, n in XCEPTION_300_SAME_LAYERS if not wanted or s in wanted
  ]

  rows, totals = [], {}
  for (h, w, c), count in layers:
    row = {'shape_bhwc': [args.batch_size, h, w, c], 'layers': count}
    row.update(
        bench_shape((args.batch_size, h, w, c), dtype, variants, args.repeats)
    )
    print(json.dumps(row), flush=True)
    rows.append(row)
    for k, v in row.items():
      if k.endswith('_ms'):
        totals[k] = totals.get(k, 0.0) + v * count
  summary = {
      'benchmark': 'depthwise3x3',
      'backend': jax.default_backend(),
      'device': str(jax.devices()[0].device_kind),
      'cpu': platform.processor() or platform.machine(),
      'dtype': args.dtype,
      'batch_size': args.batch_size,
      'repeats': args.repeats,
      'xception_total_ms': {k: round(v, 1) for k, v in totals.items()},
      'rows': rows,
  }
  if 'lax' in variants and 'ours' in variants:
    summary['speedup_vs_lax'] = {
        kind: round(totals[f'lax_{kind}_ms'] / totals[f'ours_{kind}_ms'], 2)
        for kind in ('fwd', 'fwd_bwd')
    }
  print(json.dumps(summary))


if __name__ == '__main__':
  main()

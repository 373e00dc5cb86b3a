r"""Benchmark: the multi-view trunk as one reshaped batch vs `nn.vmap` over
views, eval-mode forward.

ankle_jax.models.multiview applies the shared trunk to B cases x V views by
reshaping them to one batch of B*V images. The alternative is
`flax.linen.vmap` of the trunk over the view axis (params and BatchNorm
statistics broadcast). Only the eval-mode forward can be compared: in train
mode vmap would keep BatchNorm statistics per view slot and cannot mutate
the broadcast statistics, so the reshape is the only correct choice for
training whatever this says. Both variants are jitted, timed alternately
round by round (so drifting load hits both) and the median is reported.

Usage:
  python benchmarks/multiview.py [--model=xception] [--width=0.25] \
      [--image_size=128] [--cases=8] [--views=3] [--repeats=5]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankle_jax import models


class VmappedTrunk(nn.Module):
  """The trunk vmapped over axis 1 of [B, V, H, W, 1]: logits [B, V, C]."""

  trunk: nn.Module

  @nn.compact
  def __call__(self, images_bvhw1):
    vmapped = nn.vmap(
        lambda module, x: module(x, train=False).logits,
        variable_axes={'params': None, 'batch_stats': None},
        split_rngs={'params': False},
        in_axes=1,
        out_axes=1,
    )
    return vmapped(self.trunk, images_bvhw1)


def reshaped(trunk, variables, images_bvhw1):
  b, v = images_bvhw1.shape[:2]
  flat = images_bvhw1.reshape((b * v,) + images_bvhw1.shape[2:])
  logits = trunk.apply(variables, flat, train=False).logits
  return logits.reshape((b, v, -1))


def timed(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='xception')
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--image_size', type=int, default=128)
  parser.add_argument('--cases', type=int, default=8)
  parser.add_argument('--views', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  trunk = models.build(args.model, width_multiplier=args.width)
  shape = (args.cases, args.views, args.image_size, args.image_size, 1)
  images = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = jax.jit(lambda x: trunk.init(jax.random.PRNGKey(1), x))(
      images[:, 0]
  )
  vmapped_module = VmappedTrunk(trunk)
  # The same variables under the wrapper's 'trunk' scope.
  wrapped = jax.tree.map(
      lambda x: x, {k: {'trunk': v} for k, v in variables.items()}
  )
  variants = {
      'reshape': (jax.jit(lambda v, x: reshaped(trunk, v, x)), variables),
      'vmap': (jax.jit(vmapped_module.apply), wrapped),
  }
  outputs = {name: fn(v, images) for name, (fn, v) in variants.items()}
  max_diff = float(jnp.abs(outputs['reshape'] - outputs['vmap']).max())
  times = {name: [] for name in variants}
  for _ in range(args.repeats):
    for name, (fn, v) in variants.items():
      times[name].append(timed(fn, v, images))
  medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
  for name, ms in medians.items():
    print(
        f'{name:8s} {ms:9.1f} ms per forward of {args.cases}x{args.views} views'
    )
  print(
      json.dumps(
          {
              'benchmark': 'multiview_trunk',
              'backend': jax.default_backend(),
              'machine': platform.machine(),
              'shape_bvhw1': list(shape),
              'model': args.model,
              'width': args.width,
              'median_ms': medians,
              'vmap_over_reshape': medians['vmap'] / medians['reshape'],
              'max_abs_logit_diff': max_diff,
          }
      )
  )


if __name__ == '__main__':
  main()

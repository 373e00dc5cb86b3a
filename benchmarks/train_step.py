r"""Times one jitted train step of ours, optionally interleaved with Keras'.

Usage (from the repo root):
  python benchmarks/train_step.py --config=configs/xception.py --batch_size=8 \
      --steps=5 [--compare_keras] [--dtype=float32|bfloat16] \
      [--depthwise=layers|shifted|lax] \
      [--variant=keras|config] [--config.<field>=<value> ...]

Ours is the real `ankle_jax.training.steps.train_step` (on-device augmentation and
standardization, cross entropy, L2, aux loss, Adam, BatchNorm statistics),
jitted by `steps.compile_steps` with the state donated. Each step gets the same
random batch of [B, S, S, 1] images in [0, 1].

--variant (default: 'keras' with --compare_keras, else 'config'):
  config: the config's model exactly (e.g. Inception V3 with its aux tower and
          dropout; Xception with the paper's SAME stem; ResNet-101 with the
          paper's stride in the first unit).
  keras:  the same family in the layout of keras.applications, so that both
          sides compute the same network: no aux tower, no dropout (Keras'
          include_top heads have neither), xception valid_stem=True,
          resnet101_v2 stride_in_first_unit=False (Keras stem and strides).

With --compare_keras, keras.applications.<Model>(weights=None, input_shape=
(S, S, 1), classes=2, classifier_activation=None) is trained by the Keras 3 JAX
recipe: `model.stateless_call` + softmax cross entropy + `keras.optimizers.Adam`
`stateless_apply`, in one `jax.jit` with the state donated. The two steps are
timed alternately (ours, Keras, ours, ...), so background load hits both alike.

FLOPs per step come from XLA's cost analysis of each compiled step (all ops,
elementwise included). The script also measures the machine's matmul peak
(CPU: 2048x2048 f32; GPU: 8192x8192 in the compute dtype) and reports achieved
GFLOP/s as a fraction of it; on known GPUs also MFU against the nominal dense
peak (SPEC_PEAK_TFLOPS). --batch_size defaults to the config's (the paper's).

The last line printed is one JSON object.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

os.environ.setdefault('KERAS_BACKEND', 'jax')

from absl import app  # noqa: E402
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # For `configs` and `ankle_jax`.

from ankle_jax import models  # noqa: E402
from ankle_jax import sharding  # noqa: E402
from ankle_jax.training import losses  # noqa: E402
from ankle_jax.training import state as state_lib  # noqa: E402
from ankle_jax.training import steps  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Training config file, e.g. configs/xception.py.',
    lock_config=False,
)
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, "Images per step (default: the config's batch_size)."
)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (median reported).')
_WARMUP = flags.DEFINE_integer(
    'warmup', 2, 'Untimed steps after compilation, per side.'
)
_COMPARE_KERAS = flags.DEFINE_bool(
    'compare_keras', False, 'Also time the keras.applications equivalent.'
)
_DTYPE = flags.DEFINE_enum(
    'dtype',
    None,
    ['float32', 'bfloat16'],
    "Computation dtype (default: the config's).",
)
_VARIANT = flags.DEFINE_enum(
    'variant',
    None,
    ['keras', 'config'],
    'Which of our variants to time (default: keras with --compare_keras).',
)
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'Override config.image_size.'
)
_MATMUL_N = flags.DEFINE_integer(
    'matmul_n', None, 'Matmul-peak side (default 2048 on CPU, 8192 else).'
)
_DEPTHWISE = flags.DEFINE_enum(
    'depthwise',
    'layers',
    ['layers', 'shifted', 'lax', 'fast'],
    'Convolutions used by our models while tracing (benchmark-only switch): '
    'layers = whatever ankle_jax.models.layers does; shifted = '
    'layers.depthwise_conv2d -> ankle_jax.models.depthwise.depthwise_conv2d; '
    'lax = grouped lax conv; fast = shifted AND every flax nn.Conv through '
    'ankle_jax.models.depthwise.conv_general_dilated (1x1 convs as matmuls).',
)

# config.model.name -> keras.applications constructor name.
KERAS_MODELS = {
    'inception_v3': 'InceptionV3',
    'resnet101_v2': 'ResNet101V2',
    'xception': 'Xception',
}


def keras_variant(config) -> None:
  """Rewrites config.model in place to keras.applications' architecture."""
  config.model.aux_head = False
  config.model.dropout_rate = 0.0
  kwargs = (
      dict(config.model.kwargs.to_dict()) if config.model.get('kwargs') else {}
  )
  if config.model.name == 'xception':
    kwargs['valid_stem'] = True
  elif config.model.name == 'resnet101_v2':
    kwargs['stride_in_first_unit'] = False
    kwargs.pop('keras_stem', None)  # Follows stride_in_first_unit.
  config.model.kwargs = kwargs


def time_call(fn: Callable[[], Any]) -> float:
  """Milliseconds of fn() including device completion."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return (time.perf_counter() - start) * 1e3


def flops_of(computation) -> float:
  """XLA's estimate of the FLOPs of one call of a lowered or compiled function.

  On GPU the compiled estimate leaves out convolutions that run as cuDNN custom
  calls (about 90% of the work here), so `flops_per_step` on a GPU comes from
  the lowered (backend-neutral) HLO; on CPU it is the compiled estimate, the
  figure the Keras comparison is stated in.
  """
  analysis = computation.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device.
    analysis = analysis[0]
  return (
      float(analysis.get('flops', float('nan'))) if analysis else float('nan')
  )


# Nominal dense peak TFLOP/s by device kind and compute dtype (for MFU on
# GPUs; f32 is what XLA's default precision gives there: TF32 tensor cores).
SPEC_PEAK_TFLOPS = {
    'NVIDIA H100 80GB HBM3': {'bfloat16': 989.0, 'float32': 494.0},
    'NVIDIA H100': {'bfloat16': 989.0, 'float32': 494.0},
    'NVIDIA H200': {'bfloat16': 989.0, 'float32': 494.0},
    'NVIDIA A100-SXM4-80GB': {'bfloat16': 312.0, 'float32': 156.0},
    'NVIDIA A100-SXM4-40GB': {'bfloat16': 312.0, 'float32': 156.0},
}


def matmul_peak_gflops(n: int, dtype=jnp.float32, repeats: int = 10) -> float:
  """GFLOP/s of an n x n @ n x n matmul in `dtype` (median of `repeats`)."""
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  ms = statistics.median(
      time_call(lambda: matmul(a, b)) for _ in range(repeats)
  )
  return 2 * n**3 / (ms * 1e-3) / 1e9


def random_batch(batch_size: int, image_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.random((batch_size, image_size, image_size, 1), np.float32)
  labels = rng.integers(0, 2, (batch_size,), np.int32)
  return {'image': images, 'label': labels}


@contextlib.contextmanager
def depthwise_impl(name: str):
  """Temporarily swaps layers.depthwise_conv2d (benchmark-only knob)."""
  from ankle_jax.models import depthwise  # pylint: disable=g-import-not-at-top
  from ankle_jax.models import layers  # pylint: disable=g-import-not-at-top

  original = layers.depthwise_conv2d
  if name == 'shifted':
    layers.depthwise_conv2d = lambda x, k, strides=(
        1,
        1,
    ), padding='SAME': depthwise.depthwise_conv2d(
        x, k, strides=strides, padding=padding
    )
  elif name == 'lax':
    layers.depthwise_conv2d = lambda x, k, strides=(
        1,
        1,
    ), padding='SAME': depthwise.grouped_conv_reference(
        x, k, strides=strides, padding=padding
    )
  from flax.linen import linear  # pylint: disable=g-import-not-at-top

  original_lax = linear.lax
  if name == 'fast':
    layers.depthwise_conv2d = lambda x, k, strides=(
        1,
        1,
    ), padding='SAME': depthwise.depthwise_conv2d(
        x, k, strides=strides, padding=padding
    )

    class _LaxWithFastConv:
      """jax.lax, except conv_general_dilated (flax nn.Conv's default)."""

      conv_general_dilated = staticmethod(depthwise.conv_general_dilated)

      def __getattr__(self, attr):
        return getattr(jax.lax, attr)

    linear.lax = _LaxWithFastConv()
  try:
    yield
  finally:
    layers.depthwise_conv2d = original
    linear.lax = original_lax


class OursStep:
  """Our jitted, donated train step on a fixed batch."""

  def __init__(self, config, batch, depthwise: str = 'layers'):
    with depthwise_impl(depthwise):
      self._build(config, batch)

  def _build(self, config, batch):
    mesh = sharding.create_mesh()
    model = models.from_run_config(config)
    optimizer = state_lib.OptimizerSettings.from_config(config)
    lr_fn = state_lib.create_learning_rate_fn(optimizer, 1000)
    self.state = state_lib.create_train_state(
        optimizer,
        model,
        jax.random.key_data(jax.random.key(config.seed)),
        config.image_size,
        learning_rate_fn=lr_fn,
    )
    compiled = steps.compile_steps(
        mesh,
        lr_fn,
        steps.AugmentSettings.from_config(config.augment),
        losses.LossSettings.from_config(config),
    )
    self.batch = sharding.shard_batch(batch, mesh)
    lowered = compiled.train.lower(self.state, self.batch)
    self.compiled = lowered.compile()
    self.flops = flops_of(
        self.compiled if jax.default_backend() == 'cpu' else lowered
    )

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    return metrics['loss']


class KerasStep:
  """keras.applications model + Adam, a jitted stateless step (Keras recipe)."""

  def __init__(
      self,
      model_name: str,
      image_size: int,
      dtype: str,
      batch,
      learning_rate: float,
  ):
    import keras  # pylint: disable=g-import-not-at-top

    if keras.backend.backend() != 'jax':
      raise RuntimeError(
          'benchmarks/train_step.py: set KERAS_BACKEND=jax '
          'before anything imports keras'
      )
    if model_name not in KERAS_MODELS:
      raise ValueError(
          f'--compare_keras: no keras.applications model for '
          f'{model_name!r}; known: {sorted(KERAS_MODELS)}'
      )
    if dtype == 'bfloat16':
      keras.config.set_dtype_policy('mixed_bfloat16')
    constructor = getattr(keras.applications, KERAS_MODELS[model_name])
    self.model = constructor(
        weights=None,
        input_shape=(image_size, image_size, 1),
        classes=2,
        classifier_activation=None,
    )
    keras.config.set_dtype_policy('float32')
    self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    self.optimizer.build(self.model.trainable_variables)
    model, optimizer = self.model, self.optimizer

    def loss_fn(trainable, non_trainable, images, labels):
      logits, non_trainable = model.stateless_call(
          trainable, non_trainable, images, training=True
      )
      logits = logits.astype(jnp.float32)
      log_probs = jax.nn.log_softmax(logits)
      ce = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], 1))
      return ce, non_trainable

    def step(state, images, labels):
      trainable, non_trainable, opt_vars = state
      (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          trainable, non_trainable, images, labels
      )
      trainable, opt_vars = optimizer.stateless_apply(
          opt_vars, grads, trainable
      )
      return (trainable, non_trainable, opt_vars), loss

    self.state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    self.images = jnp.asarray(batch['image'])
    self.labels = jnp.asarray(batch['label'])
    jitted = jax.jit(step, donate_argnums=(0,))
    lowered = jitted.lower(self.state, self.images, self.labels)
    self.compiled = lowered.compile()
    self.flops = flops_of(
        self.compiled if jax.default_backend() == 'cpu' else lowered
    )

  def __call__(self):
    self.state, loss = self.compiled(self.state, self.images, self.labels)
    return loss


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config=configs/<model>.py is required')
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  if _IMAGE_SIZE.value:
    config.image_size = _IMAGE_SIZE.value
  if _BATCH_SIZE.value:
    config.batch_size = _BATCH_SIZE.value
  batch_size = config.batch_size
  variant = _VARIANT.value or ('keras' if _COMPARE_KERAS.value else 'config')
  if variant == 'keras':
    keras_variant(config)
  batch = random_batch(batch_size, config.image_size)

  t0 = time.perf_counter()
  ours = OursStep(config, batch, _DEPTHWISE.value)
  compile_s = time.perf_counter() - t0
  sides = {'ours': ours}
  keras_compile_s = None
  if _COMPARE_KERAS.value:
    t0 = time.perf_counter()
    sides['keras'] = KerasStep(
        config.model.name,
        config.image_size,
        config.dtype,
        batch,
        config.learning_rate,
    )
    keras_compile_s = time.perf_counter() - t0

  for step_fn in sides.values():
    for _ in range(_WARMUP.value):
      time_call(step_fn)
  times = {name: [] for name in sides}
  for _ in range(_STEPS.value):
    for name, step_fn in sides.items():  # Interleaved.
      times[name].append(time_call(step_fn))
    print(
        json.dumps({k: round(v[-1], 1) for k, v in times.items()}), flush=True
    )

  on_cpu = jax.default_backend() == 'cpu'
  matmul_n = _MATMUL_N.value or (2048 if on_cpu else 8192)
  # On CPU the f32 peak is the yardstick (bf16 has no faster path there).
  matmul_dtype = 'float32' if on_cpu else config.dtype
  peak = matmul_peak_gflops(matmul_n, jnp.dtype(matmul_dtype))
  device_kind = jax.devices()[0].device_kind
  spec_tflops = SPEC_PEAK_TFLOPS.get(device_kind, {}).get(config.dtype)
  step_ms = statistics.median(times['ours'])
  gflops = ours.flops / (step_ms * 1e-3) / 1e9
  result = {
      'model': config.model.name,
      'config_file': config_flags.get_config_filename(flags.FLAGS['config']),
      'variant': variant,
      'depthwise': _DEPTHWISE.value,
      'model_kwargs': config.model.kwargs.to_dict()
      if hasattr(config.model.kwargs, 'to_dict')
      else dict(config.model.kwargs),
      'aux_head': bool(config.model.aux_head),
      'dropout_rate': float(config.model.dropout_rate),
      'dtype': config.dtype,
      'image_size': config.image_size,
      'batch_size': batch_size,
      'steps': _STEPS.value,
      'step_ms': round(step_ms, 1),
      'step_ms_all': [round(t, 1) for t in times['ours']],
      'images_per_sec': round(batch_size / (step_ms * 1e-3), 2),
      'flops_per_step': ours.flops,
      'gflops_per_sec': round(gflops, 1),
      'matmul_peak_gflops_per_sec': round(peak, 1),
      'matmul_peak_shape_dtype': f'{matmul_n}x{matmul_n} {matmul_dtype}',
      'fraction_of_matmul_peak': round(gflops / peak, 3),
      'spec_peak_tflops': spec_tflops,
      'mfu': round(gflops / (spec_tflops * 1e3), 4) if spec_tflops else None,
      'compile_s': round(compile_s, 1),
      'backend': jax.default_backend(),
      'device': device_kind,
      'num_devices': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'machine': platform.machine(),
      'jax': jax.__version__,
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
  }
  if 'keras' in sides:
    keras_ms = statistics.median(times['keras'])
    keras_flops = sides['keras'].flops
    result.update(
        {
            'keras_step_ms': round(keras_ms, 1),
            'keras_step_ms_all': [round(t, 1) for t in times['keras']],
            'keras_images_per_sec': round(batch_size / (keras_ms * 1e-3), 2),
            'keras_flops_per_step': keras_flops,
            'keras_gflops_per_sec': round(
                keras_flops / (keras_ms * 1e-3) / 1e9, 1
            ),
            'keras_compile_s': round(keras_compile_s, 1),
            'ratio_vs_keras': round(keras_ms / step_ms, 3),
            # Median of the per-round ratios (each round times both back to
            # back): robust to load that drifts over the run.
            'ratio_vs_keras_paired_median': round(
                statistics.median(
                    k / o for k, o in zip(times['keras'], times['ours'])
                ),
                3,
            ),
        }
    )
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)

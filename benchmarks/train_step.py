r"""Times our jitted train step (throughput), optionally beside Keras', or the
real training loop end to end.

Usage (from the repo root):
  python benchmarks/train_step.py --config=configs/xception.py \
      [--batch_size=8] [--steps=5] [--rounds=3] [--compare_keras] \
      [--dtype=float32|bfloat16] [--depthwise=layers|shifted|lax|fast] \
      [--variant=keras|config] [--config.<field>=<value> ...]
  python benchmarks/train_step.py --config=configs/demo.py --end_to_end \
      [--workdir=DIR] [--steps=20] [--rounds=2]

Step mode (the default). Ours is the real `ankle_jax.training.steps.train_step`
(on-device augmentation and standardization, cross entropy, L2, aux loss, Adam,
BatchNorm statistics), jitted by `steps.compile_steps` with the state donated.
`--distinct_batches` different random batches of [B, S, S, 1] images in [0, 1]
are placed on the device before timing and taken in turn (no step reuses the
previous step's batch). A round dispatches `--steps` steps and waits for the
device once, so step_ms is the throughput a training loop gets when the input
keeps up, not the latency of one step; the median over `--rounds` is reported.

End-to-end mode (`--end_to_end`): `ankle_jax.train.train_and_evaluate` itself,
the real loader over a built dataset (the config's data fields: e.g.
configs/demo.py builds its synthetic studies on first use under --workdir, or
`--config.data.data_dir=DIR --config.data.dataset_config=fracatlas` reads a
built FracAtlas), in a fresh run directory under --workdir. The run is
(1 + rounds) x steps long and logs every `steps` steps; the first window
(compilation included) is reported as compile_s, the others' images/s
(metrics.jsonl) as the rounds. Validation and the checkpoint happen only at
the last step, after the timed windows.

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
`stateless_apply`, in one `jax.jit` with the state donated. The rounds
alternate (ours, Keras, ours, ...), so background load hits both alike.

FLOPs per step come from XLA's cost analysis of the step (all ops,
elementwise included): the compiled estimate on CPU (the figure the Keras
comparison is stated in), the lowered one elsewhere (on GPU the compiled
estimate leaves out the cuDNN convolutions). Both count the global batch. The
script also measures the machine's matmul peak (CPU: 2048x2048 f32; GPU:
8192x8192 in the compute dtype) and reports the fraction of it achieved; on
known GPUs also MFU against the nominal dense peak of every device used
(step_record.SPEC_PEAK_TFLOPS). --batch_size defaults to the config's (the
paper's). --device_lock=PATH times (warm-up included) only while holding that
file lock, so that several processes can compile at once and time one by one
(benchmarks/gpu_suite.sh).

The last line printed is one JSON object, a `step_record.StepRecord` (with
`ratio_vs_keras*` and the Keras side's numbers in `extra` under --compare_keras).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import contextlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
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
for path in (REPO_ROOT, REPO_ROOT / 'benchmarks'):
  if str(path) not in sys.path:
    sys.path.insert(0, str(path))  # For `configs`, `ankle_jax`, step_record.

import step_lowering  # noqa: E402
import step_record  # noqa: E402

from ankle_jax import sharding  # noqa: E402
from ankle_jax import train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Training config file, e.g. configs/xception.py.',
    lock_config=False,
)
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, "Images per step (default: the config's batch_size)."
)
_STEPS = flags.DEFINE_integer(
    'steps', 5, 'Steps per timed round (one wait per round).'
)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds (median reported).')
_WARMUP = flags.DEFINE_integer(
    'warmup', 2, 'Untimed steps after compilation, per side.'
)
_DISTINCT_BATCHES = flags.DEFINE_integer(
    'distinct_batches', 4, 'Different random batches on the device, in turn.'
)
_END_TO_END = flags.DEFINE_bool(
    'end_to_end', False, 'Time the real training loop and loader instead.'
)
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    '--end_to_end: folder of the runs (and of a synthetic dataset); '
    'default: a new temporary folder.',
)
_DEVICE_LOCK = flags.DEFINE_string(
    'device_lock', None, 'Time only while holding this file lock.'
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
    'matmul_n',
    None,
    'Matmul-peak side (default 2048 on CPU, 8192 else; 0 = skip).',
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


def timed_round(step_fn: Callable[[int], Any], num_steps: int) -> float:
  """Milliseconds per step of `num_steps` dispatched steps and one wait."""
  start = time.perf_counter()
  out = None
  for i in range(num_steps):
    out = step_fn(i)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) * 1e3 / num_steps


def flops_of(computation, num_devices: int = 1) -> float:
  """XLA's estimate of the FLOPs of one call of a lowered or compiled function,
  for the global batch.

  A compiled SPMD program's estimate is one device's share (times
  num_devices); a lowered one's is the whole program's. On GPU the compiled
  estimate leaves out convolutions that run as cuDNN custom calls (about 90%
  of the work here), hence `lowered_or_compiled`.
  """
  analysis = computation.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device.
    analysis = analysis[0]
  flops = float(analysis.get('flops', float('nan'))) if analysis else np.nan
  compiled = not hasattr(computation, 'compile')
  return flops * num_devices if compiled else flops


def lowered_or_compiled(lowered, compiled) -> tuple[Any, str]:
  """What `flops_of` reads: the compiled step on CPU, the lowered elsewhere."""
  if jax.default_backend() == 'cpu':
    return compiled, 'xla_compiled'
  return lowered, 'xla_lowered'


def matmul_peak_gflops(n: int, dtype=jnp.float32, repeats: int = 10) -> float:
  """GFLOP/s of an n x n @ n x n matmul in `dtype` (median of `repeats`)."""
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  ms = statistics.median(
      timed_round(lambda _: matmul(a, b), 1) for _ in range(repeats)
  )
  return 2 * n**3 / (ms * 1e-3) / 1e9


def random_batches(
    count: int, batch_size: int, image_size: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
  """`count` different batches: 'image' float32 [B, S, S, 1] in [0, 1] and
  'label' int32 [B]."""
  rng = np.random.default_rng(seed)
  return [
      {
          'image': rng.random(
              (batch_size, image_size, image_size, 1), np.float32
          ),
          'label': rng.integers(0, 2, (batch_size,), np.int32),
      }
      for _ in range(count)
  ]


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


def lower_train_step(config, mesh, batch) -> tuple[Any, Any]:
  """(a fresh train state on the mesh, our train step lowered for `batch`)."""
  make_state, jitted = step_lowering.state_and_steps(config, mesh)
  state = make_state()
  return state, jitted.train.lower(state, batch)


class OursStep:
  """Our jitted, donated train step over batches placed on the devices.

  Call with i: one step on batch i mod len(batches); returns the loss (a
  device array, not waited for).
  """

  def __init__(self, config, batches, depthwise: str = 'layers'):
    with depthwise_impl(depthwise):
      self._build(config, batches)

  def _build(self, config, batches):
    mesh = sharding.create_mesh()
    self.num_devices = mesh.devices.size
    self.batches = [sharding.shard_batch(b, mesh) for b in batches]
    self.state, lowered = lower_train_step(config, mesh, self.batches[0])
    self.compiled = lowered.compile()
    counted, self.flops_source = lowered_or_compiled(lowered, self.compiled)
    self.flops = flops_of(counted, self.num_devices)

  def __call__(self, i: int):
    batch = self.batches[i % len(self.batches)]
    self.state, metrics = self.compiled(self.state, batch)
    return metrics['loss']


class KerasStep:
  """keras.applications model + Adam, a jitted stateless step (Keras recipe);
  called as OursStep."""

  def __init__(
      self,
      model_name: str,
      image_size: int,
      dtype: str,
      batches,
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
    self.batches = [
        (jnp.asarray(b['image']), jnp.asarray(b['label'])) for b in batches
    ]
    jitted = jax.jit(step, donate_argnums=(0,))
    lowered = jitted.lower(self.state, *self.batches[0])
    self.compiled = lowered.compile()
    counted, self.flops_source = lowered_or_compiled(lowered, self.compiled)
    self.flops = flops_of(counted)

  def __call__(self, i: int):
    images, labels = self.batches[i % len(self.batches)]
    self.state, loss = self.compiled(self.state, images, labels)
    return loss


def prepared_config() -> tuple[Any, str]:
  """(the config with the command-line overrides, the variant timed)."""
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config=configs/<model>.py is required')
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  if _IMAGE_SIZE.value:
    config.image_size = _IMAGE_SIZE.value
  if _BATCH_SIZE.value:
    config.batch_size = _BATCH_SIZE.value
  variant = _VARIANT.value or ('keras' if _COMPARE_KERAS.value else 'config')
  if variant == 'keras':
    keras_variant(config)
  return config, variant


def time_sides(
    sides: dict[str, Callable[[int], Any]], num_steps: int, rounds: int
) -> dict[str, list[float]]:
  """Per-round ms per step of each side, the sides alternating round by
  round after `--warmup` untimed steps each; prints each round."""
  for step_fn in sides.values():
    if _WARMUP.value:
      timed_round(step_fn, _WARMUP.value)
  times = {name: [] for name in sides}
  for _ in range(rounds):
    for name, step_fn in sides.items():
      times[name].append(timed_round(step_fn, num_steps))
    print(
        json.dumps({k: round(v[-1], 1) for k, v in times.items()}), flush=True
    )
  return times


def matmul_peak(dtype: str) -> tuple[float | None, str]:
  """(measured matmul GFLOP/s, 'NxN dtype'); on CPU in f32 (bf16 has no
  faster path there); (None, '') with --matmul_n=0."""
  on_cpu = jax.default_backend() == 'cpu'
  n = (
      _MATMUL_N.value
      if _MATMUL_N.value is not None
      else (2048 if on_cpu else 8192)
  )
  if not n:
    return None, ''
  dtype = 'float32' if on_cpu else dtype
  return matmul_peak_gflops(n, jnp.dtype(dtype)), f'{n}x{n} {dtype}'


def our_record(
    config,
    *,
    variant: str,
    mode: str,
    round_ms: Sequence[float],
    flops: tuple[float | None, str],
    compile_s: float,
    extra: dict[str, Any],
) -> step_record.StepRecord:
  """The StepRecord of our step; flops: (per global step, who counted)."""
  device = jax.devices()[0].device_kind
  num_devices = jax.device_count()
  r = step_record.rates(
      round_ms,
      config.batch_size,
      flops[0],
      device=device,
      dtype=config.dtype,
      num_devices=num_devices,
  )
  peak, peak_shape = matmul_peak(config.dtype) if mode == 'step' else (None, '')
  return step_record.StepRecord(
      implementation='ours',
      model=config.model.name,
      variant=variant,
      mode=mode,
      dtype=config.dtype,
      image_size=config.image_size,
      batch_size=config.batch_size,
      steps=_STEPS.value,
      rounds=len(round_ms),
      flops_per_step=flops[0],
      flops_source=flops[1],
      **step_record.timing_fields(round_ms, r, peak),
      compile_s=round(compile_s, 1),
      num_devices=num_devices,
      backend=jax.default_backend(),
      device=device,
      framework=f'jax {jax.__version__}',
      config_file=config_flags.get_config_filename(flags.FLAGS['config']),
      extra={**model_fields(config), 'matmul_peak_shape': peak_shape, **extra},
  )


def model_fields(config) -> dict[str, Any]:
  """The config's model fields that say which network was timed."""
  kwargs = config.model.get('kwargs') or {}
  return {
      'model_kwargs': dict(getattr(kwargs, 'to_dict', lambda: kwargs)()),
      'aux_head': bool(config.model.aux_head),
      'dropout_rate': float(config.model.dropout_rate),
      'width_multiplier': float(config.model.width_multiplier),
  }


def keras_extra(
    keras_side: KerasStep, times: dict[str, list[float]], compile_s: float
) -> dict[str, Any]:
  """The Keras side's numbers and the ratios (extra of our record)."""
  keras_ms = statistics.median(times['keras'])
  ours_ms = statistics.median(times['ours'])
  return {
      'keras_step_ms': round(keras_ms, 1),
      'keras_step_ms_rounds': [round(t, 1) for t in times['keras']],
      'keras_flops_per_step': keras_side.flops,
      'keras_gflops_per_sec': round(
          keras_side.flops / (keras_ms * 1e-3) / 1e9, 1
      ),
      'keras_compile_s': round(compile_s, 1),
      'ratio_vs_keras': round(keras_ms / ours_ms, 3),
      # Median of the per-round ratios (each round times both back to back):
      # robust to load that drifts over the run.
      'ratio_vs_keras_paired_median': round(
          statistics.median(
              k / o for k, o in zip(times['keras'], times['ours'])
          ),
          3,
      ),
  }


def step_mode(config, variant: str) -> step_record.StepRecord:
  """Times our step (and Keras') on random batches already on the device."""
  batches = random_batches(
      _DISTINCT_BATCHES.value, config.batch_size, config.image_size
  )
  t0 = time.perf_counter()
  ours = OursStep(config, batches, _DEPTHWISE.value)
  compile_s = time.perf_counter() - t0
  sides = {'ours': ours}
  if _COMPARE_KERAS.value:
    t0 = time.perf_counter()
    sides['keras'] = KerasStep(
        config.model.name,
        config.image_size,
        config.dtype,
        batches,
        config.learning_rate,
    )
    keras_compile_s = time.perf_counter() - t0
  with step_record.quiet_device(_DEVICE_LOCK.value):
    times = time_sides(sides, _STEPS.value, _ROUNDS.value)
    extra = {'depthwise': _DEPTHWISE.value}
    if 'keras' in sides:
      extra.update(keras_extra(sides['keras'], times, keras_compile_s))
    return our_record(
        config,
        variant=variant,
        mode='step',
        round_ms=times['ours'],
        flops=(ours.flops, ours.flops_source),
        compile_s=compile_s,
        extra=extra,
    )


def end_to_end_config(config, root: pathlib.Path) -> None:
  """Sets the run length, logging and data paths of an end-to-end run."""
  num_steps = _STEPS.value * (1 + _ROUNDS.value)
  config.num_train_steps = num_steps
  config.log_every_steps = _STEPS.value
  config.eval_every_steps = num_steps
  config.checkpoint_every_steps = num_steps
  config.image_summary_every_steps = 0
  config.early_stopping_patience = 0
  config.progress_bar = False
  if not config.data.data_dir:  # Synthetic data: built once under root.
    config.data.data_dir = str(root / 'data' / 'tfds')


def end_to_end(config, variant: str) -> step_record.StepRecord:
  """Times `train.train_and_evaluate` (loader, transfers, steps): the first
  log window holds the compilation, the next --rounds windows are timed."""
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix='e2e_'))
  end_to_end_config(config, root)
  run_dir = root / f'run_{time.strftime("%Y%m%d_%H%M%S")}_{os.getpid()}'
  with step_record.quiet_device(_DEVICE_LOCK.value):
    train.train_and_evaluate(config, run_dir)
  windows = [
      row
      for row in map(json.loads, (run_dir / 'metrics.jsonl').open())
      if 'steps_per_second' in row
  ]
  round_ms = [1e3 / row['steps_per_second'] for row in windows[1:]]
  first_window_s = _STEPS.value / windows[0]['steps_per_second']
  median_ms = statistics.median(round_ms)
  mesh = sharding.create_mesh()
  batch = sharding.shard_batch(
      random_batches(1, config.batch_size, config.image_size)[0], mesh
  )
  flops = flops_of(lower_train_step(config, mesh, batch)[1])
  data_fields = ('worker_count', 'on_device', 'dataset_config', 'data_dir')
  return our_record(
      config,
      variant=variant,
      mode='end_to_end',
      round_ms=round_ms,
      flops=(flops, 'xla_lowered'),
      compile_s=first_window_s - _STEPS.value * median_ms * 1e-3,
      extra={
          'first_window_s': round(first_window_s, 2),
          'run_dir': str(run_dir),
          **{f'data.{k}': config.data.get(k) for k in data_fields},
      },
  )


def main(argv):
  del argv
  config, variant = prepared_config()
  if _END_TO_END.value:
    record = end_to_end(config, variant)
  else:
    record = step_mode(config, variant)
  print(record.to_json(), flush=True)


if __name__ == '__main__':
  app.run(main)

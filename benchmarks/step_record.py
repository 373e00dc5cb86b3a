"""The one JSON line a train-step benchmark prints, shared by ours and timm's.

benchmarks/train_step.py (ours, JAX) and benchmarks/timm_step.py (timm's,
PyTorch) both end with `print(record.to_json())` of a `StepRecord`, so that
benchmarks/suite_summary.py can put the two side by side: the field names are
written here once. Framework-neutral: no jax or torch import.

Also here: the nominal dense peaks for MFU, the MFU formula (over every device
the step ran on) and `quiet_device`, the file lock that lets several benchmark
processes compile at once while only one of them times on the accelerator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import platform
import statistics
from typing import Any

# Nominal dense peak TFLOP/s per device, by device kind and compute dtype (for
# MFU on GPUs). float32 rows run as TF32 on tensor cores (XLA's default
# precision; torch with allow_tf32), so the f32 peak is the TF32 one.
SPEC_PEAK_TFLOPS = {
    'NVIDIA H100 80GB HBM3': {'bfloat16': 989.0, 'float32': 494.0},
    'NVIDIA H100': {'bfloat16': 989.0, 'float32': 494.0},
    'NVIDIA H200': {'bfloat16': 989.0, 'float32': 494.0},
    'NVIDIA A100-SXM4-80GB': {'bfloat16': 312.0, 'float32': 156.0},
    'NVIDIA A100-SXM4-40GB': {'bfloat16': 312.0, 'float32': 156.0},
}


@dataclasses.dataclass(frozen=True)
class Family:
  """One of the paper's three families, as ours and timm's are compared.

  paper_config: the paper config whose batch_size is the family's;
  ours_config, ours_variant: what benchmarks/train_step.py times to compute
  the same network as timm's `timm_model` (no aux tower, no dropout;
  Xception with the VALID stem as legacy_xception, ResNet with the stride in
  the first unit of a stage as timm's resnetv2).
  """

  timm_model: str
  paper_config: str
  ours_config: str
  ours_variant: str


FAMILIES = {
    'inception_v3': Family(
        'inception_v3',
        'configs/inception_v3.py',
        'configs/inception_v3.py',
        'keras',
    ),
    'resnet101_v2': Family(
        'resnetv2_101', 'configs/resnet.py', 'configs/resnet.py', 'config'
    ),
    'xception': Family(
        'legacy_xception', 'configs/xception.py', 'configs/xception.py', 'keras'
    ),
}


@dataclasses.dataclass(frozen=True)
class StepRecord:
  """One timed training-step configuration (one JSON line).

  Times are milliseconds per step; a round dispatches `steps` steps and waits
  for the device once, so step_ms is throughput, not latency. flops_per_step
  counts the whole global batch (all devices); mfu divides the achieved rate by
  num_devices x the nominal peak of one device.
  """

  implementation: str  # 'ours' | 'timm' | 'keras'.
  model: str  # Our family name: 'inception_v3' | 'resnet101_v2' | 'xception'.
  variant: str  # 'config' | 'keras' (ours) | the timm model name.
  mode: str  # 'step' (random batches on the device) | 'end_to_end'.
  dtype: str  # 'float32' | 'bfloat16' (compute dtype).
  image_size: int  # Side in px; inputs are [B, S, S, 1].
  batch_size: int  # Global images per step.
  steps: int  # Steps per timed round.
  rounds: int
  step_ms: float  # Median over rounds.
  step_ms_rounds: list[float]
  images_per_sec: float
  flops_per_step: float | None
  flops_source: str  # Who counted: 'xla_compiled' | 'xla_lowered' | ...
  gflops_per_sec: float | None
  spec_peak_tflops: float | None  # Of one device; None off known GPUs.
  mfu: float | None
  matmul_peak_gflops_per_sec: float | None  # Measured in the same process.
  fraction_of_matmul_peak: float | None
  compile_s: float  # Tracing + compilation (+ the first step where fused).
  num_devices: int
  backend: str  # 'cpu' | 'gpu' | 'tpu' | 'cuda'.
  device: str
  framework: str  # e.g. 'jax 0.10.2' or 'torch 2.13.0+cpu'.
  config_file: str | None = None
  cpu_count: int | None = dataclasses.field(default_factory=os.cpu_count)
  machine: str = dataclasses.field(default_factory=platform.machine)
  date: str = dataclasses.field(
      default_factory=lambda: datetime.datetime.now().isoformat(
          timespec='seconds'
      )
  )
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))


FIELDS = tuple(field.name for field in dataclasses.fields(StepRecord))


@dataclasses.dataclass(frozen=True)
class Rates:
  """What a list of per-round step times gives (see `rates`)."""

  step_ms: float
  images_per_sec: float
  gflops_per_sec: float | None
  spec_peak_tflops: float | None
  mfu: float | None


def rates(
    round_ms: Sequence[float],
    batch_size: int,
    flops_per_step: float | None,
    *,
    device: str,
    dtype: str,
    num_devices: int,
) -> Rates:
  """Median step time (ms), images/s, GFLOP/s and MFU.

  MFU = achieved FLOP/s / (num_devices x the device's nominal dense peak in
  `dtype`); None where the device is not in SPEC_PEAK_TFLOPS.
  """
  step_ms = statistics.median(round_ms)
  gflops = (
      flops_per_step / (step_ms * 1e-3) / 1e9
      if flops_per_step and flops_per_step == flops_per_step
      else None
  )
  spec = SPEC_PEAK_TFLOPS.get(device, {}).get(dtype)
  mfu = gflops / (spec * 1e3 * num_devices) if gflops and spec else None
  return Rates(
      step_ms=round(step_ms, 2),
      images_per_sec=round(batch_size / (step_ms * 1e-3), 2),
      gflops_per_sec=None if gflops is None else round(gflops, 1),
      spec_peak_tflops=spec,
      mfu=None if mfu is None else round(mfu, 4),
  )


def timing_fields(
    round_ms: Sequence[float], r: Rates, matmul_peak: float | None
) -> dict[str, Any]:
  """The StepRecord fields that follow from the rounds' times, their Rates
  and the measured matmul peak (GFLOP/s; None: not measured)."""
  return dict(
      step_ms=r.step_ms,
      step_ms_rounds=[round(t, 2) for t in round_ms],
      images_per_sec=r.images_per_sec,
      gflops_per_sec=r.gflops_per_sec,
      spec_peak_tflops=r.spec_peak_tflops,
      mfu=r.mfu,
      matmul_peak_gflops_per_sec=(
          None if matmul_peak is None else round(matmul_peak, 1)
      ),
      fraction_of_matmul_peak=(
          round(r.gflops_per_sec / matmul_peak, 3)
          if matmul_peak and r.gflops_per_sec
          else None
      ),
  )


@contextlib.contextmanager
def quiet_device(lock_path: str | None) -> Iterator[None]:
  """Holds an exclusive lock on `lock_path` (none when it is empty), so that
  processes sharing one accelerator time one at a time while the others may
  still compile."""
  if not lock_path:
    yield
    return
  with open(lock_path, 'a+') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)

r"""Times timm's peers of our three families with our setup (PyTorch).

Usage (from the repo root; needs the optional peers: pip install -e ".[peers]"):
  python benchmarks/timm_step.py --family=xception [--batch_size=20] \
      [--dtype=bfloat16|float32] [--steps=10] [--rounds=3] [--no-compile]

The family's timm model (step_record.FAMILIES: inception_v3, resnetv2_101,
legacy_xception) is built with timm.create_model(name, pretrained=False,
num_classes=2, in_chans=1) and trained as we train ours: input [B, 1, 300, 300]
(--image_size), batch size the family's paper config's (configs/*.py) unless
--batch_size, one full step = forward, softmax cross entropy (in float32),
backward and torch.optim.Adam (fused on CUDA). channels_last memory format,
bfloat16 autocast for --dtype=bfloat16, TF32 matmuls and convolutions for
float32, the model under torch.compile (default mode). Unlike ours, the step
has no augmentation or standardization (ours does both on the device) and no
L2 or aux loss (the compared variants of ours have no aux tower).

`--distinct_batches` random batches are placed on the device first and taken
in turn; a round dispatches --steps steps and synchronizes once (throughput);
the median round is reported. FLOPs per step: 3 x torch's FlopCounterMode
count of one eager forward (matmuls and convolutions only; XLA's count for
ours includes elementwise work too, so MFUs compare within a few percent, and
images/s compare exactly). --device_lock as in benchmarks/train_step.py.

The last line printed is one JSON object, a `step_record.StepRecord`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import importlib
import json
import pathlib
import statistics
import sys
import time
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / 'benchmarks'):
  if str(_path) not in sys.path:
    sys.path.insert(0, str(_path))  # For `configs` and step_record.

import step_record  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--family', required=True, choices=step_record.FAMILIES)
  parser.add_argument('--batch_size', type=int, default=None)
  parser.add_argument('--image_size', type=int, default=300)
  parser.add_argument(
      '--dtype', choices=('float32', 'bfloat16'), default='bfloat16'
  )
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--distinct_batches', type=int, default=4)
  parser.add_argument('--learning_rate', type=float, default=6e-6)
  parser.add_argument(
      '--compile', action=argparse.BooleanOptionalAction, default=True
  )
  parser.add_argument('--matmul_n', type=int, default=None)
  parser.add_argument('--device_lock', default=None)
  return parser.parse_args(argv)


def paper_batch_size(family: str) -> int:
  """The batch_size of the family's paper config (configs/*.py)."""
  config_file = step_record.FAMILIES[family].paper_config
  module = importlib.import_module(
      config_file.removesuffix('.py').replace('/', '.')
  )
  return int(module.get_config().batch_size)


class TimmStep:
  """timm model + Adam, one training step per call (on batch i mod n)."""

  def __init__(self, args: argparse.Namespace, batch_size: int):
    import timm
    import torch

    self.torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    self.model = timm.create_model(
        step_record.FAMILIES[args.family].timm_model,
        pretrained=False,
        num_classes=2,
        in_chans=1,
    ).to(self.device, memory_format=torch.channels_last)
    self.model.train()
    self.optimizer = torch.optim.Adam(
        self.model.parameters(),
        lr=args.learning_rate,
        fused=self.device.type == 'cuda',
    )
    self.autocast = args.dtype == 'bfloat16'
    generator = torch.Generator().manual_seed(0)
    self.batches = [
        (
            torch.rand(
                (batch_size, 1, args.image_size, args.image_size),
                generator=generator,
            ).to(self.device, memory_format=torch.channels_last),
            torch.randint(0, 2, (batch_size,), generator=generator).to(
                self.device
            ),
        )
        for _ in range(args.distinct_batches)
    ]
    self.flops = self.count_flops()
    self.forward = torch.compile(self.model) if args.compile else self.model

  def step(self, forward: Callable[[Any], Any], i: int):
    torch = self.torch
    images, labels = self.batches[i % len(self.batches)]
    with torch.autocast(
        self.device.type, dtype=torch.bfloat16, enabled=self.autocast
    ):
      logits = forward(images)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.detach()

  def __call__(self, i: int):
    return self.step(self.forward, i)

  def count_flops(self) -> float:
    """FLOPs of one step: 3 x torch's count of one eager forward (forward +
    backward). Not the counted backward: FlopCounterMode counts a grouped
    (depthwise) convolution's backward as a dense one, 3.4x too much for
    legacy_xception."""
    from torch.utils import flop_counter

    counter = flop_counter.FlopCounterMode(display=False)
    with counter, self.torch.no_grad():
      self.model(self.batches[0][0])
    return 3.0 * counter.get_total_flops()

  def synchronize(self) -> None:
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()


def timed_round(step: TimmStep, num_steps: int) -> float:
  """Milliseconds per step of `num_steps` queued steps and one sync."""
  start = time.perf_counter()
  for i in range(num_steps):
    step(i)
  step.synchronize()
  return (time.perf_counter() - start) * 1e3 / num_steps


def matmul_peak_gflops(step: TimmStep, n: int, dtype: str) -> float:
  """GFLOP/s of an n x n matmul in `dtype` on the step's device (median of
  10)."""
  torch = step.torch
  a, b = (
      torch.randn(n, n, device=step.device, dtype=getattr(torch, dtype))
      for _ in range(2)
  )
  torch.matmul(a, b)
  step.synchronize()
  times = []
  for _ in range(10):
    start = time.perf_counter()
    torch.matmul(a, b)
    step.synchronize()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times) / 1e9


def measure(
    args: argparse.Namespace, batch_size: int
) -> tuple[TimmStep, float, list[float], float | None]:
  """Builds, compiles (the first warm-up step) and times: (the step,
  compile_s, ms per step of each round, the matmul peak in GFLOP/s).
  compile_s counts the build, the FLOP count and the first step."""
  start = time.perf_counter()
  step = TimmStep(args, batch_size)
  # torch.compile compiles in the first step, outside the lock, so that
  # several processes compile at once.
  timed_round(step, 1)
  compile_s = time.perf_counter() - start
  with step_record.quiet_device(args.device_lock):
    if args.warmup > 1:
      timed_round(step, args.warmup - 1)
    round_ms = [timed_round(step, args.steps) for _ in range(args.rounds)]
    for ms in round_ms:
      print(json.dumps({'timm': round(ms, 1)}), flush=True)
    on_cpu = step.device.type == 'cpu'
    n = (
        args.matmul_n
        if args.matmul_n is not None
        else (2048 if on_cpu else 8192)
    )
    mm_dtype = 'float32' if on_cpu else args.dtype
    peak = matmul_peak_gflops(step, n, mm_dtype) if n else None
  return step, compile_s, round_ms, peak


def run(args: argparse.Namespace) -> step_record.StepRecord:
  """Times the family's timm model; the record."""
  import torch

  batch_size = args.batch_size or paper_batch_size(args.family)
  step, compile_s, round_ms, peak = measure(args, batch_size)
  on_cpu = step.device.type == 'cpu'
  device = 'cpu' if on_cpu else torch.cuda.get_device_name()
  r = step_record.rates(
      round_ms,
      batch_size,
      step.flops,
      device=device,
      dtype=args.dtype,
      num_devices=1,
  )
  return step_record.StepRecord(
      implementation='timm',
      model=args.family,
      variant=step_record.FAMILIES[args.family].timm_model,
      mode='step',
      dtype=args.dtype,
      image_size=args.image_size,
      batch_size=batch_size,
      steps=args.steps,
      rounds=args.rounds,
      flops_per_step=step.flops,
      flops_source='torch_forward_x3',
      **step_record.timing_fields(round_ms, r, peak),
      compile_s=round(compile_s, 1),
      num_devices=1,
      backend=step.device.type,
      device=device,
      framework=f'torch {torch.__version__}',
      config_file=step_record.FAMILIES[args.family].paper_config,
      extra={'torch_compile': args.compile, 'channels_last': True},
  )


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  print(run(args).to_json(), flush=True)


if __name__ == '__main__':
  main()

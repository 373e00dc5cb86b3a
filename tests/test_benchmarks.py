"""The benchmarks' shared record, the GPU suite's helpers and its cheapest
dry-run part (benchmarks/gpu_suite.sh --dry_run, Phase A, ours, one family).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))

import step_record  # noqa: E402
import suite_summary  # noqa: E402


def _record(implementation: str, images_per_sec: float, **fields):
  rates = step_record.rates(
      [1e3 * 20 / images_per_sec],
      20,
      1e12,
      device='NVIDIA H100',
      dtype='bfloat16',
      num_devices=1,
  )
  values = {
      'implementation': implementation,
      'model': 'xception',
      'variant': 'keras',
      'mode': 'step',
      'dtype': 'bfloat16',
      'image_size': 300,
      'batch_size': 20,
      'steps': 10,
      'rounds': 1,
      'step_ms': rates.step_ms,
      'step_ms_rounds': [rates.step_ms],
      'images_per_sec': rates.images_per_sec,
      'flops_per_step': 1e12,
      'flops_source': 'xla_lowered',
      'gflops_per_sec': rates.gflops_per_sec,
      'spec_peak_tflops': rates.spec_peak_tflops,
      'mfu': rates.mfu,
      'matmul_peak_gflops_per_sec': None,
      'fraction_of_matmul_peak': None,
      'compile_s': 1.0,
      'num_devices': 1,
      'backend': 'gpu',
      'device': 'NVIDIA H100',
      'framework': 'test',
  }
  values.update(fields)
  return step_record.StepRecord(**values)


def test_mfu_divides_by_the_devices_used():
  one, four = (
      step_record.rates(
          [100.0],
          20,
          1e12,
          device='NVIDIA H100',
          dtype='bfloat16',
          num_devices=n,
      )
      for n in (1, 4)
  )
  # 1 TFLOP in 0.1 s = 10 TFLOP/s of 989 per device.
  assert one.mfu == pytest.approx(10 / 989, abs=1e-4)
  assert four.mfu == pytest.approx(one.mfu / 4, abs=1e-4)
  assert one.images_per_sec == four.images_per_sec == 200.0


def test_no_mfu_off_known_devices():
  rates = step_record.rates(
      [100.0, 300.0, 200.0],
      8,
      1e9,
      device='cpu',
      dtype='float32',
      num_devices=1,
  )
  assert rates.step_ms == 200.0  # The median round.
  assert rates.mfu is None and rates.gflops_per_sec == 5.0


def test_record_json_has_exactly_the_schema_fields():
  line = json.loads(_record('ours', 100.0).to_json())
  assert tuple(line) == step_record.FIELDS


def test_phase_a_table_pairs_ours_with_timm():
  records = [
      json.loads(_record('ours', 300.0).to_json()),
      json.loads(_record('timm', 200.0).to_json()),
      json.loads(_record('ours', 50.0, dtype='float32').to_json()),
  ]
  table = suite_summary.phase_a_table(records).splitlines()
  assert len(table) == 4  # Header, rule, one row per (family, batch, dtype).
  bf16 = next(row for row in table if '| bfloat16 |' in row)
  assert '| 300.0 | 200.0 | 1.50 |' in bf16
  f32 = next(row for row in table if '| float32 |' in row)
  assert '| 50.0 | - | - |' in f32


def test_overrides_only_for_fields_the_config_has():
  flags = suite_summary.existing_overrides(
      'configs/xception.py',
      ['data.worker_count=2', 'data.no_such_field=1', 'model.name=xception'],
  )
  assert flags == [
      '--config.data.worker_count=2',
      '--config.model.name=xception',
  ]


def test_families_name_existing_configs():
  for family in step_record.FAMILIES.values():
    assert (REPO_ROOT / family.paper_config).exists()
    assert (REPO_ROOT / family.ours_config).exists()


def test_gpu_suite_dry_run_phase_a_ours(tmp_path):
  """The suite's cheapest part: Phase A of the dry run, our Xception only."""
  env = {
      **os.environ,
      'OUT': str(tmp_path / 'out'),
      'SUITE_WORK': str(tmp_path / 'work'),
      'SUITE_PHASES': 'A',
      'SUITE_FAMILIES': 'xception',
      'SUITE_PEERS': '0',
      'PYTHON': sys.executable,
  }
  done = subprocess.run(
      ['bash', 'benchmarks/gpu_suite.sh', '--dry_run'],
      cwd=REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert done.returncode == 0, done.stdout + done.stderr
  assert 'timm rows skipped: SUITE_PEERS=0' in done.stdout
  lines = (tmp_path / 'out' / 'phase_a.jsonl').read_text().splitlines()
  assert len(lines) == 1, done.stdout
  record = json.loads(lines[0])
  assert tuple(record) == step_record.FIELDS
  assert record['implementation'] == 'ours'
  assert record['variant'] == 'keras' and record['batch_size'] == 20
  assert record['images_per_sec'] > 0 and record['flops_per_step'] > 0
  summary = (tmp_path / 'out' / 'summary.md').read_text()
  assert '| xception | 20 | float32 |' in summary
  assert (tmp_path / 'out' / 'suite.tar.gz').stat().st_size > 0


def test_timm_step_prints_a_record():
  pytest.importorskip('timm')
  done = subprocess.run(
      [
          sys.executable,
          'benchmarks/timm_step.py',
          '--family=xception',
          '--batch_size=2',
          '--image_size=80',
          '--dtype=float32',
          '--steps=1',
          '--rounds=1',
          '--warmup=1',
          '--matmul_n=64',
          '--no-compile',
      ],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert done.returncode == 0, done.stderr
  record = json.loads(done.stdout.splitlines()[-1])
  assert tuple(record) == step_record.FIELDS
  assert record['implementation'] == 'timm'
  assert record['variant'] == 'legacy_xception'
  assert record['flops_per_step'] > 0

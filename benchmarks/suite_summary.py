r"""Helpers of benchmarks/gpu_suite.sh: config overrides that exist, and the
summary tables of its two phases.

  python benchmarks/suite_summary.py family xception
      -> "configs/xception.py keras": the config and --variant of ours that
         computes timm's network (step_record.FAMILIES)
  python benchmarks/suite_summary.py overrides configs/xception.py \
      data.on_device=true data.worker_count=2
      -> the --config.<field>=<value> flags whose field the config has
  python benchmarks/suite_summary.py phase_a OUT/phase_a.jsonl
      -> a markdown table: ours vs timm per family, batch and dtype
  python benchmarks/suite_summary.py phase_b RUN_DIR [RUN_DIR ...]
      -> a markdown table: each training's steps, images/s and validation

No jax or torch import (the suite runs this between phases).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import importlib
import json
import pathlib
import sys
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / 'benchmarks'):
  if str(_path) not in sys.path:
    sys.path.insert(0, str(_path))  # For `configs` and step_record.

import step_record  # noqa: E402


def existing_overrides(config_file: str, overrides: Iterable[str]) -> list[str]:
  """The `--config.<field>=<value>` flags of `overrides` ('field=value',
  dotted fields) whose field the config of `config_file` has."""
  module = importlib.import_module(
      config_file.removesuffix('.py').replace('/', '.')
  )
  config = module.get_config()
  flags = []
  for override in overrides:
    field = override.split('=', 1)[0]
    node = config
    for part in field.split('.'):
      node = node.get(part, _MISSING) if hasattr(node, 'get') else _MISSING
      if node is _MISSING:
        break
    if node is not _MISSING:
      flags.append(f'--config.{override}')
  return flags


_MISSING = object()


def read_records(path: str) -> list[dict[str, Any]]:
  """The JSON objects of a .jsonl file (other lines skipped)."""
  rows = []
  for line in pathlib.Path(path).read_text().splitlines():
    if line.startswith('{'):
      rows.append(json.loads(line))
  return rows


def _fmt(value: Any, digits: int = 1) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def phase_a_table(records: Sequence[dict[str, Any]]) -> str:
  """Ours and timm's side by side, one row per (family, batch, dtype);
  ratio_vs_timm = our images/s over timm's."""
  by_key: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
  for r in records:
    key = (r['model'], r['batch_size'], r['dtype'])
    by_key.setdefault(key, {})[r['implementation']] = r
  lines = [
      '| family | batch | dtype | ours img/s | timm img/s | ratio_vs_timm '
      '| ours MFU | timm MFU | ours compile s | timm compile s |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for (model, batch, dtype), sides in sorted(by_key.items()):
    ours, timm = sides.get('ours', {}), sides.get('timm', {})
    ratio = (
        ours['images_per_sec'] / timm['images_per_sec']
        if ours and timm
        else None
    )
    lines.append(
        f'| {model} | {batch} | {dtype} | {_fmt(ours.get("images_per_sec"))} '
        f'| {_fmt(timm.get("images_per_sec"))} | {_fmt(ratio, 2)} '
        f'| {_fmt(ours.get("mfu"), 3)} | {_fmt(timm.get("mfu"), 3)} '
        f'| {_fmt(ours.get("compile_s"))} | {_fmt(timm.get("compile_s"))} |'
    )
  return '\n'.join(lines)


def phase_b_row(run_dir: pathlib.Path) -> str:
  """One training's row: last step, last train window's images/s, the last
  validation's AUC and case AUC (metrics.jsonl), its wall time."""
  metrics = run_dir / 'metrics.jsonl'
  rows = read_records(str(metrics)) if metrics.exists() else []
  train = [r for r in rows if 'images_per_second' in r]
  val = [r for r in rows if 'val_auc' in r]
  summary_file = run_dir / 'summary.json'
  summary = (
      json.loads(summary_file.read_text()) if summary_file.exists() else {}
  )
  return (
      f'| {run_dir.name} | {_fmt(rows[-1]["step"] if rows else None)} '
      f'| {_fmt(train[-1]["images_per_second"] if train else None)} '
      f'| {_fmt(val[-1]["val_auc"] if val else None, 3)} '
      f'| {_fmt(val[-1].get("val_case_auc") if val else None, 3)} '
      f'| {_fmt(summary.get("train_seconds_this_launch"))} |'
  )


def phase_b_table(run_dirs: Sequence[str]) -> str:
  lines = [
      '| run | step | train img/s (last window) | val_auc | val_case_auc '
      '| training s |',
      '|---|---|---|---|---|---|',
  ]
  lines.extend(phase_b_row(pathlib.Path(d)) for d in run_dirs)
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> int:
  if len(argv) < 3:
    print(__doc__, file=sys.stderr)
    return 2
  command, args = argv[1], argv[2:]
  if command == 'family':
    family = step_record.FAMILIES[args[0]]
    print(family.ours_config, family.ours_variant)
  elif command == 'overrides':
    print(' '.join(existing_overrides(args[0], args[1:])))
  elif command == 'phase_a':
    print(phase_a_table(read_records(args[0])))
  elif command == 'phase_b':
    print(phase_b_table(args))
  else:
    print(f'unknown command {command!r}\n{__doc__}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))

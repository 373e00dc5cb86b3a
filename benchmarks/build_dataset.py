r"""Build throughput: views per second from DICOM file to ArrayRecord record.

  python benchmarks/build_dataset.py [--num_cases=60] [--real_copies=4] \
      [--num_workers=0]
      [--per_file_repeats=3]

Builds (1) a synthetic set (300-900 px, 12-bit, some RLE) and (2) the real files
of ../shared/dicom (~1.4k-2.5k px CR/DX, JPEG 2000 / JPEG-LS / RLE /
uncompressed; each file linked `--real_copies` times as separate cases) with
`ankle_jax.data.prepare.build_dataset`, and prints one JSON line. It also times
`load_radiograph` on each real file in this process (`per_file_seconds`: the
best of `--per_file_repeats` runs, so that a loaded machine disturbs it less
than the build numbers). The target is >= 20 views/s on 2 cores for ~2k x 2k CR
files.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

from ankle_jax.data import dicom
from ankle_jax.data import prepare
from ankle_jax.data import synthetic

SHARED_DICOM = (
    pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'dicom'
)


def _timed_build(manual, data_dir, num_workers):
  start = time.time()
  report = prepare.build_dataset(
      manual,
      data_dir,
      num_workers=num_workers,
      progress=False,
      num_validation_per_label=0,
      num_test_per_label=0,
  )
  seconds = time.time() - start
  views = report['decoded_views'] + len(report['skipped_files'])
  return {
      'views': views,
      'skipped': len(report['skipped_files']),
      'seconds': round(seconds, 2),
      'views_per_second': round(views / seconds, 2),
  }


def _per_file_seconds(files, repeats, image_size=300):
  """file name -> best-of-`repeats` seconds of one `load_radiograph` (None if it cannot be read)."""
  out = {}
  for path in files:
    best = None
    for _ in range(repeats):
      start = time.perf_counter()
      try:
        dicom.load_radiograph(path, image_size)
      except dicom.DicomReadError:
        break
      seconds = time.perf_counter() - start
      best = seconds if best is None else min(best, seconds)
    out[path.name] = None if best is None else round(best, 3)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('--num_cases', type=int, default=60)
  parser.add_argument('--real_copies', type=int, default=4)
  parser.add_argument('--num_workers', type=int, default=0, help='0 = all CPUs')
  parser.add_argument(
      '--per_file_repeats',
      type=int,
      default=3,
      help='timed loads per real file (0 = skip)',
  )
  args = parser.parse_args(argv)
  result = {
      'cpus': os.cpu_count(),
      'num_workers': args.num_workers or os.cpu_count(),
  }
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    synthetic.generate_studies(
        tmp / 'syn',
        num_normal=args.num_cases // 2,
        num_fracture=args.num_cases - args.num_cases // 2,
        seed=0,
    )
    result['synthetic'] = _timed_build(
        tmp / 'syn', tmp / 'syn_data', args.num_workers
    )
    if SHARED_DICOM.is_dir():
      files = sorted(SHARED_DICOM.glob('*.dcm'))
      for copy in range(args.real_copies):
        for i, path in enumerate(files):
          case = (
              tmp
              / 'real'
              / ('fracture' if i % 2 else 'normal')
              / f'c{copy}_{i}'
          )
          case.mkdir(parents=True)
          (case / path.name).symlink_to(path)
      result['real_shared_dicom'] = _timed_build(
          tmp / 'real', tmp / 'real_data', args.num_workers
      )
      if args.per_file_repeats > 0:
        result['per_file_seconds'] = _per_file_seconds(
            files, args.per_file_repeats
        )
  print(json.dumps(result))


if __name__ == '__main__':
  sys.exit(main())

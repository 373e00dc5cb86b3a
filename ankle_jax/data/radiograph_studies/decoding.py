"""Decoding every file of the cases, in parallel, into one disk-backed array.

Each file goes through `dicom.load_radiograph_with_info` (PNG/JPEG too) and is
stored as uint16 [S, S, 1] = round(image * 65535). An unreadable file is
skipped and listed in the build report by case_id, position and reason (with
any path text removed), or fails the build in strict mode.
"""

from __future__ import annotations

from collections.abc import Iterator
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pathlib
from typing import Any

import numpy as np
import tqdm

from ankle_jax.data import dicom
from ankle_jax.data.radiograph_studies import build_report
from ankle_jax.data.radiograph_studies import config
from ankle_jax.data.radiograph_studies import layouts


def decode_job(path: str, image_size: int) -> tuple[bool, Any, Any]:
  """Worker: decodes one file -> (ok, uint16 [S, S, 1] or reason, RadiographInfo or None)."""
  try:
    image, info = dicom.load_radiograph_with_info(path, image_size)
  except dicom.DicomReadError as e:
    return False, e.reason, None
  except Exception as e:  # never crash a build on one file
    return False, f'unexpected {type(e).__name__}: {e}', None
  return True, np.round(image * 65535.0).astype(np.uint16), info


def sanitize(reason: str, path: pathlib.Path, manual_dir: pathlib.Path) -> str:
  """Removes any path text (and path components, which may be names) from a reason."""
  parts = [str(path), str(path.resolve())] + list(
      path.relative_to(manual_dir).parts
  )
  for part in sorted(set(parts), key=len, reverse=True):
    if len(part) >= 3:
      reason = reason.replace(part, '<path>')
  return reason


def decode_all(
    cases: list[layouts.Case],
    manual_dir: pathlib.Path,
    image_size: int,
    options: config.BuildOptions,
    report: build_report.BuildReport,
    tmp_dir: str,
) -> np.ndarray:
  """Decodes every file of `cases` into `<tmp_dir>/images.npy` (bounded memory).

  Appends each readable view to its case's `views` (row, view_position,
  features) and counts decoded views, skipped files and cases in `report`.

  Returns:
    uint16 [max(1, files), S, S, 1], a memmap; a skipped file's row is zeros.

  Raises:
    BuildError: strict mode and an unreadable file.
  """
  jobs = [(c, k, f) for c in cases for k, f in enumerate(c.files)]
  images = np.lib.format.open_memmap(
      os.path.join(tmp_dir, 'images.npy'),
      mode='w+',
      dtype=np.uint16,
      shape=(max(1, len(jobs)), image_size, image_size, 1),
  )
  workers = options.num_workers or os.cpu_count() or 1
  workers = max(1, min(workers, len(jobs) // 8 or 1))
  paths = [str(f) for _, _, f in jobs]
  with _decoded(paths, image_size, workers) as results:
    bar = tqdm.tqdm(
        results,
        total=len(jobs),
        desc=f'decoding ({workers} processes)',
        unit='view',
        disable=not options.progress,
    )
    for row, ((case, k, path), (ok, value, info)) in enumerate(zip(jobs, bar)):
      if not ok:
        reason = sanitize(value, path, manual_dir)
        _skip_file(case, k, path, reason, options.strict, report)
        continue
      images[row] = value
      _add_view(case, k, row, info, report)
  report.decoded_views = sum(len(c.views) for c in cases)
  report.skipped_cases = sum(1 for c in cases if not c.views)
  images.flush()
  return images


@contextlib.contextmanager
def _decoded(
    paths: list[str], image_size: int, workers: int
) -> Iterator[Iterator[tuple[bool, Any, Any]]]:
  """`decode_job` of each path, in order: in this process (workers == 1) or
  in `workers` spawned processes (cancelled on leaving)."""
  if workers == 1:
    yield (decode_job(p, image_size) for p in paths)
    return
  executor = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn')
  )
  try:
    yield executor.map(
        decode_job,
        paths,
        [image_size] * len(paths),
        chunksize=max(1, min(16, len(paths) // (4 * workers))),
    )
  finally:
    executor.shutdown(cancel_futures=True)


def _skip_file(
    case: layouts.Case,
    k: int,
    path: pathlib.Path,
    reason: str,
    strict: bool,
    report: build_report.BuildReport,
) -> None:
  """Lists file k of a case as skipped (strict: raises BuildError)."""
  if strict:
    raise config.BuildError(
        f'--strict: file {k} (sorted by name) of case {case.case_id} '
        f'could not be read: {reason}'
    )
  logging.warning('skipping file %d of case %s: %s', k, case.case_id, reason)
  report.skipped_files.append(
      build_report.SkippedFile(
          case_id=case.case_id,
          file_index=k,
          extension=path.suffix.lower()[:8],
          reason=reason,
      )
  )


def _add_view(
    case: layouts.Case,
    k: int,
    row: int,
    info: dicom.RadiographInfo,
    report: build_report.BuildReport,
) -> None:
  """Adds file k of a case, decoded into image row `row`, as its next view."""
  if info.truncated:
    report.truncated_images.append(case.case_id)
  report.rgb_converted += int(info.converted_from_rgb)
  features = dict(case.view_features[k]) if case.view_features else {}
  view_position = features.pop('view_position', None) or info.view_position
  case.views.append((row, view_position, features))

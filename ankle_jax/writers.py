"""Run records: TensorBoard events (tensorboardX, no TensorFlow), metrics.jsonl,
config.json.

Only process 0 writes (`enabled=False` elsewhere). Nothing here receives patient
data: the training loop only passes scalars, hyperparameters and image grids of
already de-identified pixels; case ids reaching training are salted hashes.
"""

from collections.abc import Mapping, Sequence
import json
import math
import os
from typing import Any

from etils import epath
import ml_collections
import numpy as np

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
PROBE_BYTES = 4096  # One page: a full disk refuses it.


class WorkdirNotWritableError(OSError):
  """The run directory cannot be created or written."""


def ensure_writable_dir(path: epath.PathLike) -> epath.Path:
  """Creates `path` if needed and checks that a file can be written and synced
  there.

  Called before any heavy work, so that a read-only location, a file in the way
  or a full disk fail at once with the path named, not later from inside orbax
  or TensorBoard.

  Raises:
    WorkdirNotWritableError: naming the directory and the reason.
  """
  path = epath.Path(path)
  probe = path / f'.write_probe_{os.getpid()}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    try:
      with open(os.fspath(probe), 'wb') as f:
        f.write(b'\0' * PROBE_BYTES)
        f.flush()
        os.fsync(f.fileno())
    finally:
      if probe.exists():
        probe.unlink()
  except OSError as e:
    raise WorkdirNotWritableError(
        e.errno,
        f'cannot write to the run directory {path}: {e.strerror or e} '
        '(choose another --workdir, or free some space)',
    ) from e
  return path


def _jsonable(value: Any) -> Any:
  """Converts numpy scalars / arrays and non-finite floats to JSON-safe values."""
  if isinstance(value, (np.generic,)):
    value = value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_config(
    workdir: epath.PathLike, config: ml_collections.ConfigDict
) -> None:
  """Writes the full config as workdir/config.json (read back by checkpoint.load_run_config)."""
  path = epath.Path(workdir) / CONFIG_FILE
  path.write_text(
      json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
  )


def write_summary(workdir: epath.PathLike, summary: Mapping[str, Any]) -> None:
  """Writes workdir/summary.json (best step, final step, wall time...)."""
  path = epath.Path(workdir) / SUMMARY_FILE
  path.write_text(
      json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2)
  )


def truncate_metrics(workdir: epath.PathLike, max_step: int) -> None:
  """Drops metrics.jsonl lines after `max_step` (records of an interrupted run's tail)."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    if line.strip() and json.loads(line).get('step', 0) <= max_step:
      kept.append(line)
  path.write_text(''.join(line + '\n' for line in kept))


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'model.name': 'xception', ...}, values as bool/int/float/str (HParams types)."""
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, Mapping):
        visit(name + '.', value)
      elif isinstance(value, (bool, int, float, str)):
        flat[name] = value
      else:
        flat[name] = str(value)

  visit('', config.to_dict())
  return flat


def image_grid(images_bhwc: np.ndarray, columns: int = 4) -> np.ndarray:
  """Tiles images [B, H, W, 1] into one [rows*H, columns*W] uint8 picture.

  Each image is min-max scaled to [0, 255] on its own (standardized images are
  not in [0, 1]); a 2 px gap separates tiles.
  """
  images = np.asarray(images_bhwc, np.float32)[..., 0]
  count, height, width = images.shape
  columns = min(columns, count)
  rows = int(math.ceil(count / columns))
  gap = 2
  grid = np.zeros(
      (rows * (height + gap) - gap, columns * (width + gap) - gap), np.uint8
  )
  for i, image in enumerate(images):
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / max(high - low, 1e-6) * 255.0
    r, c = divmod(i, columns)
    grid[
        r * (height + gap) : r * (height + gap) + height,
        c * (width + gap) : c * (width + gap) + width,
    ] = scaled.astype(np.uint8)
  return grid


class MetricWriter:
  """Writes scalars to TensorBoard and metrics.jsonl, images and HParams to TensorBoard."""

  def __init__(self, workdir: epath.PathLike, *, enabled: bool = True):
    self.workdir = epath.Path(workdir)
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self.workdir.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(logdir=str(self.workdir))

  def write_hparams(
      self, hparams: Mapping[str, Any], metric_names: Sequence[str]
  ) -> None:
    """Adds an HParams entry (this run's hyperparameters; the metrics to
    compare).

    The metric values come from the scalars of the same names in this run.
    """
    if not self.enabled:
      return
    from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top

    experiment, session_start, session_end = hparams_summary(
        dict(hparams), {name: 0.0 for name in metric_names}
    )
    writer = self._tb._get_file_writer()  # pylint: disable=protected-access
    writer.add_summary(experiment)
    writer.add_summary(session_start)
    writer.add_summary(session_end)

  def write_scalars(
      self, step: int, scalars: Mapping[str, Any], to_jsonl: bool = True
  ) -> None:
    """Writes `scalars` at `step` to TensorBoard and one line to metrics.jsonl."""
    if not self.enabled:
      return
    record = {'step': int(step)}
    for name, value in scalars.items():
      value = _jsonable(value)
      record[name] = value
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(name, value, global_step=int(step))
    if to_jsonl:
      with (self.workdir / METRICS_FILE).open('a') as f:
        f.write(json.dumps(record) + '\n')

  def write_images(self, step: int, tag: str, images_bhwc: np.ndarray) -> None:
    """Writes a grid of (at most 16) images [B, H, W, 1] to TensorBoard."""
    if not self.enabled:
      return
    grid = image_grid(np.asarray(images_bhwc)[:16])
    self._tb.add_image(tag, grid, global_step=int(step), dataformats='HW')

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def progress_bar(total: int, initial: int, enabled: bool) -> Any | None:
  """A tqdm bar over training steps with ETA (None when disabled)."""
  if not enabled:
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(
      total=total,
      initial=initial,
      unit='step',
      dynamic_ncols=True,
      desc='train',
      smoothing=0.1,
  )

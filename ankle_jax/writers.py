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
from PIL import Image
from PIL import ImageDraw
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summary
import tqdm

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
PROBE_BYTES = 4096  # One page: a full disk refuses it.
LABEL_NAMES = ('normal', 'fracture')

# metrics.jsonl key -> TensorBoard tag of the train and perf records (the
# validation metrics' tags are handed to MetricWriter; other keys keep their
# name).
TAGS = {
    'train_loss': 'train/loss',
    'train_ce': 'train/ce',
    'train_aux_loss': 'train/aux_loss',
    'train_l2': 'train/l2',
    'train_accuracy': 'train/accuracy',
    'learning_rate': 'train/learning_rate',
    'epoch': 'train/epoch',
    'best_step': 'val/best_step',
    'steps_per_second': 'perf/steps_per_second',
    'images_per_second': 'perf/images_per_second',
}
# The best checkpoint's validation metrics and step: the HParams tab's metrics.
BEST_PREFIX = 'hparams/best_'


def best_metric_tags(metric_names: Sequence[str]) -> tuple[str, ...]:
  """The HParams tab's metrics: `hparams/best_<name>` of each validation
  metric, and `hparams/best_step`."""
  return tuple(f'{BEST_PREFIX}{name}' for name in (*metric_names, 'step'))


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
  """numpy scalars and arrays as Python values; non-finite floats as None."""
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
  """Writes the full config as workdir/config.json (read back by
  checkpoint.load_run_config)."""
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
  """Drops metrics.jsonl lines after `max_step` (an interrupted run's tail)."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    if line.strip() and json.loads(line).get('step', 0) <= max_step:
      kept.append(line)
  path.write_text(''.join(line + '\n' for line in kept))


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'model.name': 'xception', ...}: bool, int, float or str values."""
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


def _label_tile(tile: np.ndarray, text: str) -> np.ndarray:
  """Writes `text` in white on a black box at the tile's top-left corner."""
  image = Image.fromarray(tile)
  draw = ImageDraw.Draw(image)
  _, _, right, bottom = draw.textbbox((2, 1), text)
  draw.rectangle((0, 0, right + 2, bottom + 2), fill=0)
  draw.text((2, 1), text, fill=255)
  return np.asarray(image)


def image_grid(
    images_bhwc: np.ndarray,
    labels: Sequence[int] | None = None,
    columns: int = 4,
) -> np.ndarray:
  """Tiles images [B, H, W, 1] into one [rows*H, columns*W] uint8 picture.

  Each image is min-max scaled to [0, 255] on its own (standardized images are
  not in [0, 1]); a 2 px gap separates tiles. With `labels` (int [B]), each
  tile carries its label's name ('normal' / 'fracture') in its corner.
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
    tile = ((image - low) / max(high - low, 1e-6) * 255.0).astype(np.uint8)
    if labels is not None:
      tile = _label_tile(tile, LABEL_NAMES[int(labels[i])])
    r, c = divmod(i, columns)
    grid[
        r * (height + gap) : r * (height + gap) + height,
        c * (width + gap) : c * (width + gap) + width,
    ] = tile
  return grid


class MetricWriter:
  """Scalars to TensorBoard and metrics.jsonl; images and HParams to
  TensorBoard.

  metrics.jsonl keeps flat keys (train_loss, val_auc, ...); TensorBoard groups
  the same values as train/..., val/... and perf/... (`TAGS`, and the `tags`
  it is handed: the validation metrics').
  """

  def __init__(
      self,
      workdir: epath.PathLike,
      *,
      enabled: bool = True,
      tags: Mapping[str, str] | None = None,
  ):
    self.workdir = epath.Path(workdir)
    self.enabled = enabled
    self.tags = {**TAGS, **(tags or {})}
    self._tb = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(logdir=str(self.workdir))

  def write_hparams(
      self, hparams: Mapping[str, Any], metric_tags: Sequence[str]
  ) -> None:
    """Adds this run to the HParams tab: its hyperparameters (bool, int, float
    or str; None and lists as text) and the scalar tags of its metrics."""
    if not self.enabled:
      return
    values = {
        k: v if isinstance(v, (bool, int, float, str)) else str(v)
        for k, v in hparams.items()
    }
    writer = self._tb.file_writer
    for summary in hparams_summary(values, dict.fromkeys(metric_tags, 0.0)):
      writer.add_summary(summary)

  def write_best(self, step: int, metrics: Mapping[str, float]) -> None:
    """Writes a new best checkpoint's metrics and step (the HParams metrics)
    as `hparams/best_<name>` scalars at that step."""
    if not self.enabled:
      return
    for name, value in {**metrics, 'step': step}.items():
      value = _jsonable(value)
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(f'{BEST_PREFIX}{name}', value, global_step=step)

  def write_scalars(
      self, step: int, scalars: Mapping[str, Any], to_jsonl: bool = True
  ) -> None:
    """Writes `scalars` at `step` to TensorBoard and one metrics.jsonl line."""
    if not self.enabled:
      return
    record = {'step': int(step)}
    for name, value in scalars.items():
      value = _jsonable(value)
      record[name] = value
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(
            self.tags.get(name, name), value, global_step=int(step)
        )
    if to_jsonl:
      with (self.workdir / METRICS_FILE).open('a') as f:
        f.write(json.dumps(record) + '\n')

  def write_images(
      self,
      step: int,
      tag: str,
      images_bhwc: np.ndarray,
      labels: Sequence[int] | None = None,
  ) -> None:
    """Writes a grid of (at most 16) images [B, H, W, 1], labelled when
    `labels` (int [B]) are given."""
    if not self.enabled:
      return
    labels = None if labels is None else np.asarray(labels)[:16]
    grid = image_grid(np.asarray(images_bhwc)[:16], labels)
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
  return tqdm.tqdm(
      total=total,
      initial=initial,
      unit='step',
      dynamic_ncols=True,
      desc='train',
      smoothing=0.1,
  )

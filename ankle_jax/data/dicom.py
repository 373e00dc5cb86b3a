"""Reading one radiograph (DICOM, PNG or JPEG) into a fixed-size [0, 1] image.

`load_radiograph` is the one entry point of the data pipeline for pixels. Steps
for a DICOM view:

1. Header checks, before any pixel memory is allocated: a Pixel Data element, an
  image SOP class,
   a single frame, 1 or 3 samples per pixel, sane Bits Allocated / Bits Stored,
   a declared size of at most `MAX_MEGAPIXELS`, and (for native transfer
   syntaxes) a Pixel Data length that matches Rows x Columns.
2. Decoding with pydicom and its pixel-data plugins (pylibjpeg: JPEG
  baseline/extended/lossless,
   JPEG-LS, JPEG 2000; RLE). Before decoding, a JPEG / JPEG-LS / JPEG 2000
   codestream must declare the same size as Rows x Columns (the plugins allocate
   from the codestream header). Every encoding is decoded at full resolution,
   lossy JPEG 2000 too: a decode of a reduced JPEG 2000 resolution level (2-3x
   faster) cannot tell where step 7 would cut a constant border to the pixel,
   and a cut 2 pixels off shifts the anatomy visibly at 300 px.
3. RGB-stored images are converted to luminance (ITU-R BT.601 weights), with a
  warning.
4. The modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence).
5. Scaling to [0, 1] by the Bits Stored range (as the paper does): the full
  stored range, mapped
   through the modality LUT, becomes [0, 1].
6. MONOCHROME1 -> bone bright: the image is inverted exactly once when the
  Photometric
   Interpretation is MONOCHROME1 *or* the Presentation LUT Shape is INVERSE (in
   DX objects both say the same thing, so a MONOCHROME1 image with PLUT INVERSE
   is inverted once, not twice).
7. (`geometry.py`) Constant borders are cropped: rows/columns at the edges whose
  32-pixel run means spread at most 0.5% of the image's range, so that lossy
  coding noise does not move the crop.
8. (`geometry.py`) The image is shrunk by integer block averaging (the same factor on both
  axes), zero-padded
   (centred) to a square, so the anatomy keeps its aspect ratio, then resized
   with SciPy to image_size x image_size, anti-aliased when shrinking, and
   clipped to [0, 1]. Padding after the block averaging keeps memory bounded by
   the image itself, whatever its aspect ratio.

PNG and JPEG files (MURA, FracAtlas) go through the same steps 3 and 5-8 with
Pillow decoding: 8-bit images are scaled by 255, 16-bit by 65535. Truncated
JPEGs are read with Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` and flagged in
`RadiographInfo.truncated`.

Every failure raises `DicomReadError`, whose message names the file and the
reason.
"""

from __future__ import annotations

import io
import os
import pathlib
import stat
from typing import NamedTuple
import warnings

import numpy as np
from PIL import Image
from PIL import ImageFile
import pydicom
import pydicom.errors
import pydicom.pixels

from ankle_jax.data import geometry

# Refuse images whose declared size exceeds this many megapixels (before
# allocating memory). The largest detector plates are about 43 x 43 cm at 0.1 mm
# pixels, i.e. ~18.5 MP; 64 MP leaves ample room while bounding a single decode
# to ~256 MB of float32.
MAX_MEGAPIXELS = 64.0

# Files larger than this are refused without being read.
MAX_FILE_BYTES = 1 << 30

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_JPEG_MAGIC = b'\xff\xd8\xff'
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


class DicomReadError(Exception):
  """A radiograph could not be read. `path` is the file, `reason` says why (no path in it)."""

  def __init__(self, path: os.PathLike | str, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f'{self.path}: {reason}')


class RadiographInfo(NamedTuple):
  """What `load_radiograph_with_info` learnt about a file besides its pixels.

  Attributes:
    view_position: DICOM ViewPosition (e.g. 'AP', 'LL'), '' when absent or not
      DICOM.
    source_format: 'dicom', 'png' or 'jpeg'.
    truncated: True for a truncated JPEG/PNG that Pillow could still read.
    converted_from_rgb: True when a colour image was converted to luminance.
    original_shape: (rows, columns) as stored.
  """

  view_position: str
  source_format: str
  truncated: bool
  converted_from_rgb: bool
  original_shape: tuple[int, int]


def load_radiograph(
    path: os.PathLike | str, image_size: int = 300
) -> np.ndarray:
  """Loads a radiograph as float32 [image_size, image_size, 1] in [0, 1], bone
  bright.

  Args:
    path: a DICOM, PNG or JPEG file.
    image_size: side of the square output, in pixels.

  Returns:
    float32 array of shape (image_size, image_size, 1) with values in [0, 1].

  Raises:
    DicomReadError: naming the file and the reason, for any file that cannot be
      read.
  """
  image, _ = load_radiograph_with_info(path, image_size)
  return image


def load_radiograph_with_info(
    path: os.PathLike | str, image_size: int = 300
) -> tuple[np.ndarray, RadiographInfo]:
  """Like `load_radiograph`, also returning a `RadiographInfo` (view position, truncation...)."""
  path = pathlib.Path(path)
  try:
    file_stat = path.stat()
  except OSError as e:
    raise DicomReadError(path, f'cannot open file ({e.strerror})') from None
  if not stat.S_ISREG(
      file_stat.st_mode
  ):  # a FIFO or device would block or never end
    raise DicomReadError(path, 'not a regular file')
  size = file_stat.st_size
  if size > MAX_FILE_BYTES:
    raise DicomReadError(
        path, f'file is {size} bytes, more than the {MAX_FILE_BYTES} byte limit'
    )
  try:
    with open(path, 'rb') as f:
      head = f.read(132)
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
      image_hw, info = _read_pillow(path)
    else:
      image_hw, info = _read_dicom(path)
    if not np.isfinite(image_hw).all():
      raise DicomReadError(
          path, 'pixel values are not finite after the modality LUT'
      )
    image_hw = geometry.crop_constant_borders(image_hw)
    image = geometry.square_and_resize(image_hw, image_size)
  except DicomReadError:
    raise
  except MemoryError:
    raise DicomReadError(
        path, 'out of memory while reading the image'
    ) from None
  except BaseException as e:
    # A hostile file can trip any library below us; the contract is one
    # exception class. Rust decoder plugins (pylibjpeg-rle) panic with pyo3's
    # PanicException, a BaseException.
    if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
      raise
    raise DicomReadError(
        path, f'unreadable file ({type(e).__name__}: {e})'
    ) from None
  return image[..., None], info


def _check_megapixels(path, rows: int, cols: int) -> None:
  if rows <= 0 or cols <= 0:
    raise DicomReadError(path, f'declared image size {rows} x {cols} is empty')
  if rows * cols > MAX_MEGAPIXELS * 1e6:
    raise DicomReadError(
        path,
        f'declared image size {rows} x {cols} ({rows * cols / 1e6:.0f} MP) exceeds the '
        f'{MAX_MEGAPIXELS:g} MP limit (MAX_MEGAPIXELS)',
    )


def _to_luminance(path, rgb: np.ndarray, warn: bool = True) -> np.ndarray:
  if warn:
    warnings.warn(
        f'{path}: colour (RGB) radiograph converted to luminance', stacklevel=3
    )
  return rgb[..., :3].astype(np.float32) @ _LUMA_WEIGHTS


def _read_pillow(path: pathlib.Path) -> tuple[np.ndarray, RadiographInfo]:
  """Reads PNG/JPEG with Pillow into float32 [H, W] in [0, 1]."""
  fmt = 'png' if path.read_bytes()[:8] == _PNG_MAGIC else 'jpeg'
  truncated = False
  try:
    with Image.open(path) as im:
      cols, rows = im.size
      _check_megapixels(path, rows, cols)
      try:
        im.load()
      except OSError as e:
        if 'truncated' not in str(e).lower():
          raise
        truncated = True
    if truncated:
      previous = ImageFile.LOAD_TRUNCATED_IMAGES
      ImageFile.LOAD_TRUNCATED_IMAGES = True
      try:
        with Image.open(path) as im:
          im.load()
          arr, mode = np.asarray(im), im.mode
      finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    else:
      with Image.open(path) as im:
        if im.mode == 'P':
          im = im.convert('RGB')
        arr, mode = np.asarray(im), im.mode
  except DicomReadError:
    raise
  except Exception as e:  # Pillow raises many types for broken files.
    raise DicomReadError(
        path, f'cannot decode {fmt.upper()} image ({type(e).__name__}: {e})'
    ) from None
  rgb = False
  if arr.ndim == 3:
    channels = arr[..., :3]
    rgb = channels.shape[-1] == 3 and not (
        np.array_equal(channels[..., 0], channels[..., 1])
        and np.array_equal(channels[..., 0], channels[..., 2])
    )
    arr = (
        _to_luminance(path, arr, warn=rgb)
        if channels.shape[-1] == 3
        else arr[..., 0]
    )
  if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    scale = 65535.0
  elif mode == 'F':
    scale = max(1.0, float(np.max(arr)))
  else:
    scale = 255.0
  image = np.clip(arr.astype(np.float32) / scale, 0.0, 1.0)
  info = RadiographInfo(
      '', fmt, truncated, rgb, (int(image.shape[0]), int(image.shape[1]))
  )
  return image, info


class _BoundedFile(io.FileIO):
  """A file whose read(n) never asks for more than what is left in it.

  CPython's read(n) allocates n bytes before reading, so a corrupt element
  length (a flipped bit turns an undefined length 0xFFFFFFFF into a 4 GB one, in
  a 30 kB file) would otherwise reserve gigabytes. pydicom reads deferred
  elements (Pixel Data) from this same open file.
  """

  def __init__(self, path):
    super().__init__(path, 'rb')
    self._size = os.fstat(self.fileno()).st_size

  def read(self, size=-1):
    if size is None or size < 0:
      return super().read()
    return super().read(min(size, max(0, self._size - self.tell())))


def _read_dicom(path: pathlib.Path) -> tuple[np.ndarray, RadiographInfo]:
  """Reads a DICOM file into float32 [H, W] in [0, 1], bone bright (steps 1-6 of the module doc)."""
  with _BoundedFile(path) as fp:
    return _read_dicom_from(path, fp)


def _read_dicom_from(
    path: pathlib.Path, fp
) -> tuple[np.ndarray, RadiographInfo]:
  try:
    ds = pydicom.dcmread(fp, defer_size='256 KB')
  except pydicom.errors.InvalidDicomError as e:
    raise DicomReadError(path, f'not a DICOM, PNG or JPEG file ({e})') from None
  except Exception as e:  # Truncated or corrupt headers raise various errors.
    raise DicomReadError(
        path, f'unreadable DICOM header ({type(e).__name__}: {e})'
    ) from None
  _check_dicom_header(path, ds)
  try:
    stored = ds.pixel_array
  except BaseException as e:  # Rust plugins panic: BaseException
    if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
      raise
    file_meta = getattr(ds, 'file_meta', None)
    tsyntax = (
        file_meta.get('TransferSyntaxUID', None)
        if file_meta is not None
        else None
    )
    name = getattr(tsyntax, 'name', str(tsyntax))
    raise DicomReadError(
        path,
        f'pixel data could not be decoded (transfer syntax {name}; '
        f'{type(e).__name__}: {e})',
    ) from None
  rows, cols = int(ds.Rows), int(ds.Columns)
  samples = int(ds.get('SamplesPerPixel', 1))
  expected = (rows, cols, 3) if samples == 3 else (rows, cols)
  if stored.shape != expected:
    raise DicomReadError(
        path,
        f'decoded pixel array has shape {stored.shape}, '
        f'expected {expected} from Rows/Columns/SamplesPerPixel',
    )
  rgb = samples == 3
  photometric = str(ds.get('PhotometricInterpretation', 'MONOCHROME2')).upper()
  if rgb:
    image = _to_luminance(path, stored)
    bits = int(ds.BitsStored)
    image = image / float(2**bits - 1)
    invert = False
  else:
    image = _modality_scaled(ds, stored)
    plut = str(ds.get('PresentationLUTShape', '')).upper()
    invert = photometric == 'MONOCHROME1' or plut == 'INVERSE'
  image = np.clip(image, 0.0, 1.0)
  if invert:
    image = 1.0 - image
  info = RadiographInfo(
      str(ds.get('ViewPosition', '') or ''), 'dicom', False, rgb, (rows, cols)
  )
  return image.astype(np.float32, copy=False), info


def _check_dicom_header(path, ds) -> None:
  """Step 1: refuses non-image, multi-frame, oversized or inconsistent files before decoding."""
  if 'PixelData' not in ds:
    for other in ('FloatPixelData', 'DoubleFloatPixelData'):
      if other in ds:
        raise DicomReadError(
            path, f'{other} (floating-point pixels) is not supported'
        )
    sop = ds.get('SOPClassUID', None)
    what = f" (SOP class {getattr(sop, 'name', sop)})" if sop else ''
    raise DicomReadError(path, f'no Pixel Data element{what}')
  sop = ds.get('SOPClassUID', None)
  if sop is not None and 'Image' not in getattr(sop, 'name', 'Image'):
    raise DicomReadError(path, f"SOP class '{sop.name}' is not an image")
  for keyword in ('Rows', 'Columns', 'BitsAllocated'):
    if ds.get(keyword, None) in (None, ''):
      raise DicomReadError(path, f'missing required attribute {keyword}')
  rows, cols = int(ds.Rows), int(ds.Columns)
  _check_megapixels(path, rows, cols)
  frames = ds.get('NumberOfFrames', 1)
  try:
    frames = int(frames or 1)
  except (TypeError, ValueError):
    raise DicomReadError(path, f'invalid NumberOfFrames {frames!r}') from None
  if frames != 1:
    raise DicomReadError(
        path, f'multi-frame image ({frames} frames); one view per file expected'
    )
  samples = int(ds.get('SamplesPerPixel', 1))
  if samples not in (1, 3):
    raise DicomReadError(
        path, f'SamplesPerPixel {samples} not supported (expected 1 or 3)'
    )
  allocated = int(ds.BitsAllocated)
  stored = int(ds.get('BitsStored', allocated) or allocated)
  if allocated not in (8, 16, 32):
    raise DicomReadError(
        path, f'BitsAllocated {allocated} not supported (expected 8, 16 or 32)'
    )
  if not 1 <= stored <= allocated:
    raise DicomReadError(
        path,
        f'BitsStored {stored} is inconsistent with BitsAllocated {allocated}',
    )
  high_bit = ds.get('HighBit', None)
  if high_bit is not None and int(high_bit) >= allocated:
    raise DicomReadError(
        path, f'HighBit {int(high_bit)} >= BitsAllocated {allocated}'
    )
  _check_rescale(path, ds)
  tsyntax = _transfer_syntax(path, ds)
  if tsyntax is not None and tsyntax.is_compressed:
    try:
      decoder = pydicom.pixels.get_decoder(tsyntax)
    except NotImplementedError:
      decoder = None
    if decoder is None or not decoder.is_available:
      raise DicomReadError(
          path, f'no decoder available for transfer syntax {tsyntax.name}'
      )
    _check_codestream_size(path, ds, tsyntax, rows, cols)
  else:
    expected = rows * cols * samples * allocated // 8
    actual = _pixel_data_length(ds)
    if actual < expected:
      raise DicomReadError(
          path,
          f'Pixel Data holds {actual} bytes but Rows x Columns x SamplesPerPixel x '
          f'BitsAllocated ({rows} x {cols} x {samples} x {allocated}) needs {expected} '
          '(Rows/Columns mismatch or truncated file)',
      )


def _transfer_syntax(path, ds) -> pydicom.uid.UID | None:
  """The file's Transfer Syntax UID (None when there is no file meta), refusing unknown ones."""
  file_meta = getattr(ds, 'file_meta', None)
  value = (
      file_meta.get('TransferSyntaxUID', None)
      if file_meta is not None
      else None
  )
  if value is None:
    return None
  tsyntax = pydicom.uid.UID(str(value))
  if (
      not tsyntax.is_valid
      or not tsyntax.is_transfer_syntax
      or tsyntax.is_private
  ):
    raise DicomReadError(
        path, f'unknown transfer syntax UID {str(value)[:64]!r}'
    )
  return tsyntax


def _check_rescale(path, ds) -> None:
  """Refuses a Rescale Slope/Intercept that is not a finite number (slope also non-zero)."""
  for keyword in ('RescaleSlope', 'RescaleIntercept'):
    if keyword not in ds or ds.get(keyword, None) in (None, ''):
      continue
    try:
      value = float(ds.get(keyword))
    except (TypeError, ValueError):
      raise DicomReadError(
          path, f'{keyword} {ds.get(keyword)!r} is not a number'
      ) from None
    if not np.isfinite(value) or (keyword == 'RescaleSlope' and value == 0.0):
      raise DicomReadError(
          path, f'{keyword} {value!r} is not a finite (non-zero) number'
      )


# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS SOF55.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}


def _check_codestream_size(path, ds, tsyntax, rows: int, cols: int) -> None:
  """Refuses a JPEG / JPEG-LS / JPEG 2000 codestream whose own image size
  differs from Rows x Columns.

  The decoder plugins allocate their output from the codestream header, not from
  the DICOM one, so without this check a few flipped bytes could make them
  allocate gigabytes.
  """
  fragment = _first_fragment(path, ds)
  if tsyntax in pydicom.uid.JPEG2000TransferSyntaxes:
    size = _j2k_size(fragment)
    kind = 'JPEG 2000'
  elif (
      tsyntax in pydicom.uid.JPEGTransferSyntaxes
      or tsyntax in pydicom.uid.JPEGLSTransferSyntaxes
  ):
    size = _jpeg_size(fragment)
    kind = 'JPEG'
  else:
    return
  if size is None:
    raise DicomReadError(
        path, f'no {kind} image header found in the first Pixel Data fragment'
    )
  if size != (rows, cols):
    raise DicomReadError(
        path,
        f'{kind} codestream is {size[0]} x {size[1]} but Rows x Columns is {rows} x {cols} '
        '(Rows/Columns mismatch)',
    )


def _first_fragment(path, ds, max_bytes: int = 1 << 16) -> bytes:
  """The first bytes (at most `max_bytes`) of the first fragment of encapsulated Pixel Data."""
  data = ds.PixelData
  offset = 0
  for item in range(
      2
  ):  # Item 0 is the Basic Offset Table, item 1 the first fragment.
    if (
        len(data) < offset + 8
        or data[offset : offset + 4] != b'\xfe\xff\x00\xe0'
    ):
      raise DicomReadError(
          path, 'encapsulated Pixel Data is malformed (item tag expected)'
      )
    length = int.from_bytes(data[offset + 4 : offset + 8], 'little')
    if item == 1:
      return bytes(data[offset + 8 : offset + 8 + min(length, max_bytes)])
    offset += 8 + length
  raise AssertionError('unreachable')


def _j2k_size(stream: bytes) -> tuple[int, int] | None:
  """(rows, columns) from a JPEG 2000 codestream's SIZ marker (optionally inside a JP2 box)."""
  start = stream.find(b'\xff\x4f\xff\x51')
  if start < 0 or len(stream) < start + 24:
    return None
  xsiz, ysiz, x0, y0 = (
      int.from_bytes(stream[start + 8 + 4 * k : start + 12 + 4 * k], 'big')
      for k in range(4)
  )
  return ysiz - y0, xsiz - x0


def _jpeg_size(stream: bytes) -> tuple[int, int] | None:
  """(rows, columns) from the first start-of-frame marker of a JPEG or JPEG-LS stream."""
  if stream[:2] != b'\xff\xd8':
    return None
  pos = 2
  while pos + 4 <= len(stream):
    if stream[pos] != 0xFF:
      return None
    marker = stream[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker in _JPEG_STANDALONE_MARKERS:
      pos += 2
      continue
    length = int.from_bytes(stream[pos + 2 : pos + 4], 'big')
    if marker in _JPEG_SOF_MARKERS:
      if pos + 9 > len(stream):
        return None
      return (
          int.from_bytes(stream[pos + 5 : pos + 7], 'big'),
          int.from_bytes(stream[pos + 7 : pos + 9], 'big'),
      )
    if marker == 0xDA or length < 2:  # scan data before any frame header
      return None
    pos += 2 + length
  return None


def _pixel_data_length(ds) -> int:
  """Length of Pixel Data in bytes, without loading it when its reading was deferred."""
  elem = ds.get_item('PixelData')
  value = getattr(elem, 'value', None)
  if value is None:
    return int(getattr(elem, 'length', 0) or 0)
  return len(value)


def _modality_scaled(ds, stored: np.ndarray) -> np.ndarray:
  """Modality LUT, then scaling so the Bits Stored range maps to [0, 1] (step 4-5)."""
  bits = int(ds.get('BitsStored', ds.BitsAllocated) or ds.BitsAllocated)
  signed = int(ds.get('PixelRepresentation', 0)) == 1
  lo, hi = (
      (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
  )
  has_lut = 'ModalityLUTSequence' in ds
  if has_lut and bits <= 16:
    range_values = np.arange(lo, hi + 1, dtype=np.int64)
  else:
    range_values = np.array([lo, hi], np.int64)
  range_out = np.asarray(
      pydicom.pixels.apply_modality_lut(range_values, ds), np.float64
  )
  out_lo, out_hi = float(range_out.min()), float(range_out.max())
  values = (
      pydicom.pixels.apply_modality_lut(stored, ds)
      if (has_lut or 'RescaleSlope' in ds or 'RescaleIntercept' in ds)
      else stored
  )
  values = np.asarray(values, np.float32)
  if out_hi <= out_lo:
    return np.zeros(values.shape, np.float32)
  return (values - np.float32(out_lo)) * np.float32(1.0 / (out_hi - out_lo))

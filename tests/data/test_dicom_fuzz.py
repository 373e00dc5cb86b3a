"""Property-based fuzzing of `load_radiograph` with hostile DICOM derived from
../shared/dicom.

Faults (issue 7, item 3): truncation, flipped bytes (anywhere / in the header),
wrong BitsStored, HighBit, BitsAllocated and other pixel-module attributes, Rows
x Columns disagreeing with Pixel Data, zero-sized and 1x1 images, huge declared
dimensions, a JPEG / JPEG 2000 codestream whose own size disagrees with the
header, and wrong Transfer Syntax UIDs (the data left as it was).

The property: `load_radiograph` either raises `DicomReadError` or returns a
valid image (float32 [S, S, 1], finite, in [0, 1]); it never hangs, never
crashes the process, and stays within bounded memory.

How the bounds are enforced. Every example is decoded in a separate, long-lived
worker process (`_Worker`), so that a hang or a crash inside a C decoder (which
no signal alarm in the test process can interrupt) costs one killed worker and a
failed example, not a hung CI job:
- time: the test waits at most `EXAMPLE_TIMEOUT_S` for the worker's answer, then
  kills it.
- memory: the worker sets RLIMIT_AS to its address space after imports plus
  `MEMORY_BUDGET_BYTES`, so no input can make it take the machine down (the
  decoder plugins allocate from *their* headers, and calloc'd pages would never
  show in RSS: an address-space limit is the one that bites). An allocation past
  the limit surfaces as MemoryError, which `load_radiograph` reports as an "out
  of memory" `DicomReadError`; the property forbids that outcome, so a loader
  that only survives because of the limit still fails the test. The worker also
  resets and reads its peak RSS (Linux /proc/self/clear_refs + VmHWM) around
  each example, and the test bounds that too.

Speed. Most examples mutate small crops of the real RG3 ankle and RG2 hip,
re-encoded at setup as uncompressed, RLE, lossless JPEG 2000 (192 x 192) and
lossy JPEG 2000 (512 x 512) with the real header kept (decoding takes
milliseconds); fewer examples mutate the real, full-size files.
`FUZZ_EXAMPLES_SCALE` (environment) multiplies the example counts for longer
local campaigns. Hypothesis runs derandomized, so CI is reproducible;
`FUZZ_RANDOM=1` draws fresh examples instead.
"""

import io
import json
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
import pytest

from ankle_jax.data import dicom
from ankle_jax.data import prepare

IMAGE_SIZE = 64
EXAMPLE_TIMEOUT_S = 30.0
MEMORY_BUDGET_BYTES = 768 << 20
PEAK_RSS_BUDGET_BYTES = 384 << 20
SCALE = float(os.environ.get('FUZZ_EXAMPLES_SCALE', '1'))
SMALL_EXAMPLES = int(2500 * SCALE)
ATTRIBUTE_EXAMPLES = int(1000 * SCALE)
REAL_FILE_EXAMPLES = int(250 * SCALE)
# CI runs a fixed (derandomized) sequence; FUZZ_RANDOM=1 explores new examples
# on each run.
DERANDOMIZE = os.environ.get('FUZZ_RANDOM', '0') != '1'

# Every transfer syntax pydicom knows, plus unknown, private, malformed and
# empty UIDs.
TRANSFER_SYNTAXES = sorted(str(u) for u in pydicom.uid.AllTransferSyntaxes) + [
    '1.2.840.10008.1.2.4.999',
    '1.2.3.4',
    '1.2.840.10008.5.1.4.1.1.1',
    'abc',
    '',
    '0.0',
]
SMALL_SEEDS = ('native', 'rle', 'j2k', 'j2k_lossy', 'hip_native')
REAL_SEEDS = (
    'wg04_rg3_ankle_j2ki.dcm',
    'wg04_rg3_ankle_jlsn.dcm',
    'wg04_rg3_ankle_jpll.dcm',
    'wg04_rg3_ankle_rle.dcm',
    'bad_wg04_rg3_jpeg_extended_undecodable.dcm',
)

_WORKER_SOURCE = r"""
import json, os, resource, sys, traceback, warnings
import numpy as np
from ankle_jax.data import dicom
warnings.simplefilter("ignore")
budget, size = int(sys.argv[1]), int(sys.argv[2])

def status(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  return 0

def reset_peak():
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False

limit = status("VmSize") + budget
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
  path = line.rstrip("\n")
  measured = reset_peak()
  base = status("VmRSS")
  out = {}
  try:
    if path == "@sleep":  # harness self-test: a hang
      import time
      time.sleep(3600)
    if path == "@alloc":  # harness self-test: an allocation past the budget
      np.ones(2 * budget, np.uint8)
    image = dicom.load_radiograph(path, size)
    out = {"outcome": "image", "shape": list(image.shape), "dtype": str(image.dtype),
           "finite": bool(np.isfinite(image).all()), "min": float(np.nanmin(image)),
           "max": float(np.nanmax(image))}
  except dicom.DicomReadError as e:
    out = {"outcome": "DicomReadError", "reason": e.reason, "names_file": path in str(e)}
  except BaseException as e:
    out = {"outcome": type(e).__name__, "reason": traceback.format_exc()[-2000:]}
  out["peak_rss_growth"] = (status("VmHWM") - base) if measured else 0
  print(json.dumps(out), flush=True)
"""


class _Worker:
  """A subprocess that loads one file per request, under an address-space limit."""

  def __init__(self, timeout_s: float = EXAMPLE_TIMEOUT_S):
    self.proc = None
    self.timeout_s = timeout_s

  def _start(self):
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        OPENBLAS_NUM_THREADS='1',
        MKL_NUM_THREADS='1',
    )
    self.proc = subprocess.Popen(
        [
            sys.executable,
            '-c',
            _WORKER_SOURCE,
            str(MEMORY_BUDGET_BYTES),
            str(IMAGE_SIZE),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    ready = self._read_line(120.0)
    assert ready is not None and json.loads(ready).get(
        'ready'
    ), 'fuzz worker failed to start'

  def _read_line(self, timeout_s):
    readable, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
    if not readable:
      return None
    return self.proc.stdout.readline() or None

  def load(self, path: pathlib.Path | str) -> dict:
    """-> the worker's JSON answer, or {'outcome': 'timeout'|'crash'}."""
    if self.proc is None or self.proc.poll() is not None:
      self._start()
    self.proc.stdin.write(f'{path}\n')
    self.proc.stdin.flush()
    line = self._read_line(self.timeout_s)
    if line is None:
      crashed = self.proc.poll() is not None
      self.close()
      return {
          'outcome': 'crash'
          if crashed
          else f'timeout after {self.timeout_s:g} s'
      }
    return json.loads(line)

  def close(self):
    if self.proc is not None:
      if self.proc.poll() is None:
        self.proc.kill()
      self.proc.wait()
      self.proc = None


@pytest.fixture(scope='module')
def worker():
  w = _Worker()
  yield w
  w.close()


def _crop_as(
    source: pathlib.Path, box, transfer_syntax=None, **encode_kwargs
) -> bytes:
  """A real file with its pixels cropped to `box` (keeping its header), optionally re-encoded."""
  ds = pydicom.dcmread(source)
  pixels = np.ascontiguousarray(ds.pixel_array[box])
  ds.Rows, ds.Columns = pixels.shape
  ds.PixelData = pixels.tobytes()
  if transfer_syntax is not None:
    ds.compress(transfer_syntax, **encode_kwargs)
  buf = io.BytesIO()
  ds.save_as(buf)
  return buf.getvalue()


class _Seeds(dict):
  """name -> file bytes; a short repr keeps Hypothesis' failure reports readable."""

  def __repr__(self):
    return f'<seed files {sorted(self)}>'


@pytest.fixture(scope='module')
def seeds(shared_dicom_dir) -> dict[str, bytes]:
  """name -> bytes: small re-encoded crops of real files, and real files as they are."""
  ankle = shared_dicom_dir / 'wg04_rg3_ankle_uncompressed.dcm'
  hip = shared_dicom_dir / 'wg04_rg2_hip_uncompressed.dcm'
  box = np.s_[700:892, 800:992]
  out = {
      'native': _crop_as(ankle, box),
      'rle': _crop_as(ankle, box, pydicom.uid.RLELossless),
      'j2k': _crop_as(ankle, box, pydicom.uid.JPEG2000Lossless),
      'hip_native': _crop_as(hip, np.s_[900:1060, 700:828]),
      # Lossy JPEG 2000 (irreversible wavelet).
      'j2k_lossy': _crop_as(
          ankle, np.s_[500:1012, 600:1112], pydicom.uid.JPEG2000, j2k_cr=[10]
      ),
  }
  for name in REAL_SEEDS:
    out[name] = (shared_dicom_dir / name).read_bytes()
  return _Seeds(out)


@pytest.fixture(scope='module')
def scratch():
  folder = pathlib.Path(tempfile.mkdtemp(prefix='dicom_fuzz_'))
  yield folder
  shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ mutations
def _swap_transfer_syntax(raw: bytes, uid: str) -> bytes:
  """The same data set bytes under a file meta that declares another Transfer Syntax UID."""
  group_length = int.from_bytes(
      raw[140:144], 'little'
  )  # (0002,0000) UL, the first meta element.
  body = raw[144 + group_length :]
  meta = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta
  meta.TransferSyntaxUID = uid
  fp = DicomBytesIO()
  fp.is_little_endian, fp.is_implicit_VR = True, False
  write_file_meta_info(fp, meta, enforce_standard=False)
  return raw[:132] + fp.getvalue() + body


def _set_attributes(raw: bytes, attrs: dict) -> bytes:
  """Rewrites header attributes (None deletes) without touching Pixel Data or its encoding."""
  ds = pydicom.dcmread(io.BytesIO(raw))
  for keyword, value in attrs.items():
    if value is None:
      if keyword in ds:
        delattr(ds, keyword)
    elif (
        keyword == 'PixelData' and ds.file_meta.TransferSyntaxUID.is_compressed
    ):
      ds.PixelData = pydicom.encaps.encapsulate(
          [value]
      )  # not a valid codestream: hostile too
    else:
      setattr(ds, keyword, value)
  buf = io.BytesIO()
  ds.save_as(buf, enforce_file_format=False)
  return buf.getvalue()


def _patch_codestream_size(raw: bytes, rows: int, cols: int) -> bytes:
  """Overwrites the image size in the first JPEG 2000 SIZ or JPEG/JPEG-LS SOF marker."""
  data = bytearray(raw)
  siz = data.find(b'\xff\x4f\xff\x51')
  if siz >= 0:
    data[siz + 8 : siz + 16] = cols.to_bytes(4, 'big') + rows.to_bytes(4, 'big')
    return bytes(data)
  for marker in (b'\xff\xc3', b'\xff\xf7', b'\xff\xc1', b'\xff\xc0'):
    sof = data.find(marker)
    if sof >= 0:
      data[sof + 5 : sof + 9] = (rows & 0xFFFF).to_bytes(2, 'big') + (
          cols & 0xFFFF
      ).to_bytes(2, 'big')
      return bytes(data)
  return bytes(data)


@st.composite
def byte_faults(draw, seed_names):
  """(seed, fault description, function bytes -> bytes) for truncation / flips / TS swaps."""
  seed = draw(st.sampled_from(seed_names))
  kind = draw(
      st.sampled_from(
          (
              'truncate',
              'flip',
              'flip_header',
              'transfer_syntax',
              'codestream_size',
          )
      )
  )
  if kind == 'truncate':
    fraction = draw(st.floats(0.0, 1.0, exclude_max=True))
    return (
        seed,
        f'truncate at {fraction:.4f}',
        lambda b: b[: int(len(b) * fraction)],
    )
  if kind in ('flip', 'flip_header'):
    flips = draw(
        st.lists(
            st.tuples(
                st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)
            ),
            min_size=1,
            max_size=16,
        )
    )
    header = kind == 'flip_header'

    def flip(b, flips=flips, header=header):
      b = bytearray(b)
      span = min(len(b), 1024) if header else len(b)
      for where, xor in flips:
        b[int(where * span)] ^= xor
      return bytes(b)

    return seed, f'{kind} {flips}', flip
  if kind == 'transfer_syntax':
    uid = draw(st.sampled_from(TRANSFER_SYNTAXES))
    return (
        seed,
        f'transfer syntax -> {uid!r}',
        lambda b: _swap_transfer_syntax(b, uid),
    )
  rows = draw(
      st.sampled_from(
          (0, 1, 191, 193, 1759, 1761, 30000, 65535, 1 << 20, (1 << 32) - 1)
      )
  )
  cols = draw(st.sampled_from((0, 1, 192, 1760, 65535, (1 << 32) - 1)))
  return (
      seed,
      f'codestream size -> {rows} x {cols}',
      (lambda b: _patch_codestream_size(b, rows, cols)),
  )


_US = st.integers(0, 65535)


@st.composite
def attribute_faults(draw):
  """Wrong pixel-module attributes, size disagreements, zero-sized, 1x1 and huge images."""
  seed = draw(st.sampled_from(SMALL_SEEDS))
  kind = draw(st.sampled_from(('bits', 'size', 'zero_or_one', 'huge', 'other')))
  attrs = {}
  if kind == 'bits':
    attrs['BitsStored'] = draw(
        st.one_of(st.sampled_from((0, 1, 8, 9, 10, 12, 15, 16, 17, 32)), _US)
    )
    attrs['HighBit'] = draw(
        st.one_of(st.sampled_from((0, 7, 9, 11, 15, 16, 31)), _US, st.none())
    )
    if draw(st.booleans()):
      attrs['BitsAllocated'] = draw(
          st.sampled_from((0, 1, 8, 12, 16, 24, 32, 64))
      )
  elif kind == 'size':
    attrs['Rows'] = draw(
        st.one_of(st.sampled_from((160, 191, 193, 384, 96)), _US)
    )
    attrs['Columns'] = draw(
        st.one_of(st.sampled_from((128, 191, 193, 384, 96)), _US)
    )
  elif kind == 'zero_or_one':
    attrs['Rows'] = draw(st.sampled_from((0, 1)))
    attrs['Columns'] = draw(st.sampled_from((0, 1)))
    if draw(
        st.booleans()
    ):  # A genuine tiny image: Pixel Data of the matching length.
      attrs['PixelData'] = b'\x10\x02' * (attrs['Rows'] * attrs['Columns'])
      if attrs['PixelData'] == b'':
        attrs['PixelData'] = None
  elif kind == 'huge':
    side = draw(st.sampled_from((7999, 8000, 8001, 20000, 65535)))
    attrs['Rows'], attrs['Columns'] = side, draw(
        st.sampled_from((side, 1, 8000))
    )
  else:
    keyword = draw(
        st.sampled_from(
            (
                'SamplesPerPixel',
                'PixelRepresentation',
                'PhotometricInterpretation',
                'PlanarConfiguration',
                'RescaleSlope',
                'RescaleIntercept',
                'NumberOfFrames',
                'PresentationLUTShape',
                'SOPClassUID',
            )
        )
    )
    values = {
        'SamplesPerPixel': st.sampled_from((0, 2, 3, 4, 65535)),
        'PixelRepresentation': st.sampled_from((1, 2, 65535)),
        'PhotometricInterpretation': st.sampled_from(
            ('MONOCHROME1', 'RGB', 'YBR_FULL', 'PALETTE COLOR', '', 'X')
        ),
        'PlanarConfiguration': st.sampled_from((0, 1, 2)),
        'RescaleSlope': st.sampled_from(
            ('0', '-1', '1e300', '1e-300', 'NaN', 'inf', '3')
        ),
        'RescaleIntercept': st.sampled_from(
            ('-1e300', 'nan', '-inf', '1024', '-32768')
        ),
        'NumberOfFrames': st.sampled_from(('0', '2', '-1', '1000000')),
        'PresentationLUTShape': st.sampled_from(('INVERSE', 'IDENTITY', '???')),
        'SOPClassUID': st.sampled_from(
            ('1.2.840.10008.5.1.4.1.1.88.11', '1.2.3', '')
        ),
    }
    attrs[keyword] = draw(values[keyword])
    if draw(st.booleans()):
      attrs[
          draw(st.sampled_from(('BitsStored', 'HighBit', 'Rows', 'Columns')))
      ] = None
  return (
      seed,
      f"{kind} {attrs if 'PixelData' not in attrs else {**attrs, 'PixelData': '...'}}",
      (lambda b: _set_attributes(b, attrs)),
  )


# ------------------------------------------------------------------ the
# property
def _check(worker, scratch, seeds, seed, fault, mutate):
  data = mutate(seeds[seed])
  path = scratch / 'case.dcm'
  path.write_bytes(data)
  result = worker.load(path)
  context = f'seed {seed}, fault {fault}: {result}'
  outcome = result['outcome']
  if outcome == 'image':
    assert result['shape'] == [IMAGE_SIZE, IMAGE_SIZE, 1], context
    assert result['dtype'] == 'float32', context
    assert (
        result['finite'] and 0.0 <= result['min'] <= result['max'] <= 1.0
    ), context
  else:
    assert outcome == 'DicomReadError', context
    assert result['names_file'], context
    assert 'out of memory' not in result['reason'], context
  assert result['peak_rss_growth'] < PEAK_RSS_BUDGET_BYTES, context


_SETTINGS = dict(
    deadline=None,
    derandomize=DERANDOMIZE,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(case=byte_faults(SMALL_SEEDS))
def test_byte_faults_on_small_real_crops(worker, scratch, seeds, case):
  _check(worker, scratch, seeds, *case)


@settings(max_examples=ATTRIBUTE_EXAMPLES, **_SETTINGS)
@given(case=attribute_faults())
def test_header_faults_on_small_real_crops(worker, scratch, seeds, case):
  _check(worker, scratch, seeds, *case)


@settings(max_examples=REAL_FILE_EXAMPLES, **_SETTINGS)
@given(case=byte_faults(REAL_SEEDS))
def test_byte_faults_on_full_size_real_files(worker, scratch, seeds, case):
  _check(worker, scratch, seeds, *case)


def test_example_count_meets_the_ci_minimum():
  assert (
      1000 * min(SCALE, 1.0)
      <= SMALL_EXAMPLES + ATTRIBUTE_EXAMPLES + REAL_FILE_EXAMPLES
  )


def test_harness_catches_hangs_and_enforces_the_memory_limit():
  """The harness itself: a hang becomes a 'timeout' outcome, and the address-space limit bites."""
  w = _Worker(timeout_s=3.0)
  try:
    assert w.load('@alloc')['outcome'] == 'MemoryError'
    assert w.load('@sleep')['outcome'].startswith('timeout')
    assert (
        w.proc is None
    )  # the hung worker was killed; the next call starts a fresh one
  finally:
    w.close()


# ------------------------------------------------------------------ the builder
def _hostile_set(seeds) -> dict[str, bytes]:
  """One file per fault class, each known to be refused."""
  native, j2k = seeds['native'], seeds['j2k']
  return {
      'truncated.dcm': native[: len(native) // 2],
      'flipped_header.dcm': native[:128] + b'DICX' + native[132:],
      'bits_stored.dcm': _set_attributes(
          native, {'BitsStored': 17, 'HighBit': 16}
      ),
      'rows_columns.dcm': _set_attributes(native, {'Rows': 384}),
      'zero_sized.dcm': _set_attributes(native, {'Rows': 0}),
      'huge.dcm': _set_attributes(native, {'Rows': 65535, 'Columns': 65535}),
      'codestream_bomb.dcm': _patch_codestream_size(j2k, 60000, 60000),
      'transfer_syntax.dcm': _swap_transfer_syntax(
          native, '1.2.840.10008.1.2.4.50'
      ),
      'unknown_syntax.dcm': _swap_transfer_syntax(native, '1.2.3.4'),
  }


def test_builder_builds_good_files_and_reports_each_hostile_one(
    seeds, tmp_path
):
  manual = tmp_path / 'manual'
  good = {
      'rle.dcm': seeds['rle'],
      'j2k.dcm': seeds['j2k'],
      'native.dcm': seeds['native'],
      'one_by_one.dcm': _set_attributes(
          seeds['native'], {'Rows': 1, 'Columns': 1, 'PixelData': b'\x10\x02'}
      ),
  }
  hostile = _hostile_set(seeds)
  for name, data in hostile.items():  # Sanity: each one is refused on its own.
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(dicom.DicomReadError):
      dicom.load_radiograph(path, IMAGE_SIZE)
  # Case 0 mixes good and hostile files; the others hold one hostile file each
  # next to a good one.
  mixed = manual / 'fracture' / 'case_mixed'
  mixed.mkdir(parents=True)
  for name, data in list(good.items()) + list(hostile.items())[:3]:
    (mixed / name).write_bytes(data)
  for k, (name, data) in enumerate(list(hostile.items())[3:]):
    case = manual / ('normal' if k % 2 else 'fracture') / f'case_{k}'
    case.mkdir(parents=True)
    (case / name).write_bytes(data)
    (case / 'zz_good.dcm').write_bytes(good['native.dcm'])
  num_good = len(good) + len(hostile) - 3
  report = prepare.build_dataset(
      manual,
      tmp_path / 'data',
      num_workers=1,
      progress=False,
      num_validation_per_label=0,
      num_test_per_label=0,
      image_size=IMAGE_SIZE,
  )
  assert report['decoded_views'] == num_good
  skipped = report['skipped_files']
  assert len(skipped) == len(hostile), skipped
  assert all(entry['reason'] for entry in skipped)
  counts = report['counts']['train']
  assert counts['normal']['views'] + counts['fracture']['views'] == num_good
  # Each hostile file is reported at its own position within its case.
  positions = sorted((e['case_id'], e['file_index']) for e in skipped)
  assert len(set(positions)) == len(hostile)

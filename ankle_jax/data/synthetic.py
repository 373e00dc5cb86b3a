r"""Synthetic ankle-like radiograph studies written as real DICOM files.

Layout (the builder's `dicom_cases` manual directory, docs/paper.md section 4):

    <out_dir>/normal/<case>/<view>.dcm
    <out_dir>/fracture/<case>/<view>.dcm
    <out_dir>/synthetic_manifest.json     what was generated (identifiers included, for tests)

Each case has 1-3 views (AP, mortise/oblique, lateral) of a phantom distal leg:
soft tissue, tibia and fibula with cortical rims, and a talus, under a random
pose (rotation, scale, shift), a random exposure, a smooth exposure gradient,
quantum noise and sometimes a collimation border. Files are 12-bit CR images,
MONOCHROME1 or MONOCHROME2, some RLE-compressed, 300-900 px.

A fracture is a thin lucent line across the distal fibula or tibia with a small
offset of the distal fragment. It is drawn in a random non-empty subset of a
fracture case's views (each view with probability `fracture_view_prob`), so some
views of fracture cases look normal: one view alone does not decide the case and
three-view voting helps.

Difficulty. Two arguments of `generate_studies` set how hard the task is:
  * `fracture_conspicuity` (default 1.0) scales the fracture against the
    anatomy. The line width and the fragment offset are drawn as fractions of
    the case's fibula width (the thinnest bone, which sets the scale of the
    detail to find), then multiplied by the conspicuity; the line's contrast
    (the fraction of bone density it removes, `depth`) becomes 1 - (1 -
    depth)**c, so it stays in (0, 1). At 1.0 the line is ~6-10% and the offset
    ~5-13% of the fibula width: about 1-2 px wide and 1-2.5 px offset on a 300
    px training image (the paper's resolution), a detail that has to be learned.
    Training at a lower resolution needs a proportionally larger value
    (configs/demo.py: 128 px with 2.5) for the line to survive the
    down-sampling; 0 removes the fracture entirely (labels then carry no signal,
    a useful negative control).
  * `fracture_view_prob` (default 0.6): the probability that each view of a
    fracture case shows the fracture (at least one always does). With 0.6, a
    perfect one-view classifier labels only ~69% of 3-view fracture cases
    correctly by majority vote (2 of 3 must show it), so the case-level accuracy
    depends on this as much as on the model. Distinctive, fake patient
    identifiers
(PatientName, PatientID, birth date, accession number, UIDs) are written into
every file and the case folder names contain the fake PatientID, as real exports
often do, so tests can check that none of them reach the built dataset.

Command:
  python -m ankle_jax.data.synthetic --out_dir=DIR --num_normal=N \
      --num_fracture=N --seed=S
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os
import pathlib

from absl import flags
import numpy as np
from pydicom.dataset import FileDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import RLELossless

from ankle_jax import console

# What was generated, beside the studies (also marks a folder as synthetic).
MANIFEST_NAME = 'synthetic_manifest.json'
_VIEWS = (
    'AP',
    'OBL',
    'LL',
)  # ViewPosition values: AP, mortise (oblique), lateral.
_BITS = 12
_MAX_VALUE = 2**_BITS - 1


@dataclasses.dataclass(frozen=True)
class SyntheticCase:
  """One generated case.

  Attributes:
    folder: the case folder, relative to out_dir ('normal/<case>' or
      'fracture/<case>').
    label: 'normal' or 'fracture'.
    files: file names inside the folder, one per view.
    fracture_visible: per view, whether the fracture was drawn in it (all False
    when normal). patient_name, patient_id, birth_date, accession_number,
    study_uid: the fake identifiers.
  """

  folder: str
  label: str
  files: tuple[str, ...]
  fracture_visible: tuple[bool, ...]
  patient_name: str
  patient_id: str
  birth_date: str
  accession_number: str
  study_uid: str


def generate_studies(
    out_dir: os.PathLike | str,
    *,
    num_normal: int,
    num_fracture: int,
    seed: int,
    min_size: int = 300,
    max_size: int = 900,
    views_probs: Sequence[float] = (0.15, 0.25, 0.6),
    fracture_view_prob: float = 0.6,
    fracture_conspicuity: float = 1.0,
    rle_fraction: float = 0.3,
    monochrome1_fraction: float = 0.5,
) -> list[SyntheticCase]:
  """Writes `num_normal + num_fracture` synthetic cases as DICOM files under
  `out_dir`.

  Args:
    out_dir: root of the `dicom_cases` layout (created if needed).
    num_normal: number of normal cases.
    num_fracture: number of fracture cases.
    seed: the seed; the same arguments give byte-identical files.
    min_size: smallest image side in pixels.
    max_size: largest image side in pixels.
    views_probs: probabilities of 1, 2 and 3 views per case.
    fracture_view_prob: probability that a view of a fracture case shows the
      fracture (at least one view always does).
    fracture_conspicuity: scale of the fracture relative to the anatomy (line
      width, fragment offset and, as 1 - (1 - depth)**c, line contrast; see the
      module docstring); >= 0, 1.0 = the default difficulty for 300 px training,
      larger = easier, 0 = no visible fracture.
    rle_fraction: fraction of files written RLE Lossless compressed.
    monochrome1_fraction: fraction of files stored MONOCHROME1 (inverted grey
      scale).

  Returns:
    The generated cases, also written to `<out_dir>/synthetic_manifest.json`.
  """
  if not 0.0 <= fracture_view_prob <= 1.0:
    raise ValueError(
        f'generate_studies: fracture_view_prob must be in [0, 1], '
        f'got {fracture_view_prob}'
    )
  if fracture_conspicuity < 0:
    raise ValueError(
        f'generate_studies: fracture_conspicuity must be >= 0, '
        f'got {fracture_conspicuity}'
    )
  out_dir = pathlib.Path(out_dir)
  rng = np.random.default_rng(seed)
  labels = ['normal'] * num_normal + ['fracture'] * num_fracture
  order = rng.permutation(
      len(labels)
  )  # interleave so patient numbers do not reveal the label
  cases = []
  for number, index in enumerate(order):
    label = labels[index]
    case_rng = np.random.default_rng([seed, int(index), 7])
    cases.append(
        _write_case(
            out_dir,
            label,
            number,
            seed,
            case_rng,
            min_size=min_size,
            max_size=max_size,
            views_probs=views_probs,
            fracture_view_prob=fracture_view_prob,
            fracture_conspicuity=fracture_conspicuity,
            rle_fraction=rle_fraction,
            monochrome1_fraction=monochrome1_fraction,
        )
    )
  manifest = [dataclasses.asdict(c) for c in cases]
  (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
  return cases


def _write_case(
    out_dir,
    label,
    number,
    seed,
    rng,
    *,
    min_size,
    max_size,
    views_probs,
    fracture_view_prob,
    fracture_conspicuity,
    rle_fraction,
    monochrome1_fraction,
) -> SyntheticCase:
  num_views = int(
      rng.choice([1, 2, 3], p=np.asarray(views_probs) / np.sum(views_probs))
  )
  views = list(_VIEWS[:num_views]) if num_views < 3 else list(_VIEWS)
  if num_views < 3:
    views = list(rng.choice(_VIEWS, size=num_views, replace=False))
  if label == 'fracture':
    visible = rng.random(num_views) < fracture_view_prob
    if not visible.any():
      visible[rng.integers(num_views)] = True
  else:
    visible = np.zeros(num_views, bool)
  ident = _identifiers(seed, number)
  folder = (
      f"{label}/{ident['patient_id']}_{ident['patient_name'].split('^')[0]}"
  )
  case_dir = out_dir / folder
  case_dir.mkdir(parents=True, exist_ok=True)
  anatomy = _sample_anatomy(rng)
  fracture = (
      _sample_fracture(rng, anatomy, fracture_conspicuity)
      if label == 'fracture'
      else None
  )
  files = []
  for k, (view, show) in enumerate(zip(views, visible)):
    size = (
        int(rng.integers(min_size, max_size + 1)),
        int(rng.integers(min_size, max_size + 1)),
    )
    density = _render_view(rng, size, anatomy, view, fracture if show else None)
    monochrome1 = bool(rng.random() < monochrome1_fraction)
    rle = bool(rng.random() < rle_fraction)
    name = f'IM{k + 1:04d}_{view}.dcm'
    _write_dicom(case_dir / name, density, view, ident, k, monochrome1, rle)
    files.append(name)
  return SyntheticCase(
      folder,
      label,
      tuple(files),
      tuple(bool(v) for v in visible),
      ident['patient_name'],
      ident['patient_id'],
      ident['birth_date'],
      ident['accession_number'],
      ident['study_uid'],
  )


def _identifiers(seed: int, number: int) -> dict[str, str]:
  """Fake but distinctive identifiers (never real people)."""
  syllables = ['Quox', 'Zanth', 'Vrel', 'Plim', 'Drax', 'Umbo', 'Kref', 'Yolv']
  a, b = syllables[number % 8], syllables[(number // 8 + seed) % 8]
  return {
      'patient_name': f'{a}{b}ington^Zephyrine{number:04d}',
      'patient_id': f'PXQ{seed % 1000:03d}{number:05d}',
      'birth_date': f'19{(seed + number) % 90 + 10:02d}0{number % 9 + 1}1{number % 9}',
      'accession_number': f'ACCZQ{seed % 100:02d}{number:06d}',
      'study_uid': f'2.25.9{seed % 1000:03d}{number:07d}31337',
  }


def _sample_anatomy(rng) -> dict[str, float]:
  """Case-level anatomy, shared by all views of a case (units: fractions of the image side)."""
  return {
      'leg_width': rng.uniform(0.42, 0.55),
      'tibia_width': rng.uniform(0.17, 0.22),
      'fibula_width': rng.uniform(0.05, 0.07),
      'cortex': rng.uniform(
          0.18, 0.26
      ),  # cortical thickness as a fraction of the bone width
      'talus_y': rng.uniform(0.68, 0.76),
      'bone_density': rng.uniform(0.55, 0.75),
      'soft_density': rng.uniform(0.18, 0.28),
  }


def _sample_fracture(rng, anatomy, conspicuity: float) -> dict[str, float]:
  """A thin oblique lucent line across the distal fibula or tibia, with a small
  offset.

  Width and offset are fractions of the image side (like the anatomy), drawn
  relative to the case's fibula width and scaled by `conspicuity`; depth is the
  fraction of bone density removed along the line, 1 - (1 - d)**conspicuity for
  a base contrast d in [0.45, 0.7].
  """
  fibula = anatomy['fibula_width']  # 0.05-0.07 of the image side
  return {
      'bone': float(rng.random() < 0.6),  # 1 = fibula, 0 = tibia
      'y': rng.uniform(0.45, 0.62),  # height along the leg
      'angle': rng.uniform(-0.6, 0.6),  # radians from horizontal
      'width': conspicuity * fibula * rng.uniform(0.06, 0.10),  # line FWHM
      'depth': 1.0 - (1.0 - rng.uniform(0.45, 0.7)) ** conspicuity,
      'offset': conspicuity
      * fibula
      * rng.uniform(0.05, 0.13),  # shift of the distal fragment
  }


def _render_view(rng, size, anatomy, view, fracture) -> np.ndarray:
  """Renders a [H, W] attenuation image in [0, 1] (bright = attenuating) for one view."""
  u, v, yy, xx = _view_coordinates(rng, size)
  density = _leg_density(rng, u, v, anatomy, view, fracture)
  return _expose(rng, density, yy, xx)


def _view_coordinates(rng, size):
  """Leg coordinates (u across, v along, 0 = top) of every pixel, and the grid.

  The pose is a random rotation about the image centre, isotropic scale and
  shift. Returns (u, v, yy, xx), each float32 [H, W].
  """
  h, w = size
  side = float(max(h, w))
  yy, xx = np.meshgrid(
      np.arange(h, dtype=np.float32),
      np.arange(w, dtype=np.float32),
      indexing='ij',
  )
  angle = rng.uniform(-0.25, 0.25)
  scale = rng.uniform(0.85, 1.15)
  cy, cx = (
      h / 2 + rng.uniform(-0.06, 0.06) * h,
      w / 2 + rng.uniform(-0.06, 0.06) * w,
  )
  c, s = np.cos(angle), np.sin(angle)
  u = ((xx - cx) * c + (yy - cy) * s) / (side * scale)
  v = (-(xx - cx) * s + (yy - cy) * c) / (side * scale) + 0.5
  return u, v, yy, xx


def _leg_density(rng, u, v, anatomy, view, fracture) -> np.ndarray:
  """Soft tissue, tibia, fibula and talus attenuation [H, W] of one view."""
  a = anatomy
  # View geometry: lateral views overlap the fibula with the tibia; oblique
  # separates them.
  fib_sep = {'AP': 0.16, 'OBL': 0.2, 'LL': 0.05}[view]
  tib_scale = {'AP': 1.0, 'OBL': 0.95, 'LL': 1.1}[view]
  taper = 1.0 + 0.5 * np.clip(v - 0.35, 0, None)  # the distal tibia flares
  soft = (
      a['soft_density']
      * np.clip(1 - (u / (a['leg_width'] / 2 * taper)) ** 2, 0, None) ** 0.5
  )
  tib_u = u + 0.02
  tib_w = a['tibia_width'] * tib_scale * taper / 2
  fib_u = u - fib_sep
  fib_w = a['fibula_width'] / 2
  line = np.zeros_like(u)
  if fracture is not None:
    tib_u, fib_u, line = _fracture(rng, v, tib_u, fib_u, fracture)
  tibia = _tube(tib_u, tib_w, a['cortex']) * (v < a['talus_y'] - 0.02)
  fibula = (
      _tube(fib_u, fib_w, a['cortex'] * 1.3)
      * (v > 0.05)
      * (v < a['talus_y'] + 0.04)
  )
  if fracture is not None:
    if fracture['bone']:
      fibula = fibula * (1 - line)
    else:
      tibia = tibia * (1 - line)
  talus = (
      np.clip(
          1
          - ((u + 0.01) / 0.14) ** 2
          - ((v - a['talus_y'] - 0.09) / 0.08) ** 2,
          0,
          None,
      )
      ** 0.4
  )
  return soft + a['bone_density'] * (tibia + 0.8 * fibula + 0.9 * talus)


def _fracture(rng, v, tib_u, fib_u, fracture):
  """Displaces the distal fragment of the fractured bone; draws the lucent line.

  Returns (tib_u, fib_u, line): the bones' shifted coordinates and the line's
  depth [H, W] in [0, 1], in bone coordinates.
  """
  bone_u = fib_u if fracture['bone'] else tib_u
  dist = (v - fracture['y']) * np.cos(fracture['angle']) - bone_u * np.sin(
      fracture['angle']
  )
  distal = dist > 0
  shift = fracture['offset'] * (1 if rng.random() < 0.5 else -1)
  if fracture['bone']:
    fib_u = np.where(distal, fib_u + shift, fib_u)
  else:
    tib_u = np.where(distal, tib_u + shift, tib_u)
  line = fracture['depth'] * np.exp(
      -0.5 * (dist / (fracture['width'] / 2.355 + 1e-9)) ** 2
  )
  return tib_u, fib_u, line


def _expose(rng, density, yy, xx) -> np.ndarray:
  """Exposure: random gain/offset, a smooth gradient (heel effect), quantum
  noise and, on some images, collimation (a constant border)."""
  h, w = density.shape
  gradient = (
      1
      + rng.uniform(-0.12, 0.12) * (yy / h - 0.5)
      + rng.uniform(-0.08, 0.08) * (xx / w)
  )
  density = density * gradient * rng.uniform(0.8, 1.05) + rng.uniform(0.02, 0.1)
  density = density + rng.normal(
      0, rng.uniform(0.008, 0.02), size=density.shape
  ).astype(np.float32)
  if rng.random() < 0.4:
    b = int(rng.uniform(0.02, 0.08) * min(h, w))
    density[:b] = 1.0 if rng.random() < 0.5 else 0.0
    density[:, -b:] = density[0, 0]
  return np.clip(density, 0, 1)


def _tube(u, half_width, cortex_fraction):
  """Projected density of a hollow cylinder: cortical walls brighter than the medulla."""
  outer = np.sqrt(np.clip(half_width**2 - u**2, 0, None))
  inner_w = half_width * (1 - cortex_fraction)
  inner = np.sqrt(np.clip(inner_w**2 - u**2, 0, None))
  return (outer - 0.7 * inner) / (half_width + 1e-6)


def _write_dicom(path, density, view, ident, index, monochrome1, rle) -> None:
  """Writes a 12-bit CR DICOM file with the fake identifiers."""
  stored = np.round(density * _MAX_VALUE).astype(np.uint16)
  if monochrome1:
    stored = (_MAX_VALUE - stored).astype(np.uint16)
  sop_uid = f"{ident['study_uid']}.{index + 1}.1"
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(path), {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID = ComputedRadiographyImageStorage
  ds.SOPInstanceUID = sop_uid
  ds.StudyInstanceUID = ident['study_uid']
  ds.SeriesInstanceUID = f"{ident['study_uid']}.{index + 1}"
  ds.PatientName = ident['patient_name']
  ds.PatientID = ident['patient_id']
  ds.PatientBirthDate = ident['birth_date']
  ds.AccessionNumber = ident['accession_number']
  ds.StudyDate = ident['birth_date'][:2] + '990101'
  ds.Modality = 'CR'
  ds.BodyPartExamined = 'ANKLE'
  ds.ViewPosition = view
  ds.InstanceNumber = index + 1
  ds.Rows, ds.Columns = stored.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME1' if monochrome1 else 'MONOCHROME2'
  ds.BitsAllocated = 16
  ds.BitsStored = _BITS
  ds.HighBit = _BITS - 1
  ds.PixelRepresentation = 0
  ds.RescaleSlope = 1
  ds.RescaleIntercept = 0
  ds.PixelData = stored.tobytes()
  if rle:
    ds.compress(RLELossless, stored, generate_instance_uid=False)
  ds.save_as(path, enforce_file_format=True)


def main(argv: list[str]) -> None:
  """The command (module docstring); its flags are defined by `define_flags`."""
  if len(argv) > 1:
    raise console.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    cases = generate_studies(
        f.out_dir,
        num_normal=f.num_normal,
        num_fracture=f.num_fracture,
        seed=f.seed,
        min_size=f.min_size,
        max_size=f.max_size,
        fracture_view_prob=f.fracture_view_prob,
        fracture_conspicuity=f.fracture_conspicuity,
    )
  except ValueError as e:
    raise console.UserError(str(e)) from e
  views = sum(len(c.files) for c in cases)
  print(
      f'Generated {len(cases)} synthetic cases ({views} views) in {f.out_dir}'
  )


def define_flags() -> None:
  """The command's flags (defined only when it runs, not on import)."""
  flags.DEFINE_string('out_dir', None, 'Folder to write to.', required=True)
  flags.DEFINE_integer('num_normal', 100, 'Normal cases.')
  flags.DEFINE_integer('num_fracture', 100, 'Fracture cases.')
  flags.DEFINE_integer('seed', 0, 'Seed (same flags, same files).')
  flags.DEFINE_integer('min_size', 300, 'Smallest image side (px).')
  flags.DEFINE_integer('max_size', 900, 'Largest image side (px).')
  flags.DEFINE_float(
      'fracture_view_prob',
      0.6,
      'Probability that a view of a fracture case shows it.',
  )
  flags.DEFINE_float(
      'fracture_conspicuity',
      1.0,
      'Fracture size/contrast relative to the anatomy (1 = 300 px default).',
  )


if __name__ == '__main__':
  define_flags()
  console.run(main)

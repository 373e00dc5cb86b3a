"""What every DICOM object predict writes has in common.

Each object files into its source study: highdicom copies the source's
Patient and Study modules (and so StudyInstanceUID); its Series and SOP
Instance UIDs are new, generated under `uid_root` (pydicom's own prefix when
None). Manufacturer is 'ankle_jax', SoftwareVersions the package version,
ContentDate/Time (and SeriesDate/Time) the start of the run.
"""

from __future__ import annotations

import dataclasses
import datetime

import pydicom
import pydicom.uid

import ankle_jax

MANUFACTURER = 'ankle_jax'
RESEARCH_ONLY = 'Research use only - not for diagnosis'
SR_SERIES_NUMBER = 9701
SC_SERIES_NUMBER = 9702


@dataclasses.dataclass(frozen=True)
class Identity:
  """The run's identity in its DICOM objects.

  Attributes:
    uid_root: the UID prefix (ending in '.'), or None for pydicom's.
    when: the run's start (local time, as DICOM dates are).
  """

  uid_root: str | None
  when: datetime.datetime

  def new_uid(self) -> str:
    return pydicom.uid.generate_uid(prefix=self.uid_root or None)

  def stamp(self, ds: pydicom.Dataset) -> None:
    """Sets Manufacturer, SoftwareVersions and the dates/times of the run."""
    date, time = self.when.strftime('%Y%m%d'), self.when.strftime('%H%M%S')
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = ankle_jax.__version__
    ds.ContentDate, ds.ContentTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time


def _has_non_ascii(ds: pydicom.Dataset) -> bool:
  """Whether any text value (nested ones too) holds a non-ASCII character."""
  for element in ds.iterall():
    values = element.value if element.VM > 1 else [element.value]
    if any(isinstance(v, str) and not v.isascii() for v in values):
      return True
    if element.VR == 'PN' and not str(element.value).isascii():
      return True
  return False


def declare_character_set(ds: pydicom.Dataset, source: pydicom.Dataset):
  """The source's Specific Character Set on an object that copied its text;
  ISO_IR 100 (Latin-1, the repertoire pydicom decoded it with) when the
  source declares none but holds 8-bit text, as some real files do."""
  if 'SpecificCharacterSet' in source:
    ds.SpecificCharacterSet = source.SpecificCharacterSet
  elif _has_non_ascii(ds):
    ds.SpecificCharacterSet = 'ISO_IR 100'


def check_uid_root(uid_root: str | None) -> str | None:
  """The root with its trailing '.', or None.

  Raises:
    ValueError: not digits and dots, or too long to leave room.
  """
  if not uid_root:
    return None
  root = uid_root if uid_root.endswith('.') else uid_root + '.'
  if not pydicom.uid.UID(root[:-1]).is_valid or len(root) > 40:
    raise ValueError(
        f'--uid_root={uid_root} is not a valid UID prefix (digits and dots, '
        'at most 40 characters).'
    )
  return root


# Type 2 attributes of the Patient and General Study modules: present, maybe
# empty. A source without them gets them empty (highdicom copies them).
TYPE2_PATIENT_STUDY = (
    'PatientName',
    'PatientID',
    'PatientBirthDate',
    'PatientSex',
    'StudyDate',
    'StudyTime',
    'ReferringPhysicianName',
    'StudyID',
    'AccessionNumber',
)


def read_header(path: str) -> pydicom.Dataset:
  """A source image's header, without its pixels; missing type 2 Patient
  and Study attributes added empty (the file itself is not changed)."""
  ds = pydicom.dcmread(path, stop_before_pixels=True)
  for keyword in TYPE2_PATIENT_STUDY:
    if keyword not in ds:
      setattr(ds, keyword, '')
  return ds

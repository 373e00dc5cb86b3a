"""Finding the files under the PATHs and grouping them into cases.

Every regular file under each PATH (any depth; names starting with '.' and
DICOMDIR left out) is sniffed: a PNG or JPEG is an image; anything else is
read as DICOM without its pixels. A DICOM image joins the case of its
StudyInstanceUID (`group_by='study'`), SeriesInstanceUID ('series') or
folder ('folder'); PNG/JPEG images always join their folder's case (the
folder-per-case rule of the one-case command). Files that are neither, and
DICOM objects that are not images (e.g. Structured Reports), are skipped
with a reason and counted.

A case is named by `case_id`: with hashing (the default) the builder's salted
hash (`radiograph_studies.layouts.case_id_for`) of its key (the UID, or the
folder's path relative to the PATH given, as the builder keys dicom_cases:
'<label>/<case folder>' when PATH is the dataset root); without, the key
itself. Paths never reach the console or the CSV when hashing is on.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
import pathlib

import pydicom

from ankle_jax import console
from ankle_jax.data.radiograph_studies import config as builder_config
from ankle_jax.data.radiograph_studies import layouts

GROUP_BY = ('study', 'series', 'folder')
_IMAGE_MAGICS = (b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff')
_HEADER_TAGS = (
    'SOPClassUID',
    'SOPInstanceUID',
    'StudyInstanceUID',
    'SeriesInstanceUID',
)


@dataclasses.dataclass(frozen=True)
class InputFile:
  """One view file. The UIDs are '' for a PNG/JPEG.

  Attributes:
    path: the file.
    is_dicom: whether it is a DICOM image (else PNG/JPEG).
    study_uid, series_uid, sop_uid, sop_class_uid: its DICOM UIDs.
  """

  path: str
  is_dicom: bool
  study_uid: str = ''
  series_uid: str = ''
  sop_uid: str = ''
  sop_class_uid: str = ''


@dataclasses.dataclass(frozen=True)
class InputCase:
  """The files of one case, in path order.

  Attributes:
    case_id: the salted hash of `key` (or `key` itself without hashing).
    key: the StudyInstanceUID, SeriesInstanceUID or folder that groups it.
    files: its view files.
  """

  case_id: str
  key: str
  files: tuple[InputFile, ...]

  @property
  def is_dicom(self) -> bool:
    return all(f.is_dicom for f in self.files)

  @property
  def study_uid(self) -> str:
    """The first view's StudyInstanceUID ('' for PNG/JPEG cases)."""
    return self.files[0].study_uid


@dataclasses.dataclass(frozen=True)
class SkippedFile:
  """A file left out, and why (no path in `reason`)."""

  path: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The cases found under the PATHs and the files skipped."""

  cases: tuple[InputCase, ...]
  skipped: tuple[SkippedFile, ...]


def walk_files(root: str, exclude: Sequence[str] = ()) -> list[str]:
  """The regular files under `root` (or root itself), sorted; hidden names,
  DICOMDIR and anything under `exclude` folders left out."""
  if os.path.isfile(root):
    return [root]
  if not os.path.isdir(root):
    raise console.UserError(f'{root}: no such file or folder.')
  excluded = {os.path.realpath(e) for e in exclude}
  found = []
  for folder, dirs, names in os.walk(root):
    dirs[:] = sorted(
        d
        for d in dirs
        if not d.startswith('.')
        and os.path.realpath(os.path.join(folder, d)) not in excluded
    )
    found += [
        os.path.join(folder, n)
        for n in names
        if not n.startswith('.') and n.upper() != 'DICOMDIR'
    ]
  return sorted(found)


def sniff(path: str) -> InputFile | SkippedFile:
  """What a file is, from its first bytes or its DICOM header."""
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
  except OSError as e:
    return SkippedFile(path, f'cannot open file ({e.strerror})')
  if head.startswith(_IMAGE_MAGICS):
    return InputFile(path, is_dicom=False)
  try:
    ds = pydicom.dcmread(
        path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS)
    )
  except Exception:  # noqa: BLE001 - any header failure: not DICOM for us.
    return SkippedFile(path, 'not a DICOM, PNG or JPEG file')
  sop_class = ds.get('SOPClassUID', None)
  if sop_class is None or 'Image' not in getattr(sop_class, 'name', ''):
    name = getattr(sop_class, 'name', 'none')
    return SkippedFile(path, f'DICOM object is not an image (SOP class {name})')
  study = str(ds.get('StudyInstanceUID', '') or '')
  if not study or not ds.get('SOPInstanceUID', None):
    return SkippedFile(path, 'DICOM image without Study/SOP Instance UID')
  return InputFile(
      path,
      True,
      study,
      str(ds.get('SeriesInstanceUID', '') or ''),
      str(ds.SOPInstanceUID),
      str(sop_class),
  )


def group_key(item: InputFile, root: str, group_by: str) -> str:
  """The key of a file's case (module docstring)."""
  if item.is_dicom and group_by == 'study':
    return item.study_uid
  if item.is_dicom and group_by == 'series' and item.series_uid:
    return item.series_uid
  folder = os.path.dirname(os.path.abspath(item.path))
  base = os.path.abspath(root if os.path.isdir(root) else os.path.dirname(root))
  relative = os.path.relpath(folder, base)
  if relative == '.':
    relative = os.path.basename(base)
  return pathlib.PurePath(relative).as_posix()


def find_cases(
    paths: Sequence[str],
    *,
    group_by: str = 'study',
    salt: str | None = builder_config.DEFAULT_SALT,
    exclude: Sequence[str] = (),
) -> Inputs:
  """The cases under `paths` (module docstring); salt None: ids unhashed.

  Raises:
    console.UserError: a PATH does not exist, or an unknown group_by.
  """
  if group_by not in GROUP_BY:
    raise console.UserError(
        f'--group_by={group_by}: expected one of {", ".join(GROUP_BY)}.'
    )
  groups: dict[str, list[InputFile]] = {}
  skipped = []
  for root in paths:
    for path in walk_files(root, exclude):
      item = sniff(path)
      if isinstance(item, SkippedFile):
        skipped.append(item)
        continue
      groups.setdefault(group_key(item, root, group_by), []).append(item)
  cases = [
      InputCase(
          layouts.case_id_for(key, salt) if salt is not None else key,
          key,
          tuple(sorted(files, key=lambda f: f.path)),
      )
      for key, files in groups.items()
  ]
  return Inputs(tuple(sorted(cases, key=lambda c: c.case_id)), tuple(skipped))

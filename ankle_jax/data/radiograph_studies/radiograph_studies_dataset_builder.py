"""TFDS builder `radiograph_studies`: radiograph views with case-level splits,
in ArrayRecord.

Configs:
  dicom_cases (default): `<manual_dir>/{normal,fracture}/<case>/<files>`
    (docs/paper.md, section 4).
  mura:
    `<manual_dir>/[MURA-v1.1/]{train,valid}/XR_<PART>/patient<id>/study<k>_{positive,negative}/
    image<n>.png`; a study is a case; `body_parts` filters XR_<PART> folders.
  fracatlas: `<manual_dir>/images/{Fractured,Non_fractured}/*.jpg` +
    `dataset.csv`; each image is its own case; the folder is the label.

One example per view: image uint16 [S, S, 1] (= round(load_radiograph * 65535)),
label, case_id, view_index, num_views, view_position (+ the CSV flags for
fracatlas).

Privacy. `case_id` is `sha256(salt + ':' + case key)[:16]` (hex), where the case
key is the case folder path relative to manual_dir (dicom_cases, mura): folder
names in real exports often hold patient names or IDs, and a private salt stops
anyone re-deriving the hash from a guessed name. The salt defaults to
`DEFAULT_SALT`, which is public (it is in this file): building dicom_cases or
mura with it logs a warning and lists it first in the build report's warnings
(`BuildOptions.warn_default_salt=False` silences it for synthetic studies). Pass
your own salt for real data (build flags `--salt_file=PATH`, or `--salt`) and
keep it private. FracAtlas image ids (IMGnnnnnnn) are not patient identifiers,
so the fracatlas config stores the image id itself as case_id. Records, keys,
the build report and logs never hold a name, ID, UID, date or path: a skipped
file is reported by its case_id, its position among the case's files (sorted by
name), its file extension and the reason (with any path text removed).

Split rank. Cases are ranked by `sha256('split:' + sha256(DEFAULT_SALT + ':' +
case key)[:16])` (fracatlas: `sha256('split:' + image id)`): a hash of the case
key alone, computed here and never written out when a private salt is used. The
split therefore does not change with the salt, and a build with the default
salt ranks cases exactly as version 1.0.0 did.

Split units. Cases that must share a split form one unit: a MURA patient's
studies (mura), and near-duplicate views. Every view's stored image gets a
512-bit difference hash (`ankle_jax.data.near_duplicates`, after decoding);
views of different cases whose hashes differ in at most `near_duplicate_bits`
bits (default 32; -1 turns the check off) join their cases into one
near-duplicate group, which goes to one split whole, even if its cases'
labels disagree (the report says so). The cases keep their own case_ids (an
evaluation still counts them separately); they only share a split. A unit
ranks by its first-ranked case. The build report lists every near-duplicate
group: its cases (case_ids; image ids for fracatlas), the Hamming distances
that join them, labels and split.

Splits.
  dicom_cases: walking the units in rank order, a unit whose cases all have >=
    `min_eval_views` readable views goes to validation while validation still
    needs that many cases of each of its labels (`num_validation_per_label`
    per label), else to test likewise (`num_test_per_label`), else to train;
    every other unit goes to train. With no near-duplicates this is the first
    `num_validation_per_label` eligible cases of each label by rank in
    validation and the next `num_test_per_label` in test. Adding cases moves an
    existing case only when a new case outranks it.
  mura: MURA's own patient-disjoint split is kept: every study under `valid/`
    goes to test; the patients under `train/` are split into train and
    validation (per label, a unit's label being its highest: units are taken
    in rank order until validation holds round(validation_fraction * n) of the
    label's n studies). `num_validation_per_label`, `num_test_per_label` and
    `min_eval_views` are not used. A near-duplicate group that reaches a
    `valid/` study goes to test whole.
  fracatlas: per label, units in rank order go to validation until it holds
    round(validation_fraction * n) of the label's n images, the rest to train;
    no test split.
Any config: an optional `<manual_dir>/splits.csv` with columns
`case,split` (split in train/validation/test/exclude) overrides the assignment
of the cases it lists (`case` = the case folder as `normal/<case>` or `<case>`
for dicom_cases, the study path from `train/` or `valid/` for mura, the image id
with or without `.jpg` for fracatlas); the unlisted cases of a unit follow the
first listed case of it that is not excluded, and the other units are assigned
as above.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import re
import shutil
import tempfile
import time
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from ankle_jax import console
from ankle_jax.data import dicom
from ankle_jax.data import near_duplicates

DEFAULT_SALT = 'ankle_jax/radiograph_studies/v1'
LABEL_NAMES = ('normal', 'fracture')
SPLITS = ('train', 'validation', 'test')
REPORT_JSON = 'build_report.json'
REPORT_MD = 'build_report.md'
FRACATLAS_FLAGS = (
    'hand',
    'leg',
    'hip',
    'shoulder',
    'mixed',
    'hardware',
    'multiscan',
    'frontal',
    'lateral',
    'oblique',
)

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Place the radiographs in the manual directory (`--manual_dir`):

dicom_cases (default):  <manual_dir>/normal/<case>/<file>.dcm
                        <manual_dir>/fracture/<case>/<file>.dcm     one folder per case, 1..n views
mura:                   <manual_dir>/MURA-v1.1/{train,valid}/XR_<PART>/patient<id>/
                        study<k>_{positive,negative}/image<n>.png
fracatlas:              <manual_dir>/images/{Fractured,Non_fractured}/*.jpg and
                        <manual_dir>/dataset.csv

Optional for every config: <manual_dir>/splits.csv with columns case,split to override splits.
Build with: python -m ankle_jax.data.build --manual_dir=DIR --data_dir=DIR [--config=NAME]
"""


# The manual_dir layout of each config, in one line (for error messages).
LAYOUTS = {
    'dicom_cases': '<manual_dir>/{normal,fracture}/<case>/<file>.dcm',
    'mura': (
        '<manual_dir>/[MURA-v1.1/]{train,valid}/XR_<PART>/patient<id>/'
        'study<k>_{positive,negative}/image<n>.png'
    ),
    'fracatlas': (
        '<manual_dir>/images/{Fractured,Non_fractured}/*.jpg and '
        '<manual_dir>/dataset.csv'
    ),
}


class BuildError(console.UserError, RuntimeError):
  """The build cannot go on (strict mode, empty input, bad splits.csv...).

  A `console.UserError`: a command prints its message (1-3 lines) and exits 2.
  """


@dataclasses.dataclass(eq=False)
class RadiographStudiesConfig(tfds.core.BuilderConfig):
  """Builder config.

  Attributes:
    layout: 'dicom_cases', 'mura' or 'fracatlas' (which manual_dir layout to
      read).
    image_size: side of the stored square image.
    salt: salt of the case_id hash (not used by fracatlas, whose ids are not
      identifying). Keep a real dataset's salt private; it does not change the
      split.
    num_validation_per_label: dicom_cases: validation cases per label.
    num_test_per_label: dicom_cases: test cases per label.
    min_eval_views: dicom_cases: validation/test cases need at least this many
      readable views.
    validation_fraction: fracatlas: fraction of each label's images in
      validation; mura: fraction of each label's `train/` studies (whole
      patients) in validation.
    body_parts: mura: XR_<PART> folder names (or PART) to keep; fracatlas: CSV
      body-part columns of which at least one must be 1 (e.g. ('leg',)); empty
      keeps everything.
    include_hardware: fracatlas: keep images whose CSV `hardware` flag is 1.
    include_multiscan: fracatlas: keep images whose CSV `multiscan` flag is 1.
    near_duplicate_bits: views of different cases whose 512-bit difference
      hashes differ in at most this many bits share a split (-1: no check;
      see `ankle_jax.data.near_duplicates` for how 32 was chosen).
  """

  layout: str = 'dicom_cases'
  image_size: int = 300
  salt: str = DEFAULT_SALT
  num_validation_per_label: int = 20
  num_test_per_label: int = 20
  min_eval_views: int = 3
  validation_fraction: float = 0.2
  body_parts: tuple[str, ...] = ()
  include_hardware: bool = True
  include_multiscan: bool = True
  near_duplicate_bits: int = near_duplicates.DEFAULT_MAX_BITS


@dataclasses.dataclass
class BuildOptions:
  """How to build (not what): parallelism, strictness, console output.

  warn_default_salt: warn when dicom_cases or mura are built with the public
  `DEFAULT_SALT` (turned off for synthetic studies, which carry no real names).
  """

  num_workers: int = 0  # 0 = os.cpu_count(); 1 = decode in this process.
  strict: bool = False
  progress: bool = True
  warn_default_salt: bool = True


@dataclasses.dataclass
class _Case:
  """One case while building. key, rank and unit are never stored."""

  key: str  # the case as the user knows it (relative folder path / image id).
  aliases: tuple[str, ...]
  label: int
  files: list[pathlib.Path]
  case_id: str
  view_features: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  views: list[tuple[int, str, dict[str, Any]]] = dataclasses.field(
      default_factory=list
  )
  rank: str = ''  # '' = split_rank(key).
  unit: str = ''  # cases with one unit share a split ('' = the key).
  official_split: str = ''  # mura: 'test' for the studies under valid/.

  def __post_init__(self):
    self.rank = self.rank or split_rank(self.key)
    self.unit = self.unit or self.key


def case_id_for(key: str, salt: str = DEFAULT_SALT) -> str:
  """The salted hash that names a case: sha256(salt + ':' + key), first 16 hex digits."""
  return hashlib.sha256(f'{salt}:{key}'.encode()).hexdigest()[:16]


def split_rank(key: str) -> str:
  """The rank of a case (dicom_cases, mura) in split assignment: a hash of its
  key that no salt changes (see the module docstring)."""
  return _rank(case_id_for(key, DEFAULT_SALT))


def _rank(text: str) -> str:
  return hashlib.sha256(f'split:{text}'.encode()).hexdigest()


def _decode_job(path: str, image_size: int) -> tuple[bool, Any, Any]:
  """Worker: decodes one file -> (ok, uint16 [S, S, 1] or reason, RadiographInfo or None)."""
  try:
    image, info = dicom.load_radiograph_with_info(path, image_size)
  except dicom.DicomReadError as e:
    return False, e.reason, None
  except Exception as e:  # never crash a build on one file
    return False, f'unexpected {type(e).__name__}: {e}', None
  return True, np.round(image * 65535.0).astype(np.uint16), info


def _sanitize(reason: str, path: pathlib.Path, manual_dir: pathlib.Path) -> str:
  """Removes any path text (and path components, which may be names) from a reason."""
  parts = [str(path), str(path.resolve())] + list(
      path.relative_to(manual_dir).parts
  )
  for part in sorted(set(parts), key=len, reverse=True):
    if len(part) >= 3:
      reason = reason.replace(part, '<path>')
  return reason


class Builder(tfds.core.GeneratorBasedBuilder):
  """Radiograph views with case-level splits (see the module docstring)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release: dicom_cases, mura, fracatlas.',
      '1.1.0': (
          'Near-duplicate views (512-bit dHash) share a split; mura keeps its '
          'official patient-disjoint split (valid -> test, train split by '
          'patient); the split rank no longer depends on the salt. Records '
          'are unchanged.'
      ),
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      RadiographStudiesConfig(
          name='dicom_cases',
          layout='dicom_cases',
          description='One folder per case: {normal,fracture}/<case>/<files>.',
      ),
      RadiographStudiesConfig(
          name='mura',
          layout='mura',
          description='MURA-v1.1 layout; a study is a case.',
      ),
      RadiographStudiesConfig(
          name='fracatlas',
          layout='fracatlas',
          description='FracAtlas layout; each image is its own case.',
      ),
  ]
  DEFAULT_CONFIG_NAME = 'dicom_cases'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. (TFDS's default needs the `importlib_resources` backport, absent here.)"""
    return epath.Path(__file__)

  def __init__(
      self, *args, build_options: BuildOptions | None = None, **kwargs
  ):
    super().__init__(*args, **kwargs)
    self.build_options = build_options or BuildOptions()
    self.build_report: dict[str, Any] | None = None
    self._tmp_dir: str | None = None

  def _create_builder_config(self, builder_config, version):
    """Accepts a RadiographStudiesConfig that reuses a registered name with
    other options.

    Build options (split counts, filters, salt, image size) do not change the
    layout of the records, so `build.py` builds them under the registered config
    name (so that readers find the data at radiograph_studies/<config>/); the
    options used are listed in the build report.
    """
    if isinstance(builder_config, RadiographStudiesConfig):
      return builder_config
    return super()._create_builder_config(builder_config, version)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    features = {
        'image': tfds.features.Tensor(
            shape=(cfg.image_size, cfg.image_size, 1),
            dtype=np.uint16,
            encoding=tfds.features.Encoding.ZLIB,
        ),
        'label': tfds.features.ClassLabel(names=list(LABEL_NAMES)),
        'case_id': tfds.features.Text(),
        'view_index': tfds.features.Scalar(dtype=np.int32),
        'num_views': tfds.features.Scalar(dtype=np.int32),
        'view_position': tfds.features.Text(),
    }
    if cfg.layout == 'fracatlas':
      for flag in FRACATLAS_FLAGS:
        features[flag] = tfds.features.Scalar(
            dtype=np.int32, doc=f'dataset.csv `{flag}` (-1 if no CSV row)'
        )
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/',
    )

  # The command prints its own lines (ankle_jax.data.prepare): not TFDS's
  # "Downloading and preparing dataset Unknown size ..." and "... downloaded
  # and prepared" (nothing is downloaded).
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  # ---------------------------------------------------------------- building
  def _download_and_prepare(self, dl_manager, download_config=None):
    start = time.time()
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      if self._tmp_dir:
        shutil.rmtree(self._tmp_dir, ignore_errors=True)
        self._tmp_dir = None
    if self.build_report is not None:
      self.build_report['seconds'] = round(time.time() - start, 2)
      views = self.build_report['decoded_views'] + len(
          self.build_report['skipped_files']
      )
      self.build_report['views_per_second'] = round(
          views / max(1e-9, time.time() - start), 2
      )
      write_report(self.build_report, pathlib.Path(self.data_dir))

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    if not manual_dir.is_dir():
      raise BuildError(
          f'manual_dir {manual_dir} is not a directory.\n'
          f'Expected layout ({cfg.name}): {LAYOUTS[cfg.layout]}'
      )
    report = _new_report(cfg, str(self.VERSION))
    self.build_report = report
    self._warn_default_salt(report)
    cases = {
        'dicom_cases': _find_dicom_cases,
        'mura': _find_mura_cases,
        'fracatlas': _find_fracatlas_cases,
    }[cfg.layout](manual_dir, cfg, report)
    if not cases:
      raise BuildError(
          f'no cases found under manual_dir {manual_dir} for layout '
          f"'{cfg.layout}'.\nExpected layout: {LAYOUTS[cfg.layout]}"
      )
    images = self._decode_all(cases, manual_dir, report)
    cases = [c for c in cases if c.views]
    links = _near_duplicate_links(cases, images, cfg, report)
    assignment = _assign_splits(cases, cfg, manual_dir, report, links)
    _count(report, cases, assignment)
    generators = {}
    for split in SPLITS:
      members = [c for c in cases if assignment[c.case_id] == split]
      if members:
        generators[split] = self._generate_examples(members, images)
    return generators

  def _warn_default_salt(self, report: dict[str, Any]) -> None:
    """Logs, and lists first among the report's warnings, a build of real
    dicom_cases/mura data with the public default salt."""
    cfg = self.builder_config
    if (
        cfg.layout == 'fracatlas'
        or cfg.salt != DEFAULT_SALT
        or not self.build_options.warn_default_salt
    ):
      return
    message = (
        'case_ids use the public default salt: anyone who guesses a case '
        'folder name (often a patient name) can recompute them; rebuild with '
        '--salt_file=PATH (a private salt, kept outside data_dir)'
    )
    logging.warning('%s', message)
    report['warnings'].insert(0, message)

  def _decode_all(self, cases: list[_Case], manual_dir, report) -> np.ndarray:
    """Decodes every file in parallel into a disk-backed uint16 array (bounded memory)."""
    size = self.builder_config.image_size
    jobs = [(c, k, f) for c in cases for k, f in enumerate(c.files)]
    self._tmp_dir = tempfile.mkdtemp(prefix='radiograph_studies_')
    images = np.lib.format.open_memmap(
        os.path.join(self._tmp_dir, 'images.npy'),
        mode='w+',
        dtype=np.uint16,
        shape=(max(1, len(jobs)), size, size, 1),
    )
    opts = self.build_options
    workers = opts.num_workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(jobs) // 8 or 1))
    paths = [str(f) for _, _, f in jobs]
    if workers == 1:
      results = (_decode_job(p, size) for p in paths)
      executor = None
    else:
      executor = concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context('spawn')
      )
      results = executor.map(
          _decode_job,
          paths,
          [size] * len(paths),
          chunksize=max(1, min(16, len(paths) // (4 * workers))),
      )
    try:
      bar = tqdm.tqdm(
          results,
          total=len(jobs),
          desc=f'decoding ({workers} processes)',
          unit='view',
          disable=not opts.progress,
      )
      for row, ((case, k, path), (ok, value, info)) in enumerate(
          zip(jobs, bar)
      ):
        if not ok:
          reason = _sanitize(value, path, manual_dir)
          entry = {
              'case_id': case.case_id,
              'file_index': k,
              'extension': path.suffix.lower()[:8],
              'reason': reason,
          }
          if opts.strict:
            raise BuildError(
                f'--strict: file {k} (sorted by name) of case {case.case_id} '
                f'could not be read: {reason}'
            )
          logging.warning(
              'skipping file %d of case %s: %s', k, case.case_id, reason
          )
          report['skipped_files'].append(entry)
          continue
        images[row] = value
        if info.truncated:
          report['truncated_images'].append(case.case_id)
        report['rgb_converted'] += int(info.converted_from_rgb)
        features = dict(case.view_features[k]) if case.view_features else {}
        view_position = (
            features.pop('view_position', None) or info.view_position
        )
        case.views.append((row, view_position, features))
    finally:
      if executor is not None:
        executor.shutdown(cancel_futures=True)
    report['decoded_views'] = sum(len(c.views) for c in cases)
    report['skipped_cases'] = sum(1 for c in cases if not c.views)
    images.flush()
    return images

  def _generate_examples(
      self, cases: list[_Case], images: np.ndarray
  ) -> Iterator:
    for case in cases:
      for view_index, (row, view_position, features) in enumerate(case.views):
        example = {
            'image': np.asarray(images[row]),
            'label': case.label,
            'case_id': case.case_id,
            'view_index': view_index,
            'num_views': len(case.views),
            'view_position': view_position or '',
        }
        example.update(features)
        yield f'{case.case_id}_{view_index}', example


def _new_report(cfg: RadiographStudiesConfig, version: str) -> dict[str, Any]:
  """The build report before anything is read."""
  options = (
      'num_validation_per_label',
      'num_test_per_label',
      'min_eval_views',
      'validation_fraction',
      'body_parts',
      'include_hardware',
      'include_multiscan',
      'near_duplicate_bits',
  )
  return {
      'dataset': f'radiograph_studies/{cfg.name}',
      'version': version,
      'layout': cfg.layout,
      'image_size': cfg.image_size,
      'salt': 'default' if cfg.salt == DEFAULT_SALT else 'custom',
      'options': {k: getattr(cfg, k) for k in options},
      'skipped_files': [],
      'skipped_cases': 0,
      'truncated_images': [],
      'rgb_converted': 0,
      'filtered_out': {},
      'csv_label_disagreements': [],
      'csv_missing_rows': 0,
      'splits_csv': None,
      'near_duplicates': None,
      'warnings': [],
  }


# ---------------------------------------------------------------- layouts
def _sorted_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(
      p
      for p in folder.rglob('*')
      if p.is_file()
      and not p.name.startswith('.')
      and p.name.upper() != 'DICOMDIR'
  )


def _find_dicom_cases(manual_dir, cfg, report) -> list[_Case]:
  cases = []
  for label, name in enumerate(LABEL_NAMES):
    label_dir = manual_dir / name
    if not label_dir.is_dir():
      report['warnings'].append(f"no '{name}' folder in manual_dir")
      continue
    for case_dir in sorted(p for p in label_dir.iterdir() if p.is_dir()):
      files = _sorted_files(case_dir)
      if not files:
        continue
      key = f'{name}/{case_dir.name}'
      cases.append(
          _Case(
              key,
              (key, case_dir.name),
              label,
              files,
              case_id_for(key, cfg.salt),
          )
      )
  return cases


_MURA_STUDY = re.compile(r'^study\d+_(positive|negative)$')


def _find_mura_cases(manual_dir, cfg, report) -> list[_Case]:
  root = (
      manual_dir / 'MURA-v1.1'
      if (manual_dir / 'MURA-v1.1').is_dir()
      else manual_dir
  )
  wanted = {
      p.upper() if p.upper().startswith('XR_') else f'XR_{p.upper()}'
      for p in cfg.body_parts
  }
  cases, filtered = [], 0
  for part_split in ('train', 'valid'):
    for part_dir in sorted((root / part_split).glob('XR_*')):
      if wanted and part_dir.name.upper() not in wanted:
        filtered += sum(1 for _ in part_dir.glob('*/*'))
        continue
      for study_dir in sorted(part_dir.glob('patient*/study*')):
        match = _MURA_STUDY.match(study_dir.name)
        if not match or not study_dir.is_dir():
          continue
        files = [
            p
            for p in _sorted_files(study_dir)
            if p.suffix.lower() in ('.png', '.jpg', '.jpeg')
        ]
        if not files:
          continue
        key = study_dir.relative_to(root).as_posix()
        label = 1 if match.group(1) == 'positive' else 0
        cases.append(
            _Case(
                key,
                (key, f'MURA-v1.1/{key}'),
                label,
                files,
                case_id_for(key, cfg.salt),
                # A patient id is one person across body parts: the patient,
                # not the study, is the split unit.
                unit=f'{part_split}/{study_dir.parent.name}',
                official_split='test' if part_split == 'valid' else '',
            )
        )
  report['filtered_out']['body_part_studies'] = filtered
  return cases


def _find_fracatlas_cases(manual_dir, cfg, report) -> list[_Case]:
  rows = {}
  csv_path = manual_dir / 'dataset.csv'
  if csv_path.is_file():
    with open(csv_path, newline='') as f:
      for row in csv.DictReader(f):
        rows[pathlib.Path(row['image_id']).stem] = row
  else:
    report['warnings'].append('no dataset.csv: CSV flags are -1')
  cases, filtered = [], {'body_part': 0, 'hardware': 0, 'multiscan': 0}
  for label, folder in ((0, 'Non_fractured'), (1, 'Fractured')):
    for path in sorted((manual_dir / 'images' / folder).glob('*')):
      if path.suffix.lower() not in (
          '.jpg',
          '.jpeg',
          '.png',
      ) or path.name.startswith('.'):
        continue
      image_id = path.stem
      row = rows.get(image_id)
      flags = {
          k: _int_or(row.get(k) if row else None, -1) for k in FRACATLAS_FLAGS
      }
      if row is None:
        report['csv_missing_rows'] += 1
      elif _int_or(row.get('fractured'), label) != label:
        report['csv_label_disagreements'].append(image_id)
      if cfg.body_parts and not any(flags.get(p) == 1 for p in cfg.body_parts):
        filtered['body_part'] += 1
        continue
      if not cfg.include_hardware and flags['hardware'] == 1:
        filtered['hardware'] += 1
        continue
      if not cfg.include_multiscan and flags['multiscan'] == 1:
        filtered['multiscan'] += 1
        continue
      views = '+'.join(
          v for v in ('frontal', 'lateral', 'oblique') if flags[v] == 1
      )
      # FracAtlas image ids are not patient identifiers: the id itself is the
      # case_id.
      cases.append(
          _Case(
              image_id,
              (image_id, path.name),
              label,
              [path],
              image_id,
              [dict(flags, view_position=views)],
              rank=_rank(image_id),
          )
      )
  report['filtered_out'] = filtered
  return cases


def _int_or(value, default: int) -> int:
  try:
    return int(float(value))
  except (TypeError, ValueError):
    return default


# ---------------------------------------------------------------- splits
def read_splits_csv(path: pathlib.Path) -> dict[str, str]:
  """Reads `case,split` rows; raises BuildError naming the row for an unknown split."""
  overrides = {}
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or {'case', 'split'} - set(reader.fieldnames):
      raise BuildError(
          f"{path}: expected columns 'case,split', got {reader.fieldnames}"
      )
    for line, row in enumerate(reader, start=2):
      split = (row['split'] or '').strip().lower()
      if split not in SPLITS + ('exclude',):
        raise BuildError(
            f'{path} line {line}: split must be one of '
            f"{SPLITS + ('exclude',)}, got {row['split']!r}"
        )
      overrides[(row['case'] or '').strip().strip('/')] = split
  return overrides


def _near_duplicate_links(cases, images, cfg, report) -> np.ndarray:
  """Index pairs (i, j) of cases with near-duplicate views: int [L, 2].

  Hashes every view's stored image (module docstring, split units) and lists
  the groups of cases they join in report['near_duplicates'] (their split is
  added by `_count`).
  """
  views = [
      (k, v, row)
      for k, c in enumerate(cases)
      for v, (row, _, _) in enumerate(c.views)
  ]
  hashes = np.zeros((len(views), near_duplicates.HASH_BITS // 8), np.uint8)
  for n, (_, _, row) in enumerate(views):
    hashes[n] = near_duplicates.difference_hash(images[row])
  pairs = near_duplicates.near_duplicate_pairs(hashes, cfg.near_duplicate_bits)
  case_of = np.array([k for k, _, _ in views] or [0], np.int64)
  pairs = pairs[case_of[pairs[:, 0]] != case_of[pairs[:, 1]]]
  links = case_of[pairs[:, :2]]
  groups = _near_duplicate_groups(cases, views, pairs, links)
  sizes = collections.Counter(str(len(g['cases'])) for g in groups)
  report['near_duplicates'] = {
      'hash_bits': near_duplicates.HASH_BITS,
      'max_bits': cfg.near_duplicate_bits,
      'count': len(groups),
      'cases_in_groups': sum(len(g['cases']) for g in groups),
      'sizes': dict(sorted(sizes.items(), key=lambda item: int(item[0]))),
      'mixed_label_groups': sum(g['mixed_labels'] for g in groups),
      'groups': groups,
  }
  return links


def _near_duplicate_groups(cases, views, pairs, links) -> list[dict[str, Any]]:
  """The report's entries of the groups of cases that near-duplicate views
  join (connected components of links), sorted by their cases' ids.

  views: (case index, view index, image row) per hashed view; pairs: int [P, 3]
  (view i, view j, bits); links: int [P, 2], the cases of those views.
  """
  component = near_duplicates.group_labels(len(cases), links)
  members: dict[int, set[int]] = {}
  found: dict[int, list[list[Any]]] = {}
  for (a, b, bits), (i, j) in zip(pairs.tolist(), links.tolist()):
    members.setdefault(component[i], set()).update((i, j))
    found.setdefault(component[i], []).append(
        [cases[i].case_id, views[a][1], cases[j].case_id, views[b][1], bits]
    )
  groups = []
  for key, indices in members.items():
    group = sorted((cases[k] for k in indices), key=lambda c: c.case_id)
    groups.append(
        {
            'cases': [c.case_id for c in group],
            'labels': [LABEL_NAMES[c.label] for c in group],
            'mixed_labels': len({c.label for c in group}) > 1,
            'num_pairs': len(found[key]),
            'pairs': sorted(found[key], key=lambda p: p[-1])[:_MAX_PAIRS],
        }
    )
  return sorted(groups, key=lambda g: g['cases'])


# The near-duplicate pairs listed per group (the closest first).
_MAX_PAIRS = 20


def _split_units(cases: list[_Case], links: np.ndarray) -> list[list[_Case]]:
  """The cases grouped by unit and near-duplicate links, each unit sorted by
  rank; units sorted by their first-ranked case."""
  first_of_unit: dict[str, int] = {}
  edges = [np.asarray(links, np.int64).reshape(-1, 2)]
  for k, case in enumerate(cases):
    edges.append(np.array([[first_of_unit.setdefault(case.unit, k), k]]))
  component = near_duplicates.group_labels(len(cases), np.concatenate(edges))
  units: dict[int, list[_Case]] = {}
  for k, case in enumerate(cases):
    units.setdefault(int(component[k]), []).append(case)
  ranked = [sorted(u, key=lambda c: c.rank) for u in units.values()]
  return sorted(ranked, key=lambda u: u[0].rank)


def _assign_splits(
    cases, cfg, manual_dir, report, links: np.ndarray | None = None
) -> dict[str, str]:
  """case_id -> split name (see the module docstring).

  Args:
    cases: the cases with readable views.
    cfg: the builder config.
    manual_dir: where splits.csv may be.
    report: the build report (splits_csv and warnings are filled in).
    links: int [L, 2], index pairs of cases that must share a split (None:
      none).
  """
  assignment = _splits_csv_assignment(cases, manual_dir, report)
  pending, torn = [], 0
  links = np.zeros((0, 2), np.int64) if links is None else links
  for unit in _split_units(cases, links):
    fixed = [assignment[c.case_id] for c in unit if c.case_id in assignment]
    fixed = [s for s in fixed if s != 'exclude']
    torn += len(set(fixed)) > 1
    fixed += [c.official_split for c in unit if c.official_split]
    free = [c for c in unit if c.case_id not in assignment]
    if fixed:
      assignment.update((c.case_id, fixed[0]) for c in free)
    elif free:
      pending.append(free)
  if torn:
    report['warnings'].append(
        f'splits.csv puts the cases of {torn} split unit(s) (one patient, or '
        'near-duplicates) into different splits'
    )
  if cfg.layout == 'dicom_cases':
    _assign_by_count(pending, cfg, assignment, report)
  else:
    _assign_by_fraction(pending, cfg.validation_fraction, assignment)
  return assignment


def _splits_csv_assignment(cases, manual_dir, report) -> dict[str, str]:
  """case_id -> split of the cases listed in <manual_dir>/splits.csv."""
  assignment: dict[str, str] = {}
  splits_csv = manual_dir / 'splits.csv'
  if not splits_csv.is_file():
    return assignment
  overrides = read_splits_csv(splits_csv)
  matched = set()
  for case in cases:
    for alias in case.aliases:
      if alias in overrides:
        assignment[case.case_id] = overrides[alias]
        matched.add(alias)
        break
  report['splits_csv'] = {
      'rows': len(overrides),
      'matched_cases': len(assignment),
      'unmatched_rows': len(set(overrides) - matched),
  }
  return assignment


def _assign_by_count(units, cfg, assignment, report) -> None:
  """dicom_cases: fixed numbers of validation and test cases per label."""
  wanted = {
      'validation': cfg.num_validation_per_label,
      'test': cfg.num_test_per_label,
  }
  need = {(s, label): n for s, n in wanted.items() for label in (0, 1)}
  eligible = [0, 0]
  for unit in units:
    counts = collections.Counter(c.label for c in unit)
    split = 'train'
    if all(len(c.views) >= cfg.min_eval_views for c in unit):
      for label, n in counts.items():
        eligible[label] += n
      split = next(
          (
              s
              for s in wanted
              if all(n <= need[s, label] for label, n in counts.items())
          ),
          'train',
      )
    if split != 'train':
      for label, n in counts.items():
        need[split, label] -= n
    assignment.update((c.case_id, split) for c in unit)
  total = sum(wanted.values())
  for label, name in enumerate(LABEL_NAMES):
    if eligible[label] < total:
      report['warnings'].append(
          f'only {eligible[label]} {name} cases have >= '
          f'{cfg.min_eval_views} views; {total} wanted for validation + test'
      )


def _assign_by_fraction(units, fraction, assignment) -> None:
  """mura, fracatlas: per label (a unit's highest), units in rank order go to
  validation until it holds round(fraction * n) of the label's n cases."""
  for label in (0, 1):
    members = [u for u in units if max(c.label for c in u) == label]
    target = int(round(fraction * sum(len(u) for u in members)))
    taken = 0
    for unit in members:
      split = 'validation' if taken < target else 'train'
      taken += len(unit) * (split == 'validation')
      assignment.update((c.case_id, split) for c in unit)


def _count(report, cases, assignment) -> None:
  counts = {
      s: {n: {'cases': 0, 'views': 0} for n in LABEL_NAMES}
      for s in SPLITS + ('exclude',)
  }
  for case in cases:
    entry = counts[assignment[case.case_id]][LABEL_NAMES[case.label]]
    entry['cases'] += 1
    entry['views'] += len(case.views)
  if not any(v['cases'] for v in counts['exclude'].values()):
    del counts['exclude']
  report['counts'] = counts
  near = report.get('near_duplicates')
  for group in (near or {}).get('groups', []):
    group['splits'] = sorted({assignment[c] for c in group['cases']})
  if near and near['mixed_label_groups']:
    report['warnings'].append(
        f"{near['mixed_label_groups']} near-duplicate group(s) mix labels "
        '(each kept in one split; see the build report)'
    )
  report['truncated_count'] = len(report['truncated_images'])
  report['csv_label_disagreement_count'] = len(
      report['csv_label_disagreements']
  )
  if (
      report['layout'] != 'fracatlas'
  ):  # hashed ids only mean something to the builder
    report['truncated_images'] = sorted(report['truncated_images'])


def write_report(report: dict[str, Any], out_dir: pathlib.Path) -> None:
  """Writes build_report.json and a short build_report.md into `out_dir`."""
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / REPORT_JSON).write_text(
      json.dumps(report, indent=1, sort_keys=True)
  )
  lines = [
      f"# Build report: {report['dataset']} {report['version']}",
      '',
      '| split | label | cases | views |',
      '|---|---|---|---|',
  ]
  for split, by_label in report.get('counts', {}).items():
    for label, c in by_label.items():
      lines.append(f"| {split} | {label} | {c['cases']} | {c['views']} |")
  lines += [
      '',
      f"Decoded views: {report.get('decoded_views', 0)}; skipped files: "
      f"{len(report['skipped_files'])}; cases with no readable view: "
      f"{report['skipped_cases']}; truncated images read: {report['truncated_count']}; "
      f"RGB converted: {report['rgb_converted']}; CSV label disagreements: "
      f"{report['csv_label_disagreement_count']}.",
  ]
  if report['skipped_files']:
    lines += [
        '',
        '## Skipped files (case_id, file index in the case sorted by name, reason)',
        '',
    ]
    lines += [
        f"- {s['case_id']} #{s['file_index']} ({s['extension']}): {s['reason']}"
        for s in report['skipped_files']
    ]
  lines += _near_duplicate_lines(report.get('near_duplicates'))
  if report['warnings']:
    lines += ['', '## Warnings', ''] + [f'- {w}' for w in report['warnings']]
  (out_dir / REPORT_MD).write_text('\n'.join(lines) + '\n')


def _near_duplicate_lines(near: dict[str, Any] | None) -> list[str]:
  """The build report's section on near-duplicate groups (markdown lines)."""
  if not near:
    return []
  if near['max_bits'] < 0:
    return ['', '## Near-duplicate groups', '', 'Not checked.']
  sizes = ', '.join(f'{size}: {n}' for size, n in near['sizes'].items())
  lines = [
      '',
      '## Near-duplicate groups',
      '',
      f"{near['count']} groups of cases whose views' {near['hash_bits']}-bit "
      f"difference hashes differ in <= {near['max_bits']} bits "
      f"({near['cases_in_groups']} cases; groups by size in cases: "
      f"{sizes or 'none'}; groups with mixed labels: "
      f"{near['mixed_label_groups']}). Each group shares one split.",
  ]
  if near['groups']:
    lines += [
        '',
        '| split | cases (label) | pairs: case#view ~ case#view (bits) |',
    ]
    lines.append('|---|---|---|')
  for group in near['groups']:
    members = ', '.join(
        f'{c} ({label})' for c, label in zip(group['cases'], group['labels'])
    )
    pairs = ', '.join(
        f'{a}#{va} ~ {b}#{vb} ({bits})' for a, va, b, vb, bits in group['pairs']
    )
    if group['num_pairs'] > len(group['pairs']):
      pairs += f", ... {group['num_pairs']} in all"
    split = '/'.join(group.get('splits', []))
    lines.append(f'| {split} | {members} | {pairs} |')
  return lines

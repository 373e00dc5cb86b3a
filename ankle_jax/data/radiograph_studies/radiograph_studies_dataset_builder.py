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
names in real exports often hold patient names or IDs, and the salt stops anyone
re-deriving the hash from a guessed name. The salt defaults to `DEFAULT_SALT`;
pass your own (build flag `--salt`) for real data and keep it private. FracAtlas
image ids (IMGnnnnnnn) are not patient identifiers, so the fracatlas config
stores the image id itself as case_id. Records, keys, the build report and logs
never hold a name, ID, UID,
date or path: a skipped file is reported by its case_id, its position among the
case's files (sorted by name), its file extension and the reason (with any path
text removed).

Splits (dicom_cases, mura): per label, the cases with >= `min_eval_views`
readable views are ranked by `sha256('split:' + case_id)`; the first
`num_validation_per_label` go to validation, the next `num_test_per_label` to
test, and every other case to train. Ranking by a hash keeps the
assignment deterministic and stable: adding cases moves an existing case only
  when a new case
outranks it. fracatlas: per label, the first round(validation_fraction * n)
cases by the same rank go to validation, the rest to train, and there is no test
split. Any config: an optional `<manual_dir>/splits.csv` with columns
`case,split` (split in train/validation/test/exclude) overrides the assignment
of the cases it lists (`case` = the case folder as `normal/<case>` or `<case>`
for dicom_cases, the study path from `train/` or `valid/` for mura, the image id
with or without `.jpg` for fracatlas); unlisted cases are assigned as above.
"""

from __future__ import annotations

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
      identifying).
    num_validation_per_label: validation cases per label (dicom_cases, mura).
    num_test_per_label: test cases per label (dicom_cases, mura).
    min_eval_views: validation/test cases need at least this many readable
      views.
    validation_fraction: fracatlas: fraction of each label's cases in
      validation.
    body_parts: mura: XR_<PART> folder names (or PART) to keep; fracatlas: CSV
      body-part columns of which at least one must be 1 (e.g. ('leg',)); empty
      keeps everything.
    include_hardware: fracatlas: keep images whose CSV `hardware` flag is 1.
    include_multiscan: fracatlas: keep images whose CSV `multiscan` flag is 1.
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


@dataclasses.dataclass
class BuildOptions:
  """How to build (not what): parallelism, strictness, console output."""

  num_workers: int = 0  # 0 = os.cpu_count(); 1 = decode in this process.
  strict: bool = False
  progress: bool = True


@dataclasses.dataclass
class _Case:
  key: str  # the case as the user knows it (relative folder path / image id): never stored.
  aliases: tuple[str, ...]
  label: int
  files: list[pathlib.Path]
  case_id: str
  view_features: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  views: list[tuple[int, str, dict[str, Any]]] = dataclasses.field(
      default_factory=list
  )


def case_id_for(key: str, salt: str = DEFAULT_SALT) -> str:
  """The salted hash that names a case: sha256(salt + ':' + key), first 16 hex digits."""
  return hashlib.sha256(f'{salt}:{key}'.encode()).hexdigest()[:16]


def _rank(case_id: str) -> str:
  return hashlib.sha256(f'split:{case_id}'.encode()).hexdigest()


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

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: dicom_cases, mura, fracatlas.'}
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
    report: dict[str, Any] = {
        'dataset': f'radiograph_studies/{cfg.name}',
        'version': str(self.VERSION),
        'layout': cfg.layout,
        'image_size': cfg.image_size,
        'salt': 'default' if cfg.salt == DEFAULT_SALT else 'custom',
        'options': {
            k: getattr(cfg, k)
            for k in (
                'num_validation_per_label',
                'num_test_per_label',
                'min_eval_views',
                'validation_fraction',
                'body_parts',
                'include_hardware',
                'include_multiscan',
            )
        },
        'skipped_files': [],
        'skipped_cases': 0,
        'truncated_images': [],
        'rgb_converted': 0,
        'filtered_out': {},
        'csv_label_disagreements': [],
        'csv_missing_rows': 0,
        'splits_csv': None,
        'warnings': [],
    }
    self.build_report = report
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
    assignment = _assign_splits(cases, cfg, manual_dir, report)
    _count(report, cases, assignment)
    generators = {}
    for split in SPLITS:
      members = [c for c in cases if assignment[c.case_id] == split]
      if members:
        generators[split] = self._generate_examples(members, images)
    return generators

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


def _assign_splits(cases, cfg, manual_dir, report) -> dict[str, str]:
  """case_id -> split name (see the module docstring)."""
  assignment: dict[str, str] = {}
  splits_csv = manual_dir / 'splits.csv'
  if splits_csv.is_file():
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
  free = [c for c in cases if c.case_id not in assignment]
  for label, name in enumerate(LABEL_NAMES):
    ranked = sorted(
        (c for c in free if c.label == label), key=lambda c: _rank(c.case_id)
    )
    if cfg.layout == 'fracatlas':
      num_val = int(round(cfg.validation_fraction * len(ranked)))
      for i, case in enumerate(ranked):
        assignment[case.case_id] = 'validation' if i < num_val else 'train'
      continue
    eligible = [c for c in ranked if len(c.views) >= cfg.min_eval_views]
    wanted = cfg.num_validation_per_label + cfg.num_test_per_label
    if len(eligible) < wanted:
      report['warnings'].append(
          f'only {len(eligible)} {name} cases have >= {cfg.min_eval_views} views; '
          f'{wanted} wanted for validation + test'
      )
    for i, case in enumerate(eligible):
      if i < cfg.num_validation_per_label:
        assignment[case.case_id] = 'validation'
      elif i < wanted:
        assignment[case.case_id] = 'test'
    for case in ranked:
      assignment.setdefault(case.case_id, 'train')
  return assignment


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
  if report['warnings']:
    lines += ['', '## Warnings', ''] + [f'- {w}' for w in report['warnings']]
  (out_dir / REPORT_MD).write_text('\n'.join(lines) + '\n')

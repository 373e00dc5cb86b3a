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
`DEFAULT_SALT`, which is public (it is in config.py): building dicom_cases or
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
512-bit difference hash (`ankle_jax.data.near_duplicates`, after decoding),
as stored and mirrored left-right; views of different cases whose hashes
(either one mirrored) differ in at most `near_duplicate_bits` bits (default 32; -1 turns the check off) join their cases into one
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

from collections.abc import Iterator
import logging
import pathlib
import shutil
import tempfile
import time

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ankle_jax.data.radiograph_studies import build_report
from ankle_jax.data.radiograph_studies import config
from ankle_jax.data.radiograph_studies import decoding
from ankle_jax.data.radiograph_studies import layouts
from ankle_jax.data.radiograph_studies import splits

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
      config.RadiographStudiesConfig(
          name='dicom_cases',
          layout='dicom_cases',
          description='One folder per case: {normal,fracture}/<case>/<files>.',
      ),
      config.RadiographStudiesConfig(
          name='mura',
          layout='mura',
          description='MURA-v1.1 layout; a study is a case.',
      ),
      config.RadiographStudiesConfig(
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
      self, *args, build_options: config.BuildOptions | None = None, **kwargs
  ):
    super().__init__(*args, **kwargs)
    self.build_options = build_options or config.BuildOptions()
    self.build_report: build_report.BuildReport | None = None
    self._tmp_dir: str | None = None

  def _create_builder_config(self, builder_config, version):
    """Accepts a RadiographStudiesConfig that reuses a registered name with
    other options.

    Build options (split counts, filters, salt, image size) do not change the
    layout of the records, so `build.py` builds them under the registered config
    name (so that readers find the data at radiograph_studies/<config>/); the
    options used are listed in the build report.
    """
    if isinstance(builder_config, config.RadiographStudiesConfig):
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
        'label': tfds.features.ClassLabel(names=list(config.LABEL_NAMES)),
        'case_id': tfds.features.Text(),
        'view_index': tfds.features.Scalar(dtype=np.int32),
        'num_views': tfds.features.Scalar(dtype=np.int32),
        'view_position': tfds.features.Text(),
    }
    if cfg.layout == 'fracatlas':
      for flag in config.FRACATLAS_FLAGS:
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
    report = self.build_report
    if report is not None:
      report.seconds = round(time.time() - start, 2)
      views = report.decoded_views + len(report.skipped_files)
      report.views_per_second = round(views / max(1e-9, time.time() - start), 2)
      report.write(pathlib.Path(self.data_dir))

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    if not manual_dir.is_dir():
      raise config.BuildError(
          f'manual_dir {manual_dir} is not a directory.\n'
          f'Expected layout ({cfg.name}): {config.LAYOUTS[cfg.layout]}'
      )
    report = build_report.BuildReport.new(cfg, str(self.VERSION))
    self.build_report = report
    self._warn_default_salt(report)
    cases = layouts.find_cases(manual_dir, cfg, report)
    if not cases:
      raise config.BuildError(
          f'no cases found under manual_dir {manual_dir} for layout '
          f"'{cfg.layout}'.\nExpected layout: {config.LAYOUTS[cfg.layout]}"
      )
    self._tmp_dir = tempfile.mkdtemp(prefix='radiograph_studies_')
    images = decoding.decode_all(
        cases,
        manual_dir,
        cfg.image_size,
        self.build_options,
        report,
        self._tmp_dir,
    )
    cases = [c for c in cases if c.views]
    links = splits.near_duplicate_links(
        cases, images, cfg.near_duplicate_bits, report
    )
    assignment = splits.assign_splits(cases, cfg, manual_dir, report, links)
    splits.record_splits(report, cases, assignment)
    generators = {}
    for split in config.SPLITS:
      members = [c for c in cases if assignment[c.case_id] == split]
      if members:
        generators[split] = self._generate_examples(members, images)
    return generators

  def _warn_default_salt(self, report: build_report.BuildReport) -> None:
    """Logs, and lists first among the report's warnings, a build of real
    dicom_cases/mura data with the public default salt."""
    cfg = self.builder_config
    if (
        cfg.layout == 'fracatlas'
        or cfg.salt != config.DEFAULT_SALT
        or not self.build_options.warn_default_salt
    ):
      return
    message = (
        'case_ids use the public default salt: anyone who guesses a case '
        'folder name (often a patient name) can recompute them; rebuild with '
        '--salt_file=PATH (a private salt, kept outside data_dir)'
    )
    logging.warning('%s', message)
    report.warnings.insert(0, message)

  def _generate_examples(
      self, cases: list[layouts.Case], images: np.ndarray
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

"""The `radiograph_studies` builder's config, build options, error and names.

Shared by the layouts, the split assignment, the build report and the builder
(`radiograph_studies_dataset_builder`, whose docstring describes the dataset).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from ankle_jax import console
from ankle_jax.data import near_duplicates

DEFAULT_SALT = 'ankle_jax/radiograph_studies/v1'
LABEL_NAMES = ('normal', 'fracture')
SPLITS = ('train', 'validation', 'test')
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

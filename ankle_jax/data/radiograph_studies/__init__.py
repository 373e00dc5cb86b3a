"""The `radiograph_studies` TFDS dataset (importing this registers the builder).

Modules: `config` (builder config, build options, names), `layouts` (the
manual_dir layouts), `decoding`, `splits` (split assignment), `build_report`
and `radiograph_studies_dataset_builder` (the TFDS builder).
"""

from ankle_jax.data.radiograph_studies import build_report as _build_report
from ankle_jax.data.radiograph_studies import config as _config
from ankle_jax.data.radiograph_studies import layouts as _layouts
from ankle_jax.data.radiograph_studies import (
    radiograph_studies_dataset_builder as _builder,
)

Builder = _builder.Builder
BuildError = _config.BuildError
BuildOptions = _config.BuildOptions
RadiographStudiesConfig = _config.RadiographStudiesConfig
case_id_for = _layouts.case_id_for
DEFAULT_SALT = _config.DEFAULT_SALT
FRACATLAS_FLAGS = _config.FRACATLAS_FLAGS
LABEL_NAMES = _config.LABEL_NAMES
LAYOUTS = _config.LAYOUTS
SPLITS = _config.SPLITS
REPORT_JSON = _build_report.REPORT_JSON
REPORT_MD = _build_report.REPORT_MD

"""The `radiograph_studies` TFDS dataset (importing this registers the builder)."""

from ankle_jax.data.radiograph_studies import (
    radiograph_studies_dataset_builder as _builder,
)

Builder = _builder.Builder
BuildError = _builder.BuildError
BuildOptions = _builder.BuildOptions
RadiographStudiesConfig = _builder.RadiographStudiesConfig
case_id_for = _builder.case_id_for
DEFAULT_SALT = _builder.DEFAULT_SALT
FRACATLAS_FLAGS = _builder.FRACATLAS_FLAGS
LABEL_NAMES = _builder.LABEL_NAMES
LAYOUTS = _builder.LAYOUTS
SPLITS = _builder.SPLITS
REPORT_JSON = _builder.REPORT_JSON
REPORT_MD = _builder.REPORT_MD

RadiographStudies = Builder

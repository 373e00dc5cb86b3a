"""Data: DICOM/PNG/JPEG reading (dicom), synthetic studies (synthetic), the TFDS
builder
(radiograph_studies, built with `python -m ankle_jax.data.build`) and grain
input pipelines (pipeline). Submodules are imported explicitly, so importing
this package stays cheap.
"""

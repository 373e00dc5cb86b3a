"""Batch prediction over folders of studies (`python -m ankle_jax.predict
--out=DIR`): inputs (finding and grouping files into cases), batch (every
case through the runs' vmapped forward), decision (calibration and operating
point of an evaluation), table (predictions.csv, errors.csv) and
dicom_out (Structured Reports, Secondary Captures, Parametric Maps)."""

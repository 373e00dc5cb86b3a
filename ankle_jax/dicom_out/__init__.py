"""DICOM objects that carry predictions back into the source study:
identity (UIDs, the run's date, the common modules), sr (one TID 1500
Structured Report per case) and sc (one Secondary Capture per view)."""

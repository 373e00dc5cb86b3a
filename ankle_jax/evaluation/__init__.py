"""Evaluation from predictions alone (numpy/scipy; no jax, matplotlib or
inference): predictions (SplitPredictions, the CSVs read back), voting,
metrics, results, calibration, subgroups, and evaluation.compute(), the one
frozen Evaluation with its one Headline."""

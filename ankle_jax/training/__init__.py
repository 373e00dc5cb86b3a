"""The parts of a training run; `ankle_jax.train.train_and_evaluate` holds the
loop over them.

config_checks  the config's fields, checked before any heavy work
state          TrainState, optimizer, learning-rate schedule, checkpoint glue
losses         cross-entropies, L2, the loss of a step (jax/optax only)
steps          train_step, eval_step and their jitted forms
validation     the one list of validation metrics and their modes; the
               gathered cross-process validation; best and early stopping
records        HParams, train records, console lines, preview images
inputs         the dataset, the train iterator, the step schedule
warm_start     a multi-view trunk and head from a per-view run

Functions here take plain arguments. The frozen settings (OptimizerSettings,
LossSettings, AugmentSettings, ViewSettings, Schedule, WarmStart) are made
from the config by their `from_config`, which only train.py calls;
config_checks reads the config to check it.
"""

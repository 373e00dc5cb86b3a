"""FracAtlas leg radiographs on 2 CPU cores: a small Xception drop/aux from scratch (issue 8).

Commands (from the repository root; ../shared/fracatlas_leg holds FracAtlas's own layout):
  python -m ankle_jax.data.build --config=fracatlas --manual_dir=../shared/fracatlas_leg \
      --data_dir=runs/fracatlas_data
  python launch.py --config=configs/fracatlas_cpu.py --workdir=runs/fracatlas_cpu
  python -m ankle_jax.evaluate --runs=runs/fracatlas_cpu --split=validation \
      --out=runs/fracatlas_cpu/eval

The build (~20 s on 2 cores) makes the default fracatlas splits: hash-based and stratified,
train 1,365 images (158 fractured) and validation 341 (39 fractured), no test split. To score a
separately delivered test set, build it with a splits.csv in its manual dir (case,split) into
another data dir and pass `--data_dir=DIR --split=test` to ankle_jax.evaluate.

Recipe: MEASURED_PLACEHOLDER
"""

import ml_collections

from configs import default


def get_config():
  """FracAtlas CPU recipe (Xception drop/aux, width 0.25, 128 px, balanced sampling)."""
  config = default.get_config()
  config.model.name = "xception"
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  config.model.width_multiplier = 0.25
  config.model.kwargs = ml_collections.ConfigDict({"valid_stem": False, "aux_block": 3})
  config.image_size = 128

  config.data.manual_dir = "../shared/fracatlas_leg"
  config.data.data_dir = "runs/fracatlas_data"
  config.data.dataset_config = "fracatlas"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  # Balanced sampling: fractured and normal images drawn equally often (train is 1 : 7.6).
  config.data.sample_weights_by_label = [1.0, 7.6]
  config.class_weights = None

  config.batch_size = 32
  config.eval_batch_size = 32
  config.learning_rate = 1e-3
  config.lr_schedule = "warmup_cosine"
  config.warmup_steps = 100
  config.l2_alpha = 1e-3
  config.l2_scope = "dense"
  config.aux_loss_weight = 0.4

  # Leg radiographs come in both left-right orientations; up-down flips are not realistic.
  config.augment.flip_lr = True
  config.augment.flip_ud = False
  config.augment.rotation_degrees = 10.0
  config.augment.brightness_delta = 0.1
  config.augment.contrast_lower = 0.8
  config.augment.contrast_upper = 1.2

  config.num_train_steps = 1500
  config.log_every_steps = 50
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 1
  config.image_summary_every_steps = 0
  config.best_metric = "val_auc"  # The checkpoint is chosen on validation ROC AUC only.
  config.early_stopping_patience = 0
  config.seed = 0
  return config

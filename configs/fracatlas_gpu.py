"""FracAtlas leg radiographs on one GPU: the paper's full-size Xception drop/aux
at 300x300 (issue 8).

NOT RUN: this session had no device time left, so nothing below has been
measured on a GPU; the schedule and its length are estimates, not results. The
recipe is the CPU recipe
(configs/fracatlas_cpu.py: class-weighted loss, warmup + cosine Adam,
flips/rotation/brightness/ contrast, checkpoint chosen on validation ROC AUC) at
the paper's size: width 1.0, 300 px.

Commands (from the repository root, on the GPU machine; ../shared/fracatlas_leg
holds FracAtlas's
own layout):
  python -m ankle_jax.data.build --config=fracatlas \
      --manual_dir=../shared/fracatlas_leg \
      --data_dir=runs/fracatlas_data
  python launch.py --config=configs/fracatlas_gpu.py \
      --workdir=runs/fracatlas_gpu
  python -m ankle_jax.evaluate --runs=runs/fracatlas_gpu --split=validation \
      --out=runs/fracatlas_gpu/eval

Other families of the paper, same recipe:
  python launch.py --config=configs/fracatlas_gpu.py \
      --workdir=runs/fracatlas_gpu_resnet \
      --config.model.name=resnet101_v2
  python launch.py --config=configs/fracatlas_gpu.py \
      --workdir=runs/fracatlas_gpu_inception \
      --config.model.name=inception_v3
(model.kwargs that a family does not take, e.g. aux_block, are dropped with a
warning.)

Expected cost (estimate, not measured): an H100 trains Xception drop/aux at ~750
images/s in bfloat16 (configs/default.py), so 6,000 steps of 32 (~140 epochs of
the 1,365 training images) take roughly 5 minutes of steps plus compilation and
60 validations. Record the card's name and the wall time with the result.
"""

import ml_collections

from configs import fracatlas_cpu


def get_config():
  """FracAtlas GPU recipe (Xception drop/aux, width 1.0, 300 px, bfloat16)."""
  config = fracatlas_cpu.get_config()
  config.model.name = 'xception'
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  config.model.width_multiplier = 1.0
  config.model.kwargs = ml_collections.ConfigDict(
      {'valid_stem': False, 'aux_block': 3}
  )
  # The paper's 300x300x1 = the stored size (no host resizing).
  config.image_size = 300
  config.dtype = 'bfloat16'  # Params and BatchNorm statistics stay float32.

  # The host loader, not the GPU, would otherwise set the pace.
  config.data.worker_count = 8

  config.batch_size = 32
  config.eval_batch_size = 32
  config.learning_rate = 3e-4
  config.lr_schedule = 'warmup_cosine'
  config.warmup_steps = 300

  config.num_train_steps = 6000
  config.log_every_steps = 50
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 1
  config.image_summary_every_steps = 1000
  config.best_metric = 'val_auc'
  return config

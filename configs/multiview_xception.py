"""The paper-size multi-view model: the full-width Xception drop/aux of
configs/xception_dropaux.py as a shared trunk over the 3 views of a case,
fused by gated attention (ankle_jax.models.multiview).

Run:
  python launch.py --config=configs/multiview_xception.py \
      --workdir=runs/multiview_xception \
      --config.data.manual_dir=/path/to/dicom_root
  python -m ankle_jax.evaluate --runs=runs/xception_dropaux,runs/multiview_xception \
      --split=test --out=runs/multiview_xception/eval

The trunk, 300 px input, Adam at a constant 6e-6, 2000 epochs, L2 and aux
loss are those of configs/xception_dropaux.py, and evaluation is the paper
configs' (the last checkpoint, the first 3 views of each case); the best
checkpoint is kept by validation case accuracy (best_metric). A batch is 7
cases of up to 3 views, 21 view slots through the trunk per step, next to the
paper's 20 views; an epoch is one pass over the training CASES, so 2000 epochs
are about a third of the per-view run's steps for the same data. Each view of
a training case is dropped with probability 0.2 (at least one kept). Nothing
here comes from the paper, which classified each view alone: this is the step
past it (README, "Multi-view models"); it has not been trained on real
radiographs yet.

Warm start (training.warm_start; advised: the multi-view demo learned from
scratch in only some seeds): train the per-view run first, then
  python launch.py --config=configs/multiview_xception.py \
      --workdir=runs/multiview_xception \
      --config.data.manual_dir=/path/to/dicom_root \
      --config.model.multiview.init_from=runs/xception_dropaux
It needs a per-view run of the same family, width and heads
(configs/xception_dropaux.py) on the same data split, with a 'best'
checkpoint (or --config.model.multiview.init_checkpoint=latest, the authors'
last step). Its trunk then learns at once (freeze_trunk_steps=0) at the
run's rate (trunk_lr_scale=1.0), both untuned here. This config trains no
per-view stage itself (per_view_steps=0): that stage is the paper's own run.
"""

from configs import xception_dropaux


def get_config():
  """Full-size multi-view Xception drop/aux (7 cases x 3 views, 300 px)."""
  config = xception_dropaux.get_config()
  config.model.multiview.enabled = True
  config.model.multiview.fusion = 'attention'
  config.model.multiview.max_views = 3
  config.model.multiview.view_dropout = 0.2
  config.model.multiview.view_loss_weight = 0.0
  # The case head's (the per-view recipe's val_accuracy scores views alone,
  # which a multi-view run refuses).
  config.best_metric = 'val_case_accuracy'
  config.batch_size = 7  # Cases.
  config.eval_batch_size = 7  # Cases.
  return config

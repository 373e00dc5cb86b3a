"""The demo's data and trunk as a multi-view model: every view of a case
read at once, fused by gated attention (ankle_jax.models.multiview), its
trunk and case head warm-started from a per-view run of the demo.

Run (both stages: the per-view demo in runs/mv/per_view, then the multi-view
model in runs/mv, each resumable):
  python launch.py --config=configs/multiview_demo.py --workdir=runs/mv
From a per-view demo run you already have (one stage):
  python launch.py --config=configs/multiview_demo.py --workdir=runs/mv \
      --config.model.multiview.init_from=runs/demo
From scratch (no warm start, one stage):
  python launch.py --config=configs/multiview_demo.py --workdir=runs/mv0 \
      --config.model.multiview.per_view_steps=0
Then:
  python -m ankle_jax.evaluate --runs=runs/mv/per_view,runs/mv --split=test \
      --out=runs/mv/eval

Everything but the model's input is configs/demo.py: the same 300 synthetic
cases (1-3 views each), the same quarter-width Xception drop/aux trunk at
128 px, Adam at 3e-3, validation every 50 steps, the best checkpoint by
validation case accuracy. Stage 1 is the per-view demo itself (400 steps of
16 views). The multi-view stage's budget is the demo's: a batch is 6 cases
padded to 3 view slots, 18 images through the trunk per step (padding
included), and 356 steps put 6,408 images through it, the demo's 400 x 16 =
6,400; so the warm-started model costs the two together. Warm-started, the
trunk is frozen for 100 steps (the fusion and case head learn; its
BatchNorm statistics stay the per-view run's), then learns at 0.1 x the
rate (training.warm_start). No view dropout (a fracture case that lost the
one view showing its fracture would carry a false label);
--config.model.multiview.view_dropout=0.2
--config.model.multiview.view_dropout_normal_only=True drops views from
normal cases only.

Other fusions: --config.model.multiview.fusion=mean (or max). A per-view
loss on top of the case loss: --config.model.multiview.view_loss_weight=0.5.
"""

from configs import demo


def get_config():
  """The demo as a multi-view model (6 cases x 3 views, 356 steps), after a
  per-view stage of the demo (16 views x 400 steps)."""
  config = demo.get_config()
  per_view_batch, per_view_eval_batch = (
      config.batch_size,
      config.eval_batch_size,
  )
  per_view_steps = config.num_train_steps
  config.model.multiview.enabled = True
  config.model.multiview.fusion = 'attention'
  config.model.multiview.max_views = 3
  config.model.multiview.view_dropout = 0.0
  config.model.multiview.view_loss_weight = 0.0
  config.model.multiview.per_view_steps = per_view_steps
  config.model.multiview.per_view_batch_size = per_view_batch
  config.model.multiview.per_view_eval_batch_size = per_view_eval_batch
  config.model.multiview.freeze_trunk_steps = 100
  config.model.multiview.trunk_lr_scale = 0.1
  config.best_metric = 'val_case_accuracy'  # The case head's (as the demo).
  config.batch_size = 6  # Cases.
  config.eval_batch_size = 8  # Cases: 24 view slots, as the demo's 24 views.
  config.num_train_steps = 356
  return config

"""The demo's data and trunk as a multi-view model: every view of a case
read at once, fused by gated attention (ankle_jax.models.multiview).

Run:
  python launch.py --config=configs/multiview_demo.py --workdir=runs/mv
  python -m ankle_jax.evaluate --runs=runs/demo,runs/mv --split=test \
      --out=runs/mv/eval

Everything but the model's input is configs/demo.py: the same 300 synthetic
cases (1-3 views each), the same quarter-width Xception drop/aux trunk at
128 px, Adam at 3e-3, validation every 50 steps, the best checkpoint by
validation case accuracy. The compute budget is the demo's: a batch is 6
cases padded to 3 view slots, 18 images through the trunk per step (padding
included), and 356 steps put 6,408 images through it, the demo's 400 x 16 =
6,400. Each view of a training case is dropped with probability 0.2 (at
least one kept), so the model also learns from cases with fewer views.

Other fusions: --config.model.multiview.fusion=mean (or max). A per-view
loss on top of the case loss: --config.model.multiview.view_loss_weight=0.5.
"""

from configs import demo


def get_config():
  """The demo as a multi-view model (6 cases x 3 views, 356 steps)."""
  config = demo.get_config()
  config.model.multiview.enabled = True
  config.model.multiview.fusion = 'attention'
  config.model.multiview.max_views = 3
  config.model.multiview.view_dropout = 0.2
  config.model.multiview.view_loss_weight = 0.0
  config.best_metric = 'val_case_accuracy'  # The case head's (as the demo).
  config.batch_size = 6  # Cases.
  config.eval_batch_size = 8  # Cases: 24 view slots, as the demo's 24 views.
  config.num_train_steps = 356
  return config

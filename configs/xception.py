"""Xception (paper Table 3, SAME stem), no dropout, no aux tower.

Run:
  python launch.py --config=configs/xception.py --workdir=runs/xception \
      --config.data.manual_dir=/path/to/dicom_root

Faithful to the authors' code (docs/paper.md, section 2):
batch 20, Adam at a constant 6e-6
(the authors used 4e-6 or 6e-6), 2000 epochs.

Evaluation as the authors' (the last checkpoint, the first 3 views of each
case) and the deviations (initialization): configs/default.py and
docs/paper.md, section 7.

L2 at initialization (l2_alpha=0.7 x sum(W^2)/2 over the dense kernels):
only the 2048x2 head, 0.7 x 1 = 0.7, next to a cross-entropy of ~0.69
(glorot_uniform: ~1.4; authors: ~10).
"""

import ml_collections

from configs import default


def get_config():
  """Xception config."""
  config = default.get_config()
  config.model.name = 'xception'
  config.model.aux_head = False
  config.model.dropout_rate = 0.0
  config.model.kwargs = ml_collections.ConfigDict({'valid_stem': False})
  config.batch_size = 20
  config.eval_batch_size = 20
  config.learning_rate = 6e-6
  config.eval_checkpoint = 'latest'
  config.data.max_eval_views = 3
  return config

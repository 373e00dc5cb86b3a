"""Inception V3 (paper Table 1) with its standard auxiliary tower and dropout
0.5.

Run:
  python launch.py --config=configs/inception_v3.py \
      --workdir=runs/inception_v3 \
      --config.data.manual_dir=/path/to/dicom_root

Faithful to the authors' code (docs/paper.md, section 2):
batch 30, Adam at a constant 6e-6,
2000 epochs. Inception V3 as published has both the aux tower and dropout before
the classifier.

Evaluation as the authors' (the last checkpoint, the first 3 views of each
case) and the deviations (initialization): configs/default.py and
docs/paper.md, section 7.

L2 at initialization (l2_alpha=0.7 x sum(W^2)/2 over the dense kernels): the
aux tower's 3200x700 kernel holds almost all of it, 0.7 x 350 = 245, plus
0.7 x 1 for its 700x2 kernel and 0.7 x 1 for the 2048x2 head: ~246 against a
cross-entropy of ~0.69 (glorot_uniform: ~405; authors: ~6,080). Its gradient
reaches only the dense kernels, which Adam shrinks by about the learning rate
per step: under 1 after ~7,000 steps at 6e-6 (configs/default.py).
"""

from configs import default


def get_config():
  """Inception V3 config."""
  config = default.get_config()
  config.model.name = 'inception_v3'
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  config.batch_size = 30
  config.eval_batch_size = 30
  config.learning_rate = 6e-6
  config.eval_checkpoint = 'latest'
  config.data.max_eval_views = 3
  return config

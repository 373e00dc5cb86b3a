"""Xception with dropout 0.5 and the auxiliary tower after middle-flow block 3
("drop/aux").

Run:
  python launch.py --config=configs/xception_dropaux.py \
      --workdir=runs/xception_dropaux \
      --config.data.manual_dir=/path/to/dicom_root

Faithful to the authors' code (docs/paper.md, section 2):
batch 20, Adam at a constant 6e-6 (4e-6 also used),
2000 epochs. The paper places the aux tower at the third middle-flow iteration
(aux_block=3); the authors' code used the fourth
(--config.model.kwargs.aux_block=4). Checkpoint, views per case and
initialization as in configs/xception.py.

L2 at initialization (l2_alpha=0.7 x sum(W^2)/2 over the dense kernels): the
aux tower's 3200x700 kernel holds almost all of it, 0.7 x 350 = 245, plus
0.7 x 1 for its 700x2 kernel and 0.7 x 1 for the 2048x2 head: ~246 against a
cross-entropy of ~0.69 (glorot_uniform: ~405; authors: ~6,080). Its gradient
reaches only the dense kernels, which Adam shrinks by about the learning rate
per step: under 1 after ~7,000 steps at 6e-6 (configs/default.py).
"""

import ml_collections

from configs import xception


def get_config():
  """Xception drop/aux config."""
  config = xception.get_config()
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  config.model.kwargs = ml_collections.ConfigDict(
      {'valid_stem': False, 'aux_block': 3}
  )
  return config

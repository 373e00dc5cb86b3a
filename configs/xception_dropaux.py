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

L2 at initialization: ~246 (0.7 x 350 from the aux tower's 3200x700 kernel)
against a cross-entropy of ~0.69; the breakdown and how fast Adam shrinks it:
configs/default.py.
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

"""ResNet-101 v2 with dropout 0.5 and the auxiliary tower on the first conv4
unit ("drop/aux").

Run:
  python launch.py --config=configs/resnet_dropaux.py \
      --workdir=runs/resnet_dropaux \
      --config.data.manual_dir=/path/to/dicom_root

Faithful to the authors' code (docs/paper.md, section 2):
batch 12, Adam at a constant ~6e-6,
2000 epochs. Checkpoint, views per case and initialization as in
configs/resnet.py.

L2 at initialization: ~246 (0.7 x 350 from the aux tower's 3200x700 kernel)
against a cross-entropy of ~0.69; the breakdown and how fast Adam shrinks it:
configs/default.py.
"""

from configs import resnet


def get_config():
  """ResNet-101 v2 drop/aux config."""
  config = resnet.get_config()
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  return config

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

L2 at initialization (l2_alpha=0.7 x sum(W^2)/2 over the dense kernels): the
aux tower's 3200x700 kernel holds almost all of it, 0.7 x 350 = 245, plus
0.7 x 1 for its 700x2 kernel and 0.7 x 1 for the 2048x2 head: ~246 against a
cross-entropy of ~0.69 (glorot_uniform: ~405; authors: ~6,080). Its gradient
reaches only the dense kernels, which Adam shrinks by about the learning rate
per step: under 1 after ~7,000 steps at 6e-6 (configs/default.py).
"""

from configs import resnet


def get_config():
  """ResNet-101 v2 drop/aux config."""
  config = resnet.get_config()
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  return config

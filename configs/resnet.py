"""ResNet-101 with full pre-activation (paper Table 2), no dropout, no aux
tower.

Run:
  python launch.py --config=configs/resnet.py --workdir=runs/resnet \
      --config.data.manual_dir=/path/to/dicom_root

Faithful to the authors' code (docs/paper.md, section 2):
batch 12, Adam at a constant ~6e-6,
2000 epochs; downsampling in the first unit of conv3..conv5 as in the paper
(stride_in_first_unit=True).
"""

import ml_collections

from configs import default


def get_config():
  """ResNet-101 v2 config."""
  config = default.get_config()
  config.model.name = 'resnet101_v2'
  config.model.aux_head = False
  config.model.dropout_rate = 0.0
  config.model.kwargs = ml_collections.ConfigDict(
      {'stride_in_first_unit': True}
  )
  config.batch_size = 12
  config.eval_batch_size = 24
  config.learning_rate = 6e-6
  return config

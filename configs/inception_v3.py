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
  return config

"""A tiny config for tests and smoke runs: small width, 80 px, a few steps.

Run (needs a built dataset, e.g. from configs/demo.py's synthetic data):
  python launch.py --config=configs/local.py --workdir=runs/local \
      --config.data.data_dir=runs/demo/data/tfds
"""

import ml_collections

from configs import default


def get_config():
  """Tiny Xception drop/aux config."""
  config = default.get_config()
  config.model.name = 'xception'
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  config.model.width_multiplier = 0.0625
  config.model.kwargs = ml_collections.ConfigDict({'aux_block': 3})
  config.image_size = 80
  config.batch_size = 4
  config.eval_batch_size = 4
  config.learning_rate = 1e-3
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 2
  config.image_summary_every_steps = 2
  config.progress_bar = False
  return config

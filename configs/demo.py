"""The README's demo: a small Xception drop/aux learns synthetic studies on CPU
in minutes.

Run:
  python launch.py --config=configs/demo.py --workdir=runs/demo
  python -m ankle_jax.evaluate --runs=runs/demo --split=test \
      --out=runs/demo/eval

Without --config.data.manual_dir, 300 synthetic cases (ankle_jax.data.synthetic;
300-400 px sources, ~720 views) are generated into runs/demo/data/studies and
built into
runs/demo/data/tfds (validation and test: 20 normal + 20 fracture 3-view cases
each); then a quarter-width Xception drop/aux trains 400 steps at 128 px,
evaluating on validation every 50 steps (case-level majority vote included) and
keeping the best checkpoint by validation case accuracy. Measured on the shared
2-core CPU (load 1.5-3.6): 3 min 47 s in all (start-up 5 s, generation 12 s,
build 8 s, training with compilation and 8 validations ~200 s), best validation
step 250, then `python -m ankle_jax.evaluate` (10 s): 97.5% case accuracy (hard
vote) and 96.7% view accuracy on the synthetic test split. Under a load of ~9
(others' jobs) the same 400 steps took 8.3 minutes in all.

Difficulty. The generator's default fracture (`fracture_conspicuity=1.0`) is
sized for 300 px
training: ~1-2 px wide there, it nearly vanishes at 128 px. The demo trains at
128 px, so it scales the fracture by 2.5 (line ~1-2 px wide and offset ~1-2.5 px
at 128 px). Each view of a fracture case shows the fracture with p=0.9
(generator default 0.6, under which even a perfect one-view classifier gets only
~69% of 3-view fracture cases by majority vote); about 11% of fracture views
still look normal, so voting over views matters.

Other families:
  python launch.py --config=configs/demo.py --workdir=runs/demo_resnet \
      --config.model.name=resnet101_v2
(model.kwargs that the chosen family does not take, here aux_block, are dropped
with a warning.)
"""

import ml_collections

from configs import default


def get_config():
  """Demo config (synthetic data, 128 px, width 0.25, 400 steps)."""
  config = default.get_config()
  config.model.name = 'xception'
  config.model.aux_head = True
  config.model.dropout_rate = 0.5
  config.model.width_multiplier = 0.25
  config.model.kwargs = ml_collections.ConfigDict({'aux_block': 3})
  # BatchNorm running statistics over ~10 steps, not Keras' ~100: validation
  # uses them, and at lr 3e-3 the weights move faster than 0.99 follows.
  config.model.bn_momentum = 0.9
  config.image_size = 128

  config.data.data_dir = ''  # <workdir>/data/tfds.
  config.data.synthetic.enabled = True
  config.data.synthetic.num_normal = 150
  config.data.synthetic.num_fracture = 150
  config.data.synthetic.seed = 0
  config.data.synthetic.fracture_view_prob = 0.9
  # 128 px training (1.0 is for 300 px).
  config.data.synthetic.fracture_conspicuity = 2.5
  # Small source images keep generation and building to ~30-40 s on 2 cores.
  config.data.synthetic.min_size = 300
  config.data.synthetic.max_size = 400

  # Brightness (+-0.3) and contrast (x[0.7, 1.3]) act only through their clips
  # to [0, 1] (per-image standardization cancels the rest). The clips keep the
  # fracture line (its contrast after standardization: median 1.0 of
  # unaugmented), but their extra variation delayed the takeoff by ~100 steps
  # (seed 0). Off, as when the demo was first measured; the flips stay.
  config.augment.clip = False

  config.batch_size = 16
  config.eval_batch_size = 24
  # Constant, far above the paper's 6e-6: minutes, not 2000 epochs. (A warmup +
  # cosine
  # schedule learned later in 400 steps: 92.5% validation case accuracy against
  # 97.5%.)
  config.learning_rate = 3e-3
  config.l2_alpha = 1e-3
  config.num_train_steps = 400
  config.log_every_steps = 20
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 100
  config.image_summary_every_steps = 200
  # The checkpoint is chosen on validation only.
  config.best_metric = 'val_case_accuracy'
  return config

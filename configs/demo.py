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

Learning every time (issue 27, measured 2026-12-07). The measurement above was
made before the intensity clips existed (2026-11-27). Since then the demo took
off late: validation case accuracy 0.50 until step 100-250 in every seed, and
>= 0.9 by step 300 in 4 of 5 (seed 0: 0.575). Two causes, two fields:
  * model.bn_momentum 0.9 (Keras' 0.99 before): validation uses BatchNorm's
    running statistics, which at 0.99 still held 61% of their initial values at
    step 50 and lagged weights that lr 3e-3 moves fast. Same weights (momentum
    does not change training), seed 0, step 300: case accuracy 0.575 -> 0.850,
    val_loss 1.14 -> 0.45; at step 250 case AUC was 0.94 at 0.99 yet accuracy
    0.50.
  * augment.clip False: brightness and contrast act only through their clips;
    with them the training itself took off ~100 steps later (seed 0, train
    accuracy at step 140: 0.52 with, 0.65 without).
Validation case accuracy per evaluation, config.seed 0-4, one built dataset
(synthetic seed 0); before: 400 steps, after: 300 steps (a prefix of the
400-step run, the learning rate being constant):
  seed          50   100   150   200   250   300   350   400
  before 0  0.500 0.500 0.500 0.500 0.500 0.575 0.600 0.775
  after  0  0.500 0.600 0.925 0.950 0.950 0.975     -     -
  before 1  0.500 0.500 0.500 0.600 0.975 0.975 0.950 0.975
  after  1  0.500 0.750 0.525 0.975 0.975 0.975     -     -
  before 2  0.500 0.500 0.775 0.725 0.975 0.975 0.975 0.975
  after  2  0.500 0.950 0.950 0.950 0.975 0.975     -     -
  before 3  0.500 0.500 0.500 0.800 0.750 0.975 0.975 0.975
  after  3  0.500 0.500 0.675 0.775 0.650 0.975     -     -
  before 4  0.500 0.500 0.675 0.725 0.975 0.925 0.975 0.975
  after  4  0.550 0.875 0.975 0.975 0.975 0.975     -     -
Not robust yet: after a takeoff the accuracy can still drop for one
validation while the case AUC stays at 0.99-1.00 (seed 3: 0.650 at step 250;
seed 1: 0.525 at step 150): at 0.9 the running statistics still lag the
weights. Learning rate 1e-3 instead of 3e-3 did not take off earlier (seed
0, stopped at step 130); the new border crop (8326f81) moves 13 of 120
demo views by 1-5 edge pixels, not a cause. Wall time: neither field adds
computation (same model, batch and steps). Measured on the shared 2-core CPU
under others' jobs, seeds 0-4: after, 300 steps, 812 s (load 13), 670 s (9), 479
s (8), 533 s (11), 399 s (6); before, 400 steps, 979 s (13, with generation and
build), 1006 s (13), 795 s (9), 656 s (9), 796 s (5).

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

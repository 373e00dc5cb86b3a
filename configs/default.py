"""Shared defaults of every training config (docs/paper.md, sections 2, 5).

Not a run on its own: the model configs (inception_v3.py, resnet.py,
resnet_dropaux.py, xception.py, xception_dropaux.py, demo.py) start from
`get_config()` here. Any field can be overridden on the command line, for
example:

  python launch.py --config=configs/xception_dropaux.py --workdir=runs/xda \
      --config.learning_rate=5e-6 --config.data.manual_dir=/path/to/dicom_root

Sources of the defaults:
  * Adam (0.9, 0.999, 1e-8), constant learning rate, 2000 epochs, no early
    stopping, the augmentation the authors' code lists (brightness +-0.3,
    contrast x[0.7, 1.3], random up-down and left-right flips, no rotation),
    L2 on fully connected weights only: the authors' public TensorFlow code
    (docs/paper.md, section 2). One deviation: we clip to [0, 1] after
    brightness and contrast (augment.clip=True), so that they act; in the
    authors' code per-image standardization cancelled them.
    `--config.augment.clip=False` restores that.
  * l2_alpha = 0.7: the midpoint of the paper's "L2 decay rate between 0.4 and
    1.0".
  * aux_loss_weight = 0.4: the lower end of the paper's "auxiliary decay between
    0.4 and 0.9", which is also the auxiliary-loss weight of the reference
    TF-slim Inception V3.
  * dropout 0.5 (paper: "the dropout rate was kept at 0.5") in the drop/aux
    configs.

Where these defaults differ from the authors on purpose (the five paper
configs change the last two back):
  * model.kernel_init = 'lecun_normal': Flax's default initialization
    (truncated normal, variance 1 / fan_in, zero biases), neither the
    authors' ('authors': truncated normal std 0.1, biases 0.1) nor Keras'
    ('glorot_uniform'). It is what every run so far was trained with.
  * eval_checkpoint = 'best': evaluate and predict restore the checkpoint
    with the best config.best_metric on validation; the authors used the
    last one ('latest').
  * data.max_eval_views = 0: validation (and evaluate) score every view of a
    case; the paper scored exactly 3 per case (240 views).

Size of the L2 term. l2_alpha * sum(W^2)/2 over the dense kernels is, at
initialization, 0.7 x 352 = ~246 with an aux tower (its 3200x700 kernel alone
is 0.7 x 350: 2.24 M weights of variance 1/3200; the 700x2 and 2048x2 kernels
add 0.7 x 1 each) against a cross-entropy of ~0.69, and 0.7 x 1 without one
(glorot_uniform: ~405 / ~1.4; authors: ~6,080 / ~10; checked in
tests/models/test_architectures.py). Its gradient, alpha x W, only reaches the
dense kernels, and Adam moves each weight by about the learning rate per step
whatever the gradient's size, so it does not drown the CE's gradients in the
convolutions. Adam on the L2 term alone at the paper's 6e-6 takes that aux
kernel's 246 to ~78 after 2,000 steps, ~9 after 5,000 and under 1 after
7,000 (about 100 of the 2,000 epochs at batch 20; authors' init: ~1,800
after 10,000 steps, ~13 after 30,000).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The shared defaults (model fields are set by each model config)."""
  config = ml_collections.ConfigDict()

  # Model (ankle_jax.models.build).
  config.model = ml_collections.ConfigDict()
  # 'inception_v3' | 'resnet101_v2' | 'xception'.
  config.model.name = 'xception'
  config.model.aux_head = False
  config.model.dropout_rate = 0.0
  config.model.width_multiplier = 1.0
  # Initialization of every conv and dense kernel and bias: 'lecun_normal'
  # (Flax's) | 'glorot_uniform' (Keras') | 'authors' (truncated normal std
  # 0.1 cut at 2 std, as TF's truncated_normal_initializer, biases 0.1;
  # docs/paper.md, section 2). ankle_jax.models.layers.initializers.
  config.model.kernel_init = 'lecun_normal'
  # Convolution kernels: 'auto' ('cpu' on CPU, 'gpu' elsewhere) | 'cpu'
  # (shifted-slice depthwise and matmul 1x1 convolutions, fast on XLA:CPU) |
  # 'gpu' (lax.conv_general_dilated with feature_group_count). The parameters
  # and checkpoints are the same under each. ankle_jax.models.backends.
  config.model.conv_impl = 'auto'
  # Momentum of every BatchNorm's running statistics (validation and
  # evaluation use them): Keras' 0.99 averages over ~100 steps.
  config.model.bn_momentum = 0.99
  # Family-specific build() kwargs.
  config.model.kwargs = ml_collections.ConfigDict()
  # Multi-view model (ankle_jax.models.multiview; configs/multiview_demo.py):
  # the family above becomes a shared trunk over all views of a case, fused
  # by 'mean' | 'max' | 'attention' (gated attention MIL). Batches then count
  # cases (batch_size, eval_batch_size), of up to max_views views each;
  # training drops each view with probability view_dropout (at least one
  # kept per case). The loss adds view_loss_weight x the mean CE of each
  # view alone (the case head on that view, with the case's label).
  config.model.multiview = ml_collections.ConfigDict()
  config.model.multiview.enabled = False
  config.model.multiview.fusion = 'attention'
  config.model.multiview.max_views = 3
  config.model.multiview.view_dropout = 0.0
  # Drop views only from normal cases (a fracture case keeps the view that
  # shows its fracture, so its label stays true).
  config.model.multiview.view_dropout_normal_only = False
  config.model.multiview.view_loss_weight = 0.0
  # Warm start (ankle_jax.training.warm_start): init_from = a per-view run
  # of the same family and width; its init_checkpoint ('best' | 'latest')
  # gives the trunk's params and BatchNorm statistics and the case head
  # (its classifier). A warm-started trunk is frozen (its BN statistics too)
  # for freeze_trunk_steps, then learns at trunk_lr_scale x the rate.
  # per_view_steps > 0 with no init_from: launch.py first trains that
  # per-view stage in <workdir>/per_view (batch per_view_batch_size views,
  # eval per_view_eval_batch_size) and starts from it (ankle_jax.stages).
  config.model.multiview.init_from = ''
  config.model.multiview.init_checkpoint = 'best'
  config.model.multiview.freeze_trunk_steps = 0
  config.model.multiview.trunk_lr_scale = 1.0
  config.model.multiview.per_view_steps = 0
  config.model.multiview.per_view_batch_size = 16
  config.model.multiview.per_view_eval_batch_size = 24
  config.num_classes = 2
  config.image_size = 300  # Paper: 300x300x1.
  # Computation dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU) |
  # 'float32' | 'bfloat16'. Params, BN statistics, loss and Adam stay float32.
  config.dtype = 'auto'

  # Data (the TFDS builder radiograph_studies; docs/paper.md, section 4).
  config.data = ml_collections.ConfigDict()
  # DICOM root: normal/<case>/*.dcm, fracture/<case>/*.dcm.
  config.data.manual_dir = ''
  # Where the dataset is built ('' = <workdir>/data/tfds).
  config.data.data_dir = 'data/tfds'
  config.data.dataset_config = 'dicom_cases'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # Cross-validation (ankle_jax.data.folds; python -m ankle_jax.crossval):
  # with cv_fold = k >= 0 the run trains on the other cv_folds - 1 folds of
  # the train+validation cases and validates on fold k (grouped by split
  # unit, stratified by label); test is untouched. -1 = off.
  config.data.cv_folds = 5
  config.data.cv_fold = -1
  # Views per validation/evaluation case: 0 = every view; N = the first N by
  # view position (DICOM ViewPosition, views without one last), then file
  # name. The paper scored 3 per case. evaluate uses the run's value unless
  # --max_eval_views is given.
  config.data.max_eval_views = 0
  # None, or [w_normal, w_fracture]: draw training views with replacement, with
  # probability proportional to their label's weight (balanced sampling;
  # pipeline.make_train_loader).
  config.data.sample_weights_by_label = None
  # Splits on the device: 'auto' | 'true' | 'false'. A split whose images fit
  # the budget is placed on every device once (uint16, or float32 when resized
  # to image_size), the loader yields record indices and the step gathers,
  # converts and augments on the device; the batches are the same as the host
  # path's. 'auto': on for GPU/TPU, and on CPU as measured (training.inputs.
  # AUTO_ON_DEVICE_CPU): the demo's host loader spent ~0.5 s per batch of 16
  # reading and resizing, the index loader ~10 ms (shared 2-core CPU, load
  # 20-30: noisy).
  config.data.on_device = 'auto'
  # The budget: this fraction of the device's memory (memory_stats), or, where
  # a device reports none (CPU), on_device_cpu_budget_mb.
  config.data.on_device_budget_fraction = 0.25
  config.data.on_device_cpu_budget_mb = 2048
  # grain worker processes decoding training batches on the host path: an int
  # (0 = in the training process) or 'auto' (0 on CPU, whose cores run the
  # step, or with the train split on the device; else half the host's cores,
  # at most 16). The host loader gives ~150 images/s per core at 300 px.
  config.data.worker_count = ml_collections.FieldReference(
      'auto', field_type=object
  )
  # Synthetic studies (configs/demo.py): generated into <workdir>/data/studies
  # and built when the dataset is missing and data.manual_dir is empty.
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.enabled = False
  config.data.synthetic.num_normal = 150
  config.data.synthetic.num_fracture = 150
  config.data.synthetic.seed = 0

  # Optimization (docs/paper.md, section 2).
  config.batch_size = 20  # Global batch, divisible by the number of devices.
  config.eval_batch_size = 24  # Eval batches are padded to this size.
  config.optimizer = 'adam'
  config.learning_rate = 6e-6
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.lr_schedule = 'constant'  # 'constant' | 'cosine' | 'warmup_cosine'.
  config.warmup_steps = 0  # For 'warmup_cosine'.
  config.grad_clip_norm = 0.0  # 0 = no clipping (the authors clipped nothing).

  # Loss: CE + l2_alpha * sum(W^2)/2 over l2_scope + aux_loss_weight * CE_aux.
  config.l2_alpha = 0.7
  # 'dense' (2-D kernels, as the authors) | 'all' (every kernel).
  config.l2_scope = 'dense'
  config.aux_loss_weight = 0.4
  config.class_weights = None  # None or [w_normal, w_fracture].

  # Augmentation on device (train images only), then per-image standardization.
  config.augment = ml_collections.ConfigDict()
  # Paper lists rotation; authors' code had none.
  config.augment.rotation_degrees = 0.0
  config.augment.flip_lr = True
  config.augment.flip_ud = True
  config.augment.brightness_delta = 0.3
  config.augment.contrast_lower = 0.7
  config.augment.contrast_upper = 1.3
  # Clip to [0, 1] after brightness, contrast and window. False reproduces the
  # authors' code, where per-image standardization cancelled brightness and
  # contrast exactly and only the flips acted (ankle_jax/data/augment.py).
  config.augment.clip = True
  # Gamma drawn log-uniformly from [lower, upper]; (1.0, 1.0) = off.
  config.augment.gamma_lower = 1.0
  config.augment.gamma_upper = 1.0
  # Each end of the display (VOI) window moves inwards by up to this fraction
  # of [0, 1]; 0 = off.
  config.augment.window_jitter = 0.0
  # Random crop of side s * image_size, s ~ U[crop_scale_lower, 1], resized
  # back; 1.0 = off.
  config.augment.crop_scale_lower = 1.0

  # Length, logging, evaluation, checkpoints.
  config.num_epochs = 2000
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  # Instead of the step counts above: every N seconds of wall time (checked at
  # the log steps; process 0's clock decides for every process); 0 = off (by
  # steps). When > 0, it wins over the step count of the same action.
  config.checkpoint_every_seconds = 0.0
  config.eval_every_seconds = 0.0
  config.keep_checkpoints = 3
  # 'val_accuracy' | 'val_auc' | 'val_case_accuracy' | 'val_case_auc' |
  # 'val_loss' (ankle_jax.training.validation.METRICS). A multi-view run takes
  # only the case-level ones (val_case_accuracy, val_case_auc, val_loss): its
  # configs set 'val_case_accuracy'.
  config.best_metric = 'val_accuracy'
  # The checkpoint evaluate and predict restore unless --checkpoint is given:
  # 'best' (by best_metric on validation; for recipes chosen on validation)
  # | 'latest' (the last step, as the authors). Both are always saved.
  config.eval_checkpoint = 'best'
  # Evaluations without val_loss improvement; 0 = off.
  config.early_stopping_patience = 0
  # Grid of augmented images in TensorBoard; 0 = off.
  config.image_summary_every_steps = 1000
  config.progress_bar = True

  # Devices and reproducibility.
  # Several processes (README "Several machines"): True starts
  # jax.distributed, from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  # JAX_PROCESS_ID when set, else from the cluster (SLURM, Open MPI,
  # Kubernetes). batch_size and eval_batch_size stay global: each process
  # reads batch_size / processes of every batch.
  config.distributed = False
  # Seconds to wait for every process at the start (then exit naming the
  # coordinator), and without heartbeats before a process counts as dead
  # (then the others end).
  config.distributed_timeout_s = 300
  config.distributed_heartbeat_timeout_s = 100
  config.seed = 0

  # Persistent XLA compilation cache (launch.py; ankle_jax.compilation_cache):
  # a second run of the same model and shapes loads its compiled steps instead
  # of compiling them again. '' = $XDG_CACHE_HOME/ankle_jax/jax_cache (default
  # ~/.cache/ankle_jax/jax_cache); False = off.
  config.compilation_cache = True
  config.compilation_cache_dir = ''
  return config

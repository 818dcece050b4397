"""Defaults every search config starts from; each config file changes only what differs."""

import ml_collections
from ml_collections.config_dict import placeholder

from oneshot.hardware import schema as hardware_schema


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_devices = 0                 # 0: every visible device (all hosts); N: the first N
  # CPU hosts: 0 keeps JAX's one CPU device (ops spread over XLA's threads); N > 0 makes the CPU N
  # devices, one path each (oneshot/runtime.py). XLA_FLAGS' host device count, when set, wins.
  c.cpu_devices = 0
  c.compilation_cache_dir = "~/.cache/oneshot/jax"  # persistent XLA cache; "" turns it off

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"
  c.dataset.data_dir = ""           # empty: the TFDS default (~/tensorflow_datasets)
  # Where already-downloaded source files live for datasets prepared offline (fashion_mnist: the four
  # IDX files); empty: the dataset's default (fashion_mnist: /usr/share/datasets/fashion-mnist).
  c.dataset.manual_dir = ""
  c.dataset.train_split = "train"
  c.dataset.validation_split = "validation"
  c.dataset.test_split = "test"
  c.dataset.image_size = 0          # 0: native size
  # The train split's augmentation: none | pad_crop_flip (CIFAR) | inception_crop_flip (ImageNet), see
  # oneshot/data/augment.py. Splits read from disk or augmented go through grain
  # (oneshot/data/pipeline.py) with `workers` processes (0: decode in this process's threads) reading
  # `prefetch` batches ahead.
  c.dataset.augment = "none"
  c.dataset.workers = 0
  c.dataset.prefetch = 2

  c.supernet = ml_collections.ConfigDict()
  c.supernet.executor = "auto"      # auto | switch | mask (see oneshot/supernet/__init__.py)
  c.supernet.depthwise = "auto"     # auto | shift | xla (see oneshot/models/ops.py)
  # Must stay False in a search: each device runs its own path, so it normalises with that path's own
  # batch statistics (TuNAS). Kept as a field so that configs that set it get a clear error.
  c.supernet.sync_batch_norm = False
  # Depthwise kernels of different sizes: "centre" slices of one largest kernel (Once-for-All) or
  # "separate" kernels and BatchNorms per size (TuNAS).
  c.supernet.depthwise_sharing = "centre"

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 300
  c.train.batch_size = 64           # global; split over devices
  c.train.learning_rate = 0.1       # peak of the cosine schedule
  c.train.warmup_steps = 10         # linear learning-rate warm-up
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.uniform_fraction = 0.25   # first fraction of steps: uniform paths (controller not used)
  # The warm-up's paths: uniform; fair (FairNAS: each choice equally often in every group of
  # consecutive paths); or sandwich (BigNAS: of every four, the largest network, the smallest and two
  # uniform draws; needs a space with a layer table: mobilenet, nasbench201).
  c.train.warmup_sampler = "uniform"
  c.train.reward_batch_size = 128   # TuNAS: the reward batch is larger than the training batch
  c.train.reward_paths_per_device = 1  # paths each device scores per controller update
  c.train.eval_batch_size = 128     # = reward batch: one compiled forward serves both
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.train.standalone_steps = 0      # oneshot train / rank: child training steps (0: num_steps)
  c.train.max_nonfinite_steps = 10  # consecutive NaN/Inf losses before the search stops

  # Hardware, one section for a latency-targeted search and for `oneshot cosearch` (keys, defaults and
  # rules: oneshot/hardware/schema.py). A search is accuracy-only until hardware.target_latency_ms is
  # set; then rewards and the final choice fold in each architecture's modelled latency on
  # hardware.accelerator (one device: 16x16 weight-stationary by default).
  c.hardware = hardware_schema.defaults()

  # Controller hyperparameters left at None take the controller's own defaults (ENAS's published
  # lr 0.0035, baseline decay 0.99, entropy weight 1e-4, T 5, c 2.5; TuNAS's baseline momentum 0.95 and
  # no entropy term, with lr 0.05, this project's value, not the released code's 0.0003 x batch/256:
  # see controllers/tunas.py); a value set here or by --config.controller.X=V applies to whichever
  # controller runs. search_result.json records the values in force.
  c.controller = ml_collections.ConfigDict()
  c.controller.name = "enas"
  c.controller.learning_rate = placeholder(float)
  c.controller.hidden_size = placeholder(int)
  c.controller.temperature = placeholder(float)
  c.controller.tanh_constant = placeholder(float)
  c.controller.entropy_weight = placeholder(float)
  c.controller.baseline_decay = placeholder(float)
  # TuNAS keeps the controller's learning rate at 0 for the first 25% of the global steps; here that
  # is `train.uniform_fraction` (uniform paths, no controller updates), so no second delay inside it.
  c.controller.warmup_fraction = 0.0
  c.controller.population_size = 20
  c.controller.tournament_size = 5
  # Gradient-based controllers (darts, gdas, proxyless); None: the paper's value (controllers/gradient.py)
  c.controller.beta1 = placeholder(float)
  c.controller.beta2 = placeholder(float)
  c.controller.weight_decay = placeholder(float)
  c.controller.tau_max = placeholder(float)            # gdas: Gumbel temperature, annealed to tau_min
  c.controller.tau_min = placeholder(float)
  c.controller.beta_regularization = placeholder(float)  # darts: beta-DARTS's lambda (0: off)
  # darts, gdas, proxyless: their answer, "argmax" (None: the papers' argmax alpha) or "rescored" (the
  # rule below); search_result.json reports the rescored pick beside the argmax either way.
  c.controller.answer = placeholder(str)

  # The answer, the same rule for every controller: `num_candidates` architectures from the controller
  # (its own choice plus policy samples, its population, or random draws), each scored on the same
  # `score_images` validation images, the best `top_k` rescored on the whole validation split with the
  # trained supernet; the best rescore wins (Li & Talwalkar's RSWS for `random`).
  c.select = ml_collections.ConfigDict()
  c.select.num_candidates = 100
  c.select.score_images = 256
  c.select.top_k = 10
  # Finalists' rescore: 0 with batch-statistics BN (as the search's rewards); N > 0 as the standalone
  # child `oneshot export` writes, BN recalibrated on N train batches, so `reward` is the exported
  # child's validation accuracy (one child compile per finalist).
  c.select.recalibrate_batches = 0
  return c

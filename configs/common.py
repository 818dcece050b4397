"""Defaults every search config starts from; each config file changes only what differs."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_devices = 0                 # 0: every visible device (all hosts); N: the first N
  c.compilation_cache_dir = "~/.cache/oneshot/jax"  # persistent XLA cache; "" turns it off

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"
  c.dataset.data_dir = ""           # empty: the TFDS default (~/tensorflow_datasets)
  c.dataset.train_split = "train"
  c.dataset.validation_split = "validation"
  c.dataset.test_split = "test"
  c.dataset.image_size = 0          # 0: native size

  c.supernet = ml_collections.ConfigDict()
  c.supernet.executor = "auto"      # auto | switch | mask (see oneshot/supernet/__init__.py)
  c.supernet.depthwise = "auto"     # auto | shift | xla (see oneshot/models/ops.py)
  c.supernet.sync_batch_norm = False  # TuNAS: each device normalises with its own path's statistics

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 300
  c.train.batch_size = 64           # global; split over devices
  c.train.learning_rate = 0.1       # peak of the cosine schedule
  c.train.warmup_steps = 10         # linear learning-rate warm-up
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.uniform_fraction = 0.25   # first fraction of steps: uniform paths (controller not used)
  c.train.reward_batch_size = 128   # TuNAS: the reward batch is larger than the training batch
  c.train.reward_paths_per_device = 1  # paths each device scores per controller update
  c.train.eval_batch_size = 128     # = reward batch: one compiled forward serves both
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.train.standalone_steps = 0      # oneshot train / rank: child training steps (0: num_steps)
  c.train.max_nonfinite_steps = 10  # consecutive NaN/Inf losses before the search stops

  c.controller = ml_collections.ConfigDict()
  c.controller.name = "enas"
  c.controller.learning_rate = 0.0035
  c.controller.hidden_size = 64
  c.controller.temperature = 5.0
  c.controller.tanh_constant = 2.5
  c.controller.entropy_weight = 1e-4
  c.controller.baseline_decay = 0.99
  c.controller.warmup_fraction = 0.0  # TuNAS: controller lr 0 for this fraction of its updates
  c.controller.population_size = 20
  c.controller.tournament_size = 5
  return c

"""TuNAS-style MobileNetV2 space on CIFAR-10 at real size, for accelerators (GPU or TPU pod).

CIFAR-10 has no validation split: the last 5,000 training images are held out for controller rewards.
The dataset must be prepared first (`tfds build cifar10`); the launcher runs this config on a pod.
"""

from oneshot.configs.common import base_config


def get_config():
  c = base_config()
  c.dataset.name = "cifar10"
  c.dataset.train_split = "train[:45000]"
  c.dataset.validation_split = "train[45000:]"
  c.dataset.test_split = "test"
  c.dataset.augment = "pad_crop_flip"
  c.dataset.workers = 4  # per host, an estimate; benchmarks/input_pipeline.py measures the rate per worker
  c.dataset.prefetch = 4
  c.space = dict(
      name="mobilenet",
      stem_filters=32,
      stem_stride=1,
      # MobileNetV2's stages at CIFAR resolution (32 -> 16 -> 8 -> 4).
      stages=((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)),
      kernel_sizes=(3, 5, 7),
      expansion_ratios=(3, 6),
      width_multipliers=(0.5, 0.75, 1.0),
      allow_skip=True,
      head_filters=1280,
  )
  c.train.num_steps = 90_000
  c.train.batch_size = 1024
  c.train.reward_batch_size = 2048
  c.train.eval_batch_size = 2048
  c.train.learning_rate = 0.4
  c.train.warmup_steps = 1000
  c.train.weight_decay = 4e-5
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.controller.name = "tunas"
  c.controller.learning_rate = 0.0033
  c.controller.warmup_fraction = 0.25
  c.launch = dict(tpu="", zone="", accelerator_type="v4-32", runtime_version="")
  return c

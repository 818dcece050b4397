"""The TuNAS/ProxylessNAS MobileNetV2 search space on ImageNet at 224x224, for TPU pods."""

from oneshot.configs.common import base_config


def get_config():
  c = base_config()
  c.dataset.name = "imagenet2012"
  c.dataset.train_split = "train[:1231121]"    # TuNAS holds out 50,046 train images for rewards
  c.dataset.validation_split = "train[1231121:]"
  c.dataset.test_split = "validation"
  c.dataset.image_size = 224
  c.dataset.augment = "inception_crop_flip"
  c.dataset.workers = 32  # per host, an estimate: JPEG decoding is the bottleneck (benchmarks/input_pipeline.py)
  c.dataset.prefetch = 4
  c.space = dict(
      name="mobilenet",
      stem_filters=32,
      stem_stride=2,
      stages=((16, 1, 1), (24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1)),
      kernel_sizes=(3, 5, 7),
      expansion_ratios=(3, 6),
      width_multipliers=(0.5, 0.75, 1.0, 1.25),
      allow_skip=True,
      head_filters=1280,
  )
  c.train.num_steps = 110_000
  c.train.batch_size = 4096
  c.train.reward_batch_size = 8192
  c.train.eval_batch_size = 4096
  c.train.learning_rate = 1.6
  c.train.warmup_steps = 2500
  c.train.weight_decay = 4e-5
  c.train.log_every = 100
  c.train.checkpoint_every = 2000
  c.controller.name = "tunas"
  c.controller.learning_rate = 0.0033
  c.controller.warmup_fraction = 0.25
  c.launch = dict(tpu="", zone="", accelerator_type="v4-128", runtime_version="")
  return c

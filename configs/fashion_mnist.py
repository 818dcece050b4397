"""The real-data search: Fashion-MNIST (28x28 grey, 10 classes), offline from the Debian package.

`apt-get install dataset-fashion-mnist` puts the four IDX files in /usr/share/datasets/fashion-mnist
(`--config.dataset.manual_dir` names another directory); the first run prepares them as a TFDS dataset.
The 60k training images are split once and for all into 50k train / 10k validation (the search trains on
the first, rewards and selects on the second); the official 10k test set is never seen by the search,
only by `oneshot train` and `oneshot rank`.

Space: the digits stages behind a stride-2 stem (14x14 -> 7x7 -> 4x4), with stage widths of 1/4, 1/2 or
all of (16, 24, 32) filters. On this task the digits space's children land within a couple of points
of each other, about the seed-to-seed spread of one architecture, so rankings would be mostly seed
noise; the quarter width stretches the range of capacities (and of accuracies) so that architectures
differ by clearly more than that noise, while keeping the steps cheap enough for a 15-minute search on
2 CPU cores. How each setting below was chosen, run by run: docs/results.md ("Fashion-MNIST").
"""

from oneshot.configs.common import base_config


def get_config():
  c = base_config()
  c.dataset.name = "fashion_mnist"
  c.dataset.train_split = "train[:50000]"
  c.dataset.validation_split = "train[50000:]"
  c.dataset.test_split = "test"
  c.space = dict(
      name="mobilenet",
      stem_filters=16,
      stem_stride=2,
      stages=((16, 2, 1), (24, 2, 2), (32, 2, 2)),  # (filters, blocks, stride of the first block)
      kernel_sizes=(3, 5, 7),
      expansion_ratios=(3, 6),
      width_multipliers=(0.25, 0.5, 1.0),
      allow_skip=True,
      head_filters=128,                     # a 1x1 head conv at 4x4: capacity almost for free
  )
  # One CPU device per core: each step trains two paths on 64 images each, faster than one device
  # spreading each op over both cores, so more steps fit in the 15-minute budget, and the reward rose
  # with them. The step count is the largest that leaves a margin inside that budget on 2 cores
  # (tuned on seed 0; docs/results.md).
  c.cpu_devices = 2
  c.train.num_steps = 3000
  c.train.uniform_fraction = 0.5     # half the steps on uniform paths before the controller learns
  c.train.batch_size = 128
  c.train.reward_batch_size = 128
  c.train.eval_batch_size = 128      # = reward batch: one compiled forward for rewards and selection
  # One reward path per device and controller update: two made each controller-phase step much slower
  # for no better reward (one seed each; docs/results.md, Fashion-MNIST runs 4 and 6).
  c.train.reward_paths_per_device = 1
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.train.standalone_steps = 300     # oneshot train / rank: short enough to train dozens of children
  c.controller.name = "tunas"
  c.select.num_candidates = 100
  c.select.score_images = 512
  c.select.top_k = 8
  c.select.recalibrate_batches = 20  # finalists rescored as export writes them (BN recalibrated)
  return c

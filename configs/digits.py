"""The embedded default: a small inverted-residual space on scikit-learn's 8x8 digits.

Sized to finish in well under 3 minutes on 2 CPU cores (compile included) and reach >= 0.85 validation
accuracy with the searched architecture: 3 stages at 8x8 -> 4x4 -> 2x2, 6 blocks, 2.3M architectures.
"""

from oneshot.configs.common import base_config


def get_config():
  c = base_config()
  c.space = dict(
      name="mobilenet",
      stem_filters=16,
      stem_stride=1,
      stages=((16, 2, 1), (24, 2, 2), (32, 2, 2)),  # (filters, blocks, stride of the first block)
      kernel_sizes=(3, 5, 7),
      expansion_ratios=(3, 6),
      width_multipliers=(0.5, 1.0),
      allow_skip=True,
      head_filters=0,
  )
  # ENAS's paper hyperparameters (configs/common.py); on one CPU device each controller update would
  # see a single sampled path, so each device scores 4 paths per update (4 cheap forward passes).
  c.train.reward_paths_per_device = 4
  return c

"""Every test process sees 8 CPU devices, as the data-parallel tests need (set before jax loads)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train):
  """configs/digits.py shrunk to compile and run in seconds."""
  from configs.digits import get_config  # pylint: disable=import-outside-toplevel
  c = get_config()
  c.space.stem_filters = 8
  c.space.stages = ((8, 1, 1), (12, 2, 2))
  c.space.kernel_sizes = (3, 5)
  c.space.expansion_ratios = (2, 3)
  c.train.num_steps = 6
  c.train.batch_size = 16
  c.train.reward_batch_size = 16
  c.train.eval_batch_size = 80
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.supernet.executor = "mask"
  c.controller.name = "tunas"
  c.controller.learning_rate = 0.1
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture
def tiny():
  return tiny_config

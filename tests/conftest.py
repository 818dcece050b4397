"""Every test process sees 8 CPU devices, as the data-parallel tests need (set before jax loads)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train):
  """configs/digits.py shrunk to compile and run in seconds."""
  from oneshot.configs.digits import get_config  # pylint: disable=import-outside-toplevel
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


def config_file(path, config) -> str:
  """`config` (configs/digits.py changed, e.g. tiny_config()) as a config file for a fresh process.

  The file is configs/digits.py plus one assignment per changed field, so `oneshot search --config` in a
  subprocess sees exactly this config, and `--config.*` overrides keep the field types of the real file.
  It imports nothing from tests/, whose conftest would set this process's device count in the child.
  """
  from oneshot.configs.digits import get_config  # pylint: disable=import-outside-toplevel
  base, new = _flatten(get_config().to_dict()), _flatten(config.to_dict())
  lines = ["from configs.digits import get_config as _digits", "", "", "def get_config():",
           "  c = _digits()"]
  lines += [f"  c.{key} = {value!r}" for key, value in new.items() if base.get(key, object()) != value]
  lines.append("  return c")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out

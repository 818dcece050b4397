"""Every test process sees 8 CPU devices, as the data-parallel tests need (set before jax loads).

Also collects the README's Python blocks as fast-tier tests (`ReadmeBlock`).
"""

import contextlib
import io
import os
import re
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
# The README sections whose first ```python block is a runnable script.
README_SECTIONS = ("Python API", "Your own search space")


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


def readme_block(section: str) -> str:
  """The first ```python block of the README's `## section`."""
  with open(README) as f:
    readme = f.read()
  text = readme[readme.index(f"\n## {section}\n"):]
  return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def pytest_collect_file(file_path, parent):
  """The README's blocks, collected once per run of the whole tests/ folder (beside this file)."""
  if file_path.name == "conftest.py" and str(file_path) == os.path.abspath(__file__):
    return ReadmeFile.from_parent(parent, path=file_path)
  return None


class ReadmeFile(pytest.File):
  """One item per runnable README block."""

  def collect(self):
    for section in README_SECTIONS:
      yield ReadmeBlock.from_parent(self, name=f"README.md: {section}", section=section)


class ReadmeBlock(pytest.Item):
  """A README block, verbatim, in this process, on the tiny digits config.

  The fast tier's check that every line a newcomer copies still works (names, signatures, the printed
  fields): `api.get_config("digits")` answers `tiny_config()` on one device (a smaller space and batch,
  so the block's search compiles and runs in seconds); everything else is the block as printed, run in
  a temporary folder. tests/test_api.py and tests/test_own_space.py run the same blocks as printed, with the real
  config, in a fresh process (slow tier).
  """

  def __init__(self, *, section: str, **kwargs):
    super().__init__(**kwargs)
    self.section = section

  def runtest(self):
    from oneshot import api  # pylint: disable=import-outside-toplevel
    real = api.get_config

    def get_config(name_or_path="digits", **overrides):
      if name_or_path == "digits" and not overrides:
        config = tiny_config(checkpoint_every=50, log_every=50)
        config.num_devices = 1  # 8 simulated devices on 2 cores cost more per step than they share
        return config
      return real(name_or_path, **overrides)

    code = compile(readme_block(self.section), f"README.md ({self.section})", "exec")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
      patch.setattr(api, "get_config", get_config)
      patch.chdir(folder)
      with contextlib.redirect_stdout(out):
        exec(code, {"__name__": "__readme__"})  # pylint: disable=exec-used
    self.add_report_section("call", "stdout", out.getvalue())
    assert out.getvalue().strip(), "the block printed nothing"
    for line in out.getvalue().splitlines():  # the own-space block's check: the export is the path
      if line.startswith("max |child - supernet path| ="):
        assert float(line.rsplit("=", 1)[1]) <= 1e-5, line

  def reportinfo(self):
    return README, None, f"README.md: {self.section}"

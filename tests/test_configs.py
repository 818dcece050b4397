"""Every shipped config builds its space and supernet; real-size ones initialise under eval_shape."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from oneshot import controllers
from oneshot import spaces
from oneshot import supernet
from oneshot.hardware import settings as hardware_settings
from tests.conftest import REPO

CONFIGS = {"digits.py": (8, 8, 1, 10), "digits_nb201.py": (8, 8, 1, 10), "fashion_mnist.py": (28, 28, 1, 10),
           "cifar10.py": (32, 32, 3, 10), "imagenet_mobilenet.py": (224, 224, 3, 1000)}


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_builds_and_supernet_initialises(name):
  config = load(name)
  h, w, c, classes = CONFIGS[name]
  space = spaces.build(config.space)
  controllers.build(config.controller.name, space, config.controller.to_dict())
  model = supernet.build(space, classes, c, config.supernet.executor, config.supernet.depthwise,
                         config.supernet.depthwise_sharing)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2, h, w, c)),
                          jnp.zeros(space.num_decisions, jnp.int32))
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert count > 1000
  if name == "imagenet_mobilenet.py":
    assert count > 3_000_000  # the largest MobileNetV2-sized child fits inside


@pytest.mark.parametrize("name", sorted(CONFIGS) + ["digits_cosearch.py"])
def test_config_hardware_section_reads(name):
  """Every shipped config's hardware section passes the one reader: a device for the searches (latency
  target off), a device space for the co-search."""
  config = load(name)
  use = "cosearch" if name == "digits_cosearch.py" else "search"
  hardware = hardware_settings.read(config, use)
  assert (hardware.accelerators.size > 1) == (use == "cosearch")
  assert (hardware.target_latency_ms is None) == (use == "search")


OLD_COSEARCH = '''import ml_collections
from oneshot.configs.digits_cosearch import get_config as new_config


def get_config():
  c = new_config()
  c.accelerator = ml_collections.ConfigDict(dict(rows=(4, 8), area_budget_mm2=1.2))
  c.reward = ml_collections.ConfigDict(dict(kind="nahas", latency_target_ms=0.03, beta=-0.1))
  c.cost_model = ml_collections.ConfigDict(dict(kind="analytical", table=""))
  c.hardware = {"latency_target_ms": 0.03}
  return c
'''


def test_old_schema_config_gets_the_rename_line(tmp_path, capsys):
  """A config of the co-search's earlier schema (top-level accelerator, reward and cost_model sections;
  latency_target_ms, kind) is one line naming each rename, from the CLI and from the Python API."""
  from oneshot import cli, cosearch  # pylint: disable=import-outside-toplevel
  from oneshot.errors import UserError  # pylint: disable=import-outside-toplevel
  path = tmp_path / "old_cosearch.py"
  path.write_text(OLD_COSEARCH)
  workdir = tmp_path / "w"
  assert cli.main(["cosearch", "--config", str(path), "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  for rename in ("accelerator.<decision> -> hardware.accelerator_choices.<decision>",
                 "accelerator.area_budget_mm2 -> hardware.area_budget_mm2",
                 "reward.kind -> hardware.reward",
                 "reward.latency_target_ms -> hardware.target_latency_ms",
                 "reward.beta -> hardware.beta", "cost_model.kind -> hardware.cost_model",
                 "cost_model.table -> hardware.table",
                 "hardware.latency_target_ms -> hardware.target_latency_ms"):
    assert rename in err, (rename, err)
  assert not workdir.exists()
  config = load("digits_cosearch.py")
  config.reward = {"kind": "tunas"}
  with pytest.raises(UserError, match=r"earlier hardware schema; rename reward.kind -> "
                                     r"hardware.reward "):
    cosearch.run(config, str(workdir))
  assert not workdir.exists()

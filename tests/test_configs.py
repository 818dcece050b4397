"""Every shipped config builds its space and supernet; real-size ones initialise under eval_shape."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from oneshot import controllers
from oneshot import spaces
from oneshot import supernet
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
  if name == "digits_nb201.py":
    pytest.importorskip("oneshot.supernet.nasbench201")
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

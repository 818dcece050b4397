"""Your own search space (`oneshot.nas`): choice points in a Flax module, the space read from it, the
supernet path equal to the exported child, every controller and subcommand on it."""

import itertools
import json
import os
import re
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oneshot import UserError, api, nas, spaces, supernet, trust
from tests.conftest import REPO, tiny_config


class Cell(nn.Module):
  """A candidate with its own nested choice: 'act' matters only while 'op' is 'cell'."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(6, (3, 3))(x)
    return nas.Choice("act", {"relu": nn.relu, "tanh": jnp.tanh})(x)


class Net(nn.Module):
  width: int = 6

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = lambda y: nn.relu(nn.BatchNorm(use_running_average=not train)(y))
    x = norm(nas.Choice("kernel", {3: nn.Conv(self.width, (3, 3)), 5: nn.Conv(self.width, (5, 5))})(x))
    x = nas.Choice("op", {"cell": Cell(), "pool": lambda y: nn.avg_pool(y, (3, 3), padding="SAME"),
                          "skip": lambda y: y})(x)
    x = norm(nas.Choice("kernel", {3: nn.Conv(self.width, (3, 3)), 5: nn.Conv(self.width, (5, 5))})(x))
    return nn.Dense(10)(x.mean(axis=(1, 2)))


def _space(module=None):
  with nas.serving(module or Net()) as section:
    return spaces.build({**section, "input_shape": (8, 8, 1)})


def test_space_is_read_from_the_module():
  space = _space()
  assert space.name == "module" and space.names == ["kernel", "op", "act"]  # tied kernels: one decision
  assert [d.choices for d in space.decisions] == [(3, 5), ("cell", "pool", "skip"), ("relu", "tanh")]
  assert space.decisions[2].active_if == ("op", ("cell",)) and space.decisions[0].active_if is None
  assert space.size == 12
  assert space.skeleton == {"module": f"{Net.__module__}:Net", "kwargs": {"width": 6},
                            "input_shape": [8, 8, 1]}


@pytest.mark.parametrize("executor", ["switch", "mask"])
@pytest.mark.slow
def test_child_equals_supernet_path_for_every_architecture(executor):
  """Logits and gradients of the supernet on each path equal the child module's on its variables."""
  space, x = _space(), jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 1))
  labels = jnp.arange(16) % 10
  with nas.serving(Net()):
    model = supernet.build(space, 10, 1, executor)
    variables = model.init(jax.random.PRNGKey(0), x[:1], jnp.zeros(3, jnp.int32))
    params = variables.pop("params")

    def loss(p, dna):
      return -jnp.mean(jax.nn.log_softmax(model.apply({"params": p, **variables}, x, dna))[
          jnp.arange(16), labels])

    super_loss = jax.jit(jax.value_and_grad(loss))
    for dna in itertools.product(*[range(k) for k in space.num_choices]):
      child = supernet.child_model(space, dna, 10, 1)
      sliced = supernet.child_variables(space, {"params": params, **variables}, dna)

      def child_loss(p, child=child, sliced=sliced):
        logits, _ = child.apply({**sliced, "params": p}, x, train=True, mutable=["batch_stats"])
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), labels])

      (a, ga), (b, gb) = super_loss(params, jnp.asarray(dna)), jax.value_and_grad(child_loss)(
          sliced["params"])
      assert abs(float(a) - float(b)) < 1e-5, dna
      ga = supernet.child_variables(space, {"params": ga}, dna)["params"]
      assert jax.tree.structure(ga) == jax.tree.structure(gb), dna
      assert max(float(jnp.abs(u - v).max()) for u, v in zip(jax.tree.leaves(ga),
                                                               jax.tree.leaves(gb))) < 1e-5, dna
      if dna[1] != 0:  # 'pool' and 'skip' children carry no Cell weights
        assert "Cell_0" not in sliced["params"], dna


def test_child_variables_are_the_childs_own_tree():
  space = _space()
  with nas.serving(Net()):
    model = supernet.build(space, 10, 1, "switch")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros(3, jnp.int32))
    dna = space.from_values({"kernel": 5, "op": "pool", "act": "relu"})
    child = supernet.child_model(space, dna, 10, 1)
    own = jax.eval_shape(child.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    sliced = supernet.child_variables(space, variables, dna)
  assert jax.tree.map(jnp.shape, sliced) == jax.tree.map(lambda s: s.shape, own)
  assert set(sliced["params"]) == {"Conv_1", "Conv_3", "BatchNorm_0", "BatchNorm_1", "Dense_0"}


class TwoLabels(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nas.Choice("a", [nn.Dense(4), nn.Dense(4)])(x)
    return nas.Choice("a", {"x": nn.Dense(4), "y": nn.Dense(4)})(x)


class NoChoice(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(x)


class Shapes(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nas.Choice("width", {8: nn.Dense(8), 16: nn.Dense(16)})(x)


class BadChoices(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nas.Choice("f", {print: nn.Dense(8)})(x)


@pytest.mark.parametrize("module, needle", [
    (TwoLabels(), "labelled 'a' with different choices"),
    (NoChoice(), "has no nas.Choice"),
    (Shapes(), "candidates return different shapes"),
    (BadChoices(), "is not a string or number"),
])
def test_bad_modules_are_one_line(module, needle):
  with pytest.raises(UserError, match=needle) as info:
    _space(module)
  assert "\n" not in str(info.value)


def test_choice_outside_oneshot_and_unknown_modules_are_one_line():
  with pytest.raises(UserError, match="ran outside oneshot"):
    Net().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(UserError, match="defined in a script; pass it from Python"):
    nas.resolve("__main__:Net", {})
  with trust.scope(["no_such_package", "os"]):
    with pytest.raises(UserError, match="cannot import"):
      nas.resolve("no_such_package.models:Net", {})
    with pytest.raises(UserError, match="not a flax.linen Module class"):
      nas.resolve("os:system", {"command": "true"})   # a JSON file cannot make us call anything else
  with pytest.raises(UserError, match="the architecture has no choice for"):
    nas.FixedArchitecture(Net(), {"kernel": 3}).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


def _arrays() -> api.Arrays:
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 400)
  images = (rng.normal(size=(400, 8, 8, 1)) + labels[:, None, None, None] / 3).astype(np.float32)
  return api.Arrays(train=(images[:300], labels[:300]), validation=(images[300:], labels[300:]))


def _config(controller: str, steps: int = 8):
  config = tiny_config(num_steps=steps, checkpoint_every=steps, log_every=4)
  config.controller.name = controller
  config.supernet.executor = "auto"
  return config


@pytest.mark.parametrize("controller", ["enas", "tunas", "evolution", "random"])
@pytest.mark.slow
def test_every_controller_searches_exports_and_loads_your_module(tmp_path, controller):
  data = _arrays()
  result = api.search(_config(controller), str(tmp_path / "w"), data=data, model=Net())
  space = _space()
  assert space.validate(result.dna) == result.dna and 0 <= result.reward <= 1
  assert result.record["space"] == "module" and set(result.record["architecture"]) == set(space.names)
  child = api.export(result.workdir, str(tmp_path / "child"), data=data, model=Net(),
                     recalibrate_batches=2)
  model, variables = api.load(child.directory, model=Net())
  assert isinstance(model, nas.FixedArchitecture)
  images = data.validation[0][:32]
  path = api.supernet_logits(result.workdir, images, data=data, model=Net())
  alone, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
  assert float(jnp.abs(alone - path).max()) < 1e-5
  assert model.apply(variables, images, train=False).shape == (32, 10)
  with open(os.path.join(child.directory, "architecture.json")) as f:
    record = json.load(f)
  assert record["skeleton"]["module"] == f"{Net.__module__}:Net"
  assert record["model"] == ["oneshot.nas", "FixedArchitecture"]


def test_sandwich_warm_up_on_your_module_is_one_line_and_writes_nothing(tmp_path):
  config = _config("tunas")
  config.train.warmup_sampler = "sandwich"
  with pytest.raises(UserError, match="sandwich orders networks by the layer table") as info:
    api.search(config, str(tmp_path / "w"), data=_arrays(), model=Net())
  assert "\n" not in str(info.value) and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_recalibration_does_not_depend_on_your_batchnorm_momentum(tmp_path):
  """Our models' BN momentum is 0.9, Flax's default 0.99: recalibrated statistics are the union's."""
  space = _space()
  images = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, 16, 8, 8, 1))) * 2 + 1
  with nas.serving(Net()):
    child = supernet.child_model(space, (0, 1, 0), 10, 1)
    variables = child.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    from oneshot import child as child_lib  # pylint: disable=import-outside-toplevel
    stats = child_lib.ChildRunner(child).recalibrate(variables, [{"image": b} for b in images])
  x = images.reshape(32, 8, 8, 1)
  # The first BatchNorm sees the chosen 3x3 conv of the input: its statistics over both batches.
  kernel, bias = variables["params"]["Conv_0"]["kernel"], variables["params"]["Conv_0"]["bias"]
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  np.testing.assert_allclose(stats["batch_stats"]["BatchNorm_0"]["mean"], y.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["batch_stats"]["BatchNorm_0"]["var"], y.var((0, 1, 2)),
                             rtol=1e-3, atol=1e-5)


MODULE_FILE = textwrap.dedent('''
    import flax.linen as nn
    from oneshot import nas

    class Tiny(nn.Module):
      width: int = 4

      @nn.compact
      def __call__(self, x, train: bool = True):
        x = nas.Choice("kernel", {3: nn.Conv(self.width, (3, 3)), 5: nn.Conv(self.width, (5, 5))})(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nas.Choice("op", {"conv": nn.Conv(self.width, (1, 1)), "skip": lambda y: y})(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))
    ''')


@pytest.mark.slow
def test_cli_search_export_rank_and_train_on_an_importable_module(tmp_path):
  (tmp_path / "my_models.py").write_text(MODULE_FILE)
  (tmp_path / "cfg.py").write_text(textwrap.dedent('''
      from oneshot.configs.digits import get_config as _digits

      def get_config():
        c = _digits()
        c.space = dict(name="module", module="my_models:Tiny", kwargs=dict(width=4))
        c.train.num_steps, c.train.batch_size, c.train.reward_batch_size = 6, 16, 16
        c.train.checkpoint_every, c.train.standalone_steps = 6, 3
        return c
      '''))
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "XLA_FLAGS": ""}

  def oneshot(*args):
    proc = subprocess.run([sys.executable, "-m", "oneshot.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

  oneshot("search", "--config", "cfg.py", "--workdir", "w")
  with open(tmp_path / "w" / "config.json") as f:
    assert json.load(f)["space"]["input_shape"] == [8, 8, 1]   # filled from the dataset
  # config.json names my_models: the user says it may be imported (their config did, for train)
  oneshot("export", "--workdir", "w", "--dna", "1,1", "--out", "child", "--recalibrate_batches", "2",
          "--trust-module", "my_models")
  with open(tmp_path / "child" / "architecture.json") as f:
    assert json.load(f)["architecture"] == {"kernel": 5, "op": "skip"}
  oneshot("rank", "--workdir", "w", "--num-archs", "3", "--train-steps", "2",
          "--recalibrate-batches", "1", "--out", "rank.json", "--trust-module", "my_models")
  with open(tmp_path / "rank.json") as f:
    assert len(json.load(f)["archs"]) == 3
  oneshot("train", "--arch", "child", "--config", "cfg.py", "--workdir", "t")
  assert (tmp_path / "t" / "train_result.json").exists()


@pytest.mark.slow
def test_cli_on_a_script_module_says_to_use_python(tmp_path):
  """A class defined in a script cannot be imported by another process: one line, exit 2."""
  (tmp_path / "cfg.py").write_text(textwrap.dedent('''
      from oneshot.configs.digits import get_config as _digits

      def get_config():
        c = _digits()
        c.space = dict(name="module", module="__main__:Net", kwargs={})
        return c
      '''))
  proc = subprocess.run([sys.executable, "-m", "oneshot.cli", "search", "--config", "cfg.py",
                         "--workdir", "w"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": ""})
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count("\n") == 1 and "defined in a script" in proc.stderr, proc.stderr
  assert not (tmp_path / "w").exists()


def _readme_block() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  section = readme[readme.index("\n## Your own search space\n"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_own_space_runs_as_printed(tmp_path):
  """The README's block, verbatim: a kernel-size and an op choice on numpy data, searched, exported,
  reloaded, and the child's logits equal to the supernet path's to 1e-5."""
  proc = subprocess.run([sys.executable, "-c", _readme_block()], cwd=tmp_path, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert re.match(r"^\{'kernel': [35], 'op': '(conv|skip|maxpool)'\} validation accuracy 0\.\d{3}$",
                  lines[0]), lines
  diff = float(lines[1].rsplit("=", 1)[1])
  assert diff <= 1e-5, lines

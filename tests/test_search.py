"""End-to-end search on 8 CPU devices: outputs, exact resume, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from oneshot import checkpoint, cli, search_loop, session as session_lib, steps
from tests.conftest import REPO, tiny_config


def _state(workdir, config):
  sess = session_lib.build(config)
  return checkpoint.restore_latest(checkpoint.manager(workdir),
                                   sess.initial_state(steps.make_optimizer(config)))[1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_config()
  result = search_loop.run(config, workdir)
  return workdir, config, result


@pytest.mark.slow
def test_search_writes_the_contracted_outputs(straight):
  workdir, config, result = straight
  with open(os.path.join(workdir, "search_result.json")) as f:
    saved = json.load(f)
  for key in ("space", "dna", "architecture", "reward", "controller", "steps", "wall_seconds"):
    assert key in saved
  assert saved["space"] == "mobilenet" and saved["steps"] == config.train.num_steps
  assert isinstance(saved["dna"], list) and all(isinstance(i, int) for i in saved["dna"])
  assert 0.0 <= saved["reward"] <= 1.0
  assert saved["num_devices"] == 8
  for name, probs in saved["controller"].items():
    assert abs(sum(probs) - 1) < 1e-4, name
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [2, 4, 6]
  for key in ("loss", "accuracy", "mean_reward", "controller_entropy", "step_seconds"):
    assert key in rows[0]
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.path.getsize(os.path.join(workdir, "controller.png")) > 1000


@pytest.mark.slow
def test_stop_and_resume_equals_straight_run(straight, tmp_path):
  workdir, config, result = straight
  resumed_dir = str(tmp_path)
  assert search_loop.run(config, resumed_dir, stop_after=3) is None
  resumed = search_loop.run(config, resumed_dir)
  a, b = _state(workdir, config), _state(resumed_dir, config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert resumed["dna"] == result["dna"] and resumed["reward"] == result["reward"]
  with open(os.path.join(resumed_dir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [2, 4, 6]


@pytest.mark.parametrize("override,needle", [
    ("--config.dataset.name=no_such_dataset", "no_such_dataset"),
    ("--config.space.name=nospace", "unknown space"),
    ("--config.controller.name=nocontroller", "unknown controller"),
    ("--config.supernet.executor=pmap", "unknown executor"),
    ("--config.train.num_steps=abc", "num_steps"),
    ("--config.no_such_field=1", "no_such_field"),
    ("--config.supernet.sync_batch_norm=True", "sync_batch_norm"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(override, needle, tmp_path, capsys):
  workdir = tmp_path / "w"
  code = cli.main(["search", "--config", os.path.join(REPO, "configs", "digits.py"),
                   "--workdir", str(workdir), override])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_has_no_traceback_for_bad_input_in_a_fresh_process(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "oneshot.cli", "search", "--config",
                         os.path.join(REPO, "configs", "digits.py"), "--workdir", str(tmp_path / "w"),
                         "--config.dataset.name=no_such_dataset"],
                        capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert "no_such_dataset" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["enas", "evolution", "random"])
@pytest.mark.slow
def test_every_controller_drives_the_search(name, tmp_path):
  config = tiny_config(num_steps=4, checkpoint_every=4, log_every=2)
  config.controller.name = name
  result = search_loop.run(config, str(tmp_path))
  assert result["controller_name"] == name and result["steps"] == 4
  assert len(result["dna"]) == len(result["controller"])
  assert os.path.getsize(tmp_path / "controller.png") > 1000
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [2, 4]


class _Watched:
  """A metric value that records at which train step the host first looked at it."""

  def __init__(self, value, reads: list, calls: list):
    self.value, self.reads, self.calls = value, reads, calls

  def _read(self):
    self.reads.append(len(self.calls))
    return np.asarray(self.value)

  __array__ = lambda self, *a, **k: self._read()
  __bool__ = lambda self: bool(self._read())
  __int__ = lambda self: int(self._read())
  __float__ = lambda self: float(self._read())


@pytest.mark.parametrize("program", ["search", "train"])
@pytest.mark.slow
def test_metrics_are_read_from_the_device_only_on_logged_and_checkpointed_steps(
    program, monkeypatch, tmp_path):
  """A host read blocks until the step ends, so the next batch cannot be prepared meanwhile: the
  loops read loss/accuracy/finite only where a row is logged or a checkpoint written."""
  from oneshot import export, train  # pylint: disable=import-outside-toplevel
  reads, calls = [], []
  make = steps.make_train_step if program == "search" else steps.make_child_train_step

  def watching(*args, **kwargs):
    step = make(*args, **kwargs)

    def watched(*inputs):
      *out, metrics = step(*inputs)
      calls.append(1)
      return (*out, {k: _Watched(v, reads, calls) for k, v in metrics.items()})
    return watched

  config = tiny_config(num_steps=7, log_every=3, checkpoint_every=5)
  config.controller.name = "random"
  if program == "search":
    monkeypatch.setattr(steps, "make_train_step", watching)
    search_loop.run(config, str(tmp_path / "s"))
  else:
    search_loop.run(config, str(tmp_path / "s"))
    export.main(["--workdir", str(tmp_path / "s"), "--out", str(tmp_path / "arch")])
    monkeypatch.setattr(steps, "make_child_train_step", watching)
    train.run(config, str(tmp_path / "arch"), str(tmp_path / "t"))
  assert calls and sorted(set(reads)) == [3, 5, 6, 7]


@pytest.mark.slow
def test_warm_up_paths_are_drawn_a_logged_block_at_a_time_and_equal_step_by_step_draws(
    monkeypatch, tmp_path):
  """The uniform sampler draws on the device and reads the draw back: drawn step by step, that read
  waited for the train step in flight every step. Drawn after the loop's own read, a block up to the
  next logged step at once, it waits for nothing; the keys and so the paths stay those of each step."""
  from oneshot.controllers.uniform import RandomController  # pylint: disable=import-outside-toplevel
  config = tiny_config(num_steps=7, log_every=3, checkpoint_every=100)
  config.train.uniform_fraction = 1.0
  calls, draws = [], []
  make, propose = steps.make_train_step, RandomController.propose

  def counting(*args, **kwargs):
    step = make(*args, **kwargs)
    return lambda *inputs: (calls.append(1), step(*inputs))[1]

  def recording(self, state, key, num):
    draws.append((int(state["step"]), len(calls)))
    return propose(self, state, key, num)

  monkeypatch.setattr(steps, "make_train_step", counting)
  monkeypatch.setattr(RandomController, "propose", recording)
  search_loop.run(config, str(tmp_path / "s"))
  assert draws == [(s, s // 3 * 3) for s in range(7)]

  sess = session_lib.build(config)
  key, sampler = jax.random.PRNGKey(5), RandomController(sess.space)
  expected = [propose(sampler, {"step": np.asarray(s)}, search_loop.step_keys(key, s)[0], 8)
              for s in range(7)]
  for first in (0, 2):  # a run from the start, and one resumed mid-block
    paths = search_loop._WarmupPaths(sampler, key, 8, 3, 7)  # pylint: disable=protected-access
    for s in range(first, 7):
      np.testing.assert_array_equal(paths(s), expected[s])

"""Preemption and faults: SIGKILL, SIGTERM and a corrupted newest checkpoint all end in the run an
uninterrupted search would have produced, bit for bit on CPU.

Each interrupted run is `oneshot search` in a fresh process (8 CPU devices, inherited from conftest's
XLA_FLAGS, like the in-process reference), so the resume really starts from what is on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from oneshot import checkpoint, cli, search_loop, session as session_lib, steps
from tests import faults
from tests.conftest import REPO, config_file, tiny_config

STEPS, EVERY = 12, 2


def _config():
  return tiny_config(num_steps=STEPS, checkpoint_every=EVERY, log_every=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted search, in this process."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  config = _config()
  search_loop.run(config, workdir)
  return workdir, config


def _state(workdir: str, config) -> dict:
  sess = session_lib.build(config)
  return checkpoint.restore_latest(checkpoint.manager(workdir),
                                   sess.initial_state(steps.make_optimizer(config)))[1]


def _assert_same_run(workdir: str, reference_dir: str, config) -> None:
  """Same result file (but the wall clock), same metrics (but step times), bit-identical state."""
  def result(d):
    with open(os.path.join(d, "search_result.json")) as f:
      return {k: v for k, v in json.load(f).items() if k != "wall_seconds"}

  def metrics(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
      return [{k: v for k, v in json.loads(line).items() if k != "step_seconds"} for line in f]

  assert result(workdir) == result(reference_dir)
  assert metrics(workdir) == metrics(reference_dir)
  a, b = _state(workdir, config), _state(reference_dir, config)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _command(config_path: str, workdir: str) -> list[str]:
  return [sys.executable, "-m", "oneshot.cli", "search", "--config", config_path, "--workdir", workdir]


def _listing(workdir: str) -> tuple[list[int], list[str]]:
  """(finished checkpoint steps, other entries such as saves in progress) under workdir/checkpoints."""
  try:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
  except FileNotFoundError:
    return [], []
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if not n.isdigit()]


def _wait_for_checkpoint(proc: subprocess.Popen, workdir: str, log, timeout: float = 300) -> int:
  deadline = time.time() + timeout
  while time.time() < deadline:
    done, _ = _listing(workdir)
    if done:
      return done[0]
    assert proc.poll() is None, f"search exited {proc.returncode} before its first checkpoint:\n" + (
        open(log.name).read()[-3000:])
    time.sleep(0.02)
  proc.kill()
  raise AssertionError("no checkpoint within the timeout")


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_save_then_the_same_command_equals_an_uninterrupted_run(
    reference, tmp_path):
  """Killed after checkpoint 4's arrays are written but before orbax commits it (a tmp directory
  left behind), then run again: the same run as one without the kill."""
  _kill_resume_and_compare(*reference, tmp_path, "kill-in-save", 4, previous_checkpoint=2)


@pytest.mark.slow
def test_sigkill_resume_is_exact_for_a_gradient_controller(tmp_path):
  """GDAS: the architecture logits and their Adam state are checkpointed with the weights."""
  config = _config()
  config.controller.name = "gdas"
  config.train.uniform_fraction = 0.0
  search_loop.run(config, str(tmp_path / "uninterrupted"))
  _kill_resume_and_compare(str(tmp_path / "uninterrupted"), config, tmp_path, "kill-before-save", 6,
                           previous_checkpoint=4)


@pytest.mark.slow
def test_metrics_line_cut_by_a_kill_with_the_default_executor_and_controller(tmp_path):
  """What users run (executor auto -> switch, ENAS): killed halfway through metrics.jsonl's row for
  step 6, before checkpoint 6; the cut line and the rows past checkpoint 4 are dropped on resume."""
  config = tiny_config(num_steps=8, checkpoint_every=4, log_every=2)
  config.space.stages = ((8, 1, 1), (12, 1, 2))  # fewer switch branches to compile, 3 times
  config.supernet.executor = "auto"
  config.controller.name = "enas"
  config.controller.learning_rate = None  # ENAS's own
  search_loop.run(config, str(tmp_path / "uninterrupted"))
  _kill_resume_and_compare(str(tmp_path / "uninterrupted"), config, tmp_path, "cut-metrics-at", 6,
                           previous_checkpoint=4,
                           check_killed=lambda w: not open(os.path.join(w, "metrics.jsonl")).read()
                           .endswith("\n"))


def _kill_resume_and_compare(reference_dir: str, config, tmp_path, fault: str, at: int, *,
                             previous_checkpoint: int, check_killed=None) -> None:
  workdir = str(tmp_path / "w")
  config_path = config_file(tmp_path / "tiny.py", config)
  killed = faults.run(["search", "--config", config_path, "--workdir", workdir], fault, at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  done, other = _listing(workdir)
  assert done[-1] == previous_checkpoint and not os.path.exists(
      os.path.join(workdir, "search_result.json"))
  if fault == "kill-in-save":
    assert any(n.startswith(f"{at}.orbax-checkpoint-tmp") for n in other), other
  if check_killed is not None:
    assert check_killed(workdir)

  again = subprocess.run(_command(config_path, workdir), cwd=REPO, capture_output=True, text=True,
                         timeout=400)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"from step {previous_checkpoint}" in again.stderr
  assert not [n for n in _listing(workdir)[1] if "tmp" in n]  # the cut save was cleaned up
  _assert_same_run(workdir, reference_dir, config)


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_boundary_exits_0_and_resumes(reference, tmp_path):
  reference_dir, config = reference
  workdir = str(tmp_path / "w")
  with open(tmp_path / "terminated.log", "w") as log:
    proc = subprocess.Popen(_command(config_file(tmp_path / "tiny.py", config), workdir), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    _wait_for_checkpoint(proc, workdir, log)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
  output = (tmp_path / "terminated.log").read_text()
  assert code == 0, output[-3000:]
  stopped = re.search(r"stopped at step (\d+) and checkpointed; run the same command to resume",
                      output)
  assert stopped, output[-3000:]
  step = int(stopped.group(1))
  assert step < STEPS and _listing(workdir)[0][-1] == step  # the checkpoint is that step boundary's
  assert not os.path.exists(os.path.join(workdir, "search_result.json"))
  assert "Traceback" not in output

  search_loop.run(config, workdir)  # the same command, in this process: completes from `step`
  _assert_same_run(workdir, reference_dir, config)


def _truncate_data_files(step_dir: str) -> list[str]:
  """Cuts every array data file of a step in half, as a crash of the file system might. (Orbax may keep
  a per-process copy next to the merged one, so cutting only one file need not break the step.)"""
  paths = [os.path.join(d, f) for d, _, names in os.walk(step_dir) for f in names
           if os.path.basename(d) == "d"]
  for path in paths:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  return paths


@pytest.mark.slow
def test_corrupted_newest_checkpoint_warns_and_resumes_from_the_previous_one(reference, tmp_path,
                                                                             capsys):
  reference_dir, config = reference
  workdir = str(tmp_path / "w")
  shutil.copytree(reference_dir, workdir)
  os.remove(os.path.join(workdir, "search_result.json"))
  done, _ = _listing(workdir)
  newest, previous = done[-1], done[-2]
  assert newest == STEPS
  assert _truncate_data_files(os.path.join(workdir, "checkpoints", str(newest)))

  code = cli.main(["search", "--config", config_file(tmp_path / "tiny.py", config),
                   "--workdir", workdir])
  err = capsys.readouterr().err
  assert code == 0, err
  assert re.search(rf"warning: checkpoint {newest} in .* is unreadable", err)
  assert f"from step {previous}" in err
  assert os.path.isdir(os.path.join(workdir, "checkpoints", f"{newest}.unreadable"))  # kept aside
  _assert_same_run(workdir, reference_dir, config)


@pytest.mark.slow
def test_consecutive_nonfinite_steps_stop_with_one_line(tmp_path, capsys):
  """A learning rate that blows the weights up: every later loss is NaN/Inf, each such step is skipped
  and counted, and `max_nonfinite_steps` of them in a row stop the search with one line."""
  config = tiny_config(num_steps=8, log_every=1, checkpoint_every=100, learning_rate=1e30,
                       warmup_steps=0, max_nonfinite_steps=3)
  workdir = tmp_path / "w"
  code = cli.main(["search", "--config", config_file(tmp_path / "tiny.py", config),
                   "--workdir", str(workdir)])
  err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("step ")]
  assert code == 2 and len(err) == 1, err
  assert "3 consecutive steps had a NaN/Inf loss" in err[0] and "learning_rate" in err[0]
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["nonfinite"] for r in rows][-2:] == [1, 1]  # the stopping step itself is not logged
  assert not (workdir / "search_result.json").exists()

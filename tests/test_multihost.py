"""Two processes on localhost (CPU, 2 devices each) search exactly as one process with 4 devices.

The processes join through `launch.distributed.maybe_initialize` (ONESHOT_* environment), each reads
its half of every global batch, and they share one workdir as pod hosts share a bucket: orbax writes each
array once, and only process 0 writes result files. Gradients are averaged across processes (gloo), so
the params after 10 steps must equal the 4-device run's up to float summation order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from oneshot import checkpoint, search_loop, session as session_lib, steps
from tests.conftest import REPO, config_file, tiny_config

STEPS = 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(config_path: str, workdir: str, tmp_path, *extra: str) -> list[subprocess.Popen]:
  """Both processes of a 2-process `oneshot search`; output goes to files (pipes could fill and block)."""
  port = _free_port()
  procs = []
  for pid in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "ONESHOT_COORDINATOR_ADDRESS": f"localhost:{port}", "ONESHOT_NUM_PROCESSES": "2",
           "ONESHOT_PROCESS_ID": str(pid)}
    log = open(tmp_path / f"process{pid}.log", "w")  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "oneshot.cli", "search", "--config", config_path, "--workdir", workdir,
         *extra], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs: list[subprocess.Popen], tmp_path, timeout: float = 400) -> list[str]:
  """Exit codes must be 0; returns each process's output. Kills both if either hangs."""
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  logs = [(tmp_path / f"process{pid}.log").read_text() for pid in range(2)]
  for pid, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {pid} exited {p.returncode}:\n{log[-3000:]}"
  return logs


def _params(workdir: str, config) -> tuple[int, dict]:
  sess = session_lib.build(config)
  step, state = checkpoint.restore_latest(checkpoint.manager(workdir),
                                          sess.initial_state(steps.make_optimizer(config)))
  return step, state


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One process, the first 4 of its 8 devices (this test process), 10 steps."""
  config = tiny_config(num_steps=STEPS, checkpoint_every=5)
  config.num_devices = 4
  workdir = str(tmp_path_factory.mktemp("one"))
  return workdir, config, search_loop.run(config, workdir)


def _assert_matches(workdir: str, reference) -> None:
  one, config, expected = reference
  with open(os.path.join(workdir, "search_result.json")) as f:
    result = json.load(f)
  assert result["num_devices"] == 4 and result["steps"] == STEPS
  assert result["dna"] == expected["dna"]
  assert abs(result["reward"] - expected["reward"]) < 1e-6
  for name, probs in result["controller"].items():
    np.testing.assert_allclose(probs, expected["controller"][name], atol=1e-5)
  (step_a, a), (step_b, b) = _params(one, config), _params(workdir, config)
  assert step_a == step_b == STEPS
  leaves_a, leaves_b = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
  for x, y in zip(jax.tree.leaves(a["controller"]), jax.tree.leaves(b["controller"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_four_devices(reference, tmp_path):
  two = str(tmp_path / "two")
  logs = _wait(_start(config_file(tmp_path / "tiny.py", tiny_config(num_steps=STEPS,
                                                                    checkpoint_every=5)),
                      two, tmp_path), tmp_path)
  assert "searched" in logs[0] and "searched" not in logs[1]  # process 0 reports, once
  assert not [n for n in os.listdir(two) if n.startswith(".tmp-")]
  # Only process 0 writes result files: two writers would append every metrics row twice and leave
  # two TensorBoard event files.
  with open(os.path.join(two, "metrics.jsonl")) as f:
    logged = [json.loads(line)["step"] for line in f]
  assert logged == sorted(set(logged)) and logged[-1] == STEPS
  assert len(os.listdir(os.path.join(two, "tensorboard"))) == 1
  _assert_matches(two, reference)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_matches(reference, tmp_path):
  """A preemption notice reaches hosts at different moments; they must still stop at the same step
  (else one waits forever in the next step's collectives) and resume to the same result."""
  two = str(tmp_path / "two")
  config_path = config_file(tmp_path / "tiny.py", tiny_config(num_steps=STEPS, checkpoint_every=2))
  procs = _start(config_path, two, tmp_path)
  checkpoints = os.path.join(two, "checkpoints")
  deadline = time.time() + 300
  while not (os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))):
    assert time.time() < deadline and all(p.poll() is None for p in procs), "no first checkpoint"
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGTERM)  # process 1 only
  logs = _wait(procs, tmp_path, timeout=120)
  stops = [re.findall(r"stopped at step (\d+) and checkpointed", log) for log in logs]
  assert stops[0] and stops[0] == stops[1], logs
  step = int(stops[0][0])
  assert step < STEPS and max(int(n) for n in os.listdir(checkpoints) if n.isdigit()) == step
  assert not os.path.exists(os.path.join(two, "search_result.json"))

  logs = _wait(_start(config_path, two, tmp_path), tmp_path)  # the same command on both hosts
  assert all(f"from step {step}" in log for log in logs)
  _assert_matches(two, reference)

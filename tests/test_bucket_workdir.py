"""gs:// workdirs: every file of a search, its checkpoints and an export go to the bucket
(a fake one, tests/fake_bucket.py) and nothing to the current directory; resume from the bucket is
exact; an unreachable bucket is one line, exit 2, with nothing created locally."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from oneshot import api, checkpoint, search_loop, session as session_lib, steps, storage
from oneshot.errors import UserError
from tests import faults
from tests.conftest import config_file, tiny_config
from tests.fake_bucket import fake_bucket

STEPS, EVERY = 8, 2


def _config():
  return tiny_config(num_steps=STEPS, checkpoint_every=EVERY, log_every=2)


def _run(root, cwd, args, kill_before_save=None):
  return faults.run(args, None if kill_before_save is None else "kill-before-save", kill_before_save,
                    bucket=root, cwd=cwd)


def _state(workdir, config) -> dict:
  sess = session_lib.build(config)
  return checkpoint.restore_latest(checkpoint.manager(workdir),
                                   sess.initial_state(steps.make_optimizer(config)))[1]


def _files(directory) -> set[str]:
  return {os.path.relpath(os.path.join(d, f), directory)
          for d, _, files in os.walk(directory) for f in files}


@pytest.fixture(scope="module")
def bucket_run(tmp_path_factory):
  """A search killed (SIGKILL, as it was about to save checkpoint 6) and resumed in a bucket, run from
  an empty current directory, beside the same search run locally without interruption."""
  tmp = tmp_path_factory.mktemp("bucket")
  config = _config()
  local = str(tmp / "local")
  search_loop.run(config, local)
  root, cwd = tmp / "bucket-root", tmp / "cwd"
  (root / "b").mkdir(parents=True)
  cwd.mkdir()
  args = ["search", "--config", config_file(tmp / "tiny.py", config), "--workdir", "gs://b/run"]
  killed = _run(root, cwd, args, kill_before_save=6)
  assert killed.returncode == -9, killed.stderr[-2000:]
  checkpoints_after_kill = sorted(os.listdir(root / "b" / "run" / "checkpoints"))
  here = os.getcwd()
  os.chdir(cwd)
  try:
    with fake_bucket(str(root)):
      search_loop.run(config, "gs://b/run")  # the same command again, resuming from the bucket
  finally:
    os.chdir(here)
  return {"config": config, "local": local, "root": root, "cwd": cwd,
          "checkpoints_after_kill": checkpoints_after_kill}


@pytest.mark.slow
def test_search_killed_and_resumed_in_a_bucket_equals_a_local_run(bucket_run):
  config, root = bucket_run["config"], bucket_run["root"]
  assert bucket_run["checkpoints_after_kill"] == ["2", "4"]
  remote = root / "b" / "run"
  assert os.listdir(bucket_run["cwd"]) == []  # nothing beside the bucket, e.g. no ./gs:/b/run
  written = _files(remote)
  for name in ("config.json", "metrics.jsonl", "controller_history.json", "search_result.json",
               "controller.png"):
    assert name in written
  assert any(n.startswith("tensorboard/events.out.tfevents.") for n in written)

  def result(d):
    return {k: v for k, v in json.loads((d / "search_result.json").read_text()).items()
            if k != "wall_seconds"}

  def metrics(d):
    return [{k: v for k, v in json.loads(line).items() if k != "step_seconds"}
            for line in (d / "metrics.jsonl").read_text().splitlines()]

  local = storage.as_path(bucket_run["local"])
  assert result(remote) == result(local)
  assert metrics(remote) == metrics(local)  # the killed run's rows past step 4 were dropped
  with fake_bucket(str(root)):
    a, b = _state("gs://b/run", config), _state(bucket_run["local"], config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_export_and_load_through_the_bucket(bucket_run, tmp_path, monkeypatch):
  root = bucket_run["root"]
  monkeypatch.chdir(tmp_path)
  local_export = str(tmp_path / "export")
  with fake_bucket(str(root)):
    api.export("gs://b/run", "gs://b/exports/child", recalibrate_batches=2)
    api.export("gs://b/run", "gs://b/exports/child", recalibrate_batches=2)  # replaces the first
    api.export("gs://b/run", local_export, recalibrate_batches=2)
    model, remote_vars = api.load("gs://b/exports/child")
    _, local_vars = api.load(local_export)
    logits = model.apply(remote_vars, np.zeros((2, 8, 8, 1), np.float32), train=False)
  assert logits.shape == (2, 10)
  for x, y in zip(jax.tree.leaves(remote_vars), jax.tree.leaves(local_vars), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  child = root / "b" / "exports" / "child"
  assert (child / "architecture.json").exists() and (child / "checkpoint").is_dir()
  assert os.listdir(tmp_path) == ["export"]


@pytest.mark.slow
def test_unreachable_bucket_is_one_line_exit_2_and_nothing_local(tmp_path):
  root, cwd = tmp_path / "bucket-root", tmp_path / "cwd"
  root.mkdir()
  cwd.mkdir()
  config = config_file(tmp_path / "tiny.py", _config())
  for command in (["search", "--config", config, "--workdir", "gs://no-such-bucket/run"],
                  ["export", "--workdir", "gs://no-such-bucket/run", "--out", str(cwd / "x")]):
    out = _run(root, cwd, command)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "gs://no-such-bucket" in lines[0], out.stderr
    assert os.listdir(cwd) == [] and os.listdir(root) == []


def test_without_a_storage_client_a_bucket_workdir_is_one_line_naming_it(monkeypatch):
  pytest.importorskip("fsspec")
  try:
    import gcsfs  # pylint: disable=import-outside-toplevel,unused-import
    pytest.skip("gcsfs is installed: the real client would try the network")
  except ImportError:
    pass
  with pytest.raises(UserError, match=r"gcsfs.*oneshot\[gcs\]"):
    storage.ensure_workdir("gs://some-bucket/run")


def test_growing_files_in_a_bucket_are_rewritten_whole_at_most_every_few_seconds(tmp_path,
                                                                                monkeypatch):
  (tmp_path / "b").mkdir()
  clock = [100.0]
  monkeypatch.setattr(storage.time, "monotonic", lambda: clock[0])
  object_path = tmp_path / "b" / "run" / "metrics.jsonl"
  with fake_bucket(str(tmp_path)):
    log = storage.MetricsLog("gs://b/run/metrics.jsonl", 0)
    log.write({"step": 1, "loss": 1.0})
    assert object_path.read_text() == ""  # GCS takes ~1 write/s per object: not every row
    clock[0] += storage.REMOTE_FLUSH_SECONDS
    log.write({"step": 2, "loss": 0.5})
    assert [json.loads(r)["step"] for r in object_path.read_text().splitlines()] == [1, 2]
    log.write({"step": 3, "loss": 0.25})
    log.flush()  # as the search does before each checkpoint
    assert len(object_path.read_text().splitlines()) == 3
    log.write({"step": 4, "loss": 0.125})
    log.close()
    assert len(object_path.read_text().splitlines()) == 4
    resumed = storage.MetricsLog("gs://b/run/metrics.jsonl", 2)  # rows past the checkpoint dropped
    resumed.close()
  assert [json.loads(r)["step"] for r in object_path.read_text().splitlines()] == [1, 2]

"""What a run shows while it runs: TensorBoard event files beside metrics.jsonl, and rate/ETA."""

import io as stdio
import json
import os
import struct

import pytest

from oneshot import UserError, search_loop, storage
from tests.conftest import tiny_config


def _events(directory: str) -> list:
  """Every event in the directory's event files, checking each record's framing and checksums."""
  from tensorboardX.proto.event_pb2 import Event  # pylint: disable=import-outside-toplevel
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel
  events = []
  for name in sorted(os.listdir(directory)):
    assert name.startswith("events.out.tfevents."), name
    with open(os.path.join(directory, name), "rb") as f:
      raw = f.read()
    at = 0
    while at < len(raw):
      header = raw[at:at + 8]
      (length,) = struct.unpack("Q", header)
      assert struct.unpack("I", raw[at + 8:at + 12])[0] == masked_crc32c(header)
      data = raw[at + 12:at + 12 + length]
      assert struct.unpack("I", raw[at + 12 + length:at + 16 + length])[0] == masked_crc32c(data)
      events.append(Event.FromString(data))
      at += 16 + length
  return events


def _scalars(events) -> dict[str, dict[int, float]]:
  out: dict[str, dict[int, float]] = {}
  for event in events:
    for value in event.summary.value:
      out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


@pytest.mark.slow
def test_search_writes_tensorboard_scalars_at_the_logged_steps(tmp_path):
  config = tiny_config(num_steps=4, log_every=2, checkpoint_every=4)
  search_loop.run(config, str(tmp_path))
  events = _events(str(tmp_path / "tensorboard"))
  assert events[0].file_version == "brain.Event:2"
  scalars = _scalars(events)
  for tag in ("loss", "accuracy", "mean_reward", "controller_entropy", "step_seconds"):
    assert sorted(scalars[tag]) == [2, 4], tag
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert scalars["loss"][4] == pytest.approx(rows[-1]["loss"], rel=1e-6)
  probabilities = {t: v for t, v in scalars.items() if t.startswith("controller/")}
  block0_kernel = [v[4] for t, v in probabilities.items() if t.startswith("controller/block0/kernel/")]
  assert len(block0_kernel) == 2 and sum(block0_kernel) == pytest.approx(1.0, abs=1e-5)


def test_a_resumed_log_hides_the_earlier_runs_later_events(tmp_path):
  log = storage.MetricsLog(str(tmp_path / "metrics.jsonl"), 0, str(tmp_path / "tb"))
  for step in (1, 2, 3):
    log.write({"step": step, "loss": float(step)})
  log.close()
  log = storage.MetricsLog(str(tmp_path / "metrics.jsonl"), 2, str(tmp_path / "tb2"))
  log.write({"step": 3, "loss": 13.0})
  log.close()
  purge = [e for e in _events(str(tmp_path / "tb2")) if e.HasField("session_log")]
  assert len(purge) == 1 and purge[0].step == 3  # TensorBoard drops events >= 3 of earlier files
  assert [l.count('"step"') for l in open(tmp_path / "metrics.jsonl")] == [1, 1, 1]


def test_an_unwritable_tensorboard_directory_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match="cannot write .*disk is not full"):
    storage.MetricsLog(str(tmp_path / "metrics.jsonl"), 0, str(tmp_path / "file" / "tb"))


def test_progress_lines_show_rate_and_eta(monkeypatch):
  clock = iter([100.0, 110.0, 120.0])
  monkeypatch.setattr(storage.time, "time", lambda: next(clock))
  stream = stdio.StringIO()
  progress = storage.Progress(total=100, every=10, stream=stream)
  progress.update(10, "a")   # the first line: no rate yet (it would include compilation)
  progress.update(20, "b")   # 10 steps in 10 s
  progress.update(30, "c")
  lines = stream.getvalue().splitlines()
  assert lines[0] == "step 10/100 a"
  assert lines[1] == "step 20/100 b | 1 steps/s, ETA 0:01:20"
  assert lines[2] == "step 30/100 c | 1 steps/s, ETA 0:01:10"

"""Files a run writes: never half-written (temp file + rename), and a metrics log that survives resume."""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import time
from typing import Any, TextIO

from oneshot.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` to `path` atomically: readers see the old file or the new one, never a prefix."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode())


def write_bytes(path: str, data: bytes) -> None:
  """Atomic write; on failure (disk full, read-only) the temporary file is removed, the old file kept."""
  directory = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any other file
    os.replace(tmp, path)
  except OSError as e:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    raise write_error(path, e) from None


def write_error(path: str, e: OSError, resumable: bool = False) -> UserError:
  """The one line for a failed write; `resumable` where a run can simply be started again."""
  return UserError(f"cannot write {path}: {e.strerror}; check that the directory is writable and the "
                   "disk is not full" + (", then run the same command to resume" if resumable else ""))


def _default(value: Any) -> Any:
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def ensure_workdir(path: str) -> str:
  """Creates the workdir, or says in one line why it cannot be used."""
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {path}: {e.strerror}; pick a writable --workdir") from None
  if not os.access(path, os.W_OK) or not _can_create_file(path):
    raise UserError(f"workdir {path} is not writable; pick a writable --workdir")
  return path


def _can_create_file(directory: str) -> bool:
  """Tries it: `os.access` can say yes where creating a file fails (root on /sys, some network and
  read-only mounts), and the first real write would then fail mid-run instead of up front."""
  try:
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".tmp-probe-")
  except OSError:
    return False
  os.close(fd)
  os.remove(probe)
  return True


class MetricsLog:
  """`metrics.jsonl`: one JSON object per logged step; on resume, rows past the restored step are dropped
  so the file reads as one uninterrupted run. With `tensorboard_dir`, the same numbers (and any extra
  scalars, such as the controller's per-choice probabilities) also go to TensorBoard event files there;
  on resume, events past the restored step are purged the same way."""

  def __init__(self, path: str, resume_step: int, tensorboard_dir: str | None = None):
    self.path = path
    rows = []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            row = json.loads(line)
          except json.JSONDecodeError:
            break  # a line cut by a kill: drop it and everything after
          if row.get("step", 0) <= resume_step:
            rows.append(line if line.endswith("\n") else line + "\n")
    write_text(path, "".join(rows))
    self._file: TextIO = open(path, "a")
    self._tensorboard = (_EventFile(tensorboard_dir, resume_step + 1 if resume_step else None)
                         if tensorboard_dir is not None else None)

  def write(self, row: dict, scalars: dict[str, float] | None = None) -> None:
    try:
      self._file.write(json.dumps(row, default=_default) + "\n")
      self._file.flush()
    except OSError as e:  # a cut line is dropped on resume (see __init__)
      raise write_error(self.path, e, resumable=True) from None
    if self._tensorboard is not None:
      numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
      self._tensorboard.write(int(row["step"]), {**numbers, **(scalars or {})})

  def close(self) -> None:
    self._file.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


class _EventFile:
  """TensorBoard event file of scalars, written in the caller's thread.

  tensorboardX's SummaryWriter writes from a background thread, so a full disk would end in that
  thread's traceback rather than our one line; its protos and record checksum (no TensorFlow) are used
  here with our own file. `purge_step`: a resumed run hides the earlier run's events from that step
  on, as SummaryWriter(purge_step=...) does.
  """

  def __init__(self, directory: str, purge_step: int | None):
    # pylint: disable=import-outside-toplevel
    import socket
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    self._event = Event
    self.path = os.path.join(directory, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
    first = [Event(wall_time=time.time(), file_version="brain.Event:2")]
    if purge_step is not None:
      first.append(Event(wall_time=time.time(), step=purge_step,
                         session_log=SessionLog(status=SessionLog.START)))
    try:
      os.makedirs(directory, exist_ok=True)
      self._file = open(self.path, "ab")
    except OSError as e:
      raise write_error(self.path, e) from None
    self._write(first)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    from tensorboardX.summary import scalar  # pylint: disable=import-outside-toplevel
    now = time.time()
    self._write([self._event(wall_time=now, step=step, summary=scalar(tag, float(value)))
                 for tag, value in scalars.items()])

  def _write(self, events: list) -> None:
    """TFRecord framing: length, its masked CRC-32C, the event, its masked CRC-32C."""
    from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel
    try:
      for event in events:
        data = event.SerializeToString()
        header = struct.pack("Q", len(data))
        self._file.write(header + struct.pack("I", masked_crc32c(header)) + data
                         + struct.pack("I", masked_crc32c(data)))
      self._file.flush()
    except OSError as e:
      raise write_error(self.path, e, resumable=True) from None

  def close(self) -> None:
    self._file.close()


class Progress:
  """A one-line progress bar on a terminal; plain log lines every `every` steps otherwise."""

  def __init__(self, total: int, every: int, stream: TextIO | None = None):
    # sys.stderr looked up now, not at import: it may have been replaced since (tests, notebooks)
    self.total, self.every, self.stream = total, max(1, every), stream or sys.stderr
    self.tty = self.stream.isatty()
    self.first: tuple[int, float] | None = None

  def update(self, step: int, text: str) -> None:
    text = f"{text}{self._rate(step)}"
    if self.tty:
      width = 30
      done = int(width * step / max(1, self.total))
      self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total} {text}  ")
      self.stream.flush()
    elif step % self.every == 0 or step == self.total:
      self.stream.write(f"step {step}/{self.total} {text}\n")
      self.stream.flush()

  def _rate(self, step: int) -> str:
    """' | 12.3 steps/s, ETA 4:05', timed from the first update (after the first step's compile)."""
    now = time.time()
    if self.first is None:
      self.first = (step, now)
      return ""
    steps, seconds = step - self.first[0], now - self.first[1]
    if steps <= 0 or seconds <= 0:
      return ""
    rate = steps / seconds
    eta = int(round((self.total - step) / rate))
    return f" | {rate:.3g} steps/s, ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"

  def close(self) -> None:
    if self.tty:
      self.stream.write("\n")

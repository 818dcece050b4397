"""Files a run writes: never half-written, and a metrics log that survives resume.

Every workdir path is an `etils.epath.Path`, so a workdir may be local or in a bucket (gs://; orbax
takes the same paths). Local files are written to a temporary name and renamed; an object store
replaces an object whole on upload, so a reader there too sees the old file or the new one.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, TextIO

from etils import epath

from oneshot.errors import UserError

PathLike = str | os.PathLike
# GCS allows about one write per second to the same object; files that grow (metrics, events) are
# rewritten at most this often in a bucket, and whenever the run checkpoints or ends.
REMOTE_FLUSH_SECONDS = 5.0
# How long the check that a bucket workdir can be written may take before it counts as unreachable.
REMOTE_PROBE_SECONDS = 60.0


_UMASK = os.umask(0)
os.umask(_UMASK)


def is_remote(path: PathLike) -> bool:
  """A bucket URL (gs://, s3://...) rather than a local path."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """A local path made absolute (`~` expanded), or a bucket URL kept as it is."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def write_json(path: PathLike, obj: Any) -> None:
  """Writes `obj` to `path` atomically: readers see the old file or the new one, never a prefix."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode())


def write_bytes(path: PathLike, data: bytes) -> None:
  """Atomic write; on failure (disk full, read-only) the temporary file is removed, the old file kept."""
  if is_remote(path):
    target = epath.Path(path)
    try:
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
    except Exception as e:  # pylint: disable=broad-except  # storage clients raise their own types
      raise write_error(target, e) from None
    return
  path = os.fspath(path)
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


def write_error(path: PathLike, e: Exception, resumable: bool = False) -> UserError:
  """The one line for a failed write; `resumable` where a run can simply be started again."""
  reason = getattr(e, "strerror", None) or first_line(e)
  return UserError(f"cannot write {path}: {reason}; check that the directory is writable and the "
                   "disk is not full" + (", then run the same command to resume" if resumable else ""))


def _default(value: Any) -> Any:
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def ensure_workdir(path: PathLike) -> epath.Path:
  """Creates the workdir, or says in one line why it cannot be used."""
  if is_remote(path):
    return _ensure_remote_workdir(epath.Path(path))
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {path}: {e.strerror}; pick a writable --workdir") from None
  if not os.access(path, os.W_OK) or not _can_create_file(path):
    raise UserError(f"workdir {path} is not writable; pick a writable --workdir")
  return epath.Path(path)


def _ensure_remote_workdir(path: epath.Path) -> epath.Path:
  """Writes and deletes a probe object, so that a bucket that does not exist, has no credentials or
  cannot be reached fails here in one line, before anything is written (locally or remotely)."""
  def probe() -> None:
    path.mkdir(parents=True, exist_ok=True)
    marker = path / f".oneshot-probe-{uuid.uuid4().hex}"  # hosts of a pod probe at once
    marker.write_bytes(b"")
    marker.unlink()
  _bucket_call(path, probe, "write to")
  return path


def check_writable(path: str, flag: str) -> None:
  """Fails before minutes of work, not after, when local `path` cannot be created."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.access(parent, os.W_OK):
    raise UserError(f"cannot write {flag} {path}: {parent} is not writable; pick another path")


def check_output_file(out: str, flag: str, example: str) -> epath.Path:
  """The path of an output file a command writes at its end, checked at its start: not a directory,
  and writable (a bucket: it answers and can be written)."""
  path = as_path(out)
  if path.is_dir():
    raise UserError(f"{flag} {out} is a directory; give a file name such as {out}/{example}")
  if is_remote(path):
    ensure_workdir(path.parent)
  else:
    check_writable(os.fspath(path), flag)
  return path


def require_readable(path: PathLike) -> None:
  """For commands that read a workdir: a bucket that cannot be reached is one line, not a traceback
  from deep inside a storage client (local paths are checked where they are read)."""
  if is_remote(path):
    _bucket_call(epath.Path(path), epath.Path(path).exists, "read")


def _bucket_call(path: epath.Path, call, verb: str) -> None:
  """Runs `call` with a time bound (storage clients retry a dead network for minutes); any failure
  becomes one line naming the bucket."""
  bucket = "/".join(os.fspath(path).split("/")[:3])
  outcome: list[BaseException | None] = []

  def run() -> None:
    try:
      call()
      outcome.append(None)
    except BaseException as e:  # pylint: disable=broad-except  # reported below, as one line
      outcome.append(e)

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(REMOTE_PROBE_SECONDS)
  if not outcome:
    raise UserError(f"cannot reach {bucket} (no answer in {REMOTE_PROBE_SECONDS:.0f} s) for {path}; "
                    "check the network and the bucket name")
  error = outcome[0]
  if isinstance(error, ImportError):
    raise UserError(f"{path} needs a storage client: {first_line(error)} (pip install "
                    "'oneshot[gcs]'), or use a local directory")
  if error is not None:
    raise UserError(f"cannot {verb} bucket {bucket} ({path}): {first_line(error)}; check the bucket "
                    "name, network access and credentials (gcloud auth application-default login)")


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

  def __init__(self, path: PathLike, resume_step: int, tensorboard_dir: PathLike | None = None):
    self.path = epath.Path(path)
    rows = []
    if self.path.exists():
      for line in self.path.read_text().splitlines(keepends=True):
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          break  # a line cut by a kill: drop it and everything after
        if row.get("step", 0) <= resume_step:
          rows.append(line if line.endswith("\n") else line + "\n")
    self._file = _GrowingFile(self.path, "".join(rows).encode())
    self._tensorboard = (_EventFile(epath.Path(tensorboard_dir),
                                    resume_step + 1 if resume_step else None)
                         if tensorboard_dir is not None else None)

  def write(self, row: dict, scalars: dict[str, float] | None = None) -> None:
    self._file.append((json.dumps(row, default=_default) + "\n").encode())
    if self._tensorboard is not None:
      numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
      self._tensorboard.write(int(row["step"]), {**numbers, **(scalars or {})})

  def flush(self) -> None:
    """Makes every row so far durable (a no-op locally, where each row is flushed as written)."""
    self._file.flush()
    if self._tensorboard is not None:
      self._tensorboard.file.flush()

  def close(self) -> None:
    self._file.close()
    if self._tensorboard is not None:
      self._tensorboard.file.close()


class _GrowingFile:
  """A file that is only appended to, starting from `content` (which replaces what was there).

  Locally: a file open for appending, flushed on every write (a kill cuts at most the last line,
  which readers drop). Object stores have no append, so there the whole object is rewritten, at most
  every REMOTE_FLUSH_SECONDS and on `flush`/`close`; a failed write is one line either way.
  """

  def __init__(self, path: epath.Path, content: bytes):
    self.path = path
    self._remote = is_remote(path)
    write_bytes(path, content)
    self._content, self._dirty, self._written = bytearray(content), False, time.monotonic()
    if not self._remote:
      try:
        self._file = open(os.fspath(path), "ab")  # pylint: disable=consider-using-with
      except OSError as e:
        raise write_error(path, e) from None

  def append(self, data: bytes) -> None:
    if not self._remote:
      try:
        self._file.write(data)
        self._file.flush()
      except OSError as e:
        raise write_error(self.path, e, resumable=True) from None
      return
    self._content += data
    self._dirty = True
    if time.monotonic() - self._written >= REMOTE_FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    if self._remote and self._dirty:
      write_bytes(self.path, bytes(self._content))
      self._dirty, self._written = False, time.monotonic()

  def close(self) -> None:
    self.flush()
    if not self._remote:
      self._file.close()


class _EventFile:
  """TensorBoard event file of scalars, written in the caller's thread.

  tensorboardX's SummaryWriter writes from a background thread, so a full disk would end in that
  thread's traceback rather than our one line (and it cannot write to a bucket without TensorFlow);
  its protos and record checksum (no TensorFlow) are used here with our own file. `purge_step`: a
  resumed run hides the earlier run's events from that step on, as SummaryWriter(purge_step=...) does.
  """

  def __init__(self, directory: epath.Path, purge_step: int | None):
    # pylint: disable=import-outside-toplevel
    import socket
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    self._event = Event
    self.file = _GrowingFile(
        directory / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}", b"")
    first = [Event(wall_time=time.time(), file_version="brain.Event:2")]
    if purge_step is not None:
      first.append(Event(wall_time=time.time(), step=purge_step,
                         session_log=SessionLog(status=SessionLog.START)))
    self._write(first)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    from tensorboardX.summary import scalar  # pylint: disable=import-outside-toplevel
    now = time.time()
    self._write([self._event(wall_time=now, step=step, summary=scalar(tag, float(value)))
                 for tag, value in scalars.items()])

  def _write(self, events: list) -> None:
    """TFRecord framing: length, its masked CRC-32C, the event, its masked CRC-32C."""
    from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel
    records = []
    for event in events:
      data = event.SerializeToString()
      header = struct.pack("Q", len(data))
      records.append(header + struct.pack("I", masked_crc32c(header)) + data
                     + struct.pack("I", masked_crc32c(data)))
    self.file.append(b"".join(records))


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

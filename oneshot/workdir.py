"""One run per workdir: what a workdir is, whether a command may continue it, and its lock.

`claim` is the one entry for every command that writes a workdir (search, cosearch, train). Before
anything is written it checks, in this order:

1. **Identity.** A missing or empty directory is a new workdir. A non-empty one must be a workdir of
   this project of the command's kind (its config.json, or the marker file of that kind, see
   `MARKERS`); anything else, such as a folder of the user's own files, is refused, since a run would
   replace files with the names it writes (config.json, metrics.jsonl...).
2. **Same run.** The new config is compared with the workdir's config.json (and, for train, the
   architecture setup with train_setup.json): an identical one resumes; any other difference names the
   first differing key and suggests a new workdir. Only the `REPORTING_ONLY` fields may differ (they
   change what is written about a run, never its numbers), and the `MAY_GROW` budget. A field on one
   side only is a difference too.
3. **Lock.** The directory is created and locked; the checks are repeated under the lock, as another
   run may have started in between.

The lock. A local workdir holds `LOCK_FILE` with an exclusive `fcntl.flock`: the kernel releases it
when the process ends however it ends, so a lock is never stale. The file stays behind (removing it
would race with a run taking it) and names the last holder. A bucket has no flock: the lock is an
object created only if absent (one winner), holding its owner's pid, host, a token and a heartbeat
time that the owner rewrites every `REFRESH_SECONDS`, and that it deletes on exit.

Stale-lock rule (buckets): a lock object counts as stale when its heartbeat is older than
`STALE_SECONDS` (the owner was killed or preempted: nothing rewrites it), or when it names this host and
a pid that is no longer running. A stale lock is taken over by creating, also only if absent, a
takeover object named after the stale lock's token, so of several runs finding the same stale lock
one wins. Hosts' clocks must agree to well within `STALE_SECONDS`.

A multi-process job (a pod) takes the lock on process 0 only, and every process learns the outcome.
Within one process a claim is re-entrant: `cosearch` holds its workdir while its `search` trains the
supernet there, and the inner claim checks nothing more.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator, Sequence

from etils import epath

from oneshot import storage
from oneshot.errors import UserError

LOCK_FILE = ".oneshot-lock"
# Fields that only change reporting (how often rows and checkpoints are written, where XLA caches
# compiled code, how a launcher named the machine): the run's numbers are the same either way.
REPORTING_ONLY = ("train.log_every", "train.checkpoint_every", "compilation_cache_dir", "launch")
# Fields a resumed run may raise: the co-search's budget (its state file records how far it got, and a
# larger budget continues the same trajectory; the supernet never reads it).
MAY_GROW = ("cosearch.outer_budget",)
# The files that mark a workdir of each kind (any one of them).
MARKERS = {"search": ("config.json", "cosearch_state.json"),
           "cosearch": ("config.json", "cosearch_state.json"),
           "train": ("train_setup.json",)}
TRAIN_SETUP = "train_setup.json"
REFRESH_SECONDS = 60.0
STALE_SECONDS = 300.0
# The sections every config.json of this project has: a JSON file without them is someone else's.
_SECTIONS = ("dataset", "space", "train")


# --- what a workdir holds --------------------------------------------------------------------------
def config_dict(config: Any) -> dict:
  """The config as config.json holds it (tuples as lists, placeholders as null)."""
  from oneshot import configuration  # pylint: disable=import-outside-toplevel
  return json.loads(configuration.to_json(config))


def read_json_object(path: epath.Path, fix: str) -> dict:
  """A JSON object from `path`, or one line naming the file and `fix`."""
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path} ({storage.first_line(e)[:120]}): the file is damaged; "
                    f"{fix}") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} holds a JSON {type(value).__name__}, not an object: the file is damaged; "
                    f"{fix}")
  return value


def read_config(path: epath.Path, fix: str) -> dict:
  """A workdir's config.json as a dict, checked to be a config of this project."""
  value = read_json_object(path, fix)
  bad = [k for k in _SECTIONS if not isinstance(value.get(k), dict)]
  if bad or not isinstance(value["dataset"].get("name"), str) or not isinstance(
      value["space"].get("name"), str):
    raise UserError(f"{path} is not a oneshot config (section {(bad or ['dataset/space'])[0]!r} missing "
                    f"or not an object): the file is damaged or not this project's; {fix}")
  base = _flat(config_dict(_base_config()))
  for key, v in _flat(value).items():
    expected = base.get(key)
    if expected is None or v is None:
      continue  # a field of one config only (space...), or an unset placeholder
    if not _same_kind(expected, v):
      raise UserError(f"{path}: {key} is {_short(v)}, not a {_kind(expected)}: the file was edited or "
                      f"is damaged; {fix}")
  return value


def _base_config() -> Any:
  from oneshot.configs.common import base_config  # pylint: disable=import-outside-toplevel
  return base_config()


def _kind(v: Any) -> str:
  return "number" if isinstance(v, float) else type(v).__name__


def _same_kind(expected: Any, v: Any) -> bool:
  if isinstance(expected, bool) or isinstance(v, bool):
    return type(expected) is type(v)
  if isinstance(expected, float):
    return isinstance(v, (int, float))
  return isinstance(v, type(expected))


def _flat(d: Any, prefix: str = "") -> dict:
  if not isinstance(d, dict) or (prefix and not d):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def _allowed(key: str, may_differ: Sequence[str]) -> bool:
  return any(key == p or key.startswith(p + ".") for p in may_differ)


def first_difference(old: dict, new: dict, may_differ: Sequence[str] = ()) -> tuple | None:
  """(dotted key, old value, new value) of the first key (in sorted order) whose values differ, a key
  on one side only included (its value there is `_ABSENT`); None when the two describe the same run."""
  old, new = _flat(old), _flat(new)
  for key in sorted(set(old) | set(new)):
    if _allowed(key, may_differ):
      continue
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if a != b or type(a) is not type(b) and not {type(a), type(b)} <= {int, float}:
      return key, a, b
  return None


class _Absent:
  def __repr__(self) -> str:
    return "absent"


_ABSENT = _Absent()


def _differs(workdir: Any, what: str, key: str, old: Any, new: Any) -> UserError:
  from oneshot import data  # pylint: disable=import-outside-toplevel
  fix = "use a new --workdir, or the config and flags it started with"
  if key == "dataset.name" and str(old).startswith(data.IN_MEMORY_ARRAYS_PREFIX):
    fix = "pass the arrays it started with, or use a new --workdir"
  return UserError(f"workdir {workdir} holds another run: {what} {key} is {_short(old)} there, "
                   f"{_short(new)} now; {fix}")


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _entries(path: epath.Path) -> list[str]:
  """The directory's entries that say something: not the lock, temporary files or an empty
  `checkpoints/` (a run killed before it wrote anything leaves those)."""
  out = []
  for p in path.iterdir():
    if p.name == LOCK_FILE or p.name.startswith(".tmp-") or p.name.startswith(LOCK_FILE + "."):
      continue
    if p.name == "checkpoints" and p.is_dir() and not any(True for _ in p.iterdir()):
      continue
    out.append(p.name)
  return out


def check(workdir: storage.PathLike, config: Any, kind: str, setup: dict | None = None,
          may_differ: Sequence[str] = ()) -> None:
  """Steps 1 and 2 of the module docstring; reads only."""
  path = storage.as_path(workdir)
  if storage.is_remote(path):
    storage.require_readable(path)
  if not path.exists():
    return
  if not path.is_dir():
    raise UserError(f"--workdir {workdir} is a file; give a directory (new, or a workdir to resume)")
  names = set(_entries(path))
  if not names:
    return
  if kind != "train" and TRAIN_SETUP in names:
    raise UserError(f"workdir {workdir} holds an `oneshot train` run, not a {kind}; use a new --workdir")
  if not names & set(MARKERS[kind]):
    what = "a search workdir, not an `oneshot train` one" if kind == "train" and (
        "config.json" in names) else "not a oneshot workdir"
    raise UserError(f"--workdir {workdir} is not empty and is {what} (it holds {sorted(names)[:3]}); "
                    "pick a new or empty directory so that no file of yours is replaced")
  fix = "use a new --workdir"
  may_differ = tuple(may_differ) + REPORTING_ONLY + MAY_GROW
  if setup is not None and TRAIN_SETUP in names:
    old = read_json_object(path / TRAIN_SETUP, fix)
    diff = first_difference(old, json.loads(json.dumps(setup)), ("arch",))
    if diff is not None:
      raise _differs(workdir, "the architecture setting", *diff)
  if "config.json" in names:
    old = read_config(path / "config.json", fix)
    diff = first_difference(old, config_dict(config), may_differ)
    if diff is not None:
      raise _differs(workdir, "config field", *diff)


# --- claiming: check, create, lock -------------------------------------------------------------------
_HELD: dict[str, list] = {}        # lock path -> [lock, claims] of the locks this process holds
_SCOPES: list[list[str]] = []      # `held` blocks, innermost last: the lock paths claimed inside


@contextlib.contextmanager
def held() -> Iterator[None]:
  """Releases, on leaving, every workdir claimed inside (however the block ends)."""
  _SCOPES.append([])
  try:
    yield
  finally:
    for key in reversed(_SCOPES.pop()):
      entry = _HELD[key]
      entry[1] -= 1
      if entry[1] == 0:
        del _HELD[key]
        entry[0].release()


def claim(workdir: storage.PathLike, config: Any, kind: str, setup: dict | None = None,
          may_differ: Sequence[str] = ()) -> epath.Path:
  """The workdir, checked (identity, same run), created and locked until the enclosing `held` block
  ends; see the module docstring. Call it inside `held()`."""
  if not _SCOPES:
    raise RuntimeError("workdir.claim must be called inside workdir.held()")
  key = os.fspath(storage.as_path(workdir) / LOCK_FILE)
  if key in _HELD:  # this process already holds it (cosearch -> search): checked by that claim
    _HELD[key][1] += 1
    _SCOPES[-1].append(key)
    return storage.as_path(workdir)
  check(workdir, config, kind, setup, may_differ)
  path = storage.ensure_workdir(workdir)
  lock = _agreed_lock(path)
  try:
    check(workdir, config, kind, setup, may_differ)
  except BaseException:
    lock.release()
    raise
  _HELD[key] = [lock, 1]
  _SCOPES[-1].append(key)
  return path


def _agreed_lock(path: epath.Path) -> "_Lock":
  """Process 0 takes the lock; in a multi-process job every process learns whether it did."""
  import jax  # pylint: disable=import-outside-toplevel
  lock, error = _NoLock(), None
  if jax.process_index() == 0:
    try:
      lock = _BucketLock(path / LOCK_FILE) if storage.is_remote(path) else _LocalLock(path / LOCK_FILE)
    except UserError as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    ok = multihost_utils.process_allgather(np.int32(error is None))
    if error is None and not np.all(ok):
      lock.release()
      error = UserError(f"process 0 could not lock workdir {path}; see its error line")
  if error is not None:
    raise error
  return lock


def _holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname()}


def _busy(path: Any, holder: dict, extra: str = "") -> UserError:
  who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
  return UserError(f"workdir {path.parent} is in use by another run ({who}{extra}); wait for it to "
                   "finish, or use another --workdir")


class _Lock:
  def release(self) -> None:
    raise NotImplementedError


class _NoLock(_Lock):
  def release(self) -> None:
    pass


class _LocalLock(_Lock):
  """`fcntl.flock` on the lock file; the file's text names the holder for a refused run's message."""

  def __init__(self, path: epath.Path):
    import fcntl  # pylint: disable=import-outside-toplevel
    self.path = path
    try:
      self.fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise storage.write_error(path, e) from None
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      text = os.pread(self.fd, 4096, 0).decode(errors="replace")
      os.close(self.fd)
      raise _busy(path, _parse(text)) from None
    try:
      os.ftruncate(self.fd, 0)
      os.pwrite(self.fd, json.dumps(_holder(), separators=(",", ":")).encode(), 0)
    except OSError as e:
      os.close(self.fd)
      raise storage.write_error(path, e) from None

  def release(self) -> None:
    os.close(self.fd)  # closing the last descriptor drops the flock


def _parse(text: str) -> dict:
  try:
    value = json.loads(text)
  except ValueError:
    return {}
  return value if isinstance(value, dict) else {}


class _BucketLock(_Lock):
  """The create-if-absent lock object of a bucket workdir, with its heartbeat (module docstring)."""

  def __init__(self, path: epath.Path):
    self.path, self.token = path, uuid.uuid4().hex
    self._stop = threading.Event()
    if not self._create(path):
      text = _read(path)
      holder = _parse(text)
      if not text or not _stale(holder):  # empty: being written by its creator this very moment
        age = time.time() - float(holder.get("heartbeat", time.time()))
        raise _busy(path, holder, f", seen {age:.0f} s ago; a lock unseen for {STALE_SECONDS:.0f} s "
                                  "is stale")
      takeover = path.parent / f"{path.name}.takeover-{holder.get('token', 'none')}"
      if not self._create(takeover):
        raise _busy(path, holder, ", being taken over by another run")
      self._write()
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()

  def _record(self) -> bytes:
    return json.dumps({**_holder(), "token": self.token, "heartbeat": time.time()}).encode()

  def _create(self, path: epath.Path) -> bool:
    """Creates `path` holding our record only if it does not exist; False if it does."""
    try:
      # epath's Path.open accepts r/w/a only; its backend passes mode 'xb' through to fsspec (gcsfs
      # uploads with the precondition ifGenerationMatch=0: one creator wins) or to the local open().
      with path._backend.open(os.fspath(path), "xb") as f:  # pylint: disable=protected-access
        f.write(self._record())
      return True
    except FileExistsError:
      return False
    except Exception as e:  # pylint: disable=broad-except  # storage clients raise their own types
      raise UserError(f"cannot create the lock {path}: {storage.first_line(e)}; check the bucket and that "
                      "its storage client supports create-if-absent (mode 'xb')") from None

  def _write(self) -> None:
    try:
      self.path.write_bytes(self._record())
    except Exception as e:  # pylint: disable=broad-except
      raise storage.write_error(self.path, e) from None

  def _beat(self) -> None:
    while not self._stop.wait(REFRESH_SECONDS):
      try:
        if _parse(_read(self.path)).get("token") != self.token:
          return  # taken over (we looked stale): the other run owns it now
        self.path.write_bytes(self._record())
      except Exception:  # pylint: disable=broad-except  # a missed beat is retried at the next one
        pass

  def release(self) -> None:
    self._stop.set()
    try:
      if _parse(_read(self.path)).get("token") == self.token:
        self.path.unlink()
      for p in self.path.parent.glob(f"{self.path.name}.takeover-*"):
        p.unlink()
    except Exception:  # pylint: disable=broad-except  # a lock left behind goes stale on its own
      pass


def _read(path: epath.Path) -> str:
  try:
    return path.read_text()
  except Exception:  # pylint: disable=broad-except  # gone or unreadable: an empty record
    return ""


def _stale(holder: dict) -> bool:
  try:
    beat = float(holder["heartbeat"])
  except (KeyError, TypeError, ValueError):
    return True  # not a lock record of ours (cut short while written): nothing keeps it fresh
  if time.time() - beat > STALE_SECONDS:
    return True
  if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
    try:
      os.kill(holder["pid"], 0)
    except ProcessLookupError:
      return True
    except OSError:
      pass
  return False

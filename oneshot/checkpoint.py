"""Search checkpoints: orbax `CheckpointManager` under WORKDIR/checkpoints.

The state is one pytree: params, optimizer state, controller state, the search PRNG key and the step.
The data position needs no saving: batches are a pure function of (seed, step). Saving is synchronous at
our step sizes (small supernets), which keeps SIGTERM/SIGKILL semantics simple: a step directory exists
only once complete (orbax writes to a temporary name and renames). A newest checkpoint that fails to
restore (e.g. truncated by a crash of the file system) is skipped with a warning in favour of an older one.

Multi-process: every process calls `save` and `restore_latest` (orbax synchronises them and writes each
global array once). Host-local leaves (the controller state and optax's step count live on one local
device, identical on every process) cannot be saved as jax arrays there, so they travel as numpy arrays,
which orbax writes from process 0 only.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from oneshot import storage
from oneshot.errors import UserError


def manager(workdir: storage.PathLike, max_to_keep: int = 3,
            read_only: bool = False) -> ocp.CheckpointManager:
  """`cleanup_tmp_directories`: a save cut short by SIGKILL or a full disk leaves a
  `N.orbax-checkpoint-tmp` directory; the next writable manager deletes it."""
  if read_only:  # orbax warns about each setting a read-only manager ignores, and about read-only
    options = ocp.CheckpointManagerOptions(read_only=True, max_to_keep=None, save_interval_steps=0,
                                           create=False, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=False)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
  quiet = _DropReadOnlyNotice()
  logging.getLogger("absl").addFilter(quiet)
  try:
    return ocp.CheckpointManager(storage.as_path(workdir) / "checkpoints", options=options)
  finally:
    logging.getLogger("absl").removeFilter(quiet)


class _DropReadOnlyNotice(logging.Filter):
  """Orbax's 'Given directory is read only' warning: export/rank open a search's checkpoints read-only
  on purpose, and a warning on every such command reads like a problem."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves synchronously; a failed write (disk full, directory gone read-only) is one `UserError`.

  Orbax logs a write failure from each of its worker threads, traceback included, before raising it;
  those records are dropped here because the error is reported once, as one line, by the caller.
  """
  if step in mngr.all_steps():
    _set_aside(mngr, step)
  _quiet_unretrieved_write_failures()
  _drop_closed_loop_callbacks()  # before the save: a failing write can call back before we catch it
  quiet = _DropOrbaxRecords()
  logging.getLogger("absl").addFilter(quiet)
  try:
    mngr.save(step, args=ocp.args.StandardSave(_host_local_as_numpy(state)), force=True)
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  # only write failures are turned into one line
    reason = _write_failure(e)
    if reason is None:
      raise
    try:
      mngr.wait_until_finished()
    except Exception:  # pylint: disable=broad-except  # the same failure, already being reported
      pass
    _join_orbax_threads()
    # Fragments orbax had not started writing are dropped as never-awaited coroutines, which Python
    # reports as a RuntimeWarning whenever they are collected (often at exit): the same failure again.
    warnings.filterwarnings("ignore", r"coroutine '.*write_fragment' was never awaited",
                            RuntimeWarning)
    if jax.process_index() == 0:  # free what the partial step took; the older steps stay intact
      _remove_partial_step(epath.Path(mngr.directory), step)
    raise UserError(f"cannot write checkpoint {step} in {mngr.directory}: {reason}; free disk space "
                    "or pick another --workdir, then run the same command to resume from the last "
                    "checkpoint") from None
  finally:
    logging.getLogger("absl").removeFilter(quiet)


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> None:
  """Renames an existing step directory to `N.unreadable[-k]` so that step can be saved again.

  A step exists before it is saved only when `restore_latest` skipped it as unreadable and the run
  resumed from an older one. Orbax refuses to overwrite it, and deleting it would destroy the evidence
  if the read failure was transient; renamed, orbax no longer lists it.
  """
  directory = epath.Path(mngr.directory)
  if jax.process_index() == 0:
    target, k = directory / f"{step}.unreadable", 1
    while target.exists():
      target, k = directory / f"{step}.unreadable-{k}", k + 1
    (directory / str(step)).rename(target)
    print(f"warning: moved unreadable checkpoint {step} aside to {target}", file=sys.stderr)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f"oneshot-set-aside-{step}")
  mngr.reload()


def _remove_partial_step(directory: epath.Path, step: int) -> None:
  """Deletes `step`'s temporary directory. Orbax's executor may still be creating subdirectories of it
  for a moment after the failure, so it is removed until it stays gone (a stray one would also be
  removed by the next run's manager, see `manager`)."""
  quiet_checks = 0
  for _ in range(50):
    partial = [p for p in directory.iterdir() if p.name.startswith(f"{step}.orbax-checkpoint-tmp")]
    for path in partial:
      try:
        path.rmtree()
      except OSError:
        pass  # gone already, or still being written: the next round retries
    quiet_checks = 0 if partial else quiet_checks + 1
    if quiet_checks == 3:
      return
    time.sleep(0.05)


def _join_orbax_threads(timeout: float = 60.0) -> None:
  """Waits for orbax's writer threads, which outlive a failed save: left running, they would recreate
  the partial step directory after it is removed, and fail noisily at interpreter exit."""
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax"):
      try:
        thread.join(timeout)
      except Exception:  # pylint: disable=broad-except  # orbax's join re-raises the thread's failure
        pass


class _DropOrbaxRecords(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "orbax" not in record.pathname or record.levelno < logging.ERROR


class _DropUnretrievedWriteFailures(logging.Filter):
  """Drops asyncio's records of futures that died of a failed file write ('Task/_GatheringFuture
  exception was never retrieved', or any other record carrying such an exception). Orbax starts one
  task per array fragment, gathers them and raises the first failure; the others are logged by asyncio
  whenever the garbage collector reaches them, which can be after the save has returned (or at exit).
  The failure is reported once, as one line, by `save`'s caller; other asyncio records pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return _write_failure(exc) is None


def _quiet_unretrieved_write_failures() -> None:
  logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _DropUnretrievedWriteFailures) for f in logger.filters):
    logger.addFilter(_DropUnretrievedWriteFailures())


def _write_failure(e: BaseException | None) -> str | None:
  """The OS reason ('No space left on device') if `e` or an exception it chains is a failed file
  write, else None.

  Orbax reports tensorstore write errors as ValueError text ending in `[os_error_code='28']`, sometimes
  as the context of a follow-up error raised while its event loop shuts down.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError):
      return e.strerror or str(e)
    text = str(e)
    if "os_error_code" in text:
      match = re.search(r":\s*([^:\[]+?)\s*\[os_error_code", text)
      return match.group(1) if match else text.splitlines()[0][:200]
    e = e.__cause__ or e.__context__
  return None


def _drop_closed_loop_callbacks() -> None:
  """After a failed save, tensorstore still completes the writes orbax had started and calls back into
  orbax's event loop, which is closed by then: each callback raises 'Event loop is closed' as an
  exception printed with a traceback. Those (and only those) are dropped from the first save on; the
  failure itself is reported once by the caller. Installed once per process."""
  if getattr(sys.excepthook, "drops_closed_loop_callbacks", False):
    return
  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

  def closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

  def unraisable_hook(unraisable):
    if not closed_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  def except_hook(kind, value, traceback):  # tensorstore's callbacks report through PyErr_Print
    if not closed_loop(value):
      previous_except(kind, value, traceback)

  except_hook.drops_closed_loop_callbacks = True
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


# Orbax's words for a checkpoint whose tree or shapes are not the target's: another run's state, which
# an older step of the same workdir cannot fix.
_MISMATCH = ("tree structures do not match", "is not compatible with the stored shape")


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[int, Any] | None:
  """(step, state) of the newest checkpoint that restores, or None when there is none.

  A step that cannot be read (cut short, damaged) is skipped for an older one. A step whose tree or
  shapes differ from `target` was written by another run: one line, no fall-back, nothing renamed.
  """
  abstract = jax.tree.map(_abstract, _host_local_as_numpy(target))
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except  # any unreadable step: try an older one
      if any(m in str(e) for m in _MISMATCH):
        workdir = epath.Path(mngr.directory).parent
        raise UserError(f"workdir {workdir} holds another run: checkpoint {step} does not fit this "
                        f"config ({storage.first_line(e)[:100]}); use a new --workdir, or the config and "
                        "flags it started with") from None
      print(f"warning: checkpoint {step} in {mngr.directory} is unreadable "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
            "trying an older one", file=sys.stderr)
  return None


def _host_local_as_numpy(tree: Any) -> Any:
  """In a multi-process job, host-local jax arrays -> numpy (orbax refuses them; see the docstring)."""
  if jax.process_count() == 1:
    return tree
  def convert(leaf):
    if isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
      return np.asarray(leaf)
    return leaf
  return jax.tree.map(convert, tree)


def _abstract(leaf: Any) -> Any:
  """The restore target of one leaf: numpy stays numpy (restored on every process), arrays keep their
  sharding."""
  return leaf if isinstance(leaf, np.ndarray) else ocp.utils.to_shape_dtype_struct(leaf)


def require_checkpoint(workdir: storage.PathLike) -> ocp.CheckpointManager:
  """A read-only manager for a workdir that must hold a search checkpoint (export, rank, cosearch)."""
  storage.require_readable(workdir)
  if not storage.as_path(workdir).is_dir():
    raise UserError(f"workdir {workdir} does not exist; run `oneshot search --workdir {workdir}` first")
  directory = storage.as_path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise UserError(f"no checkpoint in {workdir}; run `oneshot search --config ... --workdir "
                    f"{workdir}` first")
  mngr = manager(workdir, read_only=True)
  if not mngr.all_steps():
    raise UserError(f"no checkpoint in {directory}; run `oneshot search` on that workdir first")
  return mngr

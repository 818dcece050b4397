"""Search checkpoints: orbax `CheckpointManager` under WORKDIR/checkpoints.

The state is one pytree: params, optimizer state, controller state, the search PRNG key and the step.
The data position needs no saving: batches are a pure function of (seed, step). Saving is synchronous at
our step sizes (small supernets), which keeps SIGTERM/SIGKILL semantics simple: a step directory exists
only once complete (orbax writes to a temporary name and renames). A newest checkpoint that fails to
restore (e.g. truncated by a crash of the file system) is skipped with a warning in favour of an older one.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from oneshot.errors import UserError


def manager(workdir: str, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         enable_async_checkpointing=False, read_only=read_only)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[int, Any] | None:
  """(step, state) of the newest checkpoint that restores, or None when there is none."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except  # any unreadable step: try an older one
      print(f"warning: checkpoint {step} in {mngr.directory} is unreadable "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
            "trying an older one", file=sys.stderr)
  return None


def require_checkpoint(workdir: str) -> ocp.CheckpointManager:
  """A read-only manager for a workdir that must hold a search checkpoint (export, rank, cosearch)."""
  if not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} does not exist; run `oneshot search --workdir {workdir}` first")
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"no checkpoint in {workdir}; run `oneshot search --config ... --workdir "
                    f"{workdir}` first")
  mngr = manager(workdir, read_only=True)
  if not mngr.all_steps():
    raise UserError(f"no checkpoint in {directory}; run `oneshot search` on that workdir first")
  return mngr

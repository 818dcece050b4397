"""`oneshot export`: a searched subnet as a plain Flax model plus an orbax checkpoint of its own weights.

What the folder holds and how it is read back (`load`, `ChildRunner`, BN recalibration) is
`oneshot/child.py`'s, shared with the commands that score or train the child; this module writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Sequence

import orbax.checkpoint as ocp
from absl import flags
from etils import epath

from oneshot import child, configuration, io
from oneshot.child import ARCHITECTURE_FILE, CHECKPOINT_DIR, CHILD_MODELS, FORMAT_VERSION
from oneshot.errors import UserError

load = child.load  # `oneshot.export.load(DIR)`, as it was before the reader moved to oneshot/child.py


def main(argv: Sequence[str]) -> int:
  def define(fv):
    flags.DEFINE_string("workdir", None, "A search workdir (config.json + checkpoints).",
                        flag_values=fv)
    flags.DEFINE_string("dna", None, "Comma-separated choice indices (or the space's string); "
                        "default: the search result's architecture.", flag_values=fv)
    flags.DEFINE_string("out", None, "Export directory to write.", flag_values=fv)
    flags.DEFINE_integer("recalibrate_batches", 20, "Train batches used to recompute the child's "
                         "BatchNorm statistics.", flag_values=fv)
  args = configuration.parse_flags(argv, define, command="export", with_config=False,
                                   required=("workdir", "out"))
  record = export(args.workdir, args.out, dna_text=args.dna,
                  recalibrate_batches=args.recalibrate_batches)
  acc = record["validation_accuracy"]
  print(f"exported {record['space']} {record['string']} ({record['num_params']} parameters) to "
        f"{args.out}: validation accuracy {acc['supernet_batch_stats']:.4f} on the supernet path "
        f"(batch-statistics BN), {acc['recalibrated']:.4f} stand-alone after recalibrating BN on "
        f"{record['recalibrate_batches']} batches")
  return 0


def export(workdir: io.PathLike, out: str, *, dna_text: str | None = None,
           recalibrate_batches: int = 20) -> dict:
  """Writes the export directory; returns the architecture.json record. Every input is checked before
  anything is written, and the directory appears only once complete (temp dir + rename; in a bucket,
  architecture.json last)."""
  # pylint: disable=import-outside-toplevel  # keeps `load` free of supernet and search code
  from oneshot import spaces
  from oneshot import checkpoint, session as session_lib
  if recalibrate_batches < 1:
    raise UserError(f"--recalibrate-batches must be >= 1, got {recalibrate_batches}: the supernet keeps "
                    "no BatchNorm statistics, so the child needs at least one batch")
  session_lib.use_search_devices(workdir)
  checkpoint.require_checkpoint(workdir)
  config = session_lib.load_search_config(workdir)
  space = spaces.build(config.space)
  dna = choose_dna(space, workdir, dna_text)
  target = _check_out(out)
  sess = session_lib.build(config)
  state = session_lib.restore_params(sess, workdir)
  params = state["params"]
  before = session_lib.evaluate(sess, params, dna, "validation")
  ds, t = sess.dataset, config.train
  runner, variables = child.recalibrated_child(sess, params, dna, recalibrate_batches)
  after = runner.accuracy(variables, ds, "validation", t.eval_batch_size)
  record = {**space.to_json(dna), "format_version": FORMAT_VERSION,
            "skeleton": child.plain(dict(space.skeleton)), "model": list(CHILD_MODELS[space.name]),
            "num_classes": ds.num_classes, "image_shape": list(ds.image_shape), "dataset": ds.name,
            "dataset_config": config.dataset.to_dict(),
            "num_params": child.count_params(variables["params"]),
            "recalibrate_batches": recalibrate_batches, "recalibrate_batch_size": int(t.batch_size),
            "validation_accuracy": {"supernet_batch_stats": before, "recalibrated": after},
            "source": {"workdir": os.fspath(io.as_path(workdir)), "step": int(state["step"])},
            "checkpoint": CHECKPOINT_DIR}
  if io.is_remote(target):
    _write_in_place(target, record, variables)
  else:
    _write_atomically(os.fspath(target), record, variables)
  return record


def choose_dna(space, workdir: io.PathLike, dna_text: str | None):
  if dna_text is not None:
    return space.parse(dna_text)
  path = io.as_path(workdir) / "search_result.json"
  if not path.exists():
    raise UserError(f"{workdir} has no search_result.json (the search has not finished); pass "
                    "--dna 0,1,... to export a chosen architecture")
  return space.from_json(json.loads(path.read_text()))


def _check_out(out: str) -> epath.Path:
  """--out may be new, empty, or exactly an earlier export (replaced whole); anything else is refused,
  so no file of the user's is ever deleted. In a bucket an export cut short (its checkpoint written,
  architecture.json, written last, missing) is replaced too."""
  target = io.as_path(out)
  if io.is_remote(target):
    io.require_readable(target)
  if target.exists():
    if not target.is_dir():
      raise UserError(f"--out {out} is a file; give a directory path")
    names = {p.name for p in target.iterdir()}
    cut_short = io.is_remote(target) and names == {CHECKPOINT_DIR}
    if names and not cut_short and not _is_export(target, names):
      raise UserError(f"--out {out} exists and is not an export (it holds {sorted(names)[:3]}); only "
                      f"a folder holding exactly {ARCHITECTURE_FILE} and {CHECKPOINT_DIR}/ is replaced: "
                      "pick a new or empty directory")
  if io.is_remote(target):
    io.ensure_workdir(target)  # the bucket answers, and can be written
  else:
    child.check_writable(os.fspath(target), "--out")
  return target


def _is_export(target: epath.Path, names: set) -> bool:
  """Exactly what `export` writes: architecture.json of this format plus checkpoint/."""
  if names != {ARCHITECTURE_FILE, CHECKPOINT_DIR} or not (target / CHECKPOINT_DIR).is_dir():
    return False
  try:
    record = json.loads((target / ARCHITECTURE_FILE).read_text())
  except (OSError, ValueError):
    return False
  return isinstance(record, dict) and record.get("format_version") == FORMAT_VERSION


def _write_atomically(target: str, record: dict, variables: dict) -> None:
  parent = os.path.dirname(target)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(target)}-")
  except OSError as e:
    raise UserError(f"cannot write {target}: {e.strerror}; pick a writable --out") from None
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, CHECKPOINT_DIR), variables)
      ckptr.wait_until_finished()
    io.write_json(os.path.join(tmp, ARCHITECTURE_FILE), record)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp/mkstemp make owner-only files; an export is for sharing
    os.chmod(os.path.join(tmp, ARCHITECTURE_FILE), 0o666 & ~umask)
    if os.path.exists(target):  # an earlier export (or an empty dir): swap, then drop the old one
      old = tempfile.mkdtemp(dir=parent, prefix=f".old-{os.path.basename(target)}-")
      os.rename(target, os.path.join(old, "x"))
      os.rename(tmp, target)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_in_place(target: epath.Path, record: dict, variables: dict) -> None:
  """In a bucket there is no directory rename: the checkpoint is written (orbax commits it on its
  own), then architecture.json, the mark of a whole export; an earlier export there goes first (only
  its own two entries: `_check_out` saw that there is nothing else)."""
  if (target / ARCHITECTURE_FILE).exists():
    (target / ARCHITECTURE_FILE).unlink()
  if (target / CHECKPOINT_DIR).exists():
    (target / CHECKPOINT_DIR).rmtree()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target / CHECKPOINT_DIR, variables)
    ckptr.wait_until_finished()
  io.write_json(target / ARCHITECTURE_FILE, record)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

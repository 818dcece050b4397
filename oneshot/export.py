"""`oneshot export`: a searched subnet as a folder you can ship.

The folder (`--out`) holds:
  architecture.json  the child's description (space, decisions, classes, image shape), the input's
                     preprocessing (dtype, scale, per-channel mean and std, size, class names), its
                     cost (parameters, FLOPs, modelled latency) and validation accuracy;
  checkpoint/        the child's own variables (orbax), BatchNorm recalibrated: `oneshot.api.load`;
  model.jax_export   preprocessing + child + softmax serialized by `jax.export` for cpu, cuda and
                     tpu, any batch size: runs with jax alone (oneshot/serving.py says how);
  README.md          the model card, also printed.
How the folder is read back (`load`, `ChildRunner`, BN recalibration) is `oneshot/child.py`'s, shared
with the commands that score or train the child; this module writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any, Sequence

import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from etils import epath

from oneshot import child, configuration, serving, storage
from oneshot.child import (ARCHITECTURE_FILE, ARTIFACT_FILE, CARD_FILE, CHECKPOINT_DIR, CHILD_MODELS,
                           FORMAT_VERSION)
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
  files = [ARCHITECTURE_FILE, CHECKPOINT_DIR + "/"] + ([ARTIFACT_FILE] if record["artifact"] else [])
  print(f"exported {record['space']} child to {args.out} ({', '.join(files + [CARD_FILE])})")
  print("\n".join(summary(record)))
  return 0


def export(workdir: storage.PathLike, out: str, *, dna_text: str | None = None,
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
  prep = preprocessing(ds, config.dataset)
  artifact = _artifact(runner.model, variables, prep)
  record = {**space.to_json(dna), "format_version": FORMAT_VERSION,
            "skeleton": child.plain(dict(space.skeleton)), "model": list(CHILD_MODELS[space.name]),
            "num_classes": ds.num_classes, "image_shape": list(ds.image_shape), "dataset": ds.name,
            "dataset_config": config.dataset.to_dict(),
            "num_params": child.count_params(variables["params"]),
            "recalibrate_batches": recalibrate_batches, "recalibrate_batch_size": int(t.batch_size),
            "validation_accuracy": {"supernet_batch_stats": before, "recalibrated": after},
            "source": {"workdir": os.fspath(storage.as_path(workdir)), "step": int(state["step"])},
            "checkpoint": CHECKPOINT_DIR, "preprocessing": prep.to_json(),
            "cost": cost(config, space, dna, ds), "artifact": ARTIFACT_FILE if artifact else None}
  files = {CARD_FILE: card(record).encode()}  # written before architecture.json, the last
  if artifact:
    files = {ARTIFACT_FILE: artifact, **files}
  if storage.is_remote(target):
    _write_in_place(target, record, variables, files)
  else:
    _write_atomically(os.fspath(target), record, variables, files)
  return record


def preprocessing(ds: Any, dataset_config: Any) -> serving.Preprocessing:
  """oneshot.data's normalisation of `ds`, as architecture.json records it: the loaded dataset's own float32
  offset and multiplier (mean * scale, 1 / (std * scale)) turned back into mean and std in [0, 1]
  units, with the scale and class names oneshot.data reads from the TFDS builder (numpy arrays: 255 for
  uint8, else 1; class indices). Checked to give back exactly the dataset's constants."""
  # pylint: disable=import-outside-toplevel
  from oneshot import data
  from oneshot.data import builders
  sample = ds.raw_images("train", np.arange(1))
  uint8 = sample.dtype == np.uint8
  if ds.name in data.IN_MEMORY:
    scale, names = (255.0 if uint8 else 1.0), [str(i) for i in range(ds.num_classes)]
  else:
    field = lambda key: os.path.expanduser(os.fspath(dataset_config.get(key) or "")) or None  # noqa
    builder = builders.open_builder(ds.name, field("data_dir"), field("manual_dir"))
    features = builder.info.features
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    scale = float(getattr(builder, "PIXEL_MAX", 255.0 if features[image_key].np_dtype == np.uint8
                          else 1.0))
    names = [str(n) for n in features[label_key].names]
  offset, multiplier = (np.asarray(a, np.float32).reshape(-1) for a in ds.normalisation())
  h, w, c = (int(d) for d in ds.image_shape)
  prep = serving.Preprocessing(
      input_dtype="uint8" if uint8 else "float32", scale=scale,
      mean=tuple(np.broadcast_to(offset.astype(np.float64) / scale, (c,)).tolist()),
      std=tuple(np.broadcast_to(1.0 / (multiplier.astype(np.float64) * scale), (c,)).tolist()),
      height=h, width=w, channels=c, class_names=tuple(names))
  if not (np.array_equal(prep.offset, np.broadcast_to(offset, (c,)))
          and np.array_equal(prep.multiplier, np.broadcast_to(multiplier, (c,)))):
    raise AssertionError("the recorded preprocessing does not reproduce the dataset's constants")
  return prep


def cost(config: Any, space: Any, dna: Any, ds: Any) -> dict:
  """FLOPs (2 x multiply-accumulates) and modelled latency of the child on the config's device (the
  `hardware` section's cost model, as a latency-targeted search prices it); None where the space has
  no layer table (your own module) or the section cannot price it, with the reason."""
  from oneshot.hardware import target  # pylint: disable=import-outside-toplevel
  try:
    section = dict(config.hardware.to_dict())
    section["target_latency_ms"] = 1.0  # any positive value: costs do not depend on it
    latency = target.LatencyTarget(section, space, ds.image_shape, ds.num_classes)
    out = latency.costs(np.asarray(dna, np.int32)[None])
    device = dict(latency.device)
  except (UserError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as e:
    return {"flops": None, "latency_ms": None, "device": None, "why": storage.first_line(e)[:160]}
  if latency.cost_model == "table":
    where = f"latency table {section.get('table')}"
  else:
    where = (f"analytical model of a {device.get('rows')}x{device.get('cols')} "
             f"{device.get('dataflow')} array at {float(device.get('clock_mhz', 0)):g} MHz")
  return {"flops": float(2.0 * out["macs"][0]), "latency_ms": float(out["latency_ms"][0]),
          "device": where}


def _artifact(model: Any, variables: dict, prep: serving.Preprocessing) -> bytes | None:
  """The serialized artifact, or None (one warning line) when the model cannot be lowered with a
  symbolic batch for every platform: the export is still usable through `oneshot.api.load`."""
  try:
    return serving.serialize(model, variables, prep)
  except Exception as e:  # pylint: disable=broad-except  # jax.export raises many types; none is fatal
    print(f"oneshot export: warning: no {ARTIFACT_FILE} ({type(e).__name__}: "
          f"{storage.first_line(e)[:160]}); the export loads with oneshot.api.load", file=sys.stderr)
    return None


def summary(record: dict) -> list[str]:
  """The model card's figures, one line each."""
  acc, c, prep = record["validation_accuracy"], record["cost"], record["preprocessing"]
  flops = f"{c['flops'] / 1e6:.3f} M per image" if c.get("flops") is not None else "n/a"
  latency = (f"{c['latency_ms']:.4g} ms per image on the configured device ({c['device']})"
             if c.get("latency_ms") is not None else f"n/a ({c.get('why')})")
  names = prep["class_names"]
  return [f"architecture         {record['string']} ({record['space']} space)",
          f"parameters           {record['num_params']:,}",
          f"FLOPs                {flops}",
          f"modelled latency     {latency}",
          f"validation accuracy  {acc['recalibrated']:.4f} stand-alone (BatchNorm recalibrated on "
          f"{_batches(record['recalibrate_batches'])}); {acc['supernet_batch_stats']:.4f} on the "
          "supernet path",
          f"input                {serving.Preprocessing.from_json(prep, len(names)).describe()}",
          f"classes              {', '.join(names[:10])}{', ...' if len(names) > 10 else ''} "
          f"({len(names)})"]


def _batches(n: int) -> str:
  return f"{n} train batch" + ("" if n == 1 else "es")


def card(record: dict) -> str:
  """README.md of the export folder: what it is, its figures, its files, how to run it."""
  h, w, c = record["image_shape"]
  lines = [f"# {record['space']} child `{record['string']}`", "",
           f"A searched subnet exported by `oneshot export` (format version {FORMAT_VERSION}) from "
           f"`{record['source']['workdir']}` at step {record['source']['step']}, trained on "
           f"`{record['dataset']}`.", "", "```", *summary(record), "```", "", "## Files", "",
           f"- `{ARCHITECTURE_FILE}`: the model, its input preprocessing and these figures.",
           f"- `{CHECKPOINT_DIR}/`: the child's variables (orbax); `oneshot.api.load(DIR)` rebuilds "
           "the Flax model, `.predict(images)` gives probabilities."]
  if record["artifact"]:
    lines.append(f"- `{ARTIFACT_FILE}`: preprocessing + model + softmax, serialized by `jax.export` "
                 f"for {', '.join(serving.PLATFORMS)} with any batch size; needs jax alone.")
  lines += ["", "## Use", "", "```", "oneshot predict --arch DIR --images FOLDER_OR_NPY", "```"]
  if record["artifact"]:
    lines += ["", "```python", "import jax, numpy as np",
              f"with open('DIR/{ARTIFACT_FILE}', 'rb') as f:",
              "  exported = jax.export.deserialize(bytearray(f.read()))",
              f"probabilities = np.asarray(exported.call(images))  # images: "
              f"{record['preprocessing']['input_dtype']} [n, {h}, {w}, {c}]", "```"]
  return "\n".join(lines) + "\n"


def choose_dna(space, workdir: storage.PathLike, dna_text: str | None):
  if dna_text is not None:
    return space.parse(dna_text)
  path = storage.as_path(workdir) / "search_result.json"
  if not path.exists():
    raise UserError(f"{workdir} has no search_result.json (the search has not finished); pass "
                    "--dna 0,1,... to export a chosen architecture")
  return space.from_json(json.loads(path.read_text()))


def _check_out(out: str) -> epath.Path:
  """--out may be new, empty, or exactly an earlier export (replaced whole); anything else is refused,
  so no file of the user's is ever deleted. In a bucket an export cut short (architecture.json,
  written last, missing; what was written before it present) is replaced too."""
  target = storage.as_path(out)
  if storage.is_remote(target):
    storage.require_readable(target)
  if target.exists():
    if not target.is_dir():
      raise UserError(f"--out {out} is a file; give a directory path")
    names = {p.name for p in target.iterdir()}
    cut_short = storage.is_remote(target) and names in _CUT_SHORT
    if names and not cut_short and not _is_export(target, names):
      raise UserError(f"--out {out} exists and is not an export (it holds {sorted(names)[:3]}); only "
                      f"a folder holding exactly what `oneshot export` writes ({ARCHITECTURE_FILE}, "
                      f"{CHECKPOINT_DIR}/, {CARD_FILE}, {ARTIFACT_FILE}) is replaced: pick a new or "
                      "empty directory")
  if storage.is_remote(target):
    storage.ensure_workdir(target)  # the bucket answers, and can be written
  else:
    storage.check_writable(os.fspath(target), "--out")
  return target


# What a bucket export holds before architecture.json, written last, lands (see _write_in_place).
_CUT_SHORT = ({CHECKPOINT_DIR}, {CHECKPOINT_DIR, ARTIFACT_FILE}, {CHECKPOINT_DIR, CARD_FILE},
              {CHECKPOINT_DIR, ARTIFACT_FILE, CARD_FILE})


def _is_export(target: epath.Path, names: set) -> bool:
  """Exactly what `export` writes, as its architecture.json says: format 1, that file plus
  checkpoint/; format 2, also the model card and the artifact if the record names it. A folder
  holding anything more (a user's own README.md beside a format-1 export, say) is not one."""
  if not {ARCHITECTURE_FILE, CHECKPOINT_DIR} <= names or not (target / CHECKPOINT_DIR).is_dir():
    return False
  try:
    record = json.loads((target / ARCHITECTURE_FILE).read_text())
  except (OSError, ValueError):
    return False
  if not isinstance(record, dict) or record.get("format_version") not in (1, FORMAT_VERSION):
    return False
  expected = {ARCHITECTURE_FILE, CHECKPOINT_DIR}
  if record["format_version"] == FORMAT_VERSION:
    expected |= {CARD_FILE} | ({ARTIFACT_FILE} if record.get("artifact") == ARTIFACT_FILE else set())
  return names == expected


def _write_atomically(target: str, record: dict, variables: dict, files: dict[str, bytes]) -> None:
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
    for name, data in files.items():
      storage.write_bytes(os.path.join(tmp, name), data)
    storage.write_json(os.path.join(tmp, ARCHITECTURE_FILE), record)
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


def _write_in_place(target: epath.Path, record: dict, variables: dict, files: dict[str, bytes]) -> None:
  """In a bucket there is no directory rename: the checkpoint is written (orbax commits it on its
  own), then the artifact and the card, then architecture.json, the mark of a whole export; an earlier
  export there goes first (only its own entries: `_check_out` saw that there is nothing else)."""
  for name in (ARCHITECTURE_FILE, ARTIFACT_FILE, CARD_FILE):  # architecture.json first: no longer whole
    if (target / name).exists():
      (target / name).unlink()
  if (target / CHECKPOINT_DIR).exists():
    (target / CHECKPOINT_DIR).rmtree()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target / CHECKPOINT_DIR, variables)
    ckptr.wait_until_finished()
  for name, data in files.items():
    storage.write_bytes(target / name, data)
  storage.write_json(target / ARCHITECTURE_FILE, record)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

"""`oneshot export`: a searched subnet as a plain Flax model plus an orbax checkpoint of its own weights.

The export directory is self-contained: `architecture.json` names the child model class's inputs (space,
skeleton, decision values, classes, image shape) and `checkpoint/` holds exactly the child's variables,
sliced out of the supernet. `load(directory)` rebuilds the model from those two alone, importing only
`oneshot.models` (never the supernet, search or controller code), so a deployment needs none of it.

BatchNorm statistics: the supernet normalises with batch statistics and never keeps running averages, so
an exported child has no usable eval-mode statistics until they are recomputed for its own path
(Once-for-All's BN recalibration). `recalibrate` runs N train batches in train mode and sets each BN's
statistics to the *cumulative* mean and variance over all N batches rather than the momentum EMA the
layers keep during training: an EMA over 20 batches still weights the first batch by 0.9**19, while the
cumulative average makes N batches give exactly the statistics of their union.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from etils import epath

from oneshot import configuration, io
from oneshot.errors import UserError

ARCHITECTURE_FILE = "architecture.json"
CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1
# space name -> (module, class) of its standalone child; looked up by name so a JSON file never chooses
# what gets imported.
CHILD_MODELS = {"mobilenet": ("oneshot.models.mobilenet", "MobileNet"),
                "nasbench201": ("oneshot.models.nasbench201", "NasBench201"),
                "module": ("oneshot.nas", "FixedArchitecture")}  # your module, `skeleton['module']`


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
  runner, variables = recalibrated_child(sess, params, dna, recalibrate_batches)
  after = runner.accuracy(variables, ds, "validation", t.eval_batch_size)
  record = {**space.to_json(dna), "format_version": FORMAT_VERSION,
            "skeleton": _plain(dict(space.skeleton)), "model": list(CHILD_MODELS[space.name]),
            "num_classes": ds.num_classes, "image_shape": list(ds.image_shape), "dataset": ds.name,
            "dataset_config": config.dataset.to_dict(),
            "num_params": count_params(variables["params"]),
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
    check_writable(os.fspath(target), "--out")
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


def check_writable(path: str, flag: str) -> None:
  """Fails before minutes of work, not after, when `path` cannot be created."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.access(parent, os.W_OK):
    raise UserError(f"cannot write {flag} {path}: {parent} is not writable; pick another path")


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


def read_architecture(directory: io.PathLike) -> dict:
  """architecture.json, every field checked (an export folder may come from anyone, edited or cut
  short): one line naming the first bad field, never a traceback from deeper down."""
  path = io.as_path(directory) / ARCHITECTURE_FILE
  io.require_readable(directory)
  if not path.exists():
    raise UserError(f"{directory} has no {ARCHITECTURE_FILE}; give a directory written by "
                    "`oneshot export --out DIR`")
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path} ({io.first_line(e)[:120]}); re-run `oneshot export`") from None
  problem = _architecture_problem(record)
  if problem:
    raise UserError(f"{path} is not an export this version reads: {problem}; re-run `oneshot export`")
  return record


def _is_int(v: Any, least: int = 0) -> bool:
  return type(v) is int and v >= least


def _architecture_problem(record: Any) -> str | None:
  """What is wrong with an architecture.json record, or None."""
  if not isinstance(record, dict):
    return f"it holds a JSON {type(record).__name__}, not an object"
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
  checks = {
      "format_version": lambda v: v == FORMAT_VERSION,
      "space": lambda v: v in CHILD_MODELS,
      "architecture": lambda v: isinstance(v, dict),
      "dna": lambda v: isinstance(v, list) and all(_is_int(d) for d in v),
      "string": lambda v: isinstance(v, str),
      "skeleton": lambda v: isinstance(v, dict),
      "model": lambda v: v == list(CHILD_MODELS.get(record.get("space"), ())),
      "num_classes": lambda v: _is_int(v, 1),
      "image_shape": lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(d, 1) for d in v),
      "dataset": lambda v: isinstance(v, str),
      "dataset_config": lambda v: isinstance(v, dict),
      "num_params": lambda v: _is_int(v),
      "recalibrate_batches": lambda v: _is_int(v, 1),
      "recalibrate_batch_size": lambda v: _is_int(v, 1),
      "validation_accuracy": lambda v: isinstance(v, dict) and all(number(a) for a in v.values()),
      "source": lambda v: isinstance(v, dict),
      # A plain name inside the export folder: the file never sends us anywhere else.
      "checkpoint": lambda v: v == CHECKPOINT_DIR,
  }
  for key, ok in checks.items():
    if key not in record:
      return f"{key!r} is missing"
    if not ok(record[key]):
      return f"{key!r} is {_short(record[key])}"
  if record["space"] == "module":
    sk = record["skeleton"]
    if not isinstance(sk.get("module"), str) or not (sk.get("kwargs") is None or
                                                     isinstance(sk.get("kwargs"), dict)):
      return f"'skeleton' is {_short(sk)}, not {{'module': 'pkg.mod:Class', 'kwargs': {{...}}}}"
  return None


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def build_model(record: dict, model: Any = None) -> Any:
  """The child Flax module described by an architecture.json record (oneshot.models only; for a
  `module` space, your module: `model` if given, else imported from the name the record keeps)."""
  from oneshot.models import ops  # pylint: disable=import-outside-toplevel
  if record["space"] == "module":
    from oneshot import nas  # pylint: disable=import-outside-toplevel
    sk = record["skeleton"]
    net = nas.resolve(sk["module"], sk["kwargs"]) if model is None else model
    return nas.FixedArchitecture(net, record["architecture"])
  module, name = CHILD_MODELS[record["space"]]
  cls = getattr(importlib.import_module(module), name)
  kwargs = dict(skeleton=record["skeleton"], values=record["architecture"],
                num_classes=int(record["num_classes"]), image_channels=int(record["image_shape"][-1]))
  if record["space"] == "mobilenet":
    kwargs["depthwise_impl"] = ops.default_depthwise_impl()  # same numbers either way; speed per platform
  return cls(**kwargs)


def _built(record: dict, model: Any, directory: io.PathLike) -> tuple[Any, Any]:
  """(model, its variables' shapes) from a checked record. The skeleton and architecture values are
  the space's own structures, read by the model code as it builds: a value of the wrong kind there
  surfaces as a TypeError, KeyError... from inside it, which is the file's fault, so one line."""
  try:
    model = build_model(record, model)
    return model, init_shapes(model, record["image_shape"])
  except UserError:
    raise
  except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
    raise UserError(f"{io.as_path(directory) / ARCHITECTURE_FILE} does not describe a model of space "
                    f"{record['space']!r} ({type(e).__name__}: {io.first_line(e)[:100]}); re-run "
                    "`oneshot export`") from None


def init_shapes(model: Any, image_shape: Sequence[int]) -> dict:
  """The model's variable tree as shapes (traced, not compiled: milliseconds)."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jnp.zeros((1,) + tuple(int(d) for d in image_shape), jnp.float32))


def load(directory: io.PathLike, model: Any = None) -> tuple[Any, dict]:
  """(model, variables) of an export: `model.apply(variables, images, train=False)` gives logits.
  `model`: for an export of your own module, an instance of it (default: imported by its name)."""
  record = read_architecture(directory)
  model, abstract = _built(record, model, directory)
  path = io.as_path(directory) / CHECKPOINT_DIR
  if not path.is_dir():
    raise UserError(f"{directory} has no {CHECKPOINT_DIR}/ checkpoint; re-run `oneshot export`")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(path, abstract)
  except (ValueError, KeyError, FileNotFoundError) as e:
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    raise UserError(f"the checkpoint in {directory} does not match its {ARCHITECTURE_FILE} "
                    f"({first}); re-run `oneshot export`") from None
  return model, dict(variables)


def count_params(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def recalibrated_child(sess: Any, params: Any, dna: Any,
                       recalibrate_batches: int) -> tuple["ChildRunner", dict]:
  """(runner, variables): the standalone child `dna` with the supernet's weights `params` and every
  BatchNorm's statistics recalibrated on the first `recalibrate_batches` train batches (Once-for-All).
  What `export` writes, and what the search rescores its finalists with (`select.recalibrate_batches`)."""
  from oneshot import supernet  # pylint: disable=import-outside-toplevel
  config, ds = sess.config, sess.dataset
  model = supernet.child_model(sess.space, dna, ds.num_classes, ds.image_shape[-1],
                               config.supernet.depthwise)
  variables = jax.device_get(supernet.child_variables(sess.space, sess.variables(params), dna))
  runner = ChildRunner(model)
  batches = (ds.batch("train", i, config.train.batch_size, config.seed)
             for i in range(recalibrate_batches))
  return runner, runner.recalibrate(variables, batches)


class ChildRunner:
  """BN recalibration and evaluation of one child model, each compiled once and reused for any weights
  of that child (rank scores the same child with supernet and with stand-alone weights)."""

  def __init__(self, model: Any):
    from oneshot import nas  # pylint: disable=import-outside-toplevel
    from oneshot.models import ops  # pylint: disable=import-outside-toplevel
    self.model = model
    # Our models' BatchNorms use ops.BN_MOMENTUM; your own module's may use any momentum.
    self.momentum = None if isinstance(model, nas.FixedArchitecture) else ops.BN_MOMENTUM

    def update(variables, image, start):
      stats = jax.tree.map(lambda x: jnp.full_like(x, start), variables["batch_stats"])
      _, new = model.apply({**variables, "batch_stats": stats}, image, train=True,
                           mutable=["batch_stats"])
      return new["batch_stats"]

    @jax.jit
    def batch_moments(variables, image):
      # Every BN layer's batch mean and variance, read through its running-average update: starting
      # from zeros, one update stores (1 - momentum) * batch statistic. With the momentum unknown, a
      # second update starting from ones stores momentum + (1 - momentum) * statistic: the difference
      # is the momentum.
      low = update(variables, image, 0.0)
      if self.momentum is not None:
        return low
      high = update(variables, image, 1.0)
      return jax.tree.map(lambda lo, hi: lo / (1.0 - (hi - lo)), low, high)

    @jax.jit
    def correct(variables, image, label, mask):
      logits = model.apply(variables, image, train=False)
      loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), label[:, None], -1)[:, 0]
      return ((logits.argmax(-1) == label) * mask).sum(), (loss * mask).sum(), mask.sum()

    self._moments, self._correct = batch_moments, correct

  def recalibrate(self, variables: dict, batches: Iterable[dict]) -> dict:
    """`variables` with every BN's statistics replaced by the mean and variance over all `batches`.

    Per layer, the variance of the union of equal-sized batches is the mean of the batch variances plus
    the variance of the batch means (accumulated in float64, so no E[x^2] - E[x]^2 cancellation).
    """
    if "batch_stats" not in variables:
      return variables  # no BatchNorm: nothing to recalibrate
    scale = 1.0 if self.momentum is None else 1.0 / (1.0 - self.momentum)
    per_batch = [jax.device_get(self._moments(variables, batch["image"])) for batch in batches]
    if not per_batch:
      raise UserError("BN recalibration needs at least one batch")

    def pool(*layers):
      means = np.stack([np.asarray(l["mean"], np.float64) * scale for l in layers])
      variances = np.stack([np.asarray(l["var"], np.float64) * scale for l in layers])
      mean = means.mean(0)
      var = variances.mean(0) + np.square(means - mean).mean(0)
      return {"mean": mean.astype(np.float32), "var": var.astype(np.float32)}

    stats = jax.tree.map(pool, *per_batch, is_leaf=lambda x: isinstance(x, dict) and "mean" in x)
    return {**variables, "batch_stats": stats}

  def evaluate(self, variables: dict, dataset: Any, split: str, batch_size: int) -> dict[str, float]:
    """Eval-mode (running-statistics BN) accuracy and mean cross-entropy over a whole split."""
    correct = loss = total = 0.0
    for batch in dataset.iterate(split, int(batch_size)):
      c, l, t = self._correct(variables, batch["image"], batch["label"], batch["mask"])
      correct, loss, total = correct + float(c), loss + float(l), total + float(t)
    return {"accuracy": correct / max(total, 1.0), "loss": loss / max(total, 1.0)}

  def accuracy(self, variables: dict, dataset: Any, split: str, batch_size: int) -> float:
    return self.evaluate(variables, dataset, split, batch_size)["accuracy"]


def _plain(value: Any) -> Any:
  """Tuples -> lists, recursively, so architecture.json reads back to what the model saw."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value.item() if isinstance(value, np.generic) else value


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

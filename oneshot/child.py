"""The exported child, shared by the commands that write, read, score or train it.

An export directory is self-contained: `architecture.json` names the child model class's inputs (space,
skeleton, decision values, classes, image shape) and `checkpoint/` holds exactly the child's variables,
sliced out of the supernet. `load(directory)` rebuilds the model from those two alone, importing only
`oneshot.models` (never the supernet, search or controller code), so a deployment needs none of it.
Since format 2 the folder also holds the input's preprocessing (architecture.json's `preprocessing`), a
serialized artifact that runs with jax alone (`model.jax_export`) and a model card (`README.md`):
oneshot/serving.py. `load_predictor` returns a `serving.Predictor` (raw images -> probabilities).
`oneshot export` writes the folder; search, rank, the band builder and `oneshot train` use this module's
`ChildRunner` and `recalibrated_child` to score a child exactly as it is exported, so no command imports
another command for it.

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
import sys
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oneshot import serving, storage
from oneshot.errors import UserError
from oneshot.serving import ARTIFACT_FILE

ARCHITECTURE_FILE = "architecture.json"
CHECKPOINT_DIR = "checkpoint"
CARD_FILE = "README.md"
# 1: model + checkpoint. 2: + preprocessing, cost, the artifact and the model card. Every version up
# to this one is read; a newer one is refused with both numbers (its fields may mean something else).
FORMAT_VERSION = 2
# space name -> (module, class) of its standalone child; looked up by name so a JSON file never chooses
# what gets imported.
CHILD_MODELS = {"mobilenet": ("oneshot.models.mobilenet_child", "MobileNet"),
                "nasbench201": ("oneshot.models.nasbench201_child", "NasBench201"),
                "module": ("oneshot.nas", "FixedArchitecture")}  # your module, `skeleton['module']`


def read_architecture(directory: storage.PathLike) -> dict:
  """architecture.json, every field checked (an export folder may come from anyone, edited or cut
  short): one line naming the first bad field, never a traceback from deeper down."""
  path = storage.as_path(directory) / ARCHITECTURE_FILE
  storage.require_readable(directory)
  if not path.exists():
    raise UserError(f"{directory} has no {ARCHITECTURE_FILE}; give a directory written by "
                    "`oneshot export --out DIR`")
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path} ({storage.first_line(e)[:120]}); re-run `oneshot export`") from None
  version = record.get("format_version") if isinstance(record, dict) else None
  if _is_int(version) and version > FORMAT_VERSION:
    raise UserError(f"{path} is export format version {version}, newer than this oneshot reads "
                    f"(format version {FORMAT_VERSION}); upgrade oneshot, or re-export with this one")
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
      "format_version": lambda v: _is_int(v, 1) and v <= FORMAT_VERSION,
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
  return _format2_problem(record)


def _format2_problem(record: dict) -> str | None:
  """The fields format 2 added: required in a record of format 2, absent from format 1 (such an export
  loads; it cannot predict)."""
  if record["format_version"] >= 2:
    for key in ("preprocessing", "cost", "artifact"):
      if key not in record:
        return f"{key!r} is missing"
  if "preprocessing" in record:
    try:
      prep = serving.Preprocessing.from_json(record["preprocessing"], record["num_classes"])
    except ValueError as e:
      return f"'preprocessing': {e}"
    if list(prep.shape) != record["image_shape"]:
      return f"'preprocessing' takes images {list(prep.shape)}, 'image_shape' is {record['image_shape']}"
  # Like `checkpoint`: a plain name inside the folder, or None when no artifact was written.
  if record.get("artifact", None) not in (None, ARTIFACT_FILE):
    return f"'artifact' is {_short(record['artifact'])}"
  if not isinstance(record.get("cost", {}), dict):
    return f"'cost' is {_short(record['cost'])}"
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


def _built(record: dict, model: Any, directory: storage.PathLike) -> tuple[Any, Any]:
  """(model, its variables' shapes) from a checked record. The skeleton and architecture values are
  the space's own structures, read by the model code as it builds: a value of the wrong kind there
  surfaces as a TypeError, KeyError... from inside it, which is the file's fault, so one line."""
  try:
    model = build_model(record, model)
    return model, init_shapes(model, record["image_shape"])
  except UserError:
    raise
  except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
    raise UserError(f"{storage.as_path(directory) / ARCHITECTURE_FILE} does not describe a model of space "
                    f"{record['space']!r} ({type(e).__name__}: {storage.first_line(e)[:100]}); re-run "
                    "`oneshot export`") from None


def init_shapes(model: Any, image_shape: Sequence[int]) -> dict:
  """The model's variable tree as shapes (traced, not compiled: milliseconds)."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jnp.zeros((1,) + tuple(int(d) for d in image_shape), jnp.float32))


def load(directory: storage.PathLike, model: Any = None) -> tuple[Any, dict]:
  """(model, variables) of an export: `model.apply(variables, images, train=False)` gives logits.
  `model`: for an export of your own module, an instance of it (default: imported by its name)."""
  model, variables, _ = _load(directory, model)
  return model, variables


def load_predictor(directory: storage.PathLike, model: Any = None) -> serving.Predictor:
  """The export as a `serving.Predictor`: `.predict(raw images)` -> probabilities, and it unpacks as
  `(model, variables)`. An export written before preprocessing was recorded loads with one warning
  line on stderr (its predictor's `predict` asks for a re-export)."""
  model, variables, record = _load(directory, model)
  prep = None
  if "preprocessing" in record:
    prep = serving.Preprocessing.from_json(record["preprocessing"], record["num_classes"])
  else:
    print(f"oneshot: warning: {directory} records no input preprocessing (export format "
          f"{record['format_version']}): model and variables load, predict needs a re-export with "
          "`oneshot export`", file=sys.stderr)
  return serving.Predictor(model, variables, prep, record, os.fspath(directory))


def _load(directory: storage.PathLike, model: Any) -> tuple[Any, dict, dict]:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel  # the artifact needs none
  record = read_architecture(directory)
  model, abstract = _built(record, model, directory)
  path = storage.as_path(directory) / CHECKPOINT_DIR
  if not path.is_dir():
    raise UserError(f"{directory} has no {CHECKPOINT_DIR}/ checkpoint; re-run `oneshot export`")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(path, abstract)
  except (ValueError, KeyError, FileNotFoundError) as e:
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    raise UserError(f"the checkpoint in {directory} does not match its {ARCHITECTURE_FILE} "
                    f"({first}); re-run `oneshot export`") from None
  return model, dict(variables), record


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


def plain(value: Any) -> Any:
  """Tuples -> lists, recursively, so architecture.json reads back to what the model saw."""
  if isinstance(value, dict):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value.item() if isinstance(value, np.generic) else value

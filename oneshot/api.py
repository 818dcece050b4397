"""The Python face of oneshot: the calls the CLI makes, with results as objects instead of files.

    from oneshot import api
    config = api.get_config("digits")
    result = api.search(config, "workdirs/digits")
    child = api.export(result.workdir, "workdirs/digits-child")
    predictor = api.load(child.directory)  # also unpacks as (model, variables)
    probabilities = predictor.predict(images)  # raw images, as the dataset stores them

Every call writes the same files as its subcommand (`oneshot search`, `oneshot export`), resumes the same
way, and raises `oneshot.UserError` (one line naming the problem and the fix) where the CLI would print
one; the result objects carry what the JSON files hold, plus their paths.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from oneshot.data import arrays as arrays_lib
from oneshot import nas, storage
from oneshot import trust as trust_lib
from oneshot.data.arrays import Arrays
from oneshot.configuration import CONFIGS_DIR as _CONFIGS_DIR
from oneshot.errors import UserError
from oneshot.serving import Predictor

__all__ = ["Arrays", "ExportResult", "Predictor", "SearchResult", "export", "get_config", "load",
           "search", "supernet_logits"]


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """What `search` found: the answer, its validation accuracy on the trained supernet, and where the
  run's files are (`files`: search_result, config, metrics, controller_history, checkpoints)."""
  architecture: str                 # the space's own string for the answer
  dna: tuple[int, ...]              # one choice index per decision of the space
  reward: float                     # whole-validation-split accuracy of the answer on the supernet
  steps: int
  wall_seconds: float
  workdir: str
  files: dict[str, str]
  record: dict                      # search_result.json as written


@dataclasses.dataclass(frozen=True)
class ExportResult:
  """An exported child: a standalone Flax model (`load(directory)`) with an orbax checkpoint, the
  serialized artifact (jax alone) and its model card."""
  directory: str
  architecture: str
  num_params: int
  validation_accuracy: float        # stand-alone, after recalibrating BatchNorm on train batches
  record: dict                      # architecture.json as written
  artifact: str | None = None       # model.jax_export's path, None if the model could not be lowered


def get_config(name: str = "digits", **overrides: Any) -> ml_collections.ConfigDict:
  """A built-in config by name (`digits`, `fashion_mnist`, `digits_nb201`, ...) or a config file's
  `get_config()` by path; `overrides` set top-level sections or fields, e.g. `seed=3`."""
  path = name if name.endswith(".py") else os.path.join(_CONFIGS_DIR, f"{name}.py")
  if not os.path.isfile(path):
    names = sorted(f[:-3] for f in os.listdir(_CONFIGS_DIR)
                   if f.endswith(".py") and f not in ("__init__.py", "common.py"))
    raise UserError(f"no config {name!r}; use one of {', '.join(names)} or a path to a .py file "
                    "with get_config()")
  spec = importlib.util.spec_from_file_location(f"_oneshot_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception as e:  # pylint: disable=broad-except  # a config file may raise anything
    raise UserError(f"cannot load config file {path}: {type(e).__name__}: {e}; fix the file") from None
  for key, value in overrides.items():
    config[key] = value
  return config


def search(config: ml_collections.ConfigDict, workdir: str, data: Arrays | None = None,
           model: Any = None) -> SearchResult | None:
  """Runs (or resumes) `oneshot search`; None when it was stopped (SIGTERM) before the end.

  `data`: your own numpy arrays instead of `config.dataset` (a resume needs the same arrays again).
  `model`: your own Flax module with `oneshot.nas.Choice` points, searched instead of `config.space`."""
  from oneshot import search_loop  # pylint: disable=import-outside-toplevel
  with arrays_lib.serving(data) as dataset, nas.serving(model) as space, trust_lib.scope():
    trust_lib.trust_config(config)  # the caller's own config: the module it names is theirs
    config = _with_sections(config, dataset, space)
    record = search_loop.run(config, workdir)  # other arrays than the workdir's: one line there
  if record is None:
    return None
  workdir = storage.as_path(workdir)
  files = {name: os.fspath(workdir / name) for name in (
      "search_result.json", "config.json", "metrics.jsonl", "controller_history.json",
      "checkpoints")}
  return SearchResult(architecture=record["string"], dna=tuple(int(i) for i in record["dna"]),
                      reward=float(record["reward"]), steps=int(record["steps"]),
                      wall_seconds=float(record["wall_seconds"]), workdir=os.fspath(workdir), files=files,
                      record=record)


def _with_sections(config: ml_collections.ConfigDict, dataset: dict | None,
                   space: dict | None) -> ml_collections.ConfigDict:
  """A copy of `config` whose dataset and space sections name the served arrays and module."""
  if dataset is None and space is None:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  if dataset is not None:
    config.dataset = dataset
  if space is not None:
    config.space = space
  return config


def export(workdir: str, out: str, *, dna: str | None = None, recalibrate_batches: int = 20,
           data: Arrays | None = None, model: Any = None, trust: Sequence[str] = ()) -> ExportResult:
  """`oneshot export`: the search's answer (or `dna`, the space's string or comma-separated choices) as
  a standalone child model with recalibrated BatchNorm, written to `out`. `data` and `model`: the
  arrays and the module the search ran on, if it ran on yours; `trust`: module names the workdir's
  config.json may have imported instead (`--trust-module`)."""
  from oneshot import export as export_lib  # pylint: disable=import-outside-toplevel
  with arrays_lib.serving(data), nas.serving(model), trust_lib.scope(trust):
    record = export_lib.export(workdir, out, dna_text=dna, recalibrate_batches=recalibrate_batches)
  directory = storage.as_path(out)
  return ExportResult(directory=os.fspath(directory), architecture=record["string"],
                      num_params=int(record["num_params"]),
                      validation_accuracy=float(record["validation_accuracy"]["recalibrated"]),
                      record=record,
                      artifact=os.fspath(directory / record["artifact"]) if record["artifact"] else None)


def load(directory: str, model: Any = None, trust: Sequence[str] = ()) -> Predictor:
  """An export, ready for raw images: `load(d).predict(images)` gives probabilities [n, classes] for
  images as the dataset stores them (uint8 [n, H, W, C]; architecture.json's `preprocessing` says the
  scale), `.class_names` names the classes. It unpacks as `(model, variables)` too:
  `model.apply(variables, normalised_images, train=False)` gives logits.
  `model`: an instance of your module, for an export of your own search space. Without it the module
  architecture.json names is imported only if `trust` lists it (importing runs the module's code, and
  the folder may come from anyone); a class defined in a script cannot be imported at all."""
  from oneshot import child as child_lib  # pylint: disable=import-outside-toplevel
  with trust_lib.scope(trust):
    return child_lib.load_predictor(directory, model)


def supernet_logits(workdir: str, images: Any, dna: Any = None, *, data: Arrays | None = None,
                    model: Any = None, trust: Sequence[str] = ()) -> Any:
  """Logits of the trained supernet on path `dna` (default: the search's answer) for `images`
  [batch, H, W, C], with batch-statistics BatchNorm as in the search: an exported child applied with
  `train=True` gives the same numbers."""
  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp
  from oneshot import export as export_lib
  from oneshot import session as session_lib
  with arrays_lib.serving(data), nas.serving(model), trust_lib.scope(trust):
    sess = session_lib.build(session_lib.load_search_config(workdir))
    # export's rule: the search's answer by default (one line if the search has not finished)
    dna = (export_lib.choose_dna(sess.space, workdir, dna) if dna is None or isinstance(dna, str)
           else sess.space.validate(dna))
    params = session_lib.restore_params(sess, workdir)["params"]
    return sess.model.apply(sess.variables(params), jnp.asarray(images, jnp.float32),
                            jnp.asarray(dna, jnp.int32))

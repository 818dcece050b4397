"""Everything a search, export, rank or co-search run needs, built from one config.

Validates every name in the config (space, controller, executor, dataset) before anything is written,
so bad input fails with one line and an untouched workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from oneshot import controllers
from oneshot import spaces
from oneshot import checkpoint, data, runtime, steps, storage, supernet
from oneshot.errors import UserError
from oneshot.spaces.core import Space


@dataclasses.dataclass
class Session:
  config: ml_collections.ConfigDict
  space: Space
  dataset: data.Dataset
  model: Any
  controller: controllers.Controller
  mesh: Any
  frozen: dict          # supernet collections that are not trained (batch_stats)
  initial_params: Any

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def initial_state(self, tx) -> dict:
    """The full search state pytree, as checkpointed."""
    key = jax.random.PRNGKey(self.config.seed)
    return {"params": self.initial_params, "opt_state": tx.init(self.initial_params),
            "controller": self.controller.init(jax.random.fold_in(key, 1)),
            "key": jax.random.key_data(jax.random.fold_in(key, 2)),
            "step": np.zeros((), np.int32)}

  @functools.cached_property
  def score_step(self):
    """The one compiled forward for rewards and evaluation (see steps.make_score_step)."""
    return steps.make_score_step(self.model, self.mesh, self.frozen)

  def variables(self, params) -> dict:
    return {"params": params, **self.frozen}


def controller_config(config: ml_collections.ConfigDict) -> dict:
  """Controller hyperparameters plus the number of controller updates the search will make.

  Fields left at None are dropped, so each controller falls back to its own defaults (a TuNAS search
  must not run with ENAS's baseline decay and entropy bonus). The controller is updated once per step
  after the uniform warm-up and never during it, so `num_steps` is exactly its number of updates and
  any schedule inside it (TuNAS's lr growth) spans its real life.
  """
  c = {k: v for k, v in config.controller.to_dict().items() if v is not None}
  c["num_steps"] = controller_updates(config)
  return c


def uniform_steps(config: ml_collections.ConfigDict) -> int:
  """Steps at the start of the search that train on uniform paths with no controller update."""
  t = config.train
  return int(t.num_steps * t.uniform_fraction)


def controller_updates(config: ml_collections.ConfigDict) -> int:
  return max(1, int(config.train.num_steps) - uniform_steps(config))


def build(config: ml_collections.ConfigDict) -> Session:
  runtime.use_cpu_devices(config)  # before anything starts JAX's backend
  dataset = None
  if config.space.get("name") == "module" and not config.space.get("input_shape"):
    dataset = data.load(config.dataset)  # your module's choices are found by tracing it on one example
    with config.unlocked():
      config.space.input_shape = tuple(int(d) for d in dataset.image_shape)
  space = spaces.build(config.space)
  supernet.resolve_executor(config.supernet.executor)
  supernet.resolve_depthwise(config.supernet.depthwise)
  controller = controllers.build(config.controller.name, space, controller_config(config))
  _check_positive(config)
  if bool(config.supernet.get("sync_batch_norm", False)):
    raise UserError("--config.supernet.sync_batch_norm=True cannot be used in a search: each device "
                    "runs its own path, so averaging BatchNorm statistics across devices would mix "
                    "different networks (and put collectives inside per-device branches); remove it "
                    "(each device normalises with its own path's batch statistics, as TuNAS)")
  dataset = dataset or data.load(config.dataset)
  mesh = steps.make_mesh(int(config.get("num_devices", 0)))
  n = mesh.devices.size
  for name in ("batch_size", "reward_batch_size"):
    if config.train[name] % n:
      raise UserError(f"--config.train.{name}={config.train[name]} must be a multiple of the "
                      f"{n} devices")
  model = supernet.build(space, dataset.num_classes, dataset.image_shape[-1],
                         executor_for(controller, config.supernet.executor), config.supernet.depthwise,
                         config.supernet.get("depthwise_sharing", "centre"))
  dummy = jnp.zeros((1,) + tuple(dataset.image_shape), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(config.seed),
                                  dummy, jnp.zeros(space.num_decisions, jnp.int32))
  params = variables.pop("params")
  if space.name == "module":
    _check_module_output(model, params, variables, dummy, space, dataset)
  return Session(config=config, space=space, dataset=dataset, model=model, controller=controller,
                 mesh=mesh, frozen=steps.replicate(mesh, dict(variables)),
                 initial_params=steps.replicate(mesh, params))


def executor_for(controller: controllers.Controller, executor: str) -> str:
  """The configured executor, except that DARTS and ProxylessNAS need every candidate's output in
  their gradients (`mixes_all_choices`), which only `mask` computes; `auto` picks it for them."""
  if not getattr(controller, "mixes_all_choices", False):
    return executor
  if executor not in ("auto", "mask"):
    raise UserError(f"controller {controller.name!r} mixes every candidate's output, which the "
                    f"{executor!r} executor does not compute; set --config.supernet.executor=mask "
                    "(or auto)")
  return "mask"


def _check_positive(config) -> None:
  """The loop's counters and fractions, checked up front (and by `oneshot search --dry-run`): a zero
  `log_every` or `checkpoint_every` would otherwise fail at the first step, after the compile."""
  t = config.train
  for name in ("num_steps", "batch_size", "reward_batch_size", "eval_batch_size", "log_every",
               "checkpoint_every", "max_nonfinite_steps"):
    if name in t and int(t[name]) <= 0:
      raise UserError(f"--config.train.{name} must be positive, got {t[name]}")
  if "warmup_steps" in t and int(t.warmup_steps) < 0:
    raise UserError(f"--config.train.warmup_steps must be >= 0, got {t.warmup_steps}")
  if "uniform_fraction" in t and not 0.0 <= float(t.uniform_fraction) <= 1.0:
    raise UserError(f"--config.train.uniform_fraction must be in [0, 1], got {t.uniform_fraction}")
  from oneshot.controllers.uniform import WARMUP_SAMPLERS  # pylint: disable=import-outside-toplevel
  if t.get("warmup_sampler", "uniform") not in WARMUP_SAMPLERS:
    names = ", ".join(WARMUP_SAMPLERS[:-1]) + f" or {WARMUP_SAMPLERS[-1]}"
    raise UserError(f"--config.train.warmup_sampler must be {names}, got {t.warmup_sampler!r}")
  select = config.get("select")
  if select is not None:
    for name in ("num_candidates", "score_images", "top_k"):
      if int(select.get(name, 1)) <= 0:
        raise UserError(f"--config.select.{name} must be positive, got {select[name]}")
    if int(select.get("recalibrate_batches", 0)) < 0:
      raise UserError(f"--config.select.recalibrate_batches must be >= 0 (0: batch-statistics "
                      f"rescoring), got {select.recalibrate_batches}")
    if int(select.get("top_k", 1)) > int(select.get("num_candidates", 1)):
      raise UserError(f"--config.select.top_k={select.top_k} must not exceed "
                      f"--config.select.num_candidates={select.num_candidates}")


def evaluate(session: Session, params, dna, split: str = "validation") -> float:
  """Accuracy of the path `dna` on a whole split, with batch-statistics BN (as in the search)."""
  n = session.num_devices
  batch_size = -(-int(session.config.train.eval_batch_size) // n) * n
  paths = steps.shard_paths(session.mesh, np.tile(np.asarray(dna, np.int32), (n, 1)))
  correct = total = 0.0
  for batch in session.dataset.iterate(split, batch_size, process_index=jax.process_index(),
                                       process_count=jax.process_count()):
    b = steps.shard_batch(session.mesh, batch)
    scores = np.asarray(session.score_step(params, b["image"], b["label"], b["mask"], paths))
    correct, total = correct + float(scores[:, 0].sum()), total + float(scores[:, 1].sum())
  return correct / max(total, 1.0)


def score_candidates(session: Session, params, dnas: np.ndarray, num_images: int,
                     split: str = "validation") -> np.ndarray:
  """Accuracy of each DNA row on the same first `num_images` images of `split` (batch-statistics BN),
  the cheap score of `controllers.rsws.select`. Every device gets the same images and its own
  candidate, so one forward pass scores `num_devices` candidates on equal terms."""
  dnas = np.asarray(dnas, np.int32).reshape(-1, session.space.num_decisions)
  n = session.num_devices
  per_device = -(-int(session.config.train.eval_batch_size) // n)
  local_devices = len(session.mesh.local_devices)
  chunks = []
  for chunk in session.dataset.iterate(split, per_device):
    chunks.append({k: np.tile(v, (local_devices,) + (1,) * (v.ndim - 1)) for k, v in chunk.items()})
    if len(chunks) * per_device >= num_images:
      break
  chunks = [steps.shard_batch(session.mesh, c) for c in chunks]
  out = np.zeros(len(dnas), np.float64)
  for start in range(0, len(dnas), n):
    group = dnas[start:start + n]
    padded = np.concatenate([group, np.repeat(group[-1:], n - len(group), axis=0)])
    paths = steps.shard_paths(session.mesh, padded)
    correct = total = np.zeros(n)
    for b in chunks:
      scores = np.asarray(session.score_step(params, b["image"], b["label"], b["mask"], paths))
      correct, total = correct + scores[:, 0], total + scores[:, 1]
    out[start:start + len(group)] = (correct / np.maximum(total, 1.0))[:len(group)]
  return out


def use_search_devices(workdir: storage.PathLike) -> None:
  """The search's `cpu_devices`, for a command on its workdir, called before anything starts JAX
  (orbax's checkpoint manager does): export and rank then score with the devices the search ran on
  (batch-statistics scores are per device). Says nothing about a bad workdir: the checks that follow
  do, each in one line."""
  from oneshot.configuration import from_json  # pylint: disable=import-outside-toplevel
  try:
    config = from_json((storage.as_path(workdir) / "config.json").read_text())
  except (OSError, ValueError, UserError):
    return
  runtime.use_cpu_devices(config)


def read_search_dna(workdir: storage.PathLike, space: Space) -> Any:
  """The finished search's answer (search_result.json), or None with a note when it has not finished."""
  path = storage.as_path(workdir) / "search_result.json"
  if not path.exists():
    print(f"note: {workdir} has no search_result.json yet; ranking without the search result",
          file=sys.stderr)
    return None
  return space.from_json(json.loads(path.read_text()))


def load_search_config(workdir: storage.PathLike) -> ml_collections.ConfigDict:
  """A search workdir's config.json, checked field by field (workdir.read_config): a damaged or edited
  file is one line here, not a traceback wherever the bad value is first used."""
  storage.require_readable(workdir)
  path = storage.as_path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{workdir} has no config.json; it is not a search workdir (run `oneshot search "
                    f"--workdir {workdir}` first)")
  from oneshot import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  return ml_collections.ConfigDict(workdir_lib.read_config(
      path, f"restore it, or run `oneshot search --workdir {workdir}` again in a new workdir"))


def restore_params(session: Session, workdir: storage.PathLike):
  """The newest readable checkpointed search state of `workdir` (a dict: 'params', 'opt_state',
  'controller', 'key', 'step'), for a finished or interrupted search."""
  mngr = checkpoint.require_checkpoint(workdir)
  tx = steps.make_optimizer(session.config)
  restored = checkpoint.restore_latest(mngr, session.initial_state(tx))
  if restored is None:
    raise UserError(f"no readable checkpoint in {workdir}/checkpoints; re-run the search")
  return restored[1]


def _check_module_output(model, params, variables, dummy, space: Space, dataset: data.Dataset) -> None:
  """Your module must map [batch, H, W, C] images to [batch, num_classes] logits."""
  out = jax.eval_shape(lambda p: model.apply({"params": p, **variables}, dummy,
                                             jnp.zeros(space.num_decisions, jnp.int32)), params)
  if getattr(out, "shape", None) != (1, dataset.num_classes):
    raise UserError(f"{space.skeleton['module']} returns {getattr(out, 'shape', type(out).__name__)} "
                    f"for one image; it must return logits of shape (batch, {dataset.num_classes}) for "
                    f"the {dataset.num_classes} classes of {dataset.name}")

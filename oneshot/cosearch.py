"""`oneshot cosearch`: search accelerators in an outer loop, architectures for each in an inner loop.

NAHAS-style (Zhou et al. 2021) joint search on one frozen weight-sharing supernet, trained once by
`oneshot search` in the same workdir (reused when already finished). The outer controller proposes
accelerator DNAs; for each, a short inner controller search over architectures maximises the config's
reward (supernet validation accuracy combined with cost-model latency/energy/area on *that*
accelerator); the inner search's best pair is the accelerator's point and its reward the outer
controller's reward. `points` holds one such pair per evaluated accelerator; accuracy is the supernet's
(batch-statistics BN, as in the search) on the fixed reward batches, by default the whole validation
split. Each inner search opens with the best architectures found so far (`cosearch.warm_start`).

Why it is fast: accuracy of a path on the frozen supernet does not depend on the accelerator, so it is
memoised per architecture (and kept in the resume state); the reward step is compiled once; the
accelerator only changes the numpy cost model, which prices a whole batch of paths in one call.

Infeasible accelerators (over the area budget; the space's constraint): never evaluated nor recorded.
They are fed back to the outer controller with `cosearch.infeasible_reward` (finite, so REINFORCE
controllers learn to avoid them without NaNs) and do not count against `outer_budget`; controllers that
sample through the space (evolution) never propose them. A re-proposed accelerator reuses its first
result (fed back again, not recorded twice) and counts against the budget.

Files: W/cosearch_state.json after every accelerator (points, the outer controller's state as JSON
leaves, the accuracy memo), so a re-run continues where it stopped, also with a larger budget;
W/cosearch.json (`points`, `pareto`, `best`) and W/pareto.png at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from oneshot import controllers
from oneshot import storage
from oneshot.errors import UserError
from oneshot.hardware import settings as hardware_settings
from oneshot.spaces import accelerator

STATE_FILE, RESULT_FILE, PLOT_FILE = "cosearch_state.json", "cosearch.json", "pareto.png"
OBJECTIVES = (("accuracy", 1), ("latency_ms", -1), ("energy_mj", -1), ("area_mm2", -1))
# Config sections that change what a point means; a resumed run must match them (budget may grow).
_FINGERPRINT = ("seed", "space", "dataset", "train", "hardware", "cosearch")
_NOT_WEIGHTS = ("eval_batch_size", "log_every", "checkpoint_every", "max_nonfinite_steps")


def main(argv: Sequence[str]) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from oneshot import configuration  # pylint: disable=import-outside-toplevel

  def define(fv):
    flags.DEFINE_string("workdir", None, "Output directory; an existing one is resumed.",
                        flag_values=fv)
  fv = configuration.parse_flags(argv, define, command="cosearch", config_required=True)
  if not fv.workdir:
    raise UserError("--workdir is required, e.g. --workdir workdirs/digits_cosearch")
  result = run(fv.config, fv.workdir)
  if result is None:
    return 0
  b = result["best"]
  print(f"co-searched {len(result['points'])} accelerators ({result['evaluations']} architecture "
        f"evaluations, {result['wall_seconds']:.0f} s); best reward {b['reward']:.4f}: "
        f"{_accel_text(b['accelerator'])} with {b['architecture']['string']} (accuracy "
        f"{b['accuracy']:.4f}, {b['latency_ms']:.4f} ms, {b['energy_mj']:.4f} mJ, "
        f"{b['area_mm2']:.3f} mm^2); {len(result['pareto'])} Pareto points; wrote "
        f"{storage.as_path(fv.workdir) / RESULT_FILE}")
  return 0


# --- scoring ---------------------------------------------------------------------------------------
class Evaluator:
  """Rewards of architecture batches on one accelerator: memoised supernet accuracy + cost model."""

  def __init__(self, config, sess, params, cost_fn: Callable, accel_space):
    self.config, self.session, self.params = config, sess, params
    self.space, self.accel_space, self.cost_fn = sess.space, accel_space, cost_fn
    c = config.cosearch
    self.reward = hardware_settings.read(config, "cosearch").reward
    from oneshot import steps  # pylint: disable=import-outside-toplevel
    self._steps = steps
    self.reward_step = steps.make_reward_step(sess.model, sess.mesh, sess.frozen)
    n = sess.num_devices
    size = int(c.reward_batch_size) or sess.dataset.split_sizes["validation"] // n * n
    if size <= 0 or size % n or int(c.reward_batches) <= 0:
      raise UserError(f"--config.cosearch.reward_batch_size must be a positive multiple of the {n} "
                      f"devices (or 0 for the whole split) and reward_batches >= 1; got {size}, "
                      f"{c.reward_batches}")
    self.batches = [steps.shard_batch(sess.mesh, sess.dataset.batch(
        "validation", j, size, config.seed, process_index=jax.process_index(),
        process_count=jax.process_count())) for j in range(int(c.reward_batches))]
    self.cache: dict[str, float] = {}  # DNA string -> accuracy on `batches`

  def accuracy(self, dnas: np.ndarray) -> np.ndarray:
    """[N] accuracies; paths not seen before run `num_devices` at a time, one per device."""
    keys = [_key(d) for d in dnas]
    todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
    n = self.session.num_devices
    for start in range(0, len(todo), n):
      chunk = todo[start:start + n]
      paths = np.array([[int(v) for v in k.split(",")] for k in chunk + chunk[-1:] * (n - len(chunk))],
                       np.int32)
      sharded = self._steps.shard_paths(self.session.mesh, paths)
      acc = np.mean([np.asarray(self.reward_step(self.params, b, sharded)) for b in self.batches], 0)
      for k, a in zip(chunk, acc):
        self.cache[k] = float(a)
    return np.array([self.cache[k] for k in keys])

  def score(self, dnas: np.ndarray, accel_dna: np.ndarray) -> dict[str, np.ndarray]:
    dnas = np.asarray(dnas, np.int32).reshape(-1, self.space.num_decisions)
    costs = self.cost_fn(dnas, np.asarray(accel_dna, np.int32).reshape(1, -1))
    acc = self.accuracy(dnas)
    out = {"accuracy": acc, **{k: np.asarray(costs[k], np.float64)
                               for k in ("latency_ms", "energy_mj", "area_mm2")}}
    out["reward"] = self.reward(acc, costs)
    return out

  def point(self, accel_dna, arch_dna, extra: dict | None = None) -> dict[str, Any]:
    s = self.score(np.asarray(arch_dna)[None], accel_dna)
    return {"accelerator": self.accel_space.to_values(accel_dna),
            "accelerator_dna": [int(v) for v in accel_dna],
            "architecture": self.space.to_json(arch_dna),
            **{k: float(v[0]) for k, v in s.items()}, **(extra or {})}


def _key(dna) -> str:
  return ",".join(str(int(v)) for v in dna)


def inner_search(ev: Evaluator, controller, accel_dna, key, steps: int, paths: int,
                 warm: np.ndarray | None = None) -> tuple[np.ndarray, int]:
  """Best architecture (by reward) among the inner controller's proposals, and the query count.

  `warm` DNAs replace the first proposals of the first step (same query count): the best
  architectures of earlier accelerators, so each short inner search starts from what already worked
  instead of from scratch (a good network is rarely bad on a neighbouring accelerator).
  """
  state = controller.init(key)
  best, best_reward = None, -np.inf
  for t in range(steps):
    dnas = np.array(controller.propose(state, jax.random.fold_in(key, t), paths), np.int32)
    if t == 0 and warm is not None and len(warm):
      k = min(len(warm), paths)
      dnas[:k] = np.asarray(warm, np.int32)[:k]
    r = ev.score(dnas, accel_dna)["reward"]
    state, _ = controller.feedback(state, dnas, r.astype(np.float32))
    i = int(np.argmax(r))
    if best is None or r[i] > best_reward:
      best, best_reward = dnas[i].copy(), float(r[i])
  return best, steps * paths


def make_evaluate(ev: Evaluator, config, progress: dict, log: bool = True) -> Callable:
  """(accelerator DNA, point index) -> the point of that accelerator's inner search's best pair."""
  c = config.cosearch
  n = ev.session.num_devices
  paths = -(-int(c.inner_paths) // n) * n
  inner = controllers.build(c.inner_controller, ev.space, {**c.inner.to_dict(),
                                                           "num_steps": int(c.inner_steps)})
  root = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 11)

  def evaluate(accel_dna, index):
    t0 = time.time()
    ranked = sorted(progress["points"], key=lambda p: -p["reward"])
    warm = list(dict.fromkeys(tuple(p["architecture"]["dna"]) for p in ranked))
    warm = np.array(warm[:int(c.warm_start)], np.int32).reshape(-1, ev.space.num_decisions)
    arch, queries = inner_search(ev, inner, accel_dna, jax.random.fold_in(root, index),
                                 int(c.inner_steps), paths, warm)
    progress["evaluations"] += queries
    p = ev.point(accel_dna, arch, {"index": index, "inner_evaluations": queries})
    if log:
      print(f"accelerator {index + 1}/{int(c.outer_budget)} {_accel_text(p['accelerator'])}: "
            f"accuracy {p['accuracy']:.4f} latency {p['latency_ms']:.4f} ms energy "
            f"{p['energy_mj']:.4f} mJ area {p['area_mm2']:.3f} mm^2 reward {p['reward']:.4f} "
            f"({time.time() - t0:.1f} s)", file=sys.stderr)
    return p

  return evaluate


# --- the outer loop --------------------------------------------------------------------------------
def outer_loop(ev: Evaluator, config, progress: dict, evaluate: Callable[[np.ndarray, int], dict],
               save: Callable[[dict], None] | None = None, stop_after: int | None = None) -> bool:
  """Runs the outer controller until `outer_budget`; `progress` (the resume state) is updated in place.

  `evaluate(accel_dna, index)` returns the point of one feasible accelerator. Returns False when
  stopped early by `stop_after` new points.
  """
  c = config.cosearch
  budget = int(c.outer_budget)
  outer = controllers.build(c.outer_controller, ev.accel_space,
                            {**c.outer.to_dict(), "num_steps": budget})
  root = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 7)
  state = outer.init(jax.random.fold_in(root, 0))
  if progress.get("outer_state") is not None:
    state = _tree_from_json(state, progress["outer_state"])
  max_proposals = int(c.max_proposals) or 50 * budget
  seen = {_key(p["accelerator_dna"]): p for p in progress["points"]}
  new = 0
  while progress["feasible"] < budget:
    if progress["proposals"] >= max_proposals:
      raise UserError(f"{progress['proposals']} accelerator proposals, only {progress['feasible']} "
                      "within the area budget; raise "
                      f"{hardware_settings.flag('area_budget_mm2')} or "
                      "--config.cosearch.max_proposals")
    key = jax.random.fold_in(jax.random.fold_in(root, 1), progress["proposals"])
    dna = np.asarray(outer.propose(state, key, 1), np.int32)[0]
    progress["proposals"] += 1
    if not accelerator.feasible(ev.accel_space, dna[None])[0]:
      progress["rejected"] += 1
      state, _ = outer.feedback(state, dna[None], np.array([c.infeasible_reward], np.float32))
    else:
      progress["feasible"] += 1
      point = seen.get(_key(dna))
      if point is None:
        point = evaluate(dna, len(progress["points"]))
        progress["points"].append(point)
        seen[_key(dna)] = point
        new += 1
      else:
        progress["duplicates"] += 1
      state, _ = outer.feedback(state, dna[None], np.array([point["reward"]], np.float32))
    progress["outer_state"] = _tree_to_json(state)
    if save is not None:
      save(progress)
    if stop_after is not None and new >= stop_after and progress["feasible"] < budget:
      return False
  return True


def _tree_to_json(tree) -> list:
  return [{"dtype": str(np.asarray(x).dtype), "shape": list(np.shape(x)),
           "data": np.asarray(x).reshape(-1).tolist()} for x in jax.tree.leaves(tree)]


def _tree_from_json(template, leaves: list):
  flat, treedef = jax.tree.flatten(template)
  if len(flat) != len(leaves):
    raise UserError(f"{STATE_FILE} holds another controller's state; delete it or use a new --workdir")
  out = []
  for t, leaf in zip(flat, leaves):
    value = np.asarray(leaf["data"], leaf["dtype"]).reshape(leaf["shape"])
    out.append(jax.numpy.asarray(value) if isinstance(t, jax.Array) else value)
  return jax.tree.unflatten(treedef, out)


# --- Pareto, result files --------------------------------------------------------------------------
def pareto_mask(points: Sequence[dict]) -> np.ndarray:
  """[N] bool: not dominated (>= on every objective of OBJECTIVES and > on one) by another point."""
  if not points:
    return np.zeros(0, bool)
  x = np.array([[sign * float(p[k]) for k, sign in OBJECTIVES] for p in points])  # higher is better
  ge = (x[:, None, :] >= x[None, :, :]).all(-1)
  gt = (x[:, None, :] > x[None, :, :]).any(-1)
  dominated = (ge & gt).any(0)  # [j]: some i dominates j
  return ~dominated


def result(progress: dict, config, wall: float, extra: dict | None = None) -> dict:
  points = progress["points"]
  mask = pareto_mask(points)
  best = max(points, key=lambda p: p["reward"]) if points else None
  hardware = hardware_settings.read(config, "cosearch")
  return {"points": points, "pareto": [p for p, m in zip(points, mask) if m], "best": best,
          "reward": hardware.reward.settings(), "cost_model": hardware.cost_model,
          "evaluations": progress["evaluations"],
          "accuracy_evaluations": len(progress["accuracy_cache"]),
          "proposals": progress["proposals"], "rejected": progress["rejected"],
          "duplicates": progress["duplicates"], "wall_seconds": wall, **(extra or {})}


def plot(res: dict, path: str, title: str = "hardware co-search") -> None:
  """Accuracy vs latency of every point; the Pareto set (4 objectives) and the 2-D front marked."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from oneshot import plots  # pylint: disable=import-outside-toplevel
  pts = res["points"]
  lat = np.array([p["latency_ms"] for p in pts])
  acc = np.array([p["accuracy"] for p in pts])
  par = pareto_mask(pts)
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.scatter(lat[~par], acc[~par], s=18, c="0.6", label="evaluated (accelerator, architecture)")
  ax.scatter(lat[par], acc[par], s=30, c="tab:red", label="Pareto (accuracy, latency, energy, area)")
  order = np.lexsort((-acc, lat))
  front = order[np.maximum.accumulate(acc[order]) == acc[order]]
  ax.step(lat[front], acc[front], where="post", c="tab:red", lw=1, alpha=0.6)
  if res.get("best"):
    ax.scatter([res["best"]["latency_ms"]], [res["best"]["accuracy"]], marker="*", s=160, c="gold",
               edgecolors="k", zorder=3, label="best reward")
  ax.set(xscale="log", xlabel="latency (ms)", ylabel="supernet validation accuracy", title=title)
  # 0.02, 0.05, 0.1 rather than 2x10^-2 on every minor tick: readable and no overlap.
  plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "125" else "")
  ax.xaxis.set_major_formatter(plain)
  ax.xaxis.set_minor_formatter(plain)
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  plots.save_figure(fig, path, dpi=120)


# --- the command -----------------------------------------------------------------------------------
def prepare(config, workdir: storage.PathLike) -> Evaluator | None:
  """Trains (or reuses) the supernet in `workdir`; the evaluator on its weights, or None if stopped."""
  from oneshot import search_loop, session as session_lib  # pylint: disable=import-outside-toplevel
  hardware = validate(config)
  done = storage.as_path(workdir) / "search_result.json"
  finished = False
  if done.exists():
    finished = int(json.loads(done.read_text()).get("steps", -1)) == int(config.train.num_steps)
  if not finished and search_loop.run(config, workdir, hardware_aware=False) is None:
    return None
  sess = session_lib.build(config)
  restored = session_lib.restore_params(sess, workdir)
  params = restored["params"] if isinstance(restored, dict) and "params" in restored else restored
  cost_fn = hardware.cost_function(sess.space, hardware.accelerators, sess.dataset.image_shape,
                                   sess.dataset.num_classes)
  return Evaluator(config, sess, params, cost_fn, hardware.accelerators)


def validate(config) -> hardware_settings.Hardware:
  """The `hardware` section (device space, reward, cost model), once every co-search setting is
  checked (before any training)."""
  from oneshot import spaces  # pylint: disable=import-outside-toplevel
  if config.get("cosearch") is None:
    raise UserError("the config has no cosearch section; use --config configs/digits_cosearch.py or "
                    "add one as it does")
  hardware = hardware_settings.read(config, "cosearch")
  c = config.cosearch
  for name, least in (("outer_budget", 1), ("inner_steps", 1), ("inner_paths", 1),
                      ("warm_start", 0)):
    if int(c[name]) < least:
      raise UserError(f"--config.cosearch.{name} must be >= {least}; got {c[name]}")
  for name in ("outer_controller", "inner_controller"):
    if c[name] not in controllers.registry():
      raise UserError(f"unknown controller {c[name]!r}; set --config.cosearch.{name} to one of "
                      f"{sorted(controllers.registry())}")
    controllers.require_reward_based(c[name], "the co-search (rewards of a cost model)")
  # A table file is read and checked against the space now, not after training.
  hardware.cost_function(spaces.build(config.space), hardware.accelerators, (1, 1, 1), 1)
  return hardware


def _changed(old: dict, new: dict) -> list[str]:
  """Dotted keys whose values differ; keys on one side only are settings added to (or dropped from)
  the code since, not a change."""
  old, new = _flat(json.loads(json.dumps(old, default=str))), _flat(json.loads(json.dumps(
      new, default=str)))
  return sorted(k for k in set(old) & set(new) if old[k] != new[k])


def _fingerprint(config) -> dict:
  d = json.loads(json.dumps(config.to_dict(), default=str))
  out = {k: d.get(k) for k in _FINGERPRINT}
  out["cosearch"] = {k: v for k, v in (out["cosearch"] or {}).items() if k != "outer_budget"}
  out["train"] = {k: v for k, v in (out["train"] or {}).items() if k not in _NOT_WEIGHTS}
  return out


def load_progress(config, workdir: storage.PathLike) -> dict:
  path = storage.as_path(workdir) / STATE_FILE
  fresh = {"version": 1, "fingerprint": _fingerprint(config), "points": [], "proposals": 0,
           "feasible": 0, "rejected": 0, "duplicates": 0, "evaluations": 0, "outer_state": None,
           "accuracy_cache": {}, "wall_seconds": 0.0}
  if not path.exists():
    return fresh
  try:
    progress = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read {path} ({e}); delete it to restart the co-search") from None
  def wrong_type(key: str, value: Any) -> bool:
    kind = (int, float) if isinstance(value, float) else type(value)
    return not isinstance(progress.get(key), kind) or isinstance(progress.get(key), bool)
  if not isinstance(progress, dict):
    progress = {}
  wrong = [k for k, v in fresh.items() if v is not None and wrong_type(k, v)]
  if wrong:
    raise UserError(f"{path} is damaged ({wrong[0]!r} missing or of the wrong type); delete it to "
                    "restart the co-search, or use a new --workdir")
  changed = _changed(progress.get("fingerprint", {}), fresh["fingerprint"])
  if changed:
    raise UserError(f"{path} was made with another co-search config (changed: "
                    f"{', '.join(changed[:4])}); use a new --workdir or delete the file "
                    "(only cosearch.outer_budget may change on resume)")
  return progress


def _flat(d: Any, prefix: str = "") -> dict:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def run(config, workdir: storage.PathLike, *, stop_after: int | None = None,
        evaluator: Evaluator | None = None) -> dict | None:
  """Runs or resumes the co-search; the cosearch.json dict, or None when stopped early.

  `stop_after` ends after that many new accelerators (as a kill would, for resume tests);
  `evaluator` reuses an already built one (a trained supernet, compiled step, warm memo).
  """
  # pylint: disable=import-outside-toplevel
  from oneshot import runtime, workdir as workdir_lib
  from oneshot.launch import distributed
  with workdir_lib.held():  # locked from the claim until the co-search returns
    validate(config)
    # The claim asks JAX which process this is, which starts its backend: first these, as the search.
    distributed.maybe_initialize()
    runtime.use_cpu_devices(config)
    load_progress(config, workdir)  # a damaged or foreign state file: refused before the claim writes
    workdir = workdir_lib.claim(workdir, config, "cosearch")  # its search's claim is this one
    return _run(config, workdir, stop_after, evaluator)


def _run(config, workdir, stop_after, evaluator) -> dict | None:
  c = config.cosearch
  progress = load_progress(config, workdir)
  tic = time.time() - float(progress["wall_seconds"])
  primary = jax.process_index() == 0
  if progress["feasible"] >= int(c.outer_budget):  # finished before: just (re)write the results
    return _finish(progress, config, workdir, float(progress["wall_seconds"]), primary)
  ev = evaluator if evaluator is not None else prepare(config, workdir)
  if ev is None:
    return None
  ev.cache.update(progress["accuracy_cache"])
  evaluate = make_evaluate(ev, config, progress)

  def save(prog):
    prog["accuracy_cache"] = dict(ev.cache)
    prog["wall_seconds"] = time.time() - tic
    if primary:
      storage.write_json(workdir / STATE_FILE, prog)

  if not outer_loop(ev, config, progress, evaluate, save, stop_after):
    print(f"stopped after {len(progress['points'])} accelerators; run the same command to resume",
          file=sys.stderr)
    return None
  save(progress)
  return _finish(progress, config, workdir, time.time() - tic, primary)


def _finish(progress, config, workdir, wall, primary) -> dict:
  res = result(progress, config, wall, {"supernet_workdir": os.fspath(workdir)})
  if primary:
    storage.write_json(workdir / RESULT_FILE, res)
    plot(res, workdir / PLOT_FILE)
  return res


def _accel_text(a: dict) -> str:
  return (f"{a['rows']}x{a['cols']} {a['dataflow']} {a['ifmap_sram_kb']}/{a['filter_sram_kb']}/"
          f"{a['ofmap_sram_kb']} KiB {a['dram_gbps']:g} GB/s {a['clock_mhz']:g} MHz")

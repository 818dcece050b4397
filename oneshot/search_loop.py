"""The search loop: train a weight-sharing supernet and search it with a controller, resumably.

`oneshot search` (oneshot/search.py), `oneshot cosearch` and `api.search` run it.

Per step: every device samples its own path (uniform during the first `uniform_fraction` of steps,
then from the controller), the supernet takes one SGD step on the train batch with the per-path gradients
averaged; after the uniform warm-up the controller then proposes fresh paths, each device scores its
path's accuracy on its shard of a (larger) validation batch, and the controller learns from those rewards
(TuNAS/ENAS alternation). At the end every controller answers the same way (`answer`): its candidates
are scored with the trained weights and the best on the whole validation split wins.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import jax
import numpy as np
from etils import epath

from oneshot.controllers.base import marginal_entropy
from oneshot.launch import distributed
from oneshot import checkpoint, configuration, runtime, session as session_lib, steps, storage
from oneshot import workdir as workdir_lib
from oneshot.errors import UserError


AGREE_EVERY = 10  # steps between the hosts' SIGTERM agreements in a multi-process job


class _StopRequest:
  """SIGTERM (preemption) -> finish the current step, checkpoint, exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a test runner thread): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self, boundary: bool) -> bool:
    """Whether to stop now, the same answer on every process. A preemption signals each host at its
    own moment; a host that stopped alone would leave the others blocked in the next step's
    collectives (and the checkpoint half-saved), so the hosts OR their requests at agreed
    `boundary` steps: every `AGREE_EVERY` steps and where the loop synchronises anyway (logged and
    checkpointed steps). A cross-host read every step would stall every step; a preemption's grace
    period is tens of seconds."""
    if jax.process_count() == 1:
      return self.requested
    if not boundary:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def check(config) -> session_lib.Session:
  """Everything `run` checks before it writes or trains (the `--dry-run` path): a config that passes
  fails later only for reasons outside it (disk, preemption, divergence)."""
  distributed.maybe_initialize()
  sess = session_lib.build(config)
  latency_target(config, sess)
  warmup_sampler(config, sess)
  sess.initial_state(steps.make_optimizer(config))
  return sess


def latency_target(config, sess: session_lib.Session):
  """The config's `hardware` latency target for this space and dataset, or None (accuracy only)."""
  from oneshot.hardware import target as target_lib  # pylint: disable=import-outside-toplevel
  return target_lib.build(config, sess.space, sess.dataset.image_shape, sess.dataset.num_classes)


def warmup_sampler(config, sess: session_lib.Session):
  """The warm-up's path sampler: `train.warmup_sampler` uniform (Li & Talwalkar; TuNAS), fair
  (FairNAS: every choice equally often in each group of consecutive paths) or sandwich (BigNAS:
  largest, smallest and two uniform paths of every four); see controllers/uniform.py."""
  # pylint: disable=import-outside-toplevel
  from oneshot.controllers.uniform import FairSampler, RandomController, SandwichSampler
  from oneshot.hardware import workload
  name = config.train.get("warmup_sampler", "uniform")
  if name == "uniform":
    return RandomController(sess.space)
  if name == "fair":
    return FairSampler(sess.space, config.seed)
  if sess.space.name not in workload.SPACES:
    raise UserError(f"--config.train.warmup_sampler=sandwich orders networks by the layer table, which "
                    f"space {sess.space.name!r} does not have; use uniform")

  def size(dnas):
    return workload.weight_counts(workload.layer_table(sess.space, dnas, sess.dataset.image_shape,
                                                   sess.dataset.num_classes))
  return SandwichSampler(sess.space, size)


def run(config, workdir: storage.PathLike, *, stop_after: int | None = None,
        hardware_aware: bool = True) -> dict | None:
  """Runs (or resumes) the search; returns the result dict, or None if stopped before the end.

  `stop_after` ends the run after that many steps (as a preemption would), for resume tests.
  `hardware_aware` False searches for accuracy alone whatever `hardware` says: the co-search's
  supernet, whose section describes a device space that is priced only after training.
  """
  with workdir_lib.held():  # the workdir stays locked from its claim until the run returns
    return _run(config, workdir, stop_after, hardware_aware)


def _run(config, workdir: storage.PathLike, stop_after: int | None, hardware_aware: bool) -> dict | None:
  runtime.return_compile_memory()  # before any device work starts XLA's threads
  distributed.maybe_initialize()
  runtime.enable_compilation_cache(config)
  sess = session_lib.build(config)  # validates every name before anything is written
  target = latency_target(config, sess) if hardware_aware else None
  uniform = warmup_sampler(config, sess)
  workdir = workdir_lib.claim(workdir, config, "search")  # same run or a new one; locked
  primary = distributed.is_primary()
  t = config.train
  tx = steps.make_optimizer(config)
  mngr = checkpoint.manager(workdir)
  state = sess.initial_state(tx)
  restored = checkpoint.restore_latest(mngr, state)
  if restored is not None:
    state = restored[1]
    print(f"resuming {workdir} from step {int(state['step'])}", file=sys.stderr)
  elif primary:
    storage.write_text(workdir / "config.json", configuration.to_json(config))
  start = int(state["step"])
  state["params"] = steps.replicate(sess.mesh, state["params"])
  state["opt_state"] = steps.replicate(sess.mesh, state["opt_state"])

  train_step = steps.make_train_step(sess.model, tx, sess.mesh, sess.frozen,
                                     bool(config.supernet.get("sync_batch_norm", False)))
  reward_step = steps.make_reward_step(sess.model, sess.mesh, sess.frozen, sess.score_step)
  gradient = getattr(sess.controller, "gradient", False)  # DARTS, GDAS, ProxylessNAS
  arch_step = None
  if gradient:  # its state meets the replicated weights in one jitted step: replicate it too
    arch_step = steps.make_arch_step(sess.model, sess.controller, sess.mesh, sess.frozen,
                                     target.expected_penalty(sess.space) if target else None)
    state["controller"] = steps.replicate(sess.mesh, state["controller"])
  n, pid, pcount = sess.num_devices, jax.process_index(), jax.process_count()
  uniform_steps = session_lib.uniform_steps(config)
  paths_per_device = max(1, int(t.get("reward_paths_per_device", 1)))
  key = jax.random.wrap_key_data(np.asarray(state["key"]))
  metrics_log = storage.MetricsLog(workdir / "metrics.jsonl", start,
                              workdir / "tensorboard") if primary else None
  history = _load_history(workdir, start) if primary else []
  progress = storage.Progress(t.num_steps, t.log_every)
  warmup_paths = _WarmupPaths(uniform, key, n, t.log_every, uniform_steps)
  wall_start = time.time() - float(_previous_wall(workdir))
  pending = steps.StepMetrics(t.max_nonfinite_steps)  # read on logged/checkpointed/last steps only
  text = "(compiling)"
  step = start
  with _StopRequest() as stop:
    try:
      for step in range(start, t.num_steps):
        # Warm-up: uniform paths and no controller update (TuNAS's RL delay; the controller learns
        # from weights that can already tell paths apart). Afterwards train and reward paths come
        # from one propose call: one dispatch fewer per step, and a dispatch is a fixed per-step cost
        # (benchmarks/controller_overhead.py; see docs/results.md).
        num_reward = n * paths_per_device
        warming_up = step < uniform_steps
        # The warm-up's draws derive their own keys (`_WarmupPaths`), a block at a time.
        k_train, k_reward = (None, None) if warming_up else step_keys(key, step)
        if warming_up:
          paths = warmup_paths(step)
        elif gradient:
          paths = sess.controller.train_paths(state["controller"], k_train, n)
        else:
          proposals = sess.controller.propose(state["controller"], k_reward, n + num_reward)
          paths, reward_paths = proposals[:n], proposals[n:]
        batch = sess.dataset.batch("train", step, t.batch_size, config.seed,
                                   process_index=pid, process_count=pcount)
        state["params"], state["opt_state"], m = train_step(
            state["params"], state["opt_state"], steps.shard_batch(sess.mesh, batch),
            steps.shard_paths(sess.mesh, paths))
        # Controller update on a validation batch: a gradient step on the validation loss in the
        # architecture logits (gradient-based controllers; nothing read back), or else rewards of
        # paths from the controller itself.
        # Each device scores `reward_paths_per_device` paths on its shard (one compiled forward each),
        # so a 1-device run still gives REINFORCE several samples per update. The rewards are the one
        # value read from the device every step: the next proposal depends on them.
        mean_reward = None
        if not warming_up:
          reward_batch = steps.shard_batch(sess.mesh, sess.dataset.batch(
              "validation", step, t.reward_batch_size, config.seed, process_index=pid,
              process_count=pcount))
        if not warming_up and gradient:
          state["controller"], arch_metrics = arch_step(state["params"], state["controller"],
                                                        reward_batch, k_reward)
          m = {**m, **arch_metrics}
        elif not warming_up:
          rewards = np.concatenate(jax.device_get([
              reward_step(state["params"], reward_batch,
                          steps.shard_paths(sess.mesh, reward_paths[i * n:(i + 1) * n]))
              for i in range(paths_per_device)]))
          if target is not None:  # the controller learns accuracy and latency together
            rewards = target.rewards(reward_paths, rewards)
          state["controller"], _ = sess.controller.feedback(state["controller"], reward_paths,
                                                            rewards)
          mean_reward = float(rewards.mean())
        pending.add(step, m)
        done = step + 1
        state["step"] = np.asarray(done, np.int32)
        logged = done % t.log_every == 0 or done == t.num_steps
        saved = done % t.checkpoint_every == 0 or done == t.num_steps
        stopping = (stop.agreed(logged or saved or done % AGREE_EVERY == 0)
                    or (stop_after is not None and done - start >= stop_after))
        if logged or saved or stopping:
          row = {"step": done, **pending.read(logged), "mean_reward": mean_reward}
          text = f"loss {row['loss']:.3f} acc {row['accuracy']:.3f} " + (
              f"val acc {row['arch_accuracy']:.3f}" if "arch_accuracy" in row else
              "(uniform warm-up)" if mean_reward is None else f"reward {mean_reward:.3f}")
          if primary and logged:
            # Only on logged steps: ENAS estimates its marginals by sampling, not free every step.
            probabilities = sess.controller.probabilities(state["controller"])
            row["controller_entropy"] = marginal_entropy(probabilities)
            metrics_log.write(row, _probability_scalars(sess.space, probabilities))
            history.append({"step": done, "probabilities": probabilities.tolist()})
        progress.update(done, text)
        if saved and metrics_log is not None:
          metrics_log.flush()  # in a bucket, rows are otherwise written every few seconds
        if saved:
          _save(mngr, state, workdir, history, wall_start, primary)
          pending.restart_clock()
        if stopping:
          if not saved:
            _save(mngr, state, workdir, history, wall_start, primary)
          progress.close()
          print(f"stopped at step {done} and checkpointed; run the same command to resume",
                file=sys.stderr)
          return None
    except KeyboardInterrupt:
      progress.close()
      raise
    finally:
      if metrics_log is not None:
        metrics_log.close()
  progress.close()
  return _finish(sess, state, workdir, history, wall_start, primary, target)


def step_keys(key: jax.Array, step: int) -> tuple[jax.Array, jax.Array]:
  """(train key, reward key) of `step`: a resumed search draws what the uninterrupted one drew."""
  return tuple(jax.random.split(jax.random.fold_in(key, step)))


class _WarmupPaths:
  """The warm-up's paths, proposed `block` steps at a time (up to the next logged step).

  The uniform and sandwich samplers draw on the device and read the draw back: proposed step by step,
  that read would wait for the train step in flight every step, a host sync that stalls an
  accelerator's pipeline (on a CPU, where host and step share the cores, there is little pipeline to
  stall, so the wall-clock gain is small there). Proposed together right after the loop's own
  read, only the first of a block can wait. Same keys, same calls: the same paths bit for bit. The
  warm-up loop against the bare step: benchmarks/loop_overhead.py; see docs/results.md.
  """

  def __init__(self, sampler, key: jax.Array, num: int, block: int, end: int):
    self.sampler, self.key, self.num, self.block, self.end = sampler, key, num, max(1, block), end
    self.paths: dict[int, np.ndarray] = {}

  def __call__(self, step: int) -> np.ndarray:
    if step not in self.paths:
      last = min(self.end, (step // self.block + 1) * self.block)
      self.paths = {s: self.sampler.propose({"step": np.asarray(s)}, step_keys(self.key, s)[0],
                                            self.num) for s in range(step, last)}
    return self.paths.pop(step)


def _probability_scalars(space, probabilities) -> dict[str, float]:
  """TensorBoard tags `controller/<decision>/<choice>` for the controller's marginal probabilities."""
  return {f"controller/{d.name}/{choice}": float(probabilities[i, j])
          for i, d in enumerate(space.decisions) for j, choice in enumerate(d.choices)}


def _save(mngr, state, workdir, history, wall_start, primary) -> None:
  # History first: a kill between the two writes then leaves history ahead of the checkpoint, which
  # resume trims (`_load_history`), rather than behind it, which would lose entries for good.
  if primary:
    storage.write_json(workdir / "controller_history.json",
                  {"wall_seconds": time.time() - wall_start, "history": history})
  checkpoint.save(mngr, int(state["step"]), state)


def _load_history(workdir: epath.Path, start: int) -> list:
  """The controller's logged probabilities up to the restored step. The file is a report: a damaged
  one (cut short, edited) is rebuilt from the checkpoint on, with one warning, rather than making the
  workdir impossible to resume."""
  history = _read_history(workdir)
  if start == 0 or history is None:
    return []
  return [h for h in history["history"] if h["step"] <= start]


def _read_history(workdir: epath.Path, warn: bool = True) -> dict | None:
  path = workdir / "controller_history.json"
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
    ok = (isinstance(record, dict) and isinstance(record.get("history"), list)
          and isinstance(record.get("wall_seconds", 0.0), (int, float))
          and all(isinstance(h, dict) and type(h.get("step")) is int
                  and isinstance(h.get("probabilities"), list) for h in record["history"]))
  except (OSError, ValueError):
    ok = False
  if not ok:
    if warn:
      print(f"warning: {path} is damaged; the controller's history restarts from the checkpoint "
            "(earlier points are missing from controller.png)", file=sys.stderr)
    return None
  return record


def _previous_wall(workdir: epath.Path) -> float:
  history = _read_history(workdir, warn=False)  # _load_history warns
  return 0.0 if history is None else float(history.get("wall_seconds", 0.0))


def _finish(sess, state, workdir, history, wall_start, primary, target=None) -> dict:
  """The answer (`answer`: the controller's argmax for the gradient-based ones, else
  `controllers.rsws.select` over its candidates, scored with the trained weights), written to
  search_result.json with the finalists' scores and the rescoring rule's pick."""
  config, params = sess.config, state["params"]
  select = select_config(config)
  key = jax.random.fold_in(jax.random.wrap_key_data(np.asarray(state["key"])), 2**31 - 1)
  dna, reward, table = answer(sess, params, sess.controller, state["controller"], key, target)
  own = sess.controller.best(state["controller"])  # None: no choice of its own (random, no rewards)
  own = sess.space.format(own) if own is not None else None
  probs = sess.controller.probabilities(state["controller"])
  # With recalibrated finalists, `reward` is the exported child's accuracy; the search's own
  # batch-statistics figure of the same answer is kept beside it.
  batch_stats = ({"reward_batch_stats": session_lib.evaluate(sess, params, dna)}
                 if select["recalibrate_batches"] else {})
  # `reward` keeps its name for the file's readers; `reward_basis` says what it is. Under the
  # rescoring rule it is the best of the finalists' rescores, measured on the very validation images
  # that chose the answer, so it is optimistic (the winner's curse), never an unbiased estimate of
  # the answer's accuracy: that takes data the selection did not see (`oneshot train`, the test set).
  basis = "max_over_finalists" if answer_rule(sess.controller) == "rescored" else "controller_argmax"
  result = {**sess.space.to_json(dna), "reward": reward, "reward_basis": basis, **batch_stats,
            "controller": {d.name: [float(p) for p in probs[i, :d.num_choices]]
                           for i, d in enumerate(sess.space.decisions)},
            "controller_name": config.controller.name,
            "controller_hyperparameters": session_lib.controller_config(config),
            "selection": {**select, "candidates_scored": len(table), "controller_choice": own,
                          "answer_rule": answer_rule(sess.controller),
                          "rescored_pick": rescored_pick(table),
                          "finalists": [r for r in table if r["rescore"] is not None]},
            "steps": int(state["step"]), "wall_seconds": time.time() - wall_start,
            "num_devices": sess.num_devices,
            **(target.report(dna) if target is not None else {})}
  if primary:
    storage.write_json(workdir / "search_result.json", result)
    try:
      from oneshot import plots  # pylint: disable=import-outside-toplevel
      plots.controller_plot(sess.space, history, workdir / "controller.png")
    except ImportError:
      pass
  return result


def answer(sess, params, controller, controller_state, key,
           target=None) -> tuple[tuple, float, list]:
  """(DNA, its whole-validation accuracy, selection table): the controller's candidates scored with
  the supernet weights `params` by `controllers.rsws.select`, as `config.select` says; finalists are
  rescored with batch-statistics BN, or as standalone children with BN recalibrated on
  `select.recalibrate_batches` train batches (SPOS, Once-for-All), and their rows get `accuracy`. With
  a latency `target`, candidates are ranked by the same hardware-aware reward the controller learned
  from. The answer is the best finalist, or for a controller whose `answer_rule` is "argmax" its own
  choice (evaluated the same way), the table still holding the rescored pick."""
  from oneshot import child as child_lib  # pylint: disable=import-outside-toplevel
  from oneshot.controllers import rsws  # pylint: disable=import-outside-toplevel
  select = select_config(sess.config)
  candidates = controller.candidates(controller_state, key, select["num_candidates"])
  accuracy = {}  # the answer's accuracy is reported whatever the ranking reward

  def score(dnas):
    scores = session_lib.score_candidates(sess, params, dnas, select["score_images"])
    return scores if target is None else target.rewards(dnas, scores)

  def rescore(dna):
    if select["recalibrate_batches"]:  # the finalist as export writes it: BN recalibrated
      runner, variables = child_lib.recalibrated_child(sess, params, dna, select["recalibrate_batches"])
      accuracy[dna] = runner.accuracy(variables, sess.dataset, "validation",
                                      sess.config.train.eval_batch_size)
    else:  # batch-statistics BN, as in the search's rewards
      accuracy[dna] = session_lib.evaluate(sess, params, dna)
    return accuracy[dna] if target is None else float(target.rewards([dna], [accuracy[dna]])[0])

  dna, table = rsws.select(sess.space, candidates, score, top_k=select["top_k"], rescore_fn=rescore)
  for row in table:  # the finalists' accuracies, whatever the ranking reward
    if row["rescore"] is not None:
      row["accuracy"] = accuracy[tuple(row["dna"])]
  if answer_rule(controller) == "argmax":  # the papers' answer; the rescored pick stays in the table
    dna = tuple(int(c) for c in sess.space.canonical(np.asarray(
        controller.best(controller_state), np.int32)[None])[0])
    if dna not in accuracy:
      rescore(dna)
  return dna, accuracy[tuple(dna)], table


def answer_rule(controller) -> str:
  """"argmax": the answer is the controller's own choice (DARTS, GDAS and ProxylessNAS answer argmax
  alpha: their papers derive the architecture from the trained logits, and DARTS's discrete children
  were never trained alone, so rescoring them on the supernet is not their method); "rescored": the
  generic rule, the best rescored candidate. A controller says which with `answer_rule`."""
  return getattr(controller, "answer_rule", "rescored")


def rescored_pick(table: list) -> dict | None:
  """The generic rule's pick among the finalists of `table` (best rescore; ties to the better cheap
  score, which comes first), reported beside an argmax answer."""
  finalists = [r for r in table if r["rescore"] is not None]
  return max(finalists, key=lambda r: r["rescore"]) if finalists else None


def select_config(config) -> dict:
  select = config.get("select") or {}
  get = lambda name, default: int(select.get(name, default)) if select else default
  return {"num_candidates": get("num_candidates", 100), "score_images": get("score_images", 256),
          "top_k": min(get("top_k", 10), get("num_candidates", 100)),
          "recalibrate_batches": get("recalibrate_batches", 0)}

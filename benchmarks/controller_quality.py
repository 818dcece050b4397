"""Controllers on a real supernet at equal budget: whose answer trains best stand-alone?

  python benchmarks/controller_quality.py --workdir workdirs/fmnist-random   # 4 controllers, seed 0
  python benchmarks/controller_quality.py --workdir W --seeds 3 --rank W/rank.json --out cq.json
  python benchmarks/controller_quality.py --workdir /tmp/cq_digits --budget 24 --train-steps 20

`--workdir W` is a finished `oneshot search` workdir (config.json + checkpoints), ideally searched
with `--config.controller.name=random`: its supernet was then trained on uniform paths, so no
controller's own sampling biased the shared weights. Every controller searches those SAME weights (a
full search per controller would cost 4 x 15 minutes on 2 cores, and would confound the controller
with its supernet).

Per controller and seed: `--budget` reward queries in feedback calls of `--batch` paths, each path's
accuracy on validation minibatch number `call` (the same minibatch sequence for every controller:
equal queries, equal data) through the supernet with batch-statistics BN, as the search rewards;
then the search's own answer rule (`oneshot.search_loop.answer`: `config.select` over the controller's
candidates, rescored on the whole validation split). Each distinct answer is trained from scratch
and scored on the TEST split after BN recalibration with `oneshot rank`'s machinery, so the numbers
compare with a rank.json's `standalone_accuracy` (`--rank`: each answer's percentile among them).

Columns: supernet val = the selection's whole-validation rescore of the answer; alone test =
stand-alone test accuracy; pct = percentile vs --rank; distinct = architectures among the queries;
seconds = queries plus selection (the supernet's compiles are paid before; a controller's own
compiles stay in its first seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from oneshot import controllers
from oneshot import child as child_lib
from oneshot import rank, rank_stats, search_loop, session as session_lib, steps, storage, supernet
from oneshot.errors import UserError

CONTROLLERS = ("enas", "tunas", "evolution", "random")


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def controller_for(config: ml_collections.ConfigDict, sess, name: str, num_calls: int):
  """`name` built as a search with `--config.controller.name=name` would build it: the workdir's
  controller settings with None fields dropped (each controller keeps its own defaults), and its
  schedule spanning exactly the feedback calls made here."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.controller.name = name
  cfg = session_lib.controller_config(c)
  cfg["num_steps"] = num_calls
  return controllers.build(name, sess.space, cfg)


def warm_up(sess, params) -> None:
  """Compiles the supernet's forward at the reward and the selection batch shapes, so the first
  controller's seconds do not include them (its own compiles, e.g. ENAS's LSTM, stay in)."""
  dna = np.asarray(sess.space.sample(np.random.default_rng(0)), np.int32)
  data = steps.shard_batch(sess.mesh, sess.dataset.batch(
      "validation", 0, sess.config.train.reward_batch_size, sess.config.seed))
  reward_step = steps.make_reward_step(sess.model, sess.mesh, sess.frozen, sess.score_step)
  jax.block_until_ready(reward_step(params, data, steps.shard_paths(
      sess.mesh, np.tile(dna, (sess.num_devices, 1)))))
  session_lib.score_candidates(sess, params, dna[None], 1)


def run_controller(sess, params, name: str, seed: int, budget: int, batch: int) -> dict:
  """One equal-budget search on the shared weights, then the search's answer rule."""
  config, n = sess.config, sess.num_devices
  sizes = [min(batch, budget - i) for i in range(0, budget, batch)]
  controller = controller_for(config, sess, name, len(sizes))
  reward_step = steps.make_reward_step(sess.model, sess.mesh, sess.frozen, sess.score_step)
  # The same keys for every controller of a seed (common random numbers); the data depends on the
  # call only, so every controller is scored on the same minibatch sequence.
  key = jax.random.PRNGKey(seed)
  state = controller.init(jax.random.fold_in(key, 0))
  tic, queried, rewards_seen = time.time(), set(), []
  for call, size in enumerate(sizes):
    dnas = controller.propose(state, jax.random.fold_in(jax.random.fold_in(key, 1), call), size)
    data = steps.shard_batch(sess.mesh, sess.dataset.batch(
        "validation", call, config.train.reward_batch_size, config.seed))
    # One DNA on every device (each device its shard), as a 1-device search scores a reward path.
    rewards = np.array([float(np.mean(np.asarray(reward_step(
        params, data, steps.shard_paths(sess.mesh, np.tile(dna, (n, 1))))))) for dna in dnas],
                       np.float32)
    state, _ = controller.feedback(state, dnas, rewards)
    queried.update(tuple(int(c) for c in d) for d in dnas)
    rewards_seen.extend(rewards.tolist())
  search_seconds = time.time() - tic
  dna, accuracy, table = search_loop.answer(sess, params, controller, state, jax.random.fold_in(key, 2))
  return {"controller": name, "seed": seed, **sess.space.to_json(dna),
          "supernet_validation_accuracy": float(accuracy), "distinct_queried": len(queried),
          "queries": int(sum(sizes)), "feedback_calls": len(sizes),
          "mean_reward": float(np.mean(rewards_seen)),
          "finalists": [r for r in table if r["rescore"] is not None],
          "search_seconds": search_seconds, "seconds": time.time() - tic}


class StandAlone:
  """`oneshot rank`'s stand-alone score (fresh init, S steps on the path, BN recalibrated on the
  first N train batches, test accuracy; mean over training seeds), cached by DNA."""

  def __init__(self, sess, num_steps: int, recalibrate_batches: int, train_seeds: int):
    config, ds = sess.config, sess.dataset
    self.sess, self.num_steps, self.train_seeds = sess, num_steps, train_seeds
    # pylint: disable-next=protected-access
    self.trainer = rank.StandaloneTrainer(sess, steps.make_optimizer(config, num_steps), num_steps)
    self.recal = [ds.batch("train", i, config.train.batch_size, config.seed)
                  for i in range(recalibrate_batches)]
    self.cache: dict[tuple, dict] = {}

  def __call__(self, dna: tuple) -> dict:
    dna = tuple(int(c) for c in dna)
    if dna not in self.cache:
      sess, ds, t = self.sess, self.sess.dataset, self.sess.config.train
      tic = time.time()
      child = supernet.child_model(sess.space, dna, ds.num_classes, ds.image_shape[-1],
                                   sess.config.supernet.depthwise)
      runner = child_lib.ChildRunner(child)
      tests = []
      for j in range(self.train_seeds):
        # One init key and data order for every architecture: differences are the architecture's.
        trained = self.trainer.train(dna, jax.random.fold_in(jax.random.PRNGKey(1), j),
                                     sess.config.seed + j)
        alone = runner.recalibrate(supernet.child_variables(sess.space, trained, dna), self.recal)
        tests.append(runner.evaluate(alone, ds, "test", t.eval_batch_size)["accuracy"])
      self.cache[dna] = {"standalone_accuracy": float(np.mean(tests)),
                         "standalone_accuracies": tests, "train_seconds": time.time() - tic}
      _log(f"  trained {sess.space.format(dna)}: test {np.mean(tests):.4f} "
           f"({time.time() - tic:.0f} s)")
    return self.cache[dna]


def load_rank(path: str, setup: dict) -> dict:
  """A rank.json's reference: the sampled architectures' stand-alone accuracies, by DNA."""
  with open(path, encoding="utf-8") as f:
    report = json.load(f)
  old = {k: v for k, v in report.get("standalone_setup", {}).items() if k != "seed"}
  if old != json.loads(json.dumps({k: v for k, v in setup.items() if k != "seed"})):
    _log(f"warning: {path} was trained with another stand-alone setup (steps, seeds, data or space "
         "differ); its percentiles are not like for like")
  return {tuple(a["dna"]): a["standalone_accuracy"] for a in report["archs"]
          if not a["is_search_result"]}


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], summary: dict) -> None:
  head = (f"{'controller':<10} {'seed':>4} {'supernet val':>12} {'alone test':>10} {'pct':>5} "
          f"{'distinct':>8} {'seconds':>8}  answer")
  print(head)
  print("-" * len(head))
  for r in rows:
    print(f"{r['controller']:<10} {r['seed']:>4} {r['supernet_validation_accuracy']:>12.4f} "
          f"{r['standalone_accuracy']:>10.4f} {_fmt(r['percentile'], '5.0f'):>5} "
          f"{r['distinct_queried']:>8} {r['seconds']:>8.1f}  {r['string']}"
          + (" (in --rank)" if r.get("in_rank") else ""))
  print("-" * len(head))
  for name, s in summary.items():
    print(f"{name:<10} {'mean':>4} {s['supernet_validation_accuracy']:>12.4f} "
          f"{s['standalone_accuracy']:>10.4f} {_fmt(s['percentile'], '5.0f'):>5} "
          f"{s['distinct_queried']:>8.1f} {s['seconds']:>8.1f}  "
          f"({s['seeds']} seeds, SE of stand-alone {s['standalone_se']:.4f})")


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  p.add_argument("--workdir", required=True, help="a finished search workdir (the supernet)")
  p.add_argument("--controllers", default=",".join(CONTROLLERS))
  p.add_argument("--budget", type=int, default=400, help="reward queries per controller run")
  p.add_argument("--batch", type=int, default=4, help="paths per feedback call")
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--first-seed", type=int, default=0)
  p.add_argument("--train-steps", type=int, default=None,
                 help="stand-alone steps (default: the config's train.standalone_steps)")
  p.add_argument("--train-seeds", type=int, default=1, help="stand-alone trainings per answer")
  p.add_argument("--recalibrate-batches", type=int, default=20, help="as oneshot rank's default")
  p.add_argument("--rank", default=None, help="a rank.json of `oneshot rank` on the same setup")
  p.add_argument("--out", default=None, help="JSON file for every row and the summary")
  args = p.parse_args()
  if args.budget < 1 or args.batch < 1 or args.seeds < 1:
    p.error("--budget, --batch and --seeds must be >= 1")
  names = [n.strip() for n in args.controllers.split(",") if n.strip()]
  wall = time.time()
  config = session_lib.load_search_config(args.workdir)
  sess = session_lib.build(config)
  params = session_lib.restore_params(sess, args.workdir)["params"]
  num_steps = args.train_steps or steps.standalone_steps(config)
  standalone = StandAlone(sess, num_steps, args.recalibrate_batches, args.train_seeds)
  setup = rank.standalone_setup(config, num_steps, args.train_seeds, args.recalibrate_batches, 0)
  reference = load_rank(args.rank, setup) if args.rank else None
  _log(f"{config.space.name} on {config.dataset.name}: supernet of {args.workdir} (trained with "
       f"{config.controller.name}), {len(names)} controllers x {args.seeds} seeds x {args.budget} "
       f"queries in calls of {args.batch}; stand-alone {num_steps} steps")

  warm_up(sess, params)
  rows = []
  for seed in range(args.first_seed, args.first_seed + args.seeds):
    for name in names:
      row = run_controller(sess, params, name, seed, args.budget, args.batch)
      _log(f"{name} seed {seed}: {row['string']} (supernet "
           f"{row['supernet_validation_accuracy']:.4f}, "
           f"{row['distinct_queried']} distinct, {row['seconds']:.1f} s)")
      rows.append(row)
  for row in rows:  # after all searches: a long training never delays the comparison's first half
    row.update(standalone(row["dna"]))
    row["percentile"] = (rank_stats.percentile(row["standalone_accuracy"], list(reference.values()))
                         if reference else None)
    row["in_rank"] = bool(reference) and tuple(row["dna"]) in reference
    if row["in_rank"]:
      row["rank_standalone_accuracy"] = reference[tuple(row["dna"])]

  summary = {}
  for name in names:
    mine = [r for r in rows if r["controller"] == name]
    mean = lambda k, m=mine: float(np.mean([r[k] for r in m]))
    alone = [r["standalone_accuracy"] for r in mine]
    summary[name] = {"seeds": len(mine), "supernet_validation_accuracy": mean(
        "supernet_validation_accuracy"), "standalone_accuracy": float(np.mean(alone)),
                     "standalone_se": float(np.std(alone, ddof=1) / np.sqrt(len(alone)))
                     if len(alone) > 1 else 0.0,
                     "percentile": mean("percentile") if reference else None,
                     "distinct_queried": mean("distinct_queried"), "seconds": mean("seconds")}
  print_table(rows, summary)
  print(f"{len(standalone.cache)} distinct answers trained; {time.time() - wall:.0f} s in all")
  if args.out:
    storage.write_json(args.out, {"workdir": os.path.abspath(args.workdir), "budget": args.budget,
                             "batch": args.batch, "train_steps": num_steps,
                             "train_seeds": args.train_seeds, "standalone_setup": setup,
                             "rank": args.rank, "rows": rows, "summary": summary})
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

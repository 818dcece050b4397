"""`oneshot rank`: does the supernet rank architectures the way stand-alone training does?

K architectures, spread over the space (every choice of every decision equally often) plus the search
result, get two scores each:

* supernet: the child's weights sliced from the trained supernet, BatchNorm recalibrated on N train
  batches (Once-for-All), validation accuracy in eval mode;
* stand-alone: the child trained from scratch for S steps, BN recalibrated the same way, accuracy on the
  test split (held out from the search, which selected on validation; the validation score is kept
  too), averaged over --train-seeds trainings.

The report gives Kendall's tau-b and Spearman's rho between the two, the top-k overlap, and the search
result's percentile among the K stand-alone scores; `context` adds the same tau for the search's own
batch-statistics score, for losses, and (2+ seeds) between two trainings of each child: the best tau
any supernet could reach against such a noisy reference.

With `--table CSV` nothing is trained: the architectures of a ground-truth band table (oneshot/bands.py)
are scored by the supernet and judged per latency band (oneshot/band_rank.py).

Stand-alone training here (short, one seed or a few, for any space) goes *through the supernet* with the
DNA fixed: the supernet's step takes the DNA as a traced array, so one compilation serves every
architecture, where a child's own step would be compiled once per architecture; on a fixed path the
supernet computes exactly the child (same logits, same gradients on the child's slice of each weight;
the rest gets no gradient and never reaches the output). Fresh weights come from the supernet's
initialiser with every kernel rescaled by sqrt(fan_in_supernet / fan_in_child), the child's own
fan-in-scaled initialisation on the slice it reads. Training runs on one local device with no
collectives: synchronised BatchNorm across CPU devices is not needed for one child, and its all-reduces
can abort in XLA's CPU rendezvous. The band builder trains the child's own network instead: its long
trainings amortise one compilation per architecture, and a narrow child computes only its own widths.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from oneshot import child as child_lib
from oneshot import configuration, rank_stats, storage
from oneshot.errors import UserError
from oneshot.spaces.core import DNA, Space


def main(argv: Sequence[str]) -> int:
  def define(fv):
    flags.DEFINE_string("workdir", None, "A search workdir (config.json + checkpoints).",
                        flag_values=fv)
    flags.DEFINE_integer("num_archs", 20, "Architectures to score (K).", flag_values=fv)
    flags.DEFINE_string("out", None, "rank.json to write (rank.png goes next to it).",
                        flag_values=fv)
    flags.DEFINE_integer("train_steps", None, "Stand-alone training steps per architecture "
                         "(default: the config's train.standalone_steps, else train.num_steps).",
                         flag_values=fv)
    flags.DEFINE_integer("recalibrate_batches", 20, "Train batches for BatchNorm recalibration of "
                         "every child.", flag_values=fv)
    flags.DEFINE_integer("top_k", None, "k of the top-k overlap (default K/4).", flag_values=fv)
    flags.DEFINE_integer("train_seeds", 1, "Stand-alone trainings per architecture (scores are "
                         "averaged; with 2 or more the report gives the seed-to-seed tau, the noise "
                         "ceiling).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the architecture sample and of the stand-alone "
                         "trainings (init, data order); independent of the search's seed.",
                         flag_values=fv)
    flags.DEFINE_string("table", None, "A ground-truth band table (benchmarks/fashion_bands.py): "
                        "score its architectures with the supernet and report per latency band, "
                        "training nothing.", flag_values=fv)
    flags.DEFINE_integer("table_steps", None, "With --table: the training length whose rows are the "
                         "ground truth (default: the table's longest).", flag_values=fv)
    flags.DEFINE_string("reuse", None, "An earlier rank.json with the same stand-alone setup (space, "
                        "data, training, seeds): architectures it trained are not trained again, so "
                        "several supernets are compared on one set of stand-alone scores.",
                        flag_values=fv)
  args = configuration.parse_flags(argv, define, command="rank", with_config=False,
                                   required=("workdir", "out"))
  if args.table is not None:
    from oneshot import band_rank  # pylint: disable=import-outside-toplevel
    report = band_rank.run(args.workdir, args.table, args.out,
                           recalibrate_batches=args.recalibrate_batches, steps=args.table_steps)
    print(band_rank.summary(report) + f"; wrote {args.out}")
    return 0
  report = run(args.workdir, args.num_archs, args.out, train_steps=args.train_steps,
               recalibrate_batches=args.recalibrate_batches, top_k=args.top_k, seed=args.seed,
               train_seeds=args.train_seeds, reuse=args.reuse)
  pct, ctx = report["search_result_percentile"], report["context"]
  interval = ctx["kendall_tau_margin_interval_90"] or (None, None)
  print(f"{len(report['archs'])} architectures: Kendall tau {_fmt(report['kendall_tau'])} (standard "
        f"error {_fmt(ctx['kendall_tau_standard_error'], '.2f')}; parameter count alone "
        f"{_fmt(ctx['kendall_tau_num_params'])}, margin {_fmt(ctx['kendall_tau_margin_over_num_params'])}"
        f", 90% interval {_fmt(interval[0], '.2f')}..{_fmt(interval[1], '.2f')}), Spearman "
        f"{_fmt(report['spearman'])}, top-{report['top_k']} overlap {report['top_k_overlap']:.2f}; "
        f"search result at the {_fmt(pct, '.0f')}th percentile of stand-alone accuracy "
        f"({report['timing']['total_seconds']:.0f} s); wrote {args.out}")
  return 0


def run(workdir: str, num_archs: int, out: str, *, train_steps: int | None = None,
        recalibrate_batches: int = 20, top_k: int | None = None, seed: int = 0,
        train_seeds: int = 1, reuse: str | None = None) -> dict:
  """Scores the architectures and writes rank.json and rank.png; returns the report."""
  # pylint: disable=import-outside-toplevel
  from oneshot import spaces
  from oneshot import checkpoint, runtime, session as session_lib, steps, supernet
  runtime.return_compile_memory()
  wall = time.time()
  for name, value, least in (("--num-archs", num_archs, 2), ("--train-seeds", train_seeds, 1),
                             ("--recalibrate-batches", recalibrate_batches, 1)):
    if value < least:
      raise UserError(f"{name} must be >= {least}, got {value}")
  if train_steps is not None and train_steps < 1:
    raise UserError(f"--train-steps must be >= 1, got {train_steps}")
  out = storage.check_output_file(out, "--out", "rank.json")
  session_lib.use_search_devices(workdir)
  checkpoint.require_checkpoint(workdir)
  config = session_lib.load_search_config(workdir)
  space = spaces.build(config.space)
  if space.size < num_archs:
    raise UserError(f"space {space.name!r} has only {space.size} architectures; use --num-archs <= "
                    f"{space.size}")
  k = top_k if top_k is not None else max(1, num_archs // 4)
  if not 1 <= k <= num_archs:
    raise UserError(f"--top-k must be in 1..{num_archs}, got {k}")
  search_dna = session_lib.read_search_dna(workdir, space)
  sess = session_lib.build(config)
  params = session_lib.restore_params(sess, workdir)["params"]
  ds, t = sess.dataset, config.train
  num_steps = train_steps or steps.standalone_steps(config)
  trainer = StandaloneTrainer(sess, steps.make_optimizer(config, num_steps), num_steps)
  # The stand-alone side depends on rank's own --seed, not the search's: supernets searched with
  # different seeds are then ranked against one ground truth (--reuse).
  recal = [ds.batch("train", i, t.batch_size, seed) for i in range(recalibrate_batches)]
  setup = standalone_setup(config, num_steps, train_seeds, recalibrate_batches, seed)
  reused = _reusable(reuse, setup)
  setup_seconds = time.time() - wall

  archs = []
  for i, dna in enumerate(sample_architectures(space, num_archs, seed, search_dna)):
    tic = time.time()
    # Supernet score: inherited weights, recalibrated BN as export writes the child (and, for
    # comparison, the search's own batch-statistics score).
    runner, inherited = child_lib.recalibrated_child(sess, params, dna, recalibrate_batches)
    supernet_eval = runner.evaluate(inherited, ds, "validation", t.eval_batch_size)
    batch_stats_acc = session_lib.evaluate(sess, params, dna, "validation")
    score_seconds = time.time() - tic
    # Stand-alone score: fresh weights, S steps on this path only, recalibrated BN; mean over seeds.
    standalone = reused.get(tuple(dna))
    if standalone is None:
      tests, vals = [], []
      for j in range(train_seeds):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed + 1), i), j)
        trained = trainer.train(dna, key, seed + j)
        alone = runner.recalibrate(supernet.child_variables(space, trained, dna), recal)
        tests.append(runner.evaluate(alone, ds, "test", t.eval_batch_size))
        vals.append(runner.evaluate(alone, ds, "validation", t.eval_batch_size))
      standalone = {"standalone_accuracy": float(np.mean([r["accuracy"] for r in tests])),
                    "standalone_accuracies": [r["accuracy"] for r in tests],
                    "standalone_validation_accuracy": float(np.mean([r["accuracy"] for r in vals])),
                    "standalone_loss": float(np.mean([r["loss"] for r in tests])),
                    "standalone_losses": [r["loss"] for r in tests]}
    row = {**space.to_json(dna), "supernet_accuracy": supernet_eval["accuracy"],
           "supernet_batch_stats_accuracy": batch_stats_acc,
           "supernet_loss": supernet_eval["loss"], **standalone,
           "num_params": child_lib.count_params(inherited["params"]),
           "is_search_result": search_dna is not None and tuple(dna) == tuple(search_dna),
           "seconds": time.time() - tic, "score_seconds": score_seconds}
    archs.append(row)
    print(f"[{i + 1}/{num_archs}] {row['string']}: supernet {row['supernet_accuracy']:.4f}, "
          f"stand-alone {row['standalone_accuracy']:.4f} ({row['seconds']:.1f} s)", file=sys.stderr)

  report = _report(archs, k)
  report.update({"standalone_setup": setup, "reused_standalone": sum(tuple(a["dna"]) in reused
                                                                      for a in archs),
                 "space": space.name, "workdir": os.fspath(storage.as_path(workdir)),
                 "train_steps": num_steps,
                 "train_seeds": train_seeds, "recalibrate_batches": recalibrate_batches,
                 "seed": seed, "standalone_split": "test", "supernet_split": "validation",
                 "timing": {"setup_seconds": setup_seconds,
                            "train_step_compile_seconds": trainer.compile_seconds,
                            "first_arch_seconds": archs[0]["seconds"],
                            "mean_arch_seconds": float(np.mean([a["seconds"] for a in archs])),
                            "mean_score_seconds": float(np.mean([a["score_seconds"]
                                                                 for a in archs])),
                            "mean_train_seconds_per_seed": trainer.seconds / max(trainer.runs, 1),
                            "total_seconds": time.time() - wall}})
  storage.write_json(out, report)
  plot(report, os.path.splitext(os.fspath(out))[0] + ".png")
  return report


class StandaloneTrainer:
  """Stand-alone training of any child through the supernet's one compiled train step."""

  def __init__(self, sess, tx, num_steps: int):
    from oneshot import steps  # pylint: disable=import-outside-toplevel
    self.sess, self.tx, self.num_steps, self.steps = sess, tx, num_steps, steps
    # Every process trains the same child on its own first device (see the module docstring).
    self.mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]), (steps.AXIS,))
    self.step = steps.make_train_step(sess.model, tx, self.mesh, jax.device_get(sess.frozen))
    self.init = jax.jit(sess.model.init)
    self.compile_seconds, self.seconds, self.runs = 0.0, 0.0, 0

  def train(self, dna: DNA, key: jax.Array, data_seed: int) -> dict:
    """Supernet variables (host arrays) after `num_steps` steps on path `dna` from a fresh init."""
    sess, steps, ds = self.sess, self.steps, self.sess.dataset
    dummy = jnp.zeros((1,) + tuple(ds.image_shape), jnp.float32)
    fresh = self.init(key, dummy, jnp.zeros(sess.space.num_decisions, jnp.int32))["params"]
    p = steps.replicate(self.mesh, child_init_scale(sess.space, jax.device_get(fresh), dna))
    opt_state = steps.replicate(self.mesh, self.tx.init(p))
    paths = steps.shard_paths(self.mesh, np.asarray(dna, np.int32)[None])
    tic = time.time()
    for i in range(self.num_steps):
      batch = ds.batch("train", i, sess.config.train.batch_size, data_seed)
      p, opt_state, _ = self.step(p, opt_state, steps.shard_batch(self.mesh, batch), paths)
      if self.runs == 0 and i == 0:
        jax.block_until_ready(p)
        self.compile_seconds = time.time() - tic
    jax.block_until_ready(p)
    self.seconds += time.time() - tic - (self.compile_seconds if self.runs == 0 else 0.0)
    self.runs += 1
    return jax.device_get(sess.variables(p))


STANDALONE_FIELDS = ("standalone_accuracy", "standalone_accuracies", "standalone_validation_accuracy",
                     "standalone_loss", "standalone_losses")


def standalone_setup(config, train_steps: int, train_seeds: int, recalibrate_batches: int,
                     seed: int) -> dict:
  """Everything a stand-alone score depends on: equal setups give equal scores for equal DNAs."""
  t = config.train
  return {"space": config.space.to_dict(), "dataset": config.dataset.to_dict(),
          "train": {k: t[k] for k in ("batch_size", "learning_rate", "warmup_steps", "momentum",
                                       "weight_decay", "eval_batch_size")},
          "data_seed": int(seed), "train_steps": int(train_steps), "train_seeds": int(train_seeds),
          "recalibrate_batches": int(recalibrate_batches), "seed": int(seed)}


def _reusable(path: str | None, setup: dict) -> dict:
  """DNA -> stand-alone fields of an earlier report with the same setup ({} without --reuse)."""
  if path is None:
    return {}
  try:
    old = json.loads(storage.as_path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read --reuse {path}: {e}; give a rank.json written by oneshot rank") from None
  if json.loads(json.dumps(setup)) != old.get("standalone_setup"):
    raise UserError(f"--reuse {path} was trained with another stand-alone setup (space, data, training "
                    "steps, seeds or sample seed differ); drop --reuse or match its settings")
  return {tuple(a["dna"]): {k: a[k] for k in STANDALONE_FIELDS} for a in old["archs"]}


def _report(archs: Sequence[dict], k: int) -> dict:
  """The contracted statistics on accuracies, plus the same on other scores for context: accuracies of
  300 images tie often and carry +-1% binomial noise, so losses and seed-to-seed agreement help read
  a low tau. The search's own answer counts in its percentile but not in the tau figures: its supernet
  score is the one the search maximised, so including it would flatter the supernet."""
  ranked = [a for a in archs if not a["is_search_result"]]
  col = lambda key, sign=1.0: [sign * a[key] for a in ranked]
  correlations = rank_stats.correlations
  report = {**correlations(col("supernet_accuracy"), col("standalone_accuracy"), k),
            "search_result_percentile": search_percentile(archs), "archs": list(archs)}
  report["context"] = {
      "kendall_tau_batch_stats": correlations(col("supernet_batch_stats_accuracy"),
                                              col("standalone_accuracy"), k)["kendall_tau"],
      "kendall_tau_vs_standalone_validation": correlations(
          col("supernet_accuracy"), col("standalone_validation_accuracy"), k)["kendall_tau"],
      "kendall_tau_loss": correlations(col("supernet_loss", -1.0), col("standalone_loss", -1.0),
                                       k)["kendall_tau"],
      "kendall_tau_supernet_loss_vs_standalone_accuracy": correlations(
          col("supernet_loss", -1.0), col("standalone_accuracy"), k)["kendall_tau"],
      # The free baseline a supernet ranking must beat: bigger networks are usually better.
      "kendall_tau_num_params": correlations(col("num_params"), col("standalone_accuracy"),
                                             k)["kendall_tau"],
      **_named(rank_stats.tau_uncertainty(col("supernet_accuracy"), col("num_params"),
                                          col("standalone_accuracy")))}
  if len(archs[0]["standalone_accuracies"]) >= 2:  # the noise ceiling: one training seed vs another
    for key, name in (("standalone_accuracies", ""), ("standalone_losses", "_loss")):
      seeds = [a[key] for a in ranked]
      report["context"][f"kendall_tau_seed0_vs_seed1{name}"] = correlations(
          [s[0] for s in seeds], [s[1] for s in seeds], k)["kendall_tau"]
  return report


def _named(uncertainty: dict) -> dict:
  """rank.json's names for the margin over the parameter count."""
  return {"kendall_tau_standard_error": uncertainty["standard_error"],
          "kendall_tau_margin_over_num_params": uncertainty["margin"],
          "kendall_tau_margin_interval_90": uncertainty["margin_interval_90"]}


def sample_architectures(space: Space, num: int, seed: int, include: DNA | None = None) -> list[DNA]:
  """`include` (the search result) plus distinct points where, per decision, the choices appear equally
  often (+-1) in an independent random order (a Latin-hypercube-style design), so even K=20 exercises
  every choice of every decision; invalid or repeated rows are redrawn uniformly."""
  rng = np.random.default_rng(seed)
  chosen = [tuple(include)] if include is not None else []
  n = num - len(chosen)
  columns = [rng.permutation(np.arange(n) % d.num_choices) for d in space.decisions]
  network = lambda d: tuple(int(c) for c in space.canonical(d))  # a dropped block's choices don't count
  seen = {network(c) for c in chosen}
  for row in (zip(*columns) if n > 0 else ()):
    dna = tuple(int(c) for c in row)
    while network(dna) in seen or not space.is_valid(dna):
      dna = tuple(int(c) for c in space.sample(rng))
    chosen.append(dna)
    seen.add(network(dna))
  return chosen


def child_init_scale(space: Space, params: dict, dna: DNA) -> dict:
  """Fresh supernet params whose slice for `dna` is distributed as the child's own initialisation.

  Every kernel initialiser here draws iid values with std proportional to 1/sqrt(fan_in), fan_in the
  product of all but the last dimension; a prefix/centre slice of a supernet kernel has the supernet's
  (larger) fan_in, so the whole kernel is rescaled by sqrt(fan_in_supernet / fan_in_child). Layers the
  child does not use are left alone (they get no gradient and never reach the output).
  """
  from oneshot import supernet  # pylint: disable=import-outside-toplevel
  child = supernet.child_variables(space, {"params": params}, dna)["params"]

  def rescale(tree, sliced):
    out = {}
    for name, value in tree.items():
      if isinstance(value, dict):
        out[name] = rescale(value, sliced.get(name, {})) if name in sliced else value
      elif name == "kernel" and name in sliced:
        ratio = np.prod(np.shape(value)[:-1]) / np.prod(np.shape(sliced[name])[:-1])
        out[name] = np.asarray(value) * np.float32(np.sqrt(ratio))
      else:
        out[name] = value
    return out

  return rescale(params, child)


def search_percentile(archs: Sequence[dict]) -> float | None:
  """The search result's stand-alone accuracy as a percentile of the other architectures' (ties count
  half); 100 = best of the sample. None when the search has no result yet."""
  mine = [a["standalone_accuracy"] for a in archs if a["is_search_result"]]
  others = [a["standalone_accuracy"] for a in archs if not a["is_search_result"]]
  return rank_stats.percentile(mine[0], others) if mine else None


def plot(report: dict, path: str) -> None:
  """Scatter of supernet vs stand-alone accuracy, the search result starred."""
  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt
  from oneshot import plots  # Agg backend; writes through storage, so a bucket works too
  archs = report["archs"]
  fig, ax = plt.subplots(figsize=(5, 4.2))
  rest = [a for a in archs if not a["is_search_result"]]
  ax.scatter([a["supernet_accuracy"] for a in rest], [a["standalone_accuracy"] for a in rest],
             s=22, color="tab:blue", label="sampled")
  mine = [a for a in archs if a["is_search_result"]]
  if mine:
    ax.scatter([mine[0]["supernet_accuracy"]], [mine[0]["standalone_accuracy"]], marker="*", s=180,
               color="tab:red", label="search result")
  ax.set_xlabel("supernet accuracy (recalibrated BN, validation)")
  ax.set_ylabel(f"stand-alone accuracy ({report['train_steps']} steps, test)")
  ax.set_title(f"{report['space']}: Kendall tau {_fmt(report['kendall_tau'])}, Spearman "
               f"{_fmt(report['spearman'])}", fontsize=10)
  ax.legend(fontsize=8, loc="lower right")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  plots.save_figure(fig, path)


def _fmt(value: float | None, spec: str = ".3f") -> str:
  return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

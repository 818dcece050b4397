"""Joint vs. sequential hardware co-search at the same number of architecture evaluations.

  python benchmarks/cosearch_gain.py                          # trains a quick digits supernet first
  python benchmarks/cosearch_gain.py --workdir W --seeds 5    # reuses W's trained supernet
  python benchmarks/cosearch_gain.py --config.cosearch.outer_budget=8 --out gain.json

Joint: `oneshot cosearch`'s loop (outer controller over accelerators, an inner architecture search on
each), E evaluations in all. Sequential, the usual flow (pick the network for an existing accelerator,
then tune the accelerator for it), with the same E:
  (a) the inner controller searches architectures on the fixed `cosearch.baseline_accelerator` for
      E - B evaluations (B = `outer_budget`);
  (b) the outer controller searches B accelerators for (a)'s architecture (one evaluation each).
Every result is one (accelerator, architecture) pair scored by the config's reward. All runs share one
frozen supernet and one accuracy memo, so each seed costs seconds after the first. NAHAS (Zhou et al.
2021) reports ~0.5-1% accuracy, or ~20% latency at equal accuracy, for joint over sequential.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax  # noqa: E402
from absl import flags  # noqa: E402

from oneshot import controllers  # noqa: E402
from oneshot import configuration, cosearch, storage  # noqa: E402
from oneshot.errors import UserError  # noqa: E402
from oneshot.hardware import settings as hardware_settings  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "digits_cosearch.py")
METRICS = ("reward", "accuracy", "latency_ms", "energy_mj", "area_mm2")


def joint(ev, config) -> tuple[dict, int]:
  """The co-search's best point and its evaluation count (no files written)."""
  progress = cosearch.load_progress(config, tempfile.mkdtemp(prefix="cosearch-gain-"))
  cosearch.outer_loop(ev, config, progress, cosearch.make_evaluate(ev, config, progress, log=False))
  return max(progress["points"], key=lambda p: p["reward"]), progress["evaluations"]


def sequential(ev, config, evaluations: int) -> tuple[dict, dict, int]:
  """(a) best architecture on the baseline accelerator, (b) its best accelerator; evaluations used."""
  c = config.cosearch
  baseline = c.baseline_accelerator.to_dict()
  try:
    accel = np.array([d.index(baseline[d.name]) for d in ev.accel_space.decisions], np.int32)
  except KeyError as e:
    raise UserError(f"--config.cosearch.baseline_accelerator lacks {e}; give every accelerator "
                    "decision") from None
  ev.accel_space.validate(accel)
  budget_b = int(c.outer_budget)
  n = ev.session.num_devices
  paths = -(-int(c.inner_paths) // n) * n
  steps = max(1, (evaluations - budget_b) // paths)
  inner = controllers.build(c.inner_controller, ev.space, {**c.inner.to_dict(), "num_steps": steps})
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 13)
  arch, queries = cosearch.inner_search(ev, inner, accel, key, steps, paths)
  a = ev.point(accel, arch)
  progress = cosearch.load_progress(config, tempfile.mkdtemp(prefix="cosearch-gain-"))
  cosearch.outer_loop(ev, config, progress, lambda acc, index: ev.point(acc, arch))
  b = max(progress["points"] + [a], key=lambda p: p["reward"])
  return a, b, queries + len(progress["points"])


def main(argv) -> int:
  def define(fv):
    flags.DEFINE_string("workdir", None, "A trained supernet workdir to reuse (default: train a quick "
                        "one in a temporary directory).", flag_values=fv)
    flags.DEFINE_integer("seeds", 3, "Controller seeds per method (the supernet is shared).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "Also write the figures as JSON here.", flag_values=fv)
  if not any(a == "--config" or a.startswith("--config=") for a in argv):
    argv = ["--config", DEFAULT_CONFIG] + list(argv)
  fv = configuration.parse_flags(argv, define, command="cosearch_gain")
  config = fv.config
  workdir = fv.workdir or tempfile.mkdtemp(prefix="cosearch-gain-supernet-")
  if not fv.workdir:
    print(f"training a supernet in {workdir} (pass --workdir to reuse one)", file=sys.stderr)
  tic = time.time()
  ev = cosearch.prepare(config, workdir)
  if ev is None:
    return 1
  try:  # a finished `oneshot cosearch` in the workdir already scored many architectures
    ev.cache.update(cosearch.load_progress(config, workdir)["accuracy_cache"])
  except UserError:
    pass
  print(f"supernet ready ({time.time() - tic:.0f} s)", file=sys.stderr)
  rows = []
  for s in range(fv.seeds):
    cfg = config.copy_and_resolve_references()
    cfg.seed = int(config.seed) + s
    t0 = time.time()
    best, evaluations = joint(ev, cfg)
    a, b, used = sequential(ev, cfg, evaluations)
    rows.append({"seed": cfg.seed, "evaluations": evaluations, "sequential_evaluations": used,
                 "joint": best, "fixed_accelerator": a, "sequential": b})
    print(f"seed {cfg.seed}: joint {best['reward']:.4f}, fixed accelerator {a['reward']:.4f}, "
          f"sequential {b['reward']:.4f} ({evaluations} vs {used} evaluations, "
          f"{time.time() - t0:.0f} s)", file=sys.stderr)
  report(rows, config)
  if fv.out:
    storage.write_json(fv.out, {"rows": rows,
                           "reward": hardware_settings.read(config, "cosearch").reward.settings(),
                           "cost_model": {"cost_model": config.hardware.cost_model,
                                          "table": config.hardware.table}})
  return 0


def report(rows: list[dict], config) -> None:
  print(f"\nJoint vs. sequential co-search, {config.dataset.name}, reward {config.hardware.reward}, "
        f"cost model {config.hardware.cost_model}, {len(rows)} seeds, "
        f"{min(r['evaluations'] for r in rows)}-{max(r['evaluations'] for r in rows)} evaluations "
        "per method and seed (equal within a seed; mean over seeds):")
  print(f"  {'method':<34}" + "".join(f"{m:>12}" for m in METRICS))
  labels = (("joint", "joint (outer x inner)"), ("fixed_accelerator", "(a) arch on fixed accelerator"),
            ("sequential", "(b) + its best accelerator"))
  means = {}
  for key, label in labels:
    means[key] = {m: float(np.mean([r[key][m] for r in rows])) for m in METRICS}
    print(f"  {label:<34}" + "".join(f"{means[key][m]:>12.4f}" for m in METRICS))
  j, q = means["joint"], means["sequential"]
  wins = sum(r["joint"]["reward"] > r["sequential"]["reward"] + 1e-9 for r in rows)
  ties = sum(abs(r["joint"]["reward"] - r["sequential"]["reward"]) <= 1e-9 for r in rows)
  print(f"  joint - sequential: reward {j['reward'] - q['reward']:+.4f}, accuracy "
        f"{100 * (j['accuracy'] - q['accuracy']):+.2f} points, latency "
        f"{100 * (j['latency_ms'] / q['latency_ms'] - 1):+.1f}%, energy "
        f"{100 * (j['energy_mj'] / q['energy_mj'] - 1):+.1f}%; joint better on {wins}/{len(rows)} "
        f"seeds, tied on {ties}")


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except UserError as err:
    print(f"cosearch_gain: error: {err}", file=sys.stderr)
    sys.exit(2)

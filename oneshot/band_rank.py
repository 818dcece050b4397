"""`oneshot rank --table`: a supernet's ranking judged against a ground-truth band table, in minutes.

Nothing is trained: each architecture of the table gets its supernet score (weights inherited, BatchNorm
recalibrated, validation accuracy, as `oneshot export` writes the child), and each band reports Kendall's
tau against the table's mean test accuracy over training seeds, the table's own repeatability (the
noise ceiling), and the same tau for the free baselines a supernet must beat inside a latency band:
parameter count, FLOPs, modelled latency, and a size regression fitted on the *other* bands.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from oneshot import bands, rank_stats, storage
from oneshot.errors import UserError
from oneshot.spaces.core import DNA

BASELINES = ("num_params", "flops", "latency_ms", "size_regression")


@dataclasses.dataclass
class TableArch:
  """One architecture of a table: its band, cost columns and accuracies over training seeds."""
  band_ms: float
  dna: DNA
  num_params: float
  flops: float
  latency_ms: float
  seeds: dict[int, float]              # training seed -> test accuracy
  losses: dict[int, float] = dataclasses.field(default_factory=dict)  # training seed -> test loss

  @property
  def accuracy(self) -> float:
    return float(np.mean(list(self.seeds.values())))


def architectures(rows: Sequence[dict[str, str]], steps: int | None = None) -> list[TableArch]:
  """The table's architectures, rows of one training length (`steps`, default: the longest)."""
  if not rows:
    raise UserError("the table has no complete rows; build it first (benchmarks/fashion_bands.py)")
  steps = steps or max(int(r["steps"]) for r in rows)
  archs: dict[tuple[float, DNA], TableArch] = {}
  for r in rows:
    if int(r["steps"]) != steps:
      continue
    key = (float(r["band_ms"]), bands.parse_dna(r["dna"]))
    if key not in archs:
      archs[key] = TableArch(key[0], key[1], float(r["num_params"]), float(r["flops"]),
                             float(r["latency_ms"]), {})
    archs[key].seeds[int(r["seed"])] = float(r["test_accuracy"])
    archs[key].losses[int(r["seed"])] = float(r["test_loss"])
  return list(archs.values())


def seed_agreement(archs: Sequence[TableArch], metric: str = "accuracy") -> dict[str, Any]:
  """How repeatable the table's ranking is, from the seeds every architecture has; `metric` is test
  accuracy, or test loss (ranked lower-is-better), a smoother reading of the same trainings.

  seed_vs_rest_tau: one seed's ranking against the mean of the other seeds, averaged over seeds (the
  ground-truth goal's figure). split_half_tau (4+ seeds): the mean of half the seeds against the mean of
  the other half, averaged over the balanced splits. seed_pair_tau: two single trainings, averaged over
  pairs. noise_ceiling: the tau a perfect ranker would reach against the mean over all n seeds, from
  seed_pair_tau t under a Gaussian model of seed noise: single trainings correlate at
  r1 = sin(pi t / 2), the n-seed mean correlates with the truth at r = sqrt(n r1 / (1 + (n - 1) r1)),
  and tau = (2 / pi) asin(r). mean_seed_sd and arch_sd: the spread of one architecture over seeds
  (mean over architectures) against the spread of the architectures' means.
  """
  if metric == "accuracy":
    values = lambda a: a.seeds
  else:
    values = lambda a: {s: -v for s, v in a.losses.items()}
  common = sorted(set.intersection(*(set(values(a)) for a in archs))) if archs else []
  out = {"seeds": common, "seed_vs_rest_tau": None, "split_half_tau": None, "seed_pair_tau": None,
         "noise_ceiling": None, "mean_seed_sd": None, "arch_sd": None}
  if len(common) < 2 or len(archs) < 3:
    return out
  acc = np.array([[values(a)[s] for s in common] for a in archs])
  n = len(common)
  out["mean_seed_sd"] = float(acc.std(1, ddof=1).mean())
  out["arch_sd"] = float(acc.mean(1).std(ddof=1))
  if n >= 4:
    halves = [h for h in itertools.combinations(range(n), n // 2) if 0 in h]
    split = [rank_stats.kendall(acc[:, list(h)].mean(1), np.delete(acc, list(h), 1).mean(1))
             for h in halves]
    split = [v for v in split if v is not None]
    out["split_half_tau"] = float(np.mean(split)) if split else None
  rest = [rank_stats.kendall(acc[:, i], np.delete(acc, i, 1).mean(1)) for i in range(n)]
  pairs = [rank_stats.kendall(acc[:, i], acc[:, j]) for i in range(n) for j in range(i + 1, n)]
  rest, pairs = [v for v in rest if v is not None], [v for v in pairs if v is not None]
  out["seed_vs_rest_tau"] = float(np.mean(rest)) if rest else None
  if pairs:
    t = float(np.mean(pairs))
    out["seed_pair_tau"] = t
    r1 = max(np.sin(np.pi * t / 2), 0.0)
    out["noise_ceiling"] = float(2 / np.pi * np.arcsin(np.sqrt(n * r1 / (1 + (n - 1) * r1))))
  return out


def size_regression(train: Sequence[TableArch], predict: Sequence[TableArch]) -> list[float] | None:
  """Accuracy regressed on log(params) and log(FLOPs) over `train` (other bands), predicted for
  `predict`: the size baseline that never sees the band it ranks. None with too few points."""
  if len(train) < 4:
    return None
  design = lambda archs: np.array([[1.0, np.log(a.num_params), np.log(a.flops)] for a in archs])
  coef = np.linalg.lstsq(design(train), np.array([a.accuracy for a in train]), rcond=None)[0]
  return (design(predict) @ coef).tolist()


def choice_bias(space: Any, archs: Sequence[TableArch], scores: Sequence[float]) -> list[dict[str, Any]]:
  """Which choices the ranker over- or under-rates inside a band, most contested first.

  For each kind of decision (the name after its last '/': kernel, expansion, width, skip) and each of
  its values, the number of *active* decisions of that kind taking that value is one feature of an
  architecture; `ranker_tau` and `table_tau` are its Kendall tau against the ranker's scores and against
  the table, and `gap` their difference. A large gap names the decision whose weights the supernet
  shares worst: the one a few-shot split (one sub-supernet per choice) or a change of its weight
  sharing should address."""
  dnas = np.array([a.dna for a in archs])
  active = space.active(dnas)
  truth = [a.accuracy for a in archs]
  out = []
  kinds: dict[str, list[int]] = {}
  for j, name in enumerate(space.names):
    kinds.setdefault(name.rsplit("/", 1)[-1], []).append(j)
  for kind, columns in kinds.items():
    values = sorted({space.decisions[j].choices[i] for j in columns
                     for i in range(space.decisions[j].num_choices)}, key=str)
    for value in values:
      counts = [sum(1 for j in columns if active[n, j] and
                    space.decisions[j].choices[dnas[n, j]] == value) for n in range(len(archs))]
      ranker, table = rank_stats.kendall(counts, scores), rank_stats.kendall(counts, truth)
      if ranker is None or table is None:
        continue
      out.append({"decision": kind, "choice": value, "ranker_tau": ranker,
                  "table_tau": table, "gap": ranker - table})
  return sorted(out, key=lambda r: -abs(r["gap"]))


def band_report(archs: Sequence[TableArch], scores: Sequence[float] | None,
                others: Sequence[TableArch]) -> dict[str, Any]:
  """A ranker's `scores` of one band's `archs` against the table, beside the free baselines (with
  `scores` None: the table alone, its seed agreement and the baselines).

  Baselines rank bigger/slower as better; `others` (the other bands' architectures) fit the size
  regression. The margin's 90% interval is a paired bootstrap over the band's architectures of
  tau(scores) - tau(best baseline), the best baseline chosen on the full band."""
  truth = [a.accuracy for a in archs]
  baselines = {"num_params": [a.num_params for a in archs], "flops": [a.flops for a in archs],
               "latency_ms": [a.latency_ms for a in archs],
               "size_regression": size_regression(others, archs)}
  taus = {name: (rank_stats.kendall(v, truth) if v is not None else None) for name, v in baselines.items()}
  ranked = [(t, name) for name, t in taus.items() if t is not None]
  best = max(ranked)[1] if ranked else None
  uncertainty = (rank_stats.tau_uncertainty(scores, baselines[best], truth)
                 if best is not None and scores is not None else {})
  return {"band_ms": archs[0].band_ms if archs else None, "num_archs": len(archs),
          "mean_accuracy": float(np.mean(truth)) if truth else None,
          "kendall_tau": rank_stats.kendall(scores, truth) if scores is not None else None,
          **seed_agreement(archs), "by_test_loss": seed_agreement(archs, "loss"),
          "baseline_kendall_tau": taus, "best_baseline": best,
          "kendall_tau_standard_error": uncertainty.get("standard_error"),
          "margin_over_best_baseline": uncertainty.get("margin"),
          "margin_interval_90": uncertainty.get("margin_interval_90")}


def run(workdir: str, table: str, out: str, *, recalibrate_batches: int = 20,
        steps: int | None = None) -> dict[str, Any]:
  """Scores every architecture of `table` with `workdir`'s supernet; writes and returns rank.json."""
  # pylint: disable=import-outside-toplevel
  from oneshot import checkpoint, runtime, session as session_lib, spaces
  from oneshot import child as child_lib
  runtime.return_compile_memory()
  wall = time.time()
  if recalibrate_batches < 1:
    raise UserError(f"--recalibrate-batches must be >= 1, got {recalibrate_batches}")
  out = storage.check_output_file(out, "--out", "rank.json")
  rows = bands.read_table(_existing(table))
  archs = architectures(rows, steps)
  session_lib.use_search_devices(workdir)
  checkpoint.require_checkpoint(workdir)
  config = session_lib.load_search_config(workdir)
  space = spaces.build(config.space)
  for a in archs:
    if len(a.dna) != space.num_decisions or not space.is_valid(a.dna):
      raise UserError(f"--table {table} holds architecture {bands.format_dna(a.dna)}, which is not in "
                      f"the workdir's {space.name!r} space; give the table built for this search's "
                      "space")
  answer = session_lib.read_search_dna(workdir, space)
  sess = session_lib.build(config)
  params = session_lib.restore_params(sess, workdir)["params"]
  scored = []
  for i, a in enumerate(archs):
    tic = time.time()
    runner, child = child_lib.recalibrated_child(sess, params, a.dna, recalibrate_batches)
    result = runner.evaluate(child, sess.dataset, "validation", config.train.eval_batch_size)
    scored.append({"band_ms": a.band_ms, "dna": list(a.dna), "string": space.format(a.dna),
                   "supernet_accuracy": result["accuracy"], "supernet_loss": result["loss"],
                   "table_accuracy": a.accuracy, "table_accuracies": [a.seeds[s] for s in sorted(a.seeds)],
                   "num_params": a.num_params, "flops": a.flops, "latency_ms": a.latency_ms,
                   "is_search_result": answer is not None and tuple(a.dna) == tuple(answer),
                   "seconds": time.time() - tic})
    print(f"[{i + 1}/{len(archs)}] band {a.band_ms:g} {scored[-1]['string']}: supernet "
          f"{result['accuracy']:.4f}, table {a.accuracy:.4f}", file=sys.stderr)
  band_values = sorted({a.band_ms for a in archs})
  reports = []
  for band in band_values:
    # The search's own answer is kept for its percentile but left out of tau: its supernet score is
    # the one the search maximised, so it would favour the supernet.
    members = [(a, s) for a, s in zip(archs, scored) if a.band_ms == band and not s["is_search_result"]]
    band_archs, band_scores = [a for a, _ in members], [s["supernet_accuracy"] for _, s in members]
    others = [a for a in archs if a.band_ms != band]
    report = band_report(band_archs, band_scores, others)
    mine = [s for s in scored if s["band_ms"] == band and s["is_search_result"]]
    report["choice_bias"] = choice_bias(space, band_archs, band_scores)
    report["search_result_percentile"] = (rank_stats.percentile(
        mine[0]["table_accuracy"], [a.accuracy for a, _ in members]) if mine else None)
    reports.append(report)
  taus = [r["kendall_tau"] for r in reports if r["kendall_tau"] is not None]
  result = {"table": os.fspath(table), "workdir": os.fspath(storage.as_path(workdir)),
            "steps": max(int(r["steps"]) for r in rows) if steps is None else steps,
            "recalibrate_batches": recalibrate_batches, "supernet_split": "validation",
            "table_split": "test", "mean_kendall_tau": float(np.mean(taus)) if taus else None,
            "bands": reports, "archs": scored, "total_seconds": time.time() - wall}
  storage.write_json(out, result)
  return result


def table_report(rows: Sequence[dict[str, str]], steps: int | None = None) -> list[dict[str, Any]]:
  """Per band, the table on its own: seed agreement (by accuracy and by loss) and the baselines' tau."""
  archs = architectures(rows, steps)
  return [band_report([a for a in archs if a.band_ms == band], None,
                      [a for a in archs if a.band_ms != band])
          for band in sorted({a.band_ms for a in archs})]


def table_summary(reports: Sequence[dict[str, Any]]) -> str:
  """One line per band of `table_report` for the terminal."""
  fmt = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)
  lines = []
  for b in reports:
    loss = b["by_test_loss"]
    lines.append(
        f"band {b['band_ms']:g} ms: {b['num_archs']} architectures x {len(b['seeds'])} seeds, mean "
        f"accuracy {fmt(b['mean_accuracy'], '.4f')}, sd over architectures {fmt(b['arch_sd'], '.4f')} "
        f"/ over seeds {fmt(b['mean_seed_sd'], '.4f')}; seed vs rest tau {fmt(b['seed_vs_rest_tau'])} "
        f"(split-half {fmt(b['split_half_tau'])}, pair {fmt(b['seed_pair_tau'])}, noise ceiling "
        f"{fmt(b['noise_ceiling'])}); by test loss {fmt(loss['seed_vs_rest_tau'])} (split-half "
        f"{fmt(loss['split_half_tau'])}); baselines " +
        ", ".join(f"{k} {fmt(v)}" for k, v in b["baseline_kendall_tau"].items()))
  return "\n".join(lines)


def summary(report: dict[str, Any]) -> str:
  """One line per band for the terminal."""
  fmt = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)
  lines = []
  for b in report["bands"]:
    interval = b["margin_interval_90"] or (None, None)
    lines.append(
        f"band {b['band_ms']:g} ms ({b['num_archs']} architectures): supernet tau "
        f"{fmt(b['kendall_tau'])}; seeds {fmt(b['seed_vs_rest_tau'])} (noise ceiling "
        f"{fmt(b['noise_ceiling'])}); baselines " +
        ", ".join(f"{k} {fmt(v)}" for k, v in b["baseline_kendall_tau"].items()) +
        f"; margin over {b['best_baseline']} {fmt(b['margin_over_best_baseline'])} (90% "
        f"{fmt(interval[0])}..{fmt(interval[1])})")
    if b.get("choice_bias"):
      worst = b["choice_bias"][0]
      lines.append(f"  most misjudged choice: {worst['decision']}={worst['choice']} (supernet tau "
                   f"{worst['ranker_tau']:+.2f} against the table's {worst['table_tau']:+.2f})")
  lines.append(f"mean supernet tau over bands {fmt(report['mean_kendall_tau'], '.3f')} "
               f"({report['total_seconds']:.0f} s)")
  return "\n".join(lines)


def _existing(table: str) -> str:
  if not os.path.isfile(table):
    raise UserError(f"--table {table} is not a file; give a CSV written by benchmarks/fashion_bands.py "
                    "(e.g. benchmarks/data/fashion_mnist_bands.csv)")
  return table

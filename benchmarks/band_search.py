"""The latency-targeted search at equal cost: its answer against the band table and against random
search given the same wall time.

  python benchmarks/band_search.py                                  # both bands, search seeds 0,1,2
  python benchmarks/band_search.py --targets 0.12 --seeds 0 --root /tmp/bs    # one cell

For each band target T and search seed s:
  1. `oneshot search --config CONFIG --config.hardware.target_latency_ms=T --config.seed=s` in
     ROOT/T/s/search; S = its wall time (search_result.json's wall_seconds, resumes included).
  2. The answer: is its modelled latency inside the band (+-width)? It is trained with the table's
     recipe (--table-steps, training seeds 0,1,2) and placed as a percentile among the band's table
     architectures (the mean test accuracy over seeds, ties half).
  3. Random search at equal compute: P = the wall time of one proxy training (the config's
     train.standalone_steps) of an in-band architecture on this machine, in one process on all cores;
     random search trains floor(S / P) in-band architectures (the table's sampler, seed 1000 + s) at
     the proxy length, keeps the best on validation accuracy, and that pick gets the table's recipe too.
Every training goes through the band builder (oneshot/bands.py) into ROOT/rows.csv, so a killed run
is continued by running the same command again; searches resume from their checkpoints. Writes
ROOT/band_search.json (cells of earlier invocations kept, one per band and seed: the newest wins) and
prints one row per band and seed. A lever's searches (--search-flags) go in their own ROOT and share the
baseline's trainings with --rows: its random-search proxies (same sampler and seed) are not trained again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oneshot import band_rank, bands, rank_stats, spaces, steps, storage  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(REPO, "configs", "fashion_mnist.py"))
  p.add_argument("--table", default=os.path.join(REPO, "benchmarks", "data", "fashion_mnist_bands.csv"))
  p.add_argument("--root", default=os.path.join(REPO, "workdirs", "band_search"))
  p.add_argument("--targets", default="0.12,0.19")
  p.add_argument("--seeds", default="0,1,2", help="search seeds")
  p.add_argument("--width", type=float, default=0.03)
  p.add_argument("--table-steps", type=int, default=None,
                 help="the table's training length (default: the table's longest)")
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--search-flags", default="", help="extra flags for every search, space-separated")
  p.add_argument("--rows", default=None, help="the trainings' CSV (default: ROOT/rows.csv)")
  p.add_argument("--random-count", type=int, default=0,
                 help="random search's proxy count (0: floor(S / P)); for searches whose wall time was "
                      "taken beside other jobs, so S is not this machine's idle cost")
  a = p.parse_args()
  config = runpy.run_path(a.config)["get_config"]()
  from oneshot import data  # pylint: disable=import-outside-toplevel
  dataset = data.load(config.dataset)
  space = spaces.build(config.space)
  costs = bands.latency_function(config, space, dataset.image_shape, dataset.num_classes)
  table = band_rank.architectures(bands.read_table(a.table)) if os.path.exists(a.table) else []
  recipe = a.table_steps or (max(int(r["steps"]) for r in bands.read_table(a.table)) if table else 1000)
  proxy = steps.standalone_steps(config)
  os.makedirs(a.root, exist_ok=True)
  rows_csv = a.rows or os.path.join(a.root, "rows.csv")
  proxy_seconds = _proxy_seconds(config, space, costs, [float(t) for t in a.targets.split(",")],
                                 a.width, proxy, a.root)
  results = []
  for target in (float(t) for t in a.targets.split(",")):
    for seed in (int(s) for s in a.seeds.split(",")):
      cell = _cell(a, config, space, costs, target, seed, proxy, recipe, proxy_seconds, rows_csv, table)
      results.append(cell)
      _write(a.root, results, proxy_seconds, recipe, proxy)
  return 0


def _proxy_seconds(config, space, costs, targets, width, steps, root) -> float:
  """P: wall time of one proxy training of an in-band architecture, measured once and kept."""
  path = os.path.join(root, "proxy_seconds.json")
  if os.path.exists(path):
    return json.load(open(path, encoding="utf-8"))["seconds"]
  dna = bands.band_architectures(space, costs, targets[0], width, 1, seed=999)[0]
  tic = time.time()
  bands.Trainer(config).run(bands.Job(targets[0], dna, 0, steps))
  seconds = time.time() - tic
  json.dump({"seconds": seconds, "dna": list(dna), "steps": steps}, open(path, "w", encoding="utf-8"))
  return seconds


def _cell(a, config, space, costs, target, seed, proxy, recipe, proxy_seconds, rows_csv, table):
  workdir = os.path.join(a.root, f"{target:g}", str(seed), "search")
  result_path = os.path.join(workdir, "search_result.json")
  if not os.path.exists(result_path):
    cmd = [sys.executable, "-m", "oneshot.cli", "search", "--config", a.config, "--workdir", workdir,
           f"--config.hardware.target_latency_ms={target}", f"--config.seed={seed}"]
    cmd += a.search_flags.split()
    subprocess.run(cmd, check=True)
  result = json.load(open(result_path, encoding="utf-8"))
  answer = tuple(space.from_json(result))
  wall = float(result["wall_seconds"])
  latency = float(costs(np.asarray(answer)[None])[0][0])
  # Random search at equal compute: floor(S / P) in-band architectures at the proxy length.
  count = a.random_count or max(1, math.floor(wall / proxy_seconds))
  candidates = bands.band_architectures(space, costs, target, a.width, count, seed=1000 + seed)
  bands.build(config, rows_csv, [bands.Job(target, d, 0, proxy) for d in candidates], costs,
              workers=a.workers)
  proxy_rows = {r["dna"]: float(r["validation_accuracy"]) for r in bands.read_table(rows_csv)
                if int(r["steps"]) == proxy and r["seed"] == "0"}
  pick = max(candidates, key=lambda d: proxy_rows[bands.format_dna(d)])
  bands.build(config, rows_csv, [bands.Job(target, d, s, recipe) for d in (answer, pick)
                                 for s in (0, 1, 2)], costs, workers=a.workers)
  final = {bands.parse_dna(r["dna"]): [] for r in bands.read_table(rows_csv)}
  for r in bands.read_table(rows_csv):
    if int(r["steps"]) == recipe:
      final[bands.parse_dna(r["dna"])].append(float(r["test_accuracy"]))
  band_table = [t.accuracy for t in table if abs(t.band_ms - target) < 1e-9]
  mean = lambda d: float(np.mean(final[tuple(d)]))
  pct = lambda v: rank_stats.percentile(v, band_table) if band_table else None
  cell = {"band_ms": target, "search_seed": seed, "search_seconds": wall,
          "answer": space.format(answer), "answer_latency_ms": latency,
          "answer_in_band": bool(abs(latency / target - 1) <= a.width),
          "answer_test_accuracy": mean(answer), "answer_percentile": pct(mean(answer)),
          "random_count": count, "random_pick": space.format(pick),
          "random_pick_test_accuracy": mean(pick), "random_pick_percentile": pct(mean(pick))}
  cell["search_at_least_random"] = cell["answer_test_accuracy"] >= cell["random_pick_test_accuracy"]
  print(f"band {target:g} seed {seed}: answer {latency:.4f} ms ({'in' if cell['answer_in_band'] else 'OUT OF'}"
        f" band) test {mean(answer):.4f} (percentile {cell['answer_percentile']}); random search "
        f"({count} proxies) {mean(pick):.4f} (percentile {cell['random_pick_percentile']})", flush=True)
  return cell


def merge_cells(old: list[dict], new: list[dict]) -> list[dict]:
  """One cell per (band, search seed), `new` replacing `old`'s, sorted: an invocation for some seeds
  adds to the cells of earlier ones instead of dropping them."""
  cells = {(c["band_ms"], c["search_seed"]): c for c in old}
  cells.update({(c["band_ms"], c["search_seed"]): c for c in new})
  return [cells[k] for k in sorted(cells)]


def _write(root, results, proxy_seconds, recipe, proxy) -> None:
  path = os.path.join(root, "band_search.json")
  old = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)["cells"]
  storage.write_json(path, {"proxy_seconds": proxy_seconds, "proxy_steps": proxy,
                            "recipe_steps": recipe, "cells": merge_cells(old, results)})


if __name__ == "__main__":
  sys.exit(main())

"""Builds (or continues) the Fashion-MNIST ground-truth table in latency bands.

  python benchmarks/fashion_bands.py                       # the committed table: 2 bands x 20 x 3 seeds
  python benchmarks/fashion_bands.py --out /tmp/pilot.csv --targets 0.12 --archs 8 \
      --steps 300,1000,2000                                # the pilot that chose the training length
  python benchmarks/fashion_bands.py --report [--out CSV]  # per band and length: seed agreement,
                                                           # baselines (oneshot/band_rank.py); no training

Rows already in --out are skipped, so a killed build is continued by running the same command again.
The sampler, training recipe and resume rules are oneshot/bands.py's; the table's provenance (date,
machine, command) is in docs/results.md. The space, data and optimizer are --config's
(configs/fashion_mnist.py): only the training length differs from the search. The default length is
the pilot's most repeatable one: longer trainings at the config's learning rate made seeds agree less,
not more (docs/results.md, "Ground-truth table: pilot").
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oneshot import band_rank, bands, spaces  # pylint: disable=wrong-import-position

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                           "fashion_mnist_bands.csv")


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/fashion_mnist.py")
  p.add_argument("--out", default=DEFAULT_OUT)
  p.add_argument("--targets", default="0.12,0.19", help="band targets, ms (0: unconstrained)")
  p.add_argument("--width", type=float, default=0.03, help="band half-width, fraction of the target")
  p.add_argument("--archs", type=int, default=20, help="architectures per band")
  p.add_argument("--seeds", default="0,1,2", help="training seeds per architecture")
  p.add_argument("--steps", default="300", help="training length(s), comma-separated")
  p.add_argument("--sample-seed", type=int, default=0, help="seed of the architecture sample")
  p.add_argument("--workers", type=int, default=2, help="worker processes, one core each")
  p.add_argument("--report", action="store_true",
                 help="print the table's seed agreement and free baselines per band; train nothing")
  a = p.parse_args()
  if a.report:
    rows = bands.read_table(a.out)
    for steps in sorted({int(r["steps"]) for r in rows}):
      print(f"{steps} steps:")
      print(band_rank.table_summary(band_rank.table_report(rows, steps)))
    return 0
  config = runpy.run_path(a.config)["get_config"]()
  space = spaces.build(config.space)
  from oneshot import data  # pylint: disable=import-outside-toplevel
  dataset = data.load(config.dataset)
  costs = bands.latency_function(config, space, dataset.image_shape, dataset.num_classes)
  floats = lambda s: [float(v) for v in s.split(",")]
  ints = lambda s: [int(v) for v in s.split(",")]
  jobs = bands.plan(space, costs, floats(a.targets), a.width, a.archs, ints(a.seeds), ints(a.steps),
                    a.sample_seed)
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  bands.build(config, a.out, jobs, costs, workers=a.workers)
  return 0


if __name__ == "__main__":
  sys.exit(main())

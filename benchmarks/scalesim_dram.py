"""The cost model's DRAM traffic against SCALE-Sim's memory simulation, layer by layer.

  python benchmarks/scalesim_dram.py                   # 23 layers x 3 dataflows
  python benchmarks/scalesim_dram.py --cache /tmp/ss.json   # keep SCALE-Sim's answers between runs

Layers: ResNet-18 and MobileNetV2 (width 1.0) at a 64x64 input, 'SAME' padding as in oneshot's layer
tables, each on one of four arrays (8x8 with 4 KiB per SRAM, 16x16 with 8 KiB, 32x16 with 16 KiB,
64x32 with 32 KiB: small enough that many operands do not fit, as in a co-search at 224x224), under
all three dataflows. SCALE-Sim 3.0.0 runs in-process through the same driver that wrote the test
fixtures (tests/fixtures/scalesim/make_reference.py, `simulate`). It is the optional extra
`pip install -e '.[scalesim]'`; without it this prints one line and exits 0.

Per case it prints model/SCALE-Sim for each operand and in total; then min / median / max of the total
ratio, and of the reads alone (ifmap + filter), since SCALE-Sim writes every partial sum of a folded
reduction to DRAM (WS, IS) where the model keeps it on chip when the output fits (the differences are
listed in oneshot/hardware/cost_model.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "scalesim"))

from oneshot.hardware import cost_model, workload  # noqa: E402  pylint: disable=wrong-import-position

C, DW, FC = workload.CONV, workload.DEPTHWISE, workload.DENSE
# Arrays: rows, cols, KiB per SRAM (ifmap = filter = ofmap).
S8, M16, L32, X64 = (8, 8, 4), (16, 16, 8), (32, 16, 16), (64, 32, 32)
# (name, kind, R, C, M, H, E, stride, array): input H x H, output E x E. The larger ResNet layers sit
# on the larger arrays only to keep SCALE-Sim's run time (~15 us per SRAM access) in minutes.
LAYERS = [
    ("r18.layer1 3x3", C, 3, 64, 64, 16, 16, 1, X64),
    ("r18.layer2.0 3x3/2", C, 3, 64, 128, 16, 8, 2, L32),
    ("r18.layer2.down 1x1/2", C, 1, 64, 128, 16, 8, 2, M16),
    ("r18.layer3.down 1x1/2", C, 1, 128, 256, 8, 4, 2, L32),
    ("r18.layer4.down 1x1/2", C, 1, 256, 512, 4, 2, 2, X64),
    ("r18.fc", FC, 1, 512, 100, 1, 1, 1, L32),
    ("mv2.stem 3x3/2", C, 3, 3, 32, 64, 32, 2, L32),
    ("mv2.b1.dw 3x3", DW, 3, 32, 32, 32, 32, 1, S8),
    ("mv2.b1.project", C, 1, 32, 16, 32, 32, 1, M16),
    ("mv2.b2.expand", C, 1, 16, 96, 32, 32, 1, X64),
    ("mv2.b2.dw 3x3/2", DW, 3, 96, 96, 32, 16, 2, S8),
    ("mv2.b2.project", C, 1, 96, 24, 16, 16, 1, L32),
    ("mv2.b4.expand", C, 1, 24, 144, 16, 16, 1, M16),
    ("mv2.b4.dw 3x3/2", DW, 3, 144, 144, 16, 8, 2, M16),
    ("mv2.b4.project", C, 1, 144, 32, 8, 8, 1, S8),
    ("mv2.b7.expand", C, 1, 32, 192, 8, 8, 1, L32),
    ("mv2.b7.dw 3x3/2", DW, 3, 192, 192, 8, 4, 2, S8),
    ("mv2.b7.project", C, 1, 192, 64, 4, 4, 1, M16),
    ("mv2.b11.expand", C, 1, 64, 384, 4, 4, 1, X64),
    ("mv2.b11.dw 3x3", DW, 3, 384, 384, 4, 4, 1, L32),
    ("mv2.b11.project", C, 1, 384, 96, 4, 4, 1, M16),
    ("mv2.head", C, 1, 320, 1280, 2, 2, 1, X64),
    ("mv2.fc", FC, 1, 1280, 100, 1, 1, 1, X64),
]
DATAFLOWS = ("ws", "os", "is")


def layer_row(kind: int, r: int, c: int, m: int, h: int, e: int, stride: int) -> dict[str, int]:
  """A square layer as one row of oneshot's layer table (the fields cost_model.evaluate reads)."""
  return dict(kind=kind, R=r, S=r, C=c, M=m, H=h, W=h, E=e, F=e, stride=stride, valid=True)


def model_traffic(layer: dict[str, int], rows: int, cols: int, dataflow: str,
                  kb: int) -> dict[str, float]:
  """The model's cycles and DRAM words per operand for one layer (per_layer outputs of evaluate)."""
  table = {k: np.array([[v]]) for k, v in layer.items()}
  values = dict(rows=[rows], cols=[cols], ifmap_sram_kb=[kb], filter_sram_kb=[kb], ofmap_sram_kb=[kb],
                dataflow=[DATAFLOWS.index(dataflow)], dram_gbps=[16.0], clock_mhz=[500.0])
  out = cost_model.evaluate(table, values, per_layer=True)
  words = 1.0 / cost_model.BYTES_PER_WORD
  return dict(cycles=float(out["cycles"][0]),
              ifmap=float(out["layer_dram_ifmap"][0, 0]) * words,
              filter=float(out["layer_dram_filter"][0, 0]) * words,
              ofmap=float(out["layer_dram_ofmap"][0, 0]) * words)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache", default="", help="JSON file keeping SCALE-Sim's results between runs")
  args = parser.parse_args()
  if importlib.util.find_spec("scalesim") is None:
    print("SCALE-Sim DRAM comparison skipped: `scalesim` is not installed "
          "(pip install -e '.[scalesim]').")
    return
  from make_reference import simulate  # pylint: disable=import-outside-toplevel,import-error
  cache = {}
  if args.cache and os.path.exists(args.cache):
    with open(args.cache, encoding="utf-8") as f:
      cache = json.load(f)
  print(f"DRAM traffic, model / SCALE-Sim {importlib.metadata.version('scalesim')} "
        f"({len(LAYERS)} layers x {len(DATAFLOWS)} dataflows, 64x64 input)")
  print(f"{'layer':<22} {'array':<12} df  {'SCALE-Sim B':>11} {'ifmap':>6} {'filter':>6} {'ofmap':>6} "
        f"{'total':>6} {'reads':>6}")
  totals, reads, sim_s = [], [], 0.0
  for name, *fields, (rows, cols, kb) in LAYERS:
    layer = layer_row(*fields)
    for dataflow in DATAFLOWS:
      key = f"{name}|{rows}x{cols}|{kb}|{dataflow}"
      if key not in cache:
        t0 = time.perf_counter()
        cache[key] = simulate(layer, rows, cols, dataflow, (kb, kb, kb))
        sim_s += time.perf_counter() - t0
      ref = cache[key]
      ours = model_traffic(layer, rows, cols, dataflow, kb)
      if ours["cycles"] != ref["cycles"]:
        print(f"  MISMATCH: compute cycles {ours['cycles']:.0f} vs SCALE-Sim {ref['cycles']}")
      ratio = {op: ours[op] / max(ref[f"dram_{op}"], 1) for op in ("ifmap", "filter", "ofmap")}
      sim_total = ref["dram_ifmap"] + ref["dram_filter"] + ref["dram_ofmap"]
      totals.append((ours["ifmap"] + ours["filter"] + ours["ofmap"]) / sim_total)
      reads.append((ours["ifmap"] + ours["filter"]) / (ref["dram_ifmap"] + ref["dram_filter"]))
      array = f"{rows}x{cols}/{kb}K"
      print(f"{name:<22} {array:<12} {dataflow}  {sim_total:>11,} {ratio['ifmap']:>6.2f} "
            f"{ratio['filter']:>6.2f} {ratio['ofmap']:>6.2f} {totals[-1]:>6.2f} {reads[-1]:>6.2f}")
  if args.cache:
    with open(args.cache, "w", encoding="utf-8") as f:
      json.dump(cache, f)
  for label, values in (("total", totals), ("reads (ifmap + filter)", reads)):
    q = np.percentile(values, [0, 50, 100])
    within = np.mean([0.5 <= v <= 2.0 for v in values])
    print(f"{label}: min {q[0]:.2f}  median {q[1]:.2f}  max {q[2]:.2f}  "
          f"within 2x: {within:.0%} of {len(values)} cases")
  print(f"SCALE-Sim time {sim_s:.0f} s (cases not cached)")


if __name__ == "__main__":
  main()

"""Throughput of the analytical cost model, and its compute cycles against SCALE-Sim.

  python benchmarks/cost_model.py                 # 1e5 random (MobileNet arch, accelerator) pairs
  python benchmarks/cost_model.py --num 20000 --no-scalesim

Runs on one core (thread env vars are set before numpy loads) because a co-search runs the cost model
beside training. SCALE-Sim (`pip install scalesim`) is optional: without it the comparison is skipped.
It is driven in-process through its compute classes (no config or topology files); its cycle count is the
length of its demand matrices, i.e. compute cycles without memory stalls, the quantity our closed form
predicts. A depthwise layer is simulated as SCALE-Sim does a 'DP' layer: one single-channel layer,
times C.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
  os.environ[_var] = "1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.metadata  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oneshot.hardware import cost_model, workload  # noqa: E402  pylint: disable=wrong-import-position
from oneshot.spaces import accelerator, mobilenet  # noqa: E402  pylint: disable=wrong-import-position

# ProxylessNAS / TuNAS MobileNetV2-style ImageNet skeleton.
MOBILENET = dict(stem_filters=32, stem_stride=2, head_filters=1280,
                 stages=[(16, 1, 1), (24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2),
                         (320, 1, 1)],
                 width_multipliers=(0.5, 0.75, 1.0, 1.25), kernel_sizes=(3, 5, 7),
                 expansion_ratios=(1, 3, 6))


def throughput(num: int, repeats: int, seed: int) -> tuple[float, float]:
  """Prints timings; returns (seconds per pair end to end, mean valid layers per network)."""
  rng = np.random.default_rng(seed)
  arch_space = mobilenet.build(MOBILENET)
  accel_space = accelerator.build(dict(area_budget_mm2=30.0))
  dnas = np.stack([rng.integers(k, size=num) for k in arch_space.num_choices], 1).astype(np.int32)
  accel_dnas = accelerator.sample(accel_space, rng, num)
  best = {"layer_table": np.inf, "evaluate": np.inf}
  for _ in range(repeats):
    t0 = time.perf_counter()
    table = workload.layer_table(arch_space, dnas, (224, 224, 3), 1000)
    values = accelerator.arrays(accel_space, accel_dnas)
    t1 = time.perf_counter()
    out = cost_model.evaluate(table, values)
    t2 = time.perf_counter()
    best["layer_table"] = min(best["layer_table"], t1 - t0)
    best["evaluate"] = min(best["evaluate"], t2 - t1)
  total = best["layer_table"] + best["evaluate"]
  print(f"{num} random (MobileNet, accelerator) pairs, {table['kind'].shape[1]} layer slots, "
        f"1 thread, best of {repeats}:")
  print(f"  layer table  {best['layer_table']:.3f} s")
  print(f"  evaluate     {best['evaluate']:.3f} s   {num / best['evaluate']:,.0f} pairs/s")
  print(f"  end to end   {total:.3f} s   {num / total:,.0f} pairs/s")
  for key in ("latency_ms", "energy_mj", "area_mm2"):
    q = np.percentile(out[key], [5, 50, 95])
    print(f"  {key:<11} p5 {q[0]:8.3f}  median {q[1]:8.3f}  p95 {q[2]:8.3f}")
  return total / num, float(table["valid"].sum(1).mean())


def _scalesim_cycles(layer: dict[str, int], rows: int, cols: int, dataflow: str) -> int:
  """Compute cycles of one layer in SCALE-Sim (demand-matrix length), driven in-process."""
  # pylint: disable=import-outside-toplevel
  from scalesim.compute.operand_matrix import operand_matrix
  from scalesim.compute.systolic_compute_is import systolic_compute_is
  from scalesim.compute.systolic_compute_os import systolic_compute_os
  from scalesim.compute.systolic_compute_ws import systolic_compute_ws
  from scalesim.layout_utils import layouts
  from scalesim.scale_config import scale_config
  from scalesim.topology_utils import topologies
  # pylint: enable=import-outside-toplevel
  depthwise = layer["kind"] == workload.DEPTHWISE
  c, m = (1, 1) if depthwise else (layer["C"], layer["M"])
  r, s, e, f, stride = layer["R"], layer["S"], layer["E"], layer["F"], layer["stride"]
  config = scale_config()
  config.set_arr_dims(rows, cols)
  config.set_dataflow(dataflow)
  config.force_valid()
  topo = topologies()
  # SCALE-Sim has no padding: this input size gives the same E x F output as our 'SAME' layer.
  topo.load_layer_params_from_list("layer", ["layer", (e - 1) * stride + r, (f - 1) * stride + s,
                                             r, s, c, m, stride, stride, 1, 1])
  topo.topo_calc_hyperparams()
  operands = operand_matrix()
  operands.set_params(config, topo, layouts(), 0)
  operands.create_operand_matrices()
  compute = {"ws": systolic_compute_ws, "os": systolic_compute_os, "is": systolic_compute_is}[dataflow]()
  compute.set_params(config_obj=config, ifmap_op_mat=operands.get_ifmap_matrix()[1],
                     filter_op_mat=operands.get_filter_matrix()[1],
                     ofmap_op_mat=operands.get_ofmap_matrix()[1])
  ifmap_demand, _, _ = compute.get_demand_matrices()
  return int(ifmap_demand.shape[0]) * (layer["C"] if depthwise else 1)


def compare_scalesim(seed: int, pair_s: float, layers_per_net: float) -> None:
  try:
    import scalesim  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("SCALE-Sim comparison skipped: `scalesim` is not importable (pip install scalesim).")
    return
  rng = np.random.default_rng(seed)
  arch_space = mobilenet.build(MOBILENET)
  dna = np.array([rng.integers(k) for k in arch_space.num_choices], np.int32)
  dna[[j for j, n in enumerate(arch_space.names) if n.endswith("/skip")]] = 0
  # 64x64 input keeps SCALE-Sim's dense operand matrices small; the formula does not care.
  table = workload.layer_table(arch_space, dna[None], (64, 64, 3), 100)
  last = len(table["kind"][0]) - 1
  # stem 3x3/2, expand, depthwise s1, project, depthwise s2, project, 1x1 head, fc
  picks = [0, 1, 2, 3, 5, 6, last - 2, last]
  arrays = [(16, 16), (32, 8), (8, 32)]
  print(f"SCALE-Sim {importlib.metadata.version('scalesim')} compute cycles vs the closed form "
        f"({len(picks)} layers x {len(arrays)} array shapes per dataflow):")
  worst, sim_s, ours_s, count = 0.0, 0.0, 0.0, 0
  for dataflow in accelerator.DATAFLOWS:
    errors = []
    for l in picks:
      layer = {k: int(v[0, l]) for k, v in table.items()}
      one = {k: v[:, l:l + 1] for k, v in table.items()}
      for rows, cols in arrays:
        values = dict(rows=[rows], cols=[cols], ifmap_sram_kb=[64], filter_sram_kb=[64],
                      ofmap_sram_kb=[64], dataflow=[accelerator.DATAFLOWS.index(dataflow)],
                      dram_gbps=[16.0], clock_mhz=[500.0])
        t0 = time.perf_counter()
        ours = float(cost_model.evaluate(one, values)["cycles"][0])
        t1 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
          theirs = _scalesim_cycles(layer, rows, cols, dataflow)
        t2 = time.perf_counter()
        ours_s, sim_s, count = ours_s + (t1 - t0), sim_s + (t2 - t1), count + 1
        errors.append(abs(ours - theirs) / theirs)
    worst = max(worst, max(errors))
    print(f"  {dataflow}: max relative error {max(errors):.2e}, mean {np.mean(errors):.2e}")
  print(f"  SCALE-Sim {sim_s / count * 1e3:.2f} ms per layer (compute only, no memory sim); the "
        f"closed form {ours_s / count * 1e6:.0f} us per single-layer call, i.e. "
        f"{sim_s / ours_s:,.0f}x faster unbatched")
  print(f"  per network ({layers_per_net:.0f} layers): SCALE-Sim ~{sim_s / count * layers_per_net:.2f} s "
        f"of compute simulation vs {pair_s * 1e6:.1f} us per pair batched, "
        f"~{sim_s / count * layers_per_net / pair_s:,.0f}x")
  if worst > 1e-9:
    print("  MISMATCH: the closed form disagrees with SCALE-Sim")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=100_000, help="pairs per batch")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-scalesim", action="store_true", help="skip the SCALE-Sim comparison")
  args = parser.parse_args()
  pair_s, layers_per_net = throughput(args.num, args.repeats, args.seed)
  if not args.no_scalesim:
    compare_scalesim(args.seed, pair_s, layers_per_net)


if __name__ == "__main__":
  main()

"""Analytical systolic-array cost model: latency, energy and area for batches of (network, accelerator).

Why analytical: a co-search scores 1e4-1e5 (architecture, accelerator) pairs per controller step, and a
cycle-accurate simulator (SCALE-Sim) takes milliseconds to seconds per layer. The compute cycles here are
SCALE-Sim's own closed form (the length of its demand matrices), so they agree with it exactly; DRAM
traffic is a closed form of SCALE-Sim's memory behaviour with the differences listed below; energy and
area are first-order models whose constants are named below with their sources. All of it is written by
hand: no library gives a vectorised systolic-array model.

Compute (per layer, per dataflow; SCALE-Sim, Samajdar et al. ISPASS 2020, Sec. III):
  a layer is a GEMM of (K, Nf, P) = (R*S*C, M, E*F) repeated G times; (Sr, Sc, T) =
  WS (K, Nf, P), OS (P, Nf, K), IS (K, P, Nf), and
  cycles = G * ceil(Sr/rows) * ceil(Sc/cols) * (fill*rows + cols + T - 2), fill = 2 for WS/IS (the
  stationary operand is shifted in first), 1 for OS.
  Depthwise: G = C independent GEMMs of (R*S, 1, E*F), exactly what SCALE-Sim does with a 'DP' layer
  (one single-channel layer per channel). It is deliberately pessimistic: a plain systolic array has no
  depthwise mode, so WS/OS use one column and IS one row-fold per channel; that is the real reason
  depthwise-heavy nets run poorly on TPU-like arrays, and the search should see it.
  Dense: (K, Nf, P) = (C, M, 1).
  Pooling (avg pools, global average pool): not a GEMM. It runs as a vector pass on a unit as wide as
  the array's columns (the accumulator/activation path under the array, as in TPUv1): one window element
  for `cols` channels per cycle, cycles = ceil(C/cols) * R*S*E*F.

Memory (one layer at a time, no fusion; every operand crosses DRAM at least once, as in SCALE-Sim).
  Checked against SCALE-Sim 3.0.0's memory simulation: 14 stored reference cases (tests/fixtures/scalesim,
  each operand pinned in tests/test_cost_model.py) and benchmarks/scalesim_dram.py, which compares total
  DRAM per layer over ResNet-18 and MobileNetV2 layers x 3 dataflows (its result: docs/results.md); what
  differs is what the list below explains.
  SCALE-Sim's loop order for every dataflow is column folds outer, row folds inner.
  - Input footprint: the pixels a window touches, min(H, (E-1)*stride + R, E*R) rows (likewise columns)
    times C: a 1x1 stride-2 layer reads a quarter of its input. Zero padding is not fetched.
  - Fits: an operand (or slice) fits when its per-group bytes fit the active half of its double-buffered
    SRAM (SCALE-Sim's active_buf_frac = 0.5), counted in SCALE-Sim's 1% sets (usable_bytes).
  - Stationary operands are read once (WS filters, IS ifmap, OS outputs).
  - WS/OS ifmap: re-read once per column fold (ceil(Sc/cols)) unless it fits.
  - OS filters: column fold j keeps its K x cols slice while the row folds stream past, so the filters
    are read once if that slice fits, else once per row fold.
  - IS filters: re-streamed once per column fold (of pixels) unless the whole filter fits.
  - WS/IS outputs of a folded reduction (ceil(K/rows) > 1) stay on chip when they fit; otherwise partial
    sums are written once, then read and written again per further fold (2*folds - 1).
  Known differences from SCALE-Sim, kept on purpose (the reference test states each case's ratio):
  - Partial sums: SCALE-Sim writes every fold's partial sums to DRAM even when the output fits, and never
    reads them back (its ofmap DRAM = folds x outputs); here they stay on chip, or cost 2*folds - 1.
  - im2col re-fetch: SCALE-Sim's WS streams the im2col matrix one reduction fold (one filter tap's
    channels) at a time, so an ifmap that does not fit is fetched again per tap (up to R*S times), and an
    OS fold whose window rows exceed the buffer re-fetches rows; a spatially tiled loop order would not,
    and the model counts the footprint once per column fold.
  - Padding: SCALE-Sim has none, so it is given the padded input; the model does not fetch the zeros.
  - SCALE-Sim's read buffer forgets everything each time half of it is fetched anew, so a slice that
    fits is partly fetched again (11-13% more on the reference cases, up to 56% more in the
    benchmark); the model reads it once.
  Layer time is a roofline: max(cycles / clock, DRAM bytes / bandwidth), assuming double buffering
  overlaps transfer with compute; network latency is the sum over layers (batch 1).

Energy: MACs * MAC_PJ + SRAM bytes * sram_pj_per_byte(size) + DRAM bytes * DRAM_PJ_PER_BYTE, with SRAM
  bytes the array's reads/writes per dataflow (SCALE-Sim's ifmap_reads/filter_reads/ofmap_writes) plus the
  DRAM fills; a pool's additions count as MACs. No leakage term, so an idle oversized array costs energy
  only through the SRAM size it implies.
Area: PEs * PE_AREA_MM2 + SRAM KiB * SRAM_MM2_PER_KB (no control, NoC or PHY; `oneshot.hardware.area`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from oneshot.errors import UserError
from oneshot.hardware import workload
from oneshot.hardware.area import area_mm2  # re-exported: the model's area is the space's area rule
from oneshot.spaces import accelerator

if TYPE_CHECKING:
  from oneshot.spaces.core import Space

# --- constants (45 nm, 0.9 V, int8 operands with 32-bit accumulation) ------------------------------
BYTES_PER_WORD = 1  # int8 activations and weights, as SCALE-Sim's word_size = 1.
SRAM_USABLE_FRACTION = 0.5  # double-buffered scratchpads (SCALE-Sim active_buf_frac).
# Horowitz, "Computing's energy problem", ISSCC 2014, Fig. 1.1.9: 8b mult 0.2 pJ, 32b add 0.1 pJ.
MAC_PJ = 0.2 + 0.1
# Same table, 64-bit cache access: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ -> 1.25 pJ/B at 8 KB, growing
# ~sqrt(size) (fits 32 KB exactly and 1 MB within 13%).
SRAM_PJ_PER_BYTE_8KB = 10.0 / 8
# Same table, DRAM 1.3-2.6 nJ per 64-bit access; the midpoint per byte.
DRAM_PJ_PER_BYTE = 1950.0 / 8

WS, OS, IS = 0, 1, 2  # dataflow codes, the order of spaces.accelerator.DATAFLOWS
CONV, DEPTHWISE, DENSE, POOL = 0, 1, 2, 3  # layer kinds, as oneshot.hardware.workload
ACCEL_FIELDS = ("rows", "cols", "ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb", "dataflow",
                "dram_gbps", "clock_mhz")
_CHUNK_ELEMENTS = 1 << 16  # rows * layers per chunk: keeps temporaries in cache (benchmarks/cost_model.py)


def sram_pj_per_byte(size_kb: ArrayLike) -> np.ndarray:
  """Access energy per byte of an SRAM of `size_kb`, scaled from Horowitz's 8 KB point by sqrt(size)."""
  return SRAM_PJ_PER_BYTE_8KB * np.sqrt(np.asarray(size_kb, np.float64) / 8.0)


def usable_bytes(size_kb: ArrayLike) -> np.ndarray:
  """Bytes of a double-buffered SRAM that hold a resident tile: the active half, counted as SCALE-Sim
  counts it (100 sets of floor(words / 100), 50 of them active), so that a tile of exactly half a
  power-of-two SRAM, common with power-of-two layers, is judged as SCALE-Sim judges it (re-fetched)."""
  words = np.floor(np.asarray(size_kb, np.float64) * 1024.0 / BYTES_PER_WORD / 100.0)
  return words * (100.0 * SRAM_USABLE_FRACTION) * BYTES_PER_WORD


def evaluate(layer_table: Mapping[str, np.ndarray], accel_values: Mapping[str, Any],
             per_layer: bool = False) -> dict[str, np.ndarray]:
  """Latency (ms), energy (mJ), area (mm^2), compute cycles, DRAM bytes and MACs per pair.

  `layer_table` fields are [..., L] (see oneshot.hardware.workload); each accelerator value is an array
  broadcastable against the leading dims ([N] against [N, L] pairs them; [1, M] against [N, 1, L] is the
  full grid). `dataflow` is an int code (0 ws, 1 os, 2 is) or its name. With `per_layer`, also
  `layer_cycles`, `layer_latency_ms` and the DRAM bytes per operand, `layer_dram_ifmap`,
  `layer_dram_filter`, `layer_dram_ofmap` [..., L] (what the SCALE-Sim comparison checks term by term).
  A table without `stride` is read as stride 1.
  """
  missing = [f for f in ("kind", "R", "S", "C", "M", "H", "W", "E", "F", "valid")
             if f not in layer_table]
  if missing:
    raise UserError(f"layer table lacks fields {missing}; build it with "
                    "oneshot.hardware.workload.layer_table")
  accel = _accel_arrays(accel_values)
  lead = np.broadcast_shapes(np.shape(layer_table["kind"])[:-1], *(a.shape for a in accel.values()))
  num_layers = np.shape(layer_table["kind"])[-1]
  if len(lead) == 1 and lead[0] * num_layers > 2 * _CHUNK_ELEMENTS:
    return _chunked(layer_table, accel, lead[0], num_layers, per_layer)
  return _evaluate(layer_table, accel, per_layer)


def _chunked(table, accel, n, num_layers, per_layer):
  """Row chunks of a 1-D batch, so [chunk, L] temporaries stay in cache instead of streaming RAM."""
  step = max(1, _CHUNK_ELEMENTS // num_layers)
  parts = []
  for start in range(0, n, step):
    sl = slice(start, min(n, start + step))
    sub_t = {k: (v[sl] if np.shape(v)[0] == n else v) for k, v in table.items()}
    sub_a = {k: (v[sl] if v.shape and v.shape[0] == n else v) for k, v in accel.items()}
    parts.append(_evaluate(sub_t, sub_a, per_layer))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _evaluate(table, accel, per_layer):
  f64 = lambda k: np.asarray(table[k], np.float64)  # noqa: E731
  kind = np.asarray(table["kind"])
  valid = np.asarray(table["valid"], bool)
  r, s, c, m, h, w, e, f = (f64(k) for k in ("R", "S", "C", "M", "H", "W", "E", "F"))
  dw = kind == DEPTHWISE
  pool = kind == POOL
  grouped = dw | pool
  # The layer as G GEMMs of (K, Nf, P); see the module docstring for the mapping of each kind.
  groups = np.where(grouped, c, 1.0)
  k_dim = np.where(grouped, r * s, r * s * c)
  n_dim = np.where(grouped, 1.0, m)
  p_dim = e * f
  word = float(BYTES_PER_WORD)
  # The input pixels a window actually touches: all of them unless the stride skips some (a 1x1
  # stride-2 layer reads every other row and column, a quarter of the input).
  stride = f64("stride") if "stride" in table else np.ones_like(r)
  used_h = np.minimum(h, np.minimum((e - 1.0) * stride + r, e * r))
  used_w = np.minimum(w, np.minimum((f - 1.0) * stride + s, f * s))
  ifmap_b = used_h * used_w * c * word / groups  # per group
  filter_b = np.where(pool, 0.0, k_dim * n_dim * word)
  ofmap_b = p_dim * n_dim * word

  rows, cols = accel["rows"][..., None], accel["cols"][..., None]
  df = accel["dataflow"][..., None]
  sr = np.where(df == OS, p_dim, k_dim)
  sc = np.where(df == IS, p_dim, n_dim)
  t = np.where(df == WS, p_dim, np.where(df == OS, k_dim, n_dim))
  row_folds = np.ceil(sr / rows)
  col_folds = np.ceil(sc / cols)
  fill = np.where(df == OS, 1.0, 2.0)
  cycles = groups * row_folds * col_folds * (fill * rows + cols + t - 2)
  cycles = np.where(pool, np.ceil(c / cols) * r * s * p_dim, cycles)
  cycles = np.where(valid, cycles, 0.0)

  usable_i, usable_f, usable_o = (usable_bytes(accel[k])[..., None]
                                  for k in ("ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb"))
  fits_i = ifmap_b <= usable_i
  fits_f = filter_b <= usable_f
  fits_o = ofmap_b <= usable_o
  # OS keeps one column fold's filter slice (K x cols) while the row folds stream past it.
  fits_slice = k_dim * np.minimum(n_dim, cols) * word <= usable_f
  streamed = ~pool
  ifmap_x = np.where(fits_i | (df == IS) | ~streamed, 1.0, col_folds)
  filter_x = np.where((df == WS) | ((df == OS) & fits_slice) | ((df == IS) & fits_f), 1.0,
                      np.where(df == OS, row_folds, col_folds))
  spill = 2.0 * row_folds - 1.0
  ofmap_x = np.where(fits_o | (df == OS) | ~streamed, 1.0, spill)
  dram_i = groups * ifmap_b * ifmap_x
  dram_f = groups * filter_b * filter_x
  dram_o = groups * ofmap_b * ofmap_x
  dram = np.where(valid, dram_i + dram_f + dram_o, 0.0)

  # On-chip traffic: what the array reads/writes per dataflow, plus the DRAM fills.
  kp = k_dim * p_dim
  sram_i = groups * np.where(df == IS, kp, kp * col_folds)
  sram_f = groups * k_dim * n_dim * np.where(df == WS, 1.0, np.where(df == OS, row_folds, col_folds))
  sram_o = groups * p_dim * n_dim * np.where(df == OS, 1.0, row_folds)
  sram_i = np.where(pool, r * s * p_dim * c, sram_i) * word + dram_i
  sram_f = np.where(pool, 0.0, sram_f) * word + dram_f
  sram_o = np.where(pool, p_dim * c, sram_o) * word + dram_o
  macs = np.where(valid, groups * k_dim * n_dim * p_dim, 0.0)

  seconds = np.maximum(cycles / (accel["clock_mhz"][..., None] * 1e6),
                       dram / (accel["dram_gbps"][..., None] * 1e9))
  sram_pj = (sram_i * sram_pj_per_byte(accel["ifmap_sram_kb"])[..., None]
             + sram_f * sram_pj_per_byte(accel["filter_sram_kb"])[..., None]
             + sram_o * sram_pj_per_byte(accel["ofmap_sram_kb"])[..., None])
  energy_pj = macs * MAC_PJ + np.where(valid, sram_pj, 0.0) + dram * DRAM_PJ_PER_BYTE
  out = dict(latency_ms=seconds.sum(-1) * 1e3, energy_mj=energy_pj.sum(-1) * 1e-9,
             area_mm2=np.broadcast_to(area_mm2(accel["rows"], accel["cols"], accel["ifmap_sram_kb"],
                                               accel["filter_sram_kb"], accel["ofmap_sram_kb"]),
                                      cycles.shape[:-1]),
             cycles=cycles.sum(-1), dram_bytes=dram.sum(-1), macs=np.broadcast_to(
                 macs.sum(-1), cycles.shape[:-1]))
  if per_layer:
    out["layer_cycles"] = cycles
    out["layer_latency_ms"] = seconds * 1e3
    out["layer_dram_ifmap"] = np.where(valid, dram_i, 0.0)
    out["layer_dram_filter"] = np.where(valid, dram_f, 0.0)
    out["layer_dram_ofmap"] = np.where(valid, dram_o, 0.0)
  return out


def _accel_arrays(values: Mapping[str, Any]) -> dict[str, np.ndarray]:
  missing = [k for k in ACCEL_FIELDS if k not in values]
  if missing:
    raise UserError(f"accelerator values lack {missing}; get them with "
                    "spaces.accelerator.arrays(space, dnas)")
  out = {}
  for k in ACCEL_FIELDS:
    v = np.asarray(values[k])
    if k == "dataflow":
      if v.dtype.kind in "US":
        names = ("ws", "os", "is")
        uniq, inverse = np.unique(v, return_inverse=True)
        bad = [str(x) for x in uniq if x not in names]
        if bad:
          raise UserError(f"unknown dataflow {bad[0]!r}; use one of {list(names)}")
        v = np.array([names.index(x) for x in uniq])[inverse].reshape(v.shape)
      elif v.size and (v.min() < 0 or v.max() > 2):
        raise UserError("dataflow codes are 0 (ws), 1 (os) and 2 (is); got "
                        f"{sorted(set(np.unique(v).tolist()))}")
      out[k] = v.astype(np.int32)
    else:
      v = v.astype(np.float64)
      if v.size and v.min() <= 0:
        raise UserError(f"accelerator {k} must be positive; got min {v.min()}")
      out[k] = v
  return out


def cost(space: Space, dnas: np.ndarray, accel_space: Space, accel_dnas: np.ndarray,
         image_shape: Sequence[int] = (224, 224, 3), num_classes: int = 1000,
         per_layer: bool = False) -> dict[str, np.ndarray]:
  """Costs of architecture DNAs [N, D] paired with accelerator DNAs [N, D'] (either N may be 1)."""
  table = workload.layer_table(space, dnas, image_shape, num_classes)
  return evaluate(table, accelerator.arrays(accel_space, accel_dnas), per_layer)


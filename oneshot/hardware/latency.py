"""The 'table' cost model: latency looked up in a measured lut.json, and the cost function every
hardware-aware use calls (the latency target, co-search, the band table) whichever the model.

Why a table, and how one is measured: `oneshot latency-table` (oneshot/hardware/latency_table.py). An
architecture's latency is the stem's entry, plus the entries of its kept blocks (a skipped block is the
identity and costs 0), plus the head's entry, in milliseconds per batch of the table's batch size.

Config (the `hardware` section, oneshot/hardware/schema.py):
  cost_model: 'analytical' (default; oneshot.hardware.cost_model) or 'table';
  table:      path of a lut.json written by `oneshot latency-table` (cost_model 'table' only).
With 'table', latency comes from the table and does not depend on the accelerator (the device is
fixed); energy and area stay analytical, so reward targets for latency must be in table units.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from oneshot.errors import UserError
from oneshot.hardware import cost_model, workload
from oneshot.hardware.schema import SettingError
from oneshot.spaces import accelerator
from oneshot.spaces.mobilenet import stage_channels

FORMAT = "oneshot-latency-table/1"
KINDS = ("analytical", "table")


# --- looking up --------------------------------------------------------------------------------------
class LatencyTable:
  """Latency of mobilenet DNAs from a lut.json: stem + sum of kept blocks + head, vectorised.

  Per block the entries become a dense [width-in choice, width-out choice, kernel, expansion] array, so a
  batch of N DNAs costs one fancy index per block. Every reachable entry must be present (checked here,
  once), so a table for another space fails at load with the fix, not in the middle of a search.
  """

  def __init__(self, lut: Mapping[str, Any], space, source: str = "the table"):
    if space.name != "mobilenet":
      raise SettingError("cost_model", f"a latency table prices mobilenet architectures, not "
                                       f"{space.name!r}; set {{flag}} to analytical")
    entries = lut.get("entries") if isinstance(lut, Mapping) else None
    if not isinstance(entries, list):
      raise UserError(f"{source} has no 'entries' list; regenerate it with `oneshot latency-table "
                      "--config C --out lut.json`")
    self.batch_size = int(lut.get("batch_size", 0))
    self.device_kind = str(lut.get("device_kind", "unknown"))
    self.space = space
    sk = space.skeleton
    index = {}
    try:
      for e in entries:
        part = e["part"]
        key = (("block", int(e["block"]), int(e["kernel"]), int(e["expansion"]), int(e["width_in"]),
                int(e["width_out"])) if part == "block" else
               (part, int(e["width_out"] if part == "stem" else e["width_in"])))
        index[key] = float(e["ms"])
    except (KeyError, TypeError, ValueError) as err:
      raise UserError(f"{source} has a malformed entry ({type(err).__name__}: {err}); regenerate it "
                      "with `oneshot latency-table`") from None
    hint = "regenerate it with `oneshot latency-table --config <this config> --out lut.json`"

    def get(key, what):
      if key not in index:
        raise UserError(f"{source} has no entry for {what}; it was made for another space or "
                        f"dataset: {hint}")
      return index[key]

    self.stem_ms = get(("stem", int(sk["stem_filters"])), "the stem")
    names = space.names
    mults = tuple(sk["width_multipliers"])
    self.blocks = []  # (cin decision index or None, cout decision index, k index, e index, skip, ms)
    prev_col, prev_widths = None, (int(sk["stem_filters"]),)
    for i, blk in enumerate(sk["blocks"]):
      col = names.index(f"stage{blk['stage']}/width")
      widths = tuple(stage_channels(blk["filters"], w) for w in mults)
      kernels, ratios = tuple(sk["kernel_sizes"]), tuple(sk["expansion_ratios"])
      ms = np.zeros((len(prev_widths), len(widths), len(kernels), len(ratios)))
      for a, cin in enumerate(prev_widths):
        for b, cout in enumerate(widths):
          if prev_col == col and a != b:
            continue  # same stage: width-in is width-out
          for c, k in enumerate(kernels):
            for d, e in enumerate(ratios):
              ms[a, b, c, d] = get(("block", i, int(k), int(e), cin, cout),
                                   f"block {i} kernel {k} expansion {e} width {cin}->{cout}")
      skip = names.index(f"block{i}/skip") if f"block{i}/skip" in names else None
      self.blocks.append((prev_col, col, names.index(f"block{i}/kernel"),
                          names.index(f"block{i}/expansion"), skip, ms))
      prev_col, prev_widths = col, widths
    self.head_col = prev_col
    self.head_ms = np.array([get(("head", c), f"the head at width {c}") for c in prev_widths])

  def latency_ms(self, dnas: np.ndarray) -> np.ndarray:
    """[N] milliseconds per batch of `batch_size` for DNAs [N, D]."""
    dnas = np.asarray(dnas)
    dnas = dnas[None] if dnas.ndim == 1 else dnas
    if dnas.ndim != 2 or dnas.shape[1] != self.space.num_decisions:
      raise UserError(f"DNAs must be [N, {self.space.num_decisions}]; got shape {dnas.shape}")
    total = np.full(len(dnas), self.stem_ms)
    for cin_col, cout_col, k_col, e_col, skip_col, ms in self.blocks:
      cin = np.zeros(len(dnas), np.int64) if cin_col is None else dnas[:, cin_col]
      block = ms[cin, dnas[:, cout_col], dnas[:, k_col], dnas[:, e_col]]
      total += block if skip_col is None else np.where(dnas[:, skip_col] == 1, 0.0, block)
    head = self.head_ms[0] if self.head_col is None else self.head_ms[dnas[:, self.head_col]]
    return total + head


def load(path: str, space) -> LatencyTable:
  if not path:
    raise SettingError("table", "cost model 'table' needs a table; set {flag} to a lut.json from "
                                "`oneshot latency-table --config C --out lut.json`")
  try:
    with open(path) as f:
      lut = json.load(f)
  except OSError as e:
    raise SettingError("table", f"cannot read latency table {path}: {e.strerror}; make one with "
                                f"`oneshot latency-table --config C --out {path}` or set {{flag}} to "
                                "another file") from None
  except json.JSONDecodeError as e:
    raise UserError(f"latency table {path} is not valid JSON ({e.msg} at line {e.lineno}); "
                    "regenerate it with `oneshot latency-table`") from None
  return LatencyTable(lut, space, source=path)


# --- the cost model a co-search calls ----------------------------------------------------------------
CostFn = Callable[[np.ndarray, np.ndarray], dict]


def check(kind: str) -> None:
  """A known cost model (`hardware.cost_model`), or a SettingError."""
  if kind not in KINDS:
    raise SettingError("cost_model", f"unknown cost model {kind!r}; set {{flag}} to one of "
                                     f"{list(KINDS)}")


def cost_function(kind: str, table_path: str, space, accel_space,
                  image_shape: Sequence[int], num_classes: int) -> CostFn:
  """(arch DNAs [N, D], accelerator DNAs [N or 1, D']) -> costs with cost model `kind`, 'analytical'
  or 'table' (then `table_path`'s lut.json gives latency; see the module docstring).

  The returned dict always has latency_ms, energy_mj and area_mm2 [N], whichever the kind, so rewards
  and co-search code never ask which one is in use.
  """
  check(kind)
  table = load(table_path, space) if kind == "table" else None
  image_shape, num_classes = tuple(int(v) for v in image_shape), int(num_classes)

  def costs(dnas: np.ndarray, accel_dnas: np.ndarray) -> dict:
    dnas = np.asarray(dnas, np.int32)
    dnas = dnas[None] if dnas.ndim == 1 else dnas
    out = cost_model.evaluate(workload.layer_table(space, dnas, image_shape, num_classes),
                              accelerator.arrays(accel_space, accel_dnas))
    out = {k: np.broadcast_to(v, (len(dnas),)) for k, v in out.items()}
    if table is not None:
      out["latency_ms"] = table.latency_ms(dnas)
    return out

  return costs

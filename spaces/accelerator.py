"""A systolic-array accelerator as a search space, so hardware is co-searched with the same controllers.

The decisions are SCALE-Sim's knobs (array shape, the three operand SRAMs, dataflow) plus the DRAM
bandwidth and clock that turn cycles into time. An area budget, when set, is a `constraint` of the space,
so every controller samples, mutates and validates only buildable accelerators without knowing why.
`arrays` turns a batch of DNAs into one numpy array per decision, the form the vectorised cost model reads.

Its settings are the `hardware.accelerator` section of a config (oneshot/hardware/schema.py): a wrong one
raises `SettingError` naming the key, and the config's reader names the flag.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from oneshot.hardware.area import area_mm2
from oneshot.hardware.schema import SettingError
from oneshot.spaces.core import Decision, Space

# The order here is the integer code the cost model uses for `dataflow` (0 ws, 1 os, 2 is).
DATAFLOWS = ("ws", "os", "is")

# The space a library caller gets for a decision it leaves out (a config's section always has every
# field: the schema's defaults fill it). Spans an edge NPU (8x8, 32 KiB buffers, LPDDR) up to a
# TPUv1-like 256x256 array.
DEFAULTS: dict[str, tuple[Any, ...]] = {
    "rows": (8, 16, 32, 64, 128, 256),
    "cols": (8, 16, 32, 64, 128, 256),
    "ifmap_sram_kb": (32, 64, 128, 256, 512),
    "filter_sram_kb": (32, 64, 128, 256, 512),
    "ofmap_sram_kb": (16, 32, 64, 128, 256),
    "dataflow": DATAFLOWS,
    # GB/s, i.e. 1e9 *bytes* per second (LPDDR4x x32 is ~17, HBM2 stack ~256).
    "dram_gbps": (8.0, 16.0, 32.0, 64.0),
    "clock_mhz": (200.0, 500.0, 800.0, 1000.0),
}
NAMES = tuple(DEFAULTS)


def build(config: Mapping[str, Any]) -> Space:
  """The accelerator space; each choice list is `config[name]` (a single value is one choice) or its
  DEFAULTS entry."""
  unknown = sorted(set(config.keys()) - set(NAMES) - {"area_budget_mm2", "name"})
  if unknown:
    raise SettingError("accelerator", f"{{flag}} has unknown field {unknown[0]!r}; use "
                                      f"{', '.join(NAMES)} or area_budget_mm2")
  decisions = []
  for name in NAMES:
    key = f"accelerator.{name}"
    choices = config.get(name)
    if choices is None:
      choices = DEFAULTS[name]
    choices = tuple(choices) if isinstance(choices, (list, tuple)) else (choices,)
    if not choices:
      raise SettingError(key, f"accelerator decision {name!r} has no choices; give {{flag}} a value "
                              "or a non-empty tuple of choices")
    if name == "dataflow":
      bad = [c for c in choices if c not in DATAFLOWS]
      if bad:
        raise SettingError(key, f"unknown dataflow {bad[0]!r} in {{flag}}; use any of "
                                f"{list(DATAFLOWS)}")
    else:
      try:
        numbers = [float(c) for c in choices]
      except (TypeError, ValueError):
        raise SettingError(key, f"{{flag}} must be a number or a list of numbers; got "
                                f"{list(choices)!r}") from None
      if min(numbers) <= 0:
        raise SettingError(key, f"{{flag}} must be positive; got {list(choices)!r}")
    decisions.append(Decision(name, choices))
  budget = config.get("area_budget_mm2")
  budget = None if budget in (None, 0) else float(budget)
  if budget is not None and budget < 0:
    raise SettingError("accelerator.area_budget_mm2", "{flag} must be positive (or 0 for no budget); "
                                                      f"got {budget:g}")
  skeleton = dict(area_budget_mm2=budget)
  return Space("accelerator", tuple(decisions), skeleton,
               constraint=None if budget is None else _area_constraint(budget))


def _area_constraint(budget: float):
  """A reason string when the point's area exceeds `budget`, via the cost model's own area formula."""

  def check(values: Mapping[str, Any]) -> str | None:
    area = float(area_mm2(values["rows"], values["cols"], values["ifmap_sram_kb"],
                                     values["filter_sram_kb"], values["ofmap_sram_kb"]))
    if area > budget:
      return (f"area {area:.1f} mm^2 exceeds the budget {budget:g} mm^2; lower rows/cols or SRAM, "
              "or raise the budget (accelerator.area_budget_mm2)")
    return None

  return check


def arrays(space: Space, dnas: np.ndarray) -> dict[str, np.ndarray]:
  """Per-decision value arrays [N] for DNAs [N, D]; dataflow becomes its index in DATAFLOWS.

  Lookup tables per decision keep this one fancy-index per decision, so a whole batch of accelerators
  costs a few vectorised numpy operations, not a Python loop.
  """
  dnas = space.validate_batch(dnas)
  out = {}
  for j, d in enumerate(space.decisions):
    if d.name == "dataflow":
      table = np.array([DATAFLOWS.index(c) for c in d.choices], np.int32)
    else:
      table = np.array(d.choices, np.float64)
    out[d.name] = table[dnas[:, j]]
  return out


def feasible(space: Space, dnas: np.ndarray) -> np.ndarray:
  """[N] bool: which DNAs satisfy the area budget, vectorised (Space.is_valid is one at a time)."""
  values = arrays(space, dnas)
  budget = space.skeleton.get("area_budget_mm2")
  if budget is None:
    return np.ones(len(values["rows"]), bool)
  area = area_mm2(values["rows"], values["cols"], values["ifmap_sram_kb"],
                             values["filter_sram_kb"], values["ofmap_sram_kb"])
  return area <= budget


def sample(space: Space, rng: np.random.Generator, num: int) -> np.ndarray:
  """[num, D] feasible DNAs by vectorised rejection (Space.sample loops in Python per point)."""
  out = np.zeros((0, space.num_decisions), np.int32)
  for _ in range(100):
    batch = np.stack([rng.integers(k, size=2 * num) for k in space.num_choices], 1).astype(np.int32)
    out = np.concatenate([out, batch[feasible(space, batch)]])
    if len(out) >= num:
      return out[:num]
  raise SettingError("accelerator.area_budget_mm2",
                     f"space {space.name!r}: fewer than {num} feasible accelerators in {200 * num} "
                     "samples; raise {flag}")

"""The `hardware` config section: its keys, their defaults, and the error its checks raise.

Why one section: a latency-targeted search (`oneshot search` with `target_latency_ms` set) and a
co-search (`oneshot cosearch`) price architectures with the same cost models and fold the same costs
into the same rewards, so they read the same keys with the same defaults. They differ in the device: the
latency target times one device (`accelerator`), the co-search searches a device space
(`accelerator_choices`, the fields it varies; the others keep `accelerator`'s value).

Keys (`DEFAULTS` is the only place their defaults are written; configs/common.py starts from it):
  target_latency_ms, target_energy_mj, target_area_mm2: the targets T0 the rewards divide costs by, in
    the cost model's units (the analytical model's latency: ms per image); None or 0: unset. A set
    `target_latency_ms` turns `oneshot search` into a latency-targeted search.
  reward: tunas (Q + beta*|T/T0 - 1|) | mnas (Q*(T/T0)^w), for either command; nahas
    (Q - sum_i lambda_i*max(0, c_i/c0_i - 1)) | accuracy (Q), for the co-search.
  metric: the cost T that tunas and mnas fold in: latency | energy | area.
  beta (tunas), w (mnas), latency_weight, energy_weight, area_weight (nahas's lambdas).
  cost_model: analytical (oneshot/hardware/cost_model.py, on `accelerator`) | table (latency from a
    `oneshot latency-table` file, `table`).
  accelerator: the device, one value per field: rows, cols, ifmap_sram_kb, filter_sram_kb,
    ofmap_sram_kb, dataflow, dram_gbps, clock_mhz (spaces/accelerator.py); a field left out keeps
    DEVICE's value.
  accelerator_choices: the co-search's device space, a tuple of choices per field it varies (same
    names); empty by default. Two keys, not one field that is a number or a tuple: a config key has
    one type in every config (ml_collections' overrides and workdir.py's check of config.json).
  area_budget_mm2: the co-search's hard area budget (0: none): accelerators over it are never built.

Errors: a check of one of these values, wherever it lives, raises `SettingError(key, message)` with
`{flag}` where the message names the setting; `oneshot.hardware.settings`, the section's one reader,
fills in the flag (`--config.hardware.<key>`), so no other module spells it. Read directly (a library
call with plain values), the message names the key alone.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from oneshot.errors import UserError

# The device the analytical model times unless the config names another: a small edge array.
DEVICE = dict(rows=16, cols=16, ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=32, dataflow="ws",
              dram_gbps=16.0, clock_mhz=500.0)
TARGETS = ("target_latency_ms", "target_energy_mj", "target_area_mm2")
DEFAULTS: dict[str, Any] = {
    "target_latency_ms": None,
    "target_energy_mj": None,
    "target_area_mm2": None,
    "reward": "tunas",
    "metric": "latency",
    # TuNAS used -0.07..-0.1 (its `rl_cost_model_exponent`) with ~100x more controller steps than a
    # search here takes; fewer steps need a stronger pull towards the target.
    "beta": -0.5,
    "w": -0.07,             # MnasNet (Tan et al., CVPR 2019, Sec. 3): alpha = beta = -0.07
    "latency_weight": 1.0,  # nahas: 1.0 makes 100% over a target cost one unit of accuracy
    "energy_weight": 1.0,
    "area_weight": 1.0,
    "cost_model": "analytical",
    "table": "",
    "accelerator": dict(DEVICE),
    "accelerator_choices": {},
    "area_budget_mm2": 0.0,
}

# The co-search's earlier schema (top-level accelerator, reward and cost_model sections): old dotted
# key -> its key now. A section's other keys keep their names under `hardware`.
RENAMED = {
    "accelerator": "hardware.accelerator_choices",
    "accelerator.area_budget_mm2": "hardware.area_budget_mm2",
    "reward.kind": "hardware.reward",
    "reward.latency_target_ms": "hardware.target_latency_ms",
    "reward.energy_target_mj": "hardware.target_energy_mj",
    "reward.area_target_mm2": "hardware.target_area_mm2",
    "cost_model.kind": "hardware.cost_model",
    "cost_model.table": "hardware.table",
    "hardware.kind": "hardware.reward",
    "hardware.latency_target_ms": "hardware.target_latency_ms",
    "hardware.energy_target_mj": "hardware.target_energy_mj",
    "hardware.area_target_mm2": "hardware.target_area_mm2",
}
OLD_SECTIONS = ("accelerator", "reward", "cost_model")


class SettingError(UserError):
  """A wrong value of one `hardware` setting. `key` is its dotted name inside the section; the message
  says `{flag}` where it names the setting, so the reader that knows how the user spelled it (a
  command-line flag) can say so, and everyone else still gets a message naming the key."""

  def __init__(self, key: str, message: str):
    self.key, self.template = key, message
    super().__init__(self.naming(key))

  def naming(self, name: str) -> str:
    """The message with the setting called `name`."""
    return self.template.replace("{flag}", name)


def defaults() -> ml_collections.ConfigDict:
  """`DEFAULTS` as the config section every config starts from; the targets are typed None (float
  placeholders), so `--config.hardware.target_latency_ms=0.05` parses as a number."""
  section = ml_collections.ConfigDict()
  for key, value in copy.deepcopy(DEFAULTS).items():
    if key in TARGETS:
      section[key] = placeholder(float)
    elif key in ("accelerator", "accelerator_choices"):
      section[key] = ml_collections.ConfigDict(value)
    else:
      section[key] = value
  return section


def renames(config: Any) -> list[tuple[str, str]]:
  """(old, new) dotted keys for each key of the earlier schema in `config` (a mapping of sections)."""
  out = []
  for section in OLD_SECTIONS + ("hardware",):
    value = config.get(section) if hasattr(config, "get") else None
    if value is None:
      continue
    keys = list(value.keys()) if hasattr(value, "keys") else []
    if section == "accelerator":
      out.append(("accelerator.<decision>", RENAMED["accelerator"] + ".<decision>"))
      if "area_budget_mm2" in keys:
        out.append(("accelerator.area_budget_mm2", RENAMED["accelerator.area_budget_mm2"]))
      continue
    for key in keys:
      old = f"{section}.{key}"
      if old in RENAMED:
        out.append((old, RENAMED[old]))
      elif section != "hardware":
        out.append((old, f"hardware.{key}"))
    if section != "hardware" and not keys:
      out.append((section, "hardware"))
  return out

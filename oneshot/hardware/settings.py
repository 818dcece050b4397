"""The one reader of a config's `hardware` section (oneshot/hardware/schema.py), for every command.

`read` checks the section once, turns each check's `SettingError` into the line that names the flag
to set (`--config.hardware.<key>`: the only place that spelling is written), and returns a `Hardware`
that the latency target and the co-search both take: the reward with its constants, the device and
the device space, the cost model. The checks themselves live beside the values they guard (rewards.py,
latency.py, spaces/accelerator.py); this module adds only the rules of each use:
  - a latency-targeted search (`use="search"` with `target_latency_ms` set) times the device
    (`accelerator`) with reward tunas or mnas on latency;
  - a co-search (`use="cosearch"`) searches the device space (`accelerator_choices`), with the targets
    its reward needs.
The config loader calls `read(config)` with no use, so a wrong value fails before any command starts;
each command reads the section again for its own use (the Python API hands configs in directly).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

from oneshot.errors import UserError
from oneshot.hardware import latency, rewards
from oneshot.hardware.schema import DEFAULTS, RENAMED, SettingError, renames
from oneshot.spaces import accelerator
from oneshot.spaces.core import Space

USES = (None, "search", "cosearch")
# The rewards a latency target can use: gradient-based controllers need its expected-latency penalty,
# which has a form for these two (target.LatencyTarget.expected_penalty).
TARGET_REWARDS = ("tunas", "mnas")
_SECTIONS = ("accelerator", "accelerator_choices")  # the keys that hold a ConfigDict


def flag(key: str) -> str:
  """The command-line flag of the section's `key` (dotted inside the section)."""
  return f"--config.hardware.{key}"


@contextlib.contextmanager
def flags_named() -> Iterator[None]:
  """Re-raises a `SettingError` from inside as a UserError naming the setting's flag."""
  try:
    yield
  except SettingError as e:
    raise UserError(e.naming(flag(e.key))) from None


@dataclasses.dataclass(frozen=True)
class Hardware:
  """A checked `hardware` section: `values` has every key (defaults filled in), `reward` its reward,
  `device` the one accelerator a latency target times (a space of one point), `accelerators` the
  co-search's device space (the device where `accelerator_choices` is empty)."""
  values: Mapping[str, Any]
  reward: rewards.Reward
  device: Space
  accelerators: Space

  @property
  def target_latency_ms(self) -> float | None:
    """The latency target T0, or None: a search with none is accuracy-only."""
    return self.reward.targets.get("latency")

  @property
  def cost_model(self) -> str:
    return self.values["cost_model"]

  def cost_function(self, space: Space, accel_space: Space, image_shape: Sequence[int],
                    num_classes: int) -> latency.CostFn:
    """(arch DNAs, DNAs of `accel_space`, `device` or `accelerators`) -> costs with this section's
    cost model (a table file is read here, as it needs the architecture space)."""
    with flags_named():
      return latency.cost_function(self.cost_model, self.values["table"], space, accel_space,
                                         image_shape, num_classes)


def read(config: Any, use: str | None = None) -> Hardware:
  """The config's `hardware` section, checked for `use` (None: every value on its own; "search": also
  a latency target's rules when its target is set; "cosearch": also the co-search's). A config without
  the section gets the defaults; one in the co-search's earlier schema gets one line saying what to
  rename."""
  if use not in USES:
    raise ValueError(f"use must be one of {USES}; got {use!r}")
  old = renames(config)
  if old:
    moved = ", ".join(f"{a} -> {b}" for a, b in old)
    raise UserError(f"the config uses the earlier hardware schema; rename {moved} (one `hardware` "
                    "section for latency targets and co-search, see docs/cosearch.md)")
  section = config.get("hardware") if hasattr(config, "get") else None
  with flags_named():
    return _read(_values(section), use)


def _values(section: Any) -> dict[str, Any]:
  """Every key of the section as plain Python values, defaults for those left out."""
  values = copy.deepcopy(DEFAULTS)
  if section is None:
    return values
  if not hasattr(section, "keys"):
    raise UserError(f"config.hardware must be a ConfigDict of {', '.join(DEFAULTS)}; got "
                    f"{type(section).__name__}")
  section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  for key, value in section.items():
    if key not in DEFAULTS:
      renamed = RENAMED.get(f"hardware.{key}")
      hint = f"rename it to {renamed}" if renamed else f"use {', '.join(DEFAULTS)}"
      raise SettingError(key, f"the hardware section has no setting {key!r} ({{flag}}); {hint}")
    if key in _SECTIONS:
      if not hasattr(value, "keys"):
        raise SettingError(key, f"{{flag}} must be a ConfigDict of {', '.join(accelerator.NAMES)}; got "
                                f"{type(value).__name__}")
      values[key].update(value)
    else:
      values[key] = value
  return values


def _read(values: dict[str, Any], use: str | None) -> Hardware:
  latency.check(values["cost_model"])
  device = accelerator.build(values["accelerator"])  # keys accelerator.<name>, as the section's
  accelerators = _device_space(values)
  targeted = use == "search" and values["target_latency_ms"] not in (None, 0)
  if targeted:
    if values["reward"] not in TARGET_REWARDS:
      allowed = " or ".join(TARGET_REWARDS)
      raise SettingError("reward", f"a latency-targeted search uses reward {allowed}; got "
                                   f"{values['reward']!r}; set {{flag}} to {allowed} (the others are "
                                   "for `oneshot cosearch`)")
    if values["metric"] != "latency":
      raise SettingError("metric", f"a latency-targeted search folds in latency; got "
                                   f"{values['metric']!r}; set {{flag}} to latency")
  if use == "cosearch" and not values["accelerator_choices"]:
    raise SettingError("accelerator_choices", "a co-search searches accelerators, but {flag} is empty; "
                                              "give it a tuple of choices per field to vary, as "
                                              "configs/digits_cosearch.py does")
  constants = {k: v for k, v in values.items() if k in rewards.SETTINGS}
  reward = rewards.Reward(values["reward"], constants, require_targets=targeted or use == "cosearch")
  return Hardware(values, reward, device, accelerators)


def _device_space(values: dict[str, Any]) -> Space:
  """The co-search's accelerators: `accelerator_choices` per field it names, the device's value for
  the others, and the area budget. The device's own values are checked already, so a wrong value here
  is one of the choices (or the budget): the error names that key."""
  choices = values["accelerator_choices"]
  try:
    return accelerator.build({**values["accelerator"], **choices,
                              "area_budget_mm2": values["area_budget_mm2"]})
  except SettingError as e:
    name = e.key.partition(".")[2]
    key = ("area_budget_mm2" if name == "area_budget_mm2" else
           "accelerator_choices" + (f".{name}" if name else ""))
    raise SettingError(key, e.template) from None

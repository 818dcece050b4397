"""Rewards that fold hardware costs into the controller's signal, one formula per published method.

All take the same inputs (accuracy Q [N] and the cost model's dict of [N] arrays) so a co-search swaps
methods with one config string. Costs are always divided by their target first: the penalty then has the
same scale whatever the unit (ms, mJ, mm^2) and whatever the accelerator's order of magnitude.

Settings are the `hardware` section's keys (oneshot/hardware/schema.py, which holds their defaults):
  metric: 'latency', 'energy' or 'area': the cost T that tunas and mnas use.
  target_latency_ms, target_energy_mj, target_area_mm2: the targets T0 / c0_i (None or 0: unset).
  beta (tunas), w (mnas), latency_weight, energy_weight, area_weight (nahas's lambdas).
A `Reward` checks them once, when it is made, so that each call only computes; a wrong value raises
`schema.SettingError` naming the key, which the config's reader turns into the flag to set.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from oneshot.errors import UserError
from oneshot.hardware.schema import DEFAULTS, RENAMED, TARGETS, SettingError

KINDS = ("tunas", "mnas", "nahas", "accuracy")
# metric name -> (key in the cost dict, setting of its target)
METRICS = {"latency": ("latency_ms", "target_latency_ms"),
           "energy": ("energy_mj", "target_energy_mj"),
           "area": ("area_mm2", "target_area_mm2")}
_CONSTANTS = ("metric", "beta", "w", "latency_weight", "energy_weight", "area_weight")
SETTINGS = TARGETS + _CONSTANTS  # the section's keys a Reward reads


class Reward:
  """One reward formula and its constants: [N] rewards from accuracies [N] and costs.

  tunas:    Q + beta * |T/T0 - 1|  (TuNAS absolute reward, Bender et al. CVPR 2020; beta < 0 penalises
            both over and under the target, which keeps the search at the target instead of
            collapsing to tiny nets).
  mnas:     Q * (T/T0)^w  (MnasNet soft constraint; w < 0).
  nahas:    Q - sum_i lambda_i * max(0, c_i/c0_i - 1) over the targets set (NAHAS, Zhou et al. 2021:
            only exceeding a target costs anything).
  accuracy: Q.

  `settings` may leave keys out (their defaults apply). `require_targets` False skips the one check
  that depends on use (the target a kind needs), for a section read before any command uses it.
  """

  def __init__(self, kind: str, settings: Mapping[str, Any] | None = None,
               require_targets: bool = True):
    settings = {} if settings is None else settings
    if kind not in KINDS:
      raise SettingError("reward", f"unknown reward {kind!r}; set {{flag}} to one of {list(KINDS)}")
    self.kind = kind
    unknown = [key for key in settings if key not in DEFAULTS]
    if unknown:
      renamed = RENAMED.get(f"reward.{unknown[0]}", "").removeprefix("hardware.")
      raise SettingError(unknown[0], f"unknown reward setting {unknown[0]!r}; " + (
          f"it is now called {renamed!r}" if renamed else f"use {', '.join(SETTINGS)}"))
    value = lambda key: DEFAULTS[key] if settings.get(key) is None else settings[key]  # noqa: E731
    self.metric = value("metric")
    self.beta, self.w = float(value("beta")), float(value("w"))
    self.weights = {metric: float(value(f"{metric}_weight")) for metric in METRICS}
    # A target of None or 0 is unset (a config cannot leave a key out, only clear it).
    self.targets = {}
    for metric, (_, key) in METRICS.items():
      target = settings.get(key)
      if target is None or float(target) == 0:
        continue
      if float(target) < 0:
        raise SettingError(key, f"{{flag}} must be positive (or 0 for none); got {target}")
      self.targets[metric] = float(target)
    self._check(require_targets)

  def _check(self, require_targets: bool) -> None:
    """The values this kind uses, each against its rule; a value this kind ignores is not checked."""
    if self.kind in ("tunas", "mnas"):
      if self.metric not in METRICS:
        raise SettingError("metric", f"unknown reward metric {self.metric!r}; set {{flag}} to one of "
                                     f"{list(METRICS)}")
      if self.kind == "tunas" and self.beta > 0:
        raise SettingError("beta", f"reward 'tunas' needs beta <= 0 (a penalty); got {self.beta:g}; "
                                   "set {flag} to e.g. -0.1")
      if self.kind == "mnas" and self.w > 0:
        raise SettingError("w", f"reward 'mnas' needs w <= 0; got {self.w:g}; set {{flag}} to e.g. "
                                "-0.07")
      key = METRICS[self.metric][1]
      if require_targets and self.metric not in self.targets:
        raise SettingError(key, f"reward {self.kind!r} needs a {self.metric} target: set {{flag}} "
                                "(e.g. the cost of a baseline network)")
    if self.kind == "nahas":
      for metric, weight in self.weights.items():
        if weight < 0:
          raise SettingError(f"{metric}_weight", f"{{flag}} must be >= 0; got {weight:g}")
      if require_targets and not self.targets:
        raise SettingError("target_latency_ms",
                           "reward 'nahas' needs at least one target: set {flag}, target_energy_mj "
                           "or target_area_mm2 (or use reward 'accuracy')")

  def settings(self) -> dict[str, Any]:
    """The kind and the constants in force, under their setting names (what result files record)."""
    return {"kind": self.kind, "metric": self.metric, "beta": self.beta, "w": self.w,
            **{METRICS[m][1]: t for m, t in self.targets.items()},
            **{f"{m}_weight": w for m, w in self.weights.items()}}

  def __call__(self, accuracy: Any, costs: Mapping[str, Any]) -> np.ndarray:
    """[N] rewards for accuracies [N] (or a scalar) and costs from oneshot.hardware.cost_model."""
    q = np.asarray(accuracy, np.float64)
    if self.kind == "accuracy":
      return q.copy()
    if self.kind in ("tunas", "mnas"):
      ratio = self._ratio(costs, self.metric)
      if self.kind == "tunas":
        return q + self.beta * np.abs(ratio - 1.0)
      return q * ratio ** self.w
    total = np.zeros(np.broadcast_shapes(q.shape, *(np.shape(v) for v in costs.values())))
    for metric in METRICS:
      if metric in self.targets:
        total = total + self.weights[metric] * np.maximum(0.0, self._ratio(costs, metric) - 1.0)
    return q - total

  def _ratio(self, costs: Mapping[str, Any], metric: str) -> np.ndarray:
    cost_key = METRICS[metric][0]
    if cost_key not in costs:
      raise UserError(f"reward {self.kind!r} needs costs[{cost_key!r}]; compute costs with "
                      "oneshot.hardware.cost_model.evaluate")
    return np.asarray(costs[cost_key], np.float64) / self.targets[metric]


def reward(kind: str, accuracy: Any, costs: Mapping[str, Any],
           settings: Mapping[str, Any] | None = None) -> np.ndarray:
  """[N] rewards of one call: `Reward(kind, settings)(accuracy, costs)`."""
  return Reward(kind, settings)(accuracy, costs)

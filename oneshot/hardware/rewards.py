"""Rewards that fold hardware costs into the controller's signal, one formula per published method.

All take the same inputs (accuracy Q [N] and the cost model's dict of [N] arrays) so a co-search swaps
methods with one config string. Costs are always divided by their target first: the penalty then has the
same scale whatever the unit (ms, mJ, mm^2) and whatever the accelerator's order of magnitude.

Config keys (all optional unless a kind needs them):
  metric: 'latency' (default), 'energy' or 'area': the cost T that tunas and mnas use.
  latency_target_ms, energy_target_mj, area_target_mm2: the targets T0 / c0_i.
  beta (tunas, default -0.1: TuNAS's `rl_cost_model_exponent` flag default in google-research/tunas),
  w (mnas, default -0.07: MnasNet, Tan et al. CVPR 2019, Sec. 3 soft constraint alpha = beta = -0.07),
  latency_weight, energy_weight, area_weight (nahas lambdas, default 1.0 each).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from oneshot.errors import UserError

KINDS = ("tunas", "mnas", "nahas", "accuracy")
# metric name -> (key in the cost dict, config key of its target)
METRICS = {"latency": ("latency_ms", "latency_target_ms"),
           "energy": ("energy_mj", "energy_target_mj"),
           "area": ("area_mm2", "area_target_mm2")}


def reward(kind: str, accuracy: Any, costs: Mapping[str, Any],
           config: Mapping[str, Any] | None = None) -> np.ndarray:
  """[N] rewards for accuracies [N] (or a scalar) and costs from oneshot.hardware.cost_model.

  tunas:    Q + beta * |T/T0 - 1|  (TuNAS absolute reward, Bender et al. CVPR 2020; beta < 0 penalises
            both over and under the target, which keeps the search at the target instead of
            collapsing to tiny nets).
  mnas:     Q * (T/T0)^w  (MnasNet soft constraint; w < 0).
  nahas:    Q - sum_i lambda_i * max(0, c_i/c0_i - 1) over the targets set (NAHAS, Zhou et al. 2021:
            only exceeding a target costs anything).
  accuracy: Q.
  """
  config = {} if config is None else config
  q = np.asarray(accuracy, np.float64)
  if kind == "accuracy":
    return q.copy()
  if kind in ("tunas", "mnas"):
    metric = config.get("metric") or "latency"
    if metric not in METRICS:
      raise UserError(f"unknown reward metric {metric!r}; set --config.reward.metric to one of "
                      f"{list(METRICS)}")
    ratio = _ratio(costs, config, metric, required_by=kind)
    if kind == "tunas":
      beta = float(_get(config, "beta", -0.1))
      if beta > 0:
        raise UserError(f"reward 'tunas' needs beta <= 0 (a penalty); got {beta}; set "
                        "--config.reward.beta to e.g. -0.1")
      return q + beta * np.abs(ratio - 1.0)
    w = float(_get(config, "w", -0.07))
    if w > 0:
      raise UserError(f"reward 'mnas' needs w <= 0; got {w}; set --config.reward.w to e.g. -0.07")
    return q * ratio ** w
  if kind == "nahas":
    total = np.zeros(np.broadcast_shapes(q.shape, *(np.shape(v) for v in costs.values())))
    used = []
    for metric, (_, target_key) in METRICS.items():
      if config.get(target_key) is None:
        continue
      used.append(metric)
      ratio = _ratio(costs, config, metric, required_by=kind)
      lam = float(_get(config, f"{metric}_weight", 1.0))
      if lam < 0:
        raise UserError(f"--config.reward.{metric}_weight must be >= 0; got {lam}")
      total = total + lam * np.maximum(0.0, ratio - 1.0)
    if not used:
      raise UserError("reward 'nahas' needs at least one target: set --config.reward."
                      "latency_target_ms, energy_target_mj or area_target_mm2 (or use kind "
                      "'accuracy')")
    return q - total
  raise UserError(f"unknown reward kind {kind!r}; set --config.reward.kind to one of {list(KINDS)}")


def _get(config: Mapping[str, Any], key: str, default: Any) -> Any:
  value = config.get(key)
  return default if value is None else value


def _ratio(costs: Mapping[str, Any], config: Mapping[str, Any], metric: str,
           required_by: str) -> np.ndarray:
  cost_key, target_key = METRICS[metric]
  target = config.get(target_key)
  if target is None:
    raise UserError(f"reward {required_by!r} needs a {metric} target: set "
                    f"--config.reward.{target_key} (e.g. the cost of a baseline network)")
  if float(target) <= 0:
    raise UserError(f"--config.reward.{target_key} must be positive; got {target}")
  if cost_key not in costs:
    raise UserError(f"reward {required_by!r} needs costs[{cost_key!r}]; compute costs with "
                    "oneshot.hardware.cost_model.evaluate")
  return np.asarray(costs[cost_key], np.float64) / float(target)

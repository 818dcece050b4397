"""Latency-targeted search: the most accurate network at a latency on one fixed device (TuNAS's use).

The config's `hardware` section (configs/common.py) is off until `target_latency_ms` is set. Then every
reward the controller learns from, and every score that picks the final answer, is the accuracy Q folded
with the modelled latency T of that architecture by `oneshot.hardware.rewards`:
  tunas: Q + beta * |T/T0 - 1|  (TuNAS's absolute reward: over and under the target both cost),
  mnas:  Q * (T/T0)^w           (MnasNet's soft constraint).
T comes from the same cost models `oneshot cosearch` uses (`latency_table.cost_function`): the analytical
accelerator model for the configured device (`hardware.accelerator`), or a `oneshot latency-table` file
measured on a real one (`hardware.cost_model='table'`, `hardware.table=lut.json`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from oneshot.errors import UserError
from oneshot.hardware import latency_table, rewards
from oneshot.spaces import accelerator
from oneshot.spaces.core import Space

REWARDS = ("tunas", "mnas")
# The device the analytical model times when no accelerator is configured: a small edge array.
DEFAULT_ACCELERATOR = dict(rows=16, cols=16, ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=32,
                           dataflow="ws", dram_gbps=16.0, clock_mhz=500.0)


class LatencyTarget:
  """Hardware-aware rewards and the costs of single architectures, for one search space."""

  def __init__(self, section: Mapping[str, Any], space: Space, image_shape, num_classes: int):
    self.target_ms = float(section["target_latency_ms"])
    if self.target_ms <= 0:
      raise UserError(f"--config.hardware.target_latency_ms must be positive; got {self.target_ms}")
    self.kind = section.get("reward") or "tunas"
    if self.kind not in REWARDS:
      raise UserError(f"unknown --config.hardware.reward {self.kind!r}; use one of {list(REWARDS)}")
    self._reward_config = {"metric": "latency", "latency_target_ms": self.target_ms,
                           "beta": section.get("beta"), "w": section.get("w")}
    device = {**DEFAULT_ACCELERATOR, **dict(section.get("accelerator") or {})}
    unknown = sorted(set(device) - set(accelerator.NAMES))
    if unknown:
      raise UserError(f"--config.hardware.accelerator has unknown field {unknown[0]!r}; use "
                      f"{', '.join(accelerator.NAMES)}")
    self.device = device
    accel_space = accelerator.build({name: (value,) for name, value in device.items()})
    self._accel = np.zeros((1, accel_space.num_decisions), np.int32)
    self.cost_model = section.get("cost_model") or "analytical"
    self._costs = latency_table.cost_function({"kind": self.cost_model,
                                               "table": section.get("table") or ""},
                                              space, accel_space, image_shape, num_classes)
    self.rewards(np.zeros((1, space.num_decisions), np.int32), np.zeros(1))  # bad beta/w fail now

  def costs(self, dnas: np.ndarray) -> dict[str, np.ndarray]:
    """latency_ms, energy_mj, area_mm2 [N] of architectures [N, D] on the device."""
    return self._costs(np.asarray(dnas, np.int32), self._accel)

  def rewards(self, dnas: np.ndarray, accuracies: np.ndarray) -> np.ndarray:
    """[N] hardware-aware rewards of architectures [N, D] with accuracies [N]."""
    return rewards.reward(self.kind, accuracies, self.costs(dnas), self._reward_config)

  def expected_penalty(self, space: Space, samples: int = 4096, seed: int = 0):
    """A differentiable stand-in for the reward's latency term, for the gradient-based controllers
    (ProxylessNAS's expected latency): `penalty(probabilities [D, K]) -> scalar` to add to their loss.

    The cost model is a black box of whole architectures, so its latency is fitted as a sum of
    per-choice terms, T(dna) ~ b + sum_d t[d, dna_d], by least squares on `samples` random
    architectures (ProxylessNAS's latency lookup table is the same additive model, measured per op);
    the expectation under independent per-decision probabilities is then exact for that fit:
    E[T] = b + sum_{d,i} p[d, i] t[d, i]. The penalty is the reward's latency term at E[T] with the
    sign of a loss: tunas -beta * |E[T]/T0 - 1|, mnas -w * log(E[T]/T0).

    Not ProxylessNAS's own forms, on purpose. Its additive CE + lambda * E[LAT] has no target: it
    trades accuracy for speed at a rate lambda (ms per nat) that must be retuned for every target to
    land near it, while a latency-targeted search here must answer inside a narrow band around T0;
    TuNAS's absolute term is zero at the target and rises on both sides, so one beta serves every
    target. Its multiplicative CE * (log LAT / log T)^beta assumes latencies above 1 in the unit used
    (milliseconds on a phone): this space's modelled latencies are fractions of a millisecond, where
    both logs are negative and their ratio falls as LAT grows, so the factor would reward slower
    networks. The term is added to a cross-entropy in nats while beta was set on an accuracy-scale
    reward: the two scales differ (a nat of loss is not a point of accuracy), so `hardware.beta`
    needs its own check for these controllers: it has not been measured for them yet."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    dnas = space.sample(np.random.default_rng(seed), samples)
    latency = self.costs(dnas)["latency_ms"].astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum(space.num_choices)[:-1]])
    features = np.zeros((len(dnas), int(space.num_choices.sum()) + 1))
    features[np.arange(len(dnas))[:, None], offsets[None, :] + dnas] = 1.0
    features[:, -1] = 1.0
    coef = np.linalg.lstsq(features, latency, rcond=None)[0]
    residual = latency - features @ coef
    self.fit_r2 = float(1.0 - residual.var() / max(latency.var(), 1e-30))
    table = np.zeros((space.num_decisions, space.max_choices), np.float32)
    for d, k in enumerate(space.num_choices):
      table[d, :k] = coef[offsets[d]:offsets[d] + k]
    table, bias = jnp.asarray(table), float(coef[-1])
    beta = float(self._reward_config.get("beta") if self._reward_config.get("beta") is not None
                 else -0.1)
    w = float(self._reward_config.get("w") if self._reward_config.get("w") is not None else -0.07)
    target, kind = self.target_ms, self.kind

    def penalty(probabilities):
      ratio = (bias + jnp.sum(probabilities * table)) / target
      if kind == "tunas":
        return -beta * jnp.abs(ratio - 1.0)
      return -w * jnp.log(jnp.maximum(ratio, 1e-6))

    return penalty

  def report(self, dna) -> dict[str, Any]:
    """What search_result.json says about the answer's cost."""
    costs = self.costs(np.asarray(dna, np.int32)[None])
    return {"latency_ms": float(costs["latency_ms"][0]), "energy_mj": float(costs["energy_mj"][0]),
            "target_latency_ms": self.target_ms, "hardware_reward": self.kind,
            "cost_model": self.cost_model,
            **({"expected_latency_fit_r2": self.fit_r2} if hasattr(self, "fit_r2") else {})}


def build(config, space: Space, image_shape, num_classes: int) -> LatencyTarget | None:
  """The config's latency target, or None when `hardware.target_latency_ms` is unset (accuracy only)."""
  section = config.get("hardware")
  if section is None or section.get("target_latency_ms") in (None, 0, 0.0):
    return None
  return LatencyTarget(section, space, image_shape, num_classes)

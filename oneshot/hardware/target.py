"""Latency-targeted search: the most accurate network at a latency on one fixed device (TuNAS's use).

The config's `hardware` section (oneshot/hardware/schema.py, shared with `oneshot cosearch`) is off
until `target_latency_ms` is set. Then every reward the controller learns from, and every score that
picks the final answer, is the accuracy Q folded with the modelled latency T of that architecture by
`oneshot.hardware.rewards`:
  tunas: Q + beta * |T/T0 - 1|  (TuNAS's absolute reward: over and under the target both cost),
  mnas:  Q * (T/T0)^w           (MnasNet's soft constraint).
T comes from the same cost models `oneshot cosearch` uses (`oneshot.hardware.latency.cost_function`):
the analytical accelerator model for the configured device (`hardware.accelerator`), or a
`oneshot latency-table` file measured on a real one (`hardware.cost_model='table'`,
`hardware.table=lut.json`). `oneshot.hardware.settings.read` checks the section, once, for this use.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from oneshot.hardware import settings
from oneshot.spaces.core import Space


class LatencyTarget:
  """Hardware-aware rewards and the costs of single architectures, for one search space."""

  def __init__(self, hardware: settings.Hardware | Mapping[str, Any], space: Space, image_shape,
               num_classes: int):
    """`hardware`: the section as `settings.read(config, "search")` returns it, with its target set,
    or the section's plain values (read here)."""
    if not isinstance(hardware, settings.Hardware):
      hardware = settings.read({"hardware": hardware}, "search")
    if hardware.target_latency_ms is None:
      raise ValueError("a LatencyTarget needs hardware.target_latency_ms; `build` returns None without")
    self.hardware = hardware
    self.target_ms = hardware.target_latency_ms
    self.kind = hardware.reward.kind
    self.device = hardware.device.to_values(np.zeros(hardware.device.num_decisions, np.int32))
    self.cost_model = hardware.cost_model
    self._accel = np.zeros((1, hardware.device.num_decisions), np.int32)  # its one point
    self._costs = hardware.cost_function(space, hardware.device, image_shape, num_classes)

  def costs(self, dnas: np.ndarray) -> dict[str, np.ndarray]:
    """latency_ms, energy_mj, area_mm2 [N] of architectures [N, D] on the device."""
    return self._costs(np.asarray(dnas, np.int32), self._accel)

  def rewards(self, dnas: np.ndarray, accuracies: np.ndarray) -> np.ndarray:
    """[N] hardware-aware rewards of architectures [N, D] with accuracies [N]."""
    return self.hardware.reward(accuracies, self.costs(dnas))

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
    beta, w = self.hardware.reward.beta, self.hardware.reward.w
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
  hardware = settings.read(config, "search")
  if hardware.target_latency_ms is None:
    return None
  return LatencyTarget(hardware, space, image_shape, num_classes)

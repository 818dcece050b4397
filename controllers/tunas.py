"""TuNAS controller: independent categorical logits per decision, trained with REINFORCE.

Follows Bender et al. 2020: the baseline is an EMA (0.95) of the cross-device mean reward; Adam with
beta1 = 0 (momentum hurts a non-stationary policy gradient); learning rate 0 for the first 25% of
controller steps so the shared weights warm up under a uniform policy first.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from controllers.base import Controller, State, decision_mask
from controllers.random import sample_factorized
from spaces.core import Space


class TunasController(Controller):
  """Factorized-logit REINFORCE with an EMA baseline and an optional entropy bonus."""

  name = "tunas"

  def __init__(self, space: Space, config: Mapping[str, Any] | None = None):
    super().__init__(space, config)
    c = self.config
    num_steps = int(c.get("num_steps", 1000))
    warmup = int(round(float(c.get("warmup_fraction", 0.25)) * num_steps))
    lr = float(c.get("learning_rate", 0.05))
    schedule = optax.join_schedules([optax.constant_schedule(0.0), optax.constant_schedule(lr)],
                                    [warmup])
    self.optimizer = optax.adam(schedule, b1=float(c.get("adam_beta1", 0.0)))
    self.baseline_decay = float(c.get("baseline_decay", 0.95))
    self.entropy_weight = float(c.get("entropy_weight", 0.0))
    self.mask = jnp.asarray(decision_mask(space))
    self._update = jax.jit(self._update_impl)

  def init(self, key: jax.Array) -> State:
    del key
    logits = jnp.zeros(self.mask.shape, jnp.float32)
    return {"logits": logits, "opt_state": self.optimizer.init(logits),
            "baseline": jnp.zeros((), jnp.float32), "step": jnp.zeros((), jnp.int32)}

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    return sample_factorized(key, state["logits"] + self.mask, num)

  def _update_impl(self, state, dnas, rewards):
    mean_reward = rewards.mean()
    # First step: start the baseline at the observed reward instead of 0, so early advantages are sane.
    baseline = jnp.where(state["step"] == 0, mean_reward,
                         self.baseline_decay * state["baseline"]
                         + (1 - self.baseline_decay) * mean_reward)
    advantage = rewards - baseline

    def loss_fn(logits):
      logp = jax.nn.log_softmax(logits + self.mask, axis=-1)
      chosen = jnp.take_along_axis(logp[None], dnas[:, :, None], axis=-1)[..., 0].sum(-1)
      p = jnp.exp(logp)
      entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0))
      return -(advantage * chosen).mean() - self.entropy_weight * entropy, entropy

    (loss, entropy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["logits"])
    updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["logits"])
    new = {"logits": optax.apply_updates(state["logits"], updates), "opt_state": opt_state,
           "baseline": baseline, "step": state["step"] + 1}
    return new, {"controller_loss": loss, "entropy": entropy, "baseline": baseline,
                 "reward": mean_reward}

  def feedback(self, state, dnas, rewards):
    new, metrics = self._update(state, jnp.asarray(dnas, jnp.int32),
                                jnp.asarray(rewards, jnp.float32))
    return new, {k: float(v) for k, v in metrics.items()}

  def probabilities(self, state: State) -> np.ndarray:
    return np.asarray(jax.nn.softmax(state["logits"] + self.mask, axis=-1))

"""TuNAS controller: independent categorical logits per decision, trained with REINFORCE.

Follows Bender et al. 2020 and its released code (google-research/tunas): the baseline is a zero-debiased
EMA (momentum 0.95) of the cross-device mean reward, updated with the current step's reward before the
advantage is taken; Adam with beta1 = 0 (momentum hurts a non-stationary policy gradient), beta2 = 0.999,
eps = 1e-8; learning rate 0 for the first 25% of controller steps, so the shared weights warm up under the
uniform policy first; the exported architecture is the per-decision argmax (`Controller.best`).

The learning rate is not the released code's. That code uses 0.0003 x batch/256 (`released_learning_rate`:
0.0048 at its batch of 4096) and grows it 10x over the search, on by default. Its searches make tens of
thousands of controller updates; this project's make about a thousand (configs/fashion_mnist.py: 1,500),
and at its training batches (64..128) the released rule gives 0.00015..0.0003: with Adam, whose step is
about the learning rate, the sum of the grown rates over 1,500 updates is under 1 nat per logit, which
leaves the policy near uniform at the end of the search. So `DEFAULT_LEARNING_RATE` is 0.05, a value of
this project: set when the controller was written and kept by every supernet search since, never tuned
in a search (`oneshot tabular` tuned its own, 0.2 with rank advantages, on synthetic tables: see
oneshot/tabular.py DEFAULTS). `lr_growth` (default 1: off) turns the 10x growth on; the released
setting is `learning_rate=released_learning_rate(batch), lr_growth=10`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from oneshot.controllers.base import Controller, State, decision_mask
from oneshot.controllers.uniform import sample_factorized
from oneshot.spaces.core import Space

DEFAULT_LEARNING_RATE = 0.05  # this project's value, not published: see the module docstring
RELEASED_LR_PER_256 = 0.0003  # google-research/tunas: controller lr 0.0003 x batch/256, grown 10x


def released_learning_rate(batch_size: int) -> float:
  """The released TuNAS code's controller learning rate for a training batch of `batch_size` (before
  its 10x growth over the search, `lr_growth=10` here)."""
  return RELEASED_LR_PER_256 * batch_size / 256


# Finite stand-in for -inf in the loss: a -inf logit gives 0 * -inf = NaN in the entropy and its gradient
# (jnp.where does not stop a NaN gradient), which poisoned every decision shorter than max_choices.
_NEG = -1e9


def active_mask(space: Space, dnas: np.ndarray) -> jax.Array:
  """[N, D] float32: 1 where a decision of a DNA row matters (`Space.active`), else 0.

  Computed on the host from the DNAs and passed into TuNAS's jitted update, which leaves a skipped
  block's kernel/expansion choices out of a sample's log-probability (TuNAS's hierarchical
  log-probabilities): those choices did nothing, and under a factorized policy they influenced no other
  choice, so their terms carry no signal. ENAS's LSTM feeds them to later steps and keeps them (see
  controllers/enas.py).
  """
  return jnp.asarray(space.active(np.asarray(dnas)), jnp.float32)


def debiased_ema(state: State, value: jax.Array, decay: float) -> tuple[jax.Array, jax.Array]:
  """(estimate, new weight) of a zero-debiased EMA: numerator / (1 - decay^t), as TuNAS's baseline.

  Unlike starting at 0 (ENAS) it is on the reward's scale from the first step; unlike starting at the
  first reward it does not let one noisy sample dominate the next ~1/(1-decay) steps.
  """
  weight = decay * state["baseline_weight"] + (1 - decay)
  numerator = decay * state["baseline"] * state["baseline_weight"] + (1 - decay) * value
  return numerator / weight, weight


def rank_advantage(state: State, rewards: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(advantages in [-1, 1], new window, new count): each reward's centred quantile among recent rewards.

  The reference set is the last W rewards before this step (`state["window"]`, oldest first, the last
  `state["window_count"]` slots valid) plus the step's other rewards, so it works for one reward per
  update as well as for a batch. A reward above all of them gets +1, below all -1, the median 0.
  Generic fitness shaping (as in natural evolution strategies): the update no longer depends on
  whether rewards are 0..1 or 0..100, and a broken sample scoring 10% among 85..94% counts as one
  rank, not as an advantage 25x the usual size (which, through Adam's second-moment estimate, also
  shrank every later step). The window moves with the rewards, so it doubles as the baseline.
  """
  window, count = state["window"], state["window_count"]
  size = window.shape[0]
  valid = (jnp.arange(size) >= size - count).astype(jnp.float32)
  r = rewards[:, None]
  less = (valid * (window[None] < r)).sum(1) + (rewards[None] < r).sum(1)
  equal = (valid * (window[None] == r)).sum(1) + (rewards[None] == r).sum(1) - 1
  n = valid.sum() + rewards.shape[0] - 1
  advantage = jnp.where(n > 0, 2.0 * (less + 0.5 * equal) / jnp.maximum(n, 1) - 1.0, 0.0)
  new_window = jnp.concatenate([window, rewards])[-size:]
  return advantage, new_window, jnp.minimum(count + rewards.shape[0], size)


def advantage_config(config: Mapping[str, Any]) -> tuple[str, int]:
  """("baseline" | "rank", window) from a controller config; errors name the fix."""
  mode = str(config.get("advantage", "baseline"))
  if mode not in ("baseline", "rank"):
    raise ValueError(f"advantage is {mode!r}; use 'baseline' (reward - EMA baseline, the papers') "
                     "or 'rank' (centred quantile among recent rewards)")
  window = int(config.get("rank_window", 32))
  if window < 1:
    raise ValueError(f"rank_window is {window}; it must be >= 1")
  return mode, window


def shaped_advantage(mode: str, state: State, rewards: jax.Array, decay: float):
  """(advantage [B], state updates): `reward - debiased EMA baseline` or `rank_advantage`.

  The EMA baseline is tracked either way (it is logged as a metric).
  """
  baseline, weight = debiased_ema(state, rewards.mean(), decay)
  updates = {"baseline": baseline, "baseline_weight": weight}
  if mode == "rank":
    advantage, updates["window"], updates["window_count"] = rank_advantage(state, rewards)
  else:
    advantage = rewards - baseline
    updates["window"], updates["window_count"] = state["window"], state["window_count"]
  return advantage, updates


def window_state(size: int) -> State:
  return {"window": jnp.zeros((size,), jnp.float32), "window_count": jnp.zeros((), jnp.int32)}


class TunasController(Controller):
  """Factorized-logit REINFORCE with an EMA baseline and an optional entropy bonus.

  `advantage="rank"` (off by default; the tabular runs turn it on) replaces `reward - baseline` with
  the scale-free `rank_advantage`.
  """

  name = "tunas"

  def __init__(self, space: Space, config: Mapping[str, Any] | None = None):
    super().__init__(space, config)
    c = self.config
    num_steps = max(1, int(c.get("num_steps", 1000)))
    warmup = int(round(float(c.get("warmup_fraction", 0.25)) * num_steps))
    lr = float(c.get("learning_rate", DEFAULT_LEARNING_RATE))
    growth = float(c.get("lr_growth", 1.0))
    # 0 during warm-up, then lr * growth^progress (TuNAS code: growth 10, progress 0 -> 1 to the end).
    ramp = lambda t: lr * growth ** jnp.clip(t / max(1, num_steps - warmup), 0.0, 1.0)
    schedule = optax.join_schedules([optax.constant_schedule(0.0), ramp], [warmup])
    self.optimizer = optax.adam(schedule, b1=float(c.get("adam_beta1", 0.0)), b2=0.999, eps=1e-8)
    self.baseline_decay = float(c.get("baseline_decay", 0.95))
    self.entropy_weight = float(c.get("entropy_weight", 0.0))
    self.advantage, self.rank_window = advantage_config(c)
    self.mask = jnp.asarray(decision_mask(space))
    self.valid = jnp.asarray(space.choice_mask())
    self._update = jax.jit(self._update_impl)

  def init(self, key: jax.Array) -> State:
    del key
    logits = jnp.zeros(self.mask.shape, jnp.float32)
    return {"logits": logits, "opt_state": self.optimizer.init(logits),
            "baseline": jnp.zeros((), jnp.float32), "baseline_weight": jnp.zeros((), jnp.float32),
            "step": jnp.zeros((), jnp.int32), **window_state(self.rank_window)}

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    return sample_factorized(key, state["logits"] + self.mask, num)

  def _update_impl(self, state, dnas, rewards, active):
    mean_reward = rewards.mean()  # each row stands for one device's sample: the cross-device mean
    advantage, tracked = shaped_advantage(self.advantage, state, rewards, self.baseline_decay)

    def loss_fn(logits):
      logp = jax.nn.log_softmax(jnp.where(self.valid, logits, _NEG), axis=-1)
      chosen = jnp.take_along_axis(logp[None], dnas[:, :, None], axis=-1)[..., 0]
      chosen = (chosen * active).sum(-1)  # hierarchical: inactive decisions do not count
      entropy = -jnp.sum(jnp.where(self.valid, jnp.exp(logp) * logp, 0.0))
      return -(advantage * chosen).mean() - self.entropy_weight * entropy, entropy

    (loss, entropy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["logits"])
    updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["logits"])
    new = {"logits": optax.apply_updates(state["logits"], updates), "opt_state": opt_state,
           "step": state["step"] + 1, **tracked}
    return new, {"controller_loss": loss, "entropy": entropy, "baseline": tracked["baseline"],
                 "reward": mean_reward}

  def feedback(self, state, dnas, rewards):
    new, metrics = self._update(state, jnp.asarray(dnas, jnp.int32),
                                jnp.asarray(rewards, jnp.float32), active_mask(self.space, dnas))
    return new, {k: float(v) for k, v in metrics.items()}

  def probabilities(self, state: State) -> np.ndarray:
    return np.asarray(jax.nn.softmax(state["logits"] + self.mask, axis=-1))

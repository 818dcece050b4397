"""ENAS controller (Pham et al. 2018): an LSTM that samples the decisions one after another.

Unlike TuNAS's independent logits, each choice is conditioned on the previous ones (the previous choice is
embedded as the next input), so the policy can learn correlated decisions. The logits are shaped as
`c * tanh(logits / T)`: the tanh bounds every logit to [-c, c], so no choice's probability can reach 0 and
the controller keeps exploring; T flattens the logits before the tanh, slowing early collapse onto a few
lucky samples. Defaults T = 5, c = 2.5 follow the paper's text (T = 5 is what its RNN search used; its
released CIFAR scripts set c = 1.1 (micro) or 1.5 (macro) and no T); with c = 2.5 a 5-way decision
saturates at p = 0.97 for the best choice, with c = 1.1 at p = 0.67, which stops a short search from
committing.
Training is REINFORCE on `reward + entropy_weight * sample entropy` with an EMA baseline (decay 0.99) and
Adam as in the released code (lr 0.0035, beta1 = 0, eps = 1e-3; the eps damps steps whose gradient is
below ~1e-3, i.e. rewards on a 0..1 scale learn more slowly than on 0..100). One deviation: ENAS starts
its baseline at 0, which at decay 0.99 needs hundreds of steps to reach the reward's scale (every early
sample looks good and gets reinforced); here the EMA is zero-debiased, as TuNAS does, so it is on scale
from the first step.

The log-probability REINFORCE uses is that of every decision sampled, including a skipped block's
kernel and expansion (unlike TuNAS's hierarchical log-probabilities, `tunas.active_mask`). The LSTM
samples those choices before the block's skip decision and feeds each one to the next steps, so they
shape the rest of the architecture: leaving their terms out is unbiased only for a factorized policy,
and here it biased the gradient (the mask even depends on a later sample). Of the two unbiased fixes,
the full log-probability is the cleaner: one rule whatever the space's decision order, and the
sampling path, the DNA layout and the LSTM's inputs stay as they are; sampling skip first and feeding
a fixed token for inactive choices would reorder every space's decisions for ENAS alone. The cost is
some variance from terms the reward does not depend on, which the baseline and batch absorb.

The state is {"params", "opt_state", "baseline", "baseline_weight", "step"}: arrays only, checkpointable.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from oneshot.controllers.base import Controller, State
from oneshot.controllers.tunas import advantage_config, shaped_advantage, window_state
from oneshot.spaces.core import DNA, Space

_NEG = -1e9  # finite "impossible" logit for padded slots: -inf would make 0 * -inf = NaN in the entropy
MARGINAL_SAMPLES = 256


class EnasNet(nn.Module):
  """One LSTM step, with a padded embedding table and softmax head per decision.

  Per-decision tables (not one shared table) because choice 2 of "kernel size" and choice 2 of "expansion"
  mean different things; padding to max_choices keeps them one array, so `lax.scan` can index them.
  """

  num_decisions: int
  max_choices: int
  hidden_size: int

  def setup(self):
    init = nn.initializers.uniform(0.2)  # ENAS: every controller weight ~ U(-0.1, 0.1)
    shifted = lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) - 0.1
    self.cell = nn.LSTMCell(self.hidden_size, kernel_init=shifted, recurrent_kernel_init=shifted)
    self.start = self.param("start", shifted, (self.hidden_size,))
    self.embedding = self.param("embedding", shifted,
                                (self.num_decisions, self.max_choices, self.hidden_size))
    self.head = self.param("head", shifted, (self.num_decisions, self.hidden_size, self.max_choices))

  def __call__(self, carry, inputs, decision):
    """(new carry, raw logits [B, K]) for `decision` given the embedded previous choice."""
    carry, h = self.cell(carry, inputs)
    return carry, h @ self.head[decision]

  def first_input(self, batch: int):
    return jnp.broadcast_to(self.start, (batch, self.hidden_size))

  def embed(self, decision, choices):
    return self.embedding[decision][choices]


class EnasController(Controller):
  """Autoregressive LSTM policy over the space's decisions, trained with REINFORCE."""

  name = "enas"

  def __init__(self, space: Space, config: Mapping[str, Any] | None = None):
    super().__init__(space, config)
    c = self.config
    self.hidden_size = int(c.get("hidden_size", 64))
    self.temperature = float(c.get("temperature", 5.0))
    self.tanh_constant = float(c.get("tanh_constant", 2.5))  # <= 0 turns the tanh off
    self.learning_rate = float(c.get("learning_rate", 0.0035))
    self.baseline_decay = float(c.get("baseline_decay", 0.99))
    self.entropy_weight = float(c.get("entropy_weight", 1e-4))
    self.adam = (float(c.get("adam_beta1", 0.0)), float(c.get("adam_eps", 1e-3)))
    # "rank": scale-free advantages (controllers.tunas.rank_advantage), off by default as in the paper.
    self.advantage, self.rank_window = advantage_config(c)
    # Everything the compiled functions depend on; equal keys share one compilation (one per seed
    # otherwise, which dominates a tabular benchmark's run time).
    self._fns = _compiled(space.num_decisions, space.max_choices, self.hidden_size, self.temperature,
                          self.tanh_constant, self.learning_rate, self.baseline_decay,
                          self.entropy_weight, self.adam, self.advantage,
                          space.choice_mask().tobytes())

  def init(self, key: jax.Array) -> State:
    params = self._fns.init(key)
    return {"params": params, "opt_state": self._fns.optimizer.init(params),
            "baseline": jnp.zeros((), jnp.float32), "baseline_weight": jnp.zeros((), jnp.float32),
            "step": jnp.zeros((), jnp.int32), **window_state(self.rank_window)}

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    dnas, _, _ = self._fns.sample(state["params"], key, int(num))
    return np.asarray(dnas, np.int32)

  def sample_with_log_probs(self, state: State, key: jax.Array, num: int):
    """(dnas [num, D], log-probs [num], entropies [num]) from one compiled pass.

    Sums over every decision sampled, as the update does (see the module docstring).
    """
    dnas, logp, ent = self._fns.sample(state["params"], key, int(num))
    return np.asarray(dnas, np.int32), np.asarray(logp).sum(1), np.asarray(ent).sum(1)

  def log_probs(self, state: State, dnas: np.ndarray) -> np.ndarray:
    """Log-probability of each DNA row under the current policy (teacher-forced)."""
    logp, _ = self._fns.log_probs(state["params"], jnp.asarray(dnas, jnp.int32))
    return np.asarray(logp)

  def feedback(self, state, dnas, rewards):
    new, metrics = self._fns.update(state, jnp.asarray(dnas, jnp.int32),
                                    jnp.asarray(rewards, jnp.float32))
    return new, {k: float(v) for k, v in metrics.items()}

  def probabilities(self, state: State) -> np.ndarray:
    """Marginals estimated from 256 samples with a fixed key.

    The policy is autoregressive, so the per-decision marginals have no closed form; a fixed key makes
    this a deterministic function of the state (equal states give equal answers, as for the other
    controllers), with a standard error of at most 0.03 per entry.
    """
    dnas = self.propose(state, jax.random.PRNGKey(0), MARGINAL_SAMPLES)
    k = self.space.max_choices
    counts = np.stack([np.bincount(col, minlength=k)[:k] for col in dnas.T]).astype(np.float64)
    return (counts / MARGINAL_SAMPLES) * self.space.choice_mask()

  def best(self, state: State) -> DNA:
    """Greedy decoding: the most likely choice at each step given the earlier greedy choices.

    The argmax of the marginals could mix two modes of a correlated policy into an architecture the
    controller rarely samples; greedy decoding follows one path of the LSTM, as ENAS's "derive" step
    approximates the policy's mode.
    """
    return tuple(int(i) for i in np.asarray(self._fns.greedy(state["params"]))[0])


class _Fns:
  """The jit-compiled pure functions of one controller configuration."""

  def __init__(self, num_decisions, max_choices, hidden_size, temperature, tanh_constant,
               learning_rate, baseline_decay, entropy_weight, adam, advantage, mask_bytes):
    self.net = EnasNet(num_decisions, max_choices, hidden_size)
    self.valid = jnp.asarray(np.frombuffer(mask_bytes, bool).reshape(num_decisions, max_choices))
    self.temperature, self.tanh_constant = temperature, tanh_constant
    self.baseline_decay, self.entropy_weight = baseline_decay, entropy_weight
    self.advantage = advantage
    self.optimizer = optax.adam(learning_rate, b1=adam[0], eps=adam[1])
    self.hidden_size = hidden_size
    self.init = jax.jit(self._init)
    self.sample = jax.jit(functools.partial(self._rollout, mode="sample"), static_argnums=2)
    self.log_probs = jax.jit(self._forced)
    self.greedy = jax.jit(lambda params: self._rollout(params, None, 1, mode="greedy")[0])
    self.update = jax.jit(self._update)

  def _init(self, key):
    h = jnp.zeros((1, self.hidden_size))
    return self.net.init(key, (h, h), h, 0)

  def _rollout(self, params, key, num, dnas=None, mode="sample"):
    """One pass over the decisions: sample, greedy, or teacher-forced on `dnas` [num, D].

    Returns (choices [num, D], log-probs [num, D], entropies [num, D]) per decision; callers sum them
    over every decision.
    """
    net = self.net
    d_count = self.valid.shape[0]
    keys = jax.random.split(key, d_count) if key is not None else jnp.zeros((d_count, 2), jnp.uint32)
    forced = dnas.T if dnas is not None else jnp.zeros((d_count, num), jnp.int32)
    zeros = jnp.zeros((num, self.hidden_size))

    def step(carry, xs):
      lstm, inputs = carry
      d, k, valid, given = xs
      lstm, logits = net.apply(params, lstm, inputs, d)
      logits = logits / self.temperature
      if self.tanh_constant > 0:
        logits = self.tanh_constant * jnp.tanh(logits)
      logp_all = jax.nn.log_softmax(jnp.where(valid, logits, _NEG), axis=-1)
      if mode == "sample":
        choice = jax.random.categorical(k, jnp.where(valid, logits, -jnp.inf), axis=-1)
      elif mode == "greedy":
        choice = jnp.argmax(logp_all, axis=-1)
      else:
        choice = given
      logp = jnp.take_along_axis(logp_all, choice[:, None], axis=-1)[:, 0]
      entropy = -jnp.sum(jnp.where(valid, jnp.exp(logp_all) * logp_all, 0.0), axis=-1)
      inputs = net.apply(params, d, choice, method=EnasNet.embed)
      return (lstm, inputs), (choice.astype(jnp.int32), logp, entropy)

    first = net.apply(params, num, method=EnasNet.first_input)
    xs = (jnp.arange(d_count), keys, self.valid, forced)
    _, (choices, logp, entropy) = jax.lax.scan(step, ((zeros, zeros), first), xs)
    return choices.T, logp.T, entropy.T

  def _forced(self, params, dnas):
    """Teacher-forced (log-prob [num], entropy [num]) of `dnas`, summed over every decision."""
    _, logp, entropy = self._rollout(params, None, dnas.shape[0], dnas=dnas, mode="force")
    return logp.sum(1), entropy.sum(1)

  def _update(self, state, dnas, rewards):
    def loss_fn(params):
      logp, sample_entropy = self._forced(params, dnas)
      # ENAS adds the sample entropy to the reward (so it enters the baseline too), not to the loss.
      shaped = rewards + self.entropy_weight * jax.lax.stop_gradient(sample_entropy)
      advantage, tracked = shaped_advantage(self.advantage, state, shaped, self.baseline_decay)
      advantage = jax.lax.stop_gradient(advantage)
      return -(advantage * logp).mean(), (tracked, sample_entropy.mean())

    (loss, (tracked, entropy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    baseline = tracked["baseline"]
    updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "step": state["step"] + 1, **tracked}
    return new, {"reward": rewards.mean(), "baseline": baseline, "entropy": entropy,
                 "controller_loss": loss}


@functools.lru_cache(maxsize=16)
def _compiled(*key) -> _Fns:
  return _Fns(*key)

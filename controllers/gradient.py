"""Gradient-based controllers: architecture logits trained by gradient on validation batches.

DARTS (Liu et al. 2019), GDAS (Dong & Yang 2019) and ProxylessNAS (Cai et al. 2019), first order: the
search alternates a weight step on a train batch with an architecture step on a validation batch, both
in the same data-parallel step on the device mesh (`steps.make_arch_step`). They differ only in how the
logits `alpha` [D, K] become the choice weights `W` [D, K] the supernet runs on (`relax`):

* DARTS: `W = softmax(alpha)`, every candidate's output mixed (the supernet's `mask` executor).
* GDAS: a Gumbel-max sample per decision, straight-through: `W` is one-hot in the forward pass and has
  the gradient of `softmax((alpha + g) / tau)`; only the sampled candidate runs (`switch` works), and
  `tau` anneals linearly from 10 to 0.1 over the search (the paper's schedule).
* ProxylessNAS: binary gates over two candidates sampled per decision without replacement; the gate is
  one-hot over the two with the straight-through gradient of the softmax of their two logits, so only
  the two sampled logits learn from a step (the paper's two-path estimate).

Each device draws its own noise, so GDAS and ProxylessNAS paths differ per device as in TuNAS; the
gradients are averaged. Optimisers follow the papers: DARTS and GDAS use Adam 3e-4, betas (0.5, 0.999),
weight decay 1e-3 (added to the gradient, as PyTorch's Adam); ProxylessNAS Adam 6e-3, betas
(0, 0.999). They learn from gradients, not rewards: `feedback` is not how they learn, so `oneshot
tabular` and `oneshot cosearch`, which only have rewards, refuse them.

Their answer is argmax alpha (`best`), as their papers derive it, not the generic rescoring rule: DARTS's
discrete children were never trained alone, and picking among sampled children by their supernet score
is another method than the one these controllers implement. The search still runs the rescoring rule
and reports its pick beside the answer (search_result.json `selection.rescored_pick`); config
`controller.answer="rescored"` makes that pick the answer instead.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from oneshot.controllers.base import Controller, State, decision_mask
from oneshot.controllers.uniform import sample_factorized
from oneshot.errors import UserError
from oneshot.spaces.core import Space

ANSWER_RULES = ("argmax", "rescored")


class GradientController(Controller):
  """Logits per decision; `relax` makes them the supernet's differentiable choice weights."""

  gradient = True          # trained by `steps.make_arch_step`, not by `feedback`
  mixes_all_choices = False  # True: the supernet must run every candidate (the `mask` executor)
  defaults: Mapping[str, Any] = {"learning_rate": 3e-4, "beta1": 0.5, "beta2": 0.999,
                                 "weight_decay": 1e-3}

  def __init__(self, space: Space, config: Mapping[str, Any] | None = None):
    super().__init__(space, config)
    c = {**self.defaults, **{k: v for k, v in self.config.items() if k in self.defaults}}
    self.hyper = c
    self.num_steps = max(1, int(self.config.get("num_steps", 1)))
    self.answer_rule = str(self.config.get("answer", "argmax"))  # read by `search_loop.answer`
    if self.answer_rule not in ANSWER_RULES:
      raise UserError(f"--config.controller.answer is {self.answer_rule!r}; use one of "
                      f"{list(ANSWER_RULES)} (argmax: the papers' argmax alpha)")
    # 0 for real choices, a large negative number for padded slots (finite: -inf makes NaN gradients).
    self.mask = jnp.asarray(np.where(np.isfinite(decision_mask(space)), 0.0, -1e9), jnp.float32)
    self.tx = optax.chain(optax.add_decayed_weights(float(c["weight_decay"])),
                          optax.scale_by_adam(b1=float(c["beta1"]), b2=float(c["beta2"])),
                          optax.scale(-float(c["learning_rate"])))

  def init(self, key: jax.Array) -> State:
    del key
    alpha = jnp.zeros(self.mask.shape, jnp.float32)  # uniform, as the papers (DARTS: 1e-3 * N(0, 1))
    return {"alpha": alpha, "opt_state": self.tx.init(alpha), "step": jnp.zeros((), jnp.int32)}

  def logits(self, alpha: jax.Array) -> jax.Array:
    return alpha + self.mask

  def relax(self, alpha: jax.Array, key: jax.Array, step: jax.Array) -> jax.Array:
    """[D, K] choice weights the supernet runs on; differentiable in `alpha`; 0 in padded slots."""
    raise NotImplementedError

  def apply_gradient(self, state: State, grad: jax.Array) -> State:
    """One optimiser step on the (device-averaged) gradient of the validation loss in `alpha`."""
    real = self.mask == 0
    grad = jnp.where(real, grad, 0.0)
    updates, opt_state = self.tx.update(grad, state["opt_state"], state["alpha"])
    alpha = jnp.where(real, optax.apply_updates(state["alpha"], updates), 0.0)
    return {"alpha": alpha, "opt_state": opt_state, "step": state["step"] + 1}

  def train_paths(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """The weight step's paths, one per device: samples of the current distribution (GDAS's and
    ProxylessNAS's single sampled path), or for DARTS the mixture itself."""
    return self.propose(state, key, num)

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """Samples of the current distribution (the weight step's paths, and the answer's candidates)."""
    return sample_factorized(key, self.logits(jnp.asarray(state["alpha"])), num)

  def feedback(self, state: State, dnas: np.ndarray, rewards: np.ndarray) -> tuple[State, dict]:
    del dnas
    return state, {"reward": float(np.mean(rewards))}

  def probabilities(self, state: State) -> np.ndarray:
    return np.asarray(jax.nn.softmax(self.logits(jnp.asarray(state["alpha"])), axis=-1))


class DartsController(GradientController):
  """DARTS, with beta-DARTS's regularisation as an option (`beta_regularization` > 0).

  On NAS-Bench-201 DARTS drifts to parameter-free cells (`none`/`skip_connect` edges): the softmax of
  the logits, not their magnitude, decides the mixture, and the parameter-free ops win the early race.
  beta-DARTS (Ye et al., CVPR 2022) adds lambda * sum_d logsumexp(alpha_d) to the loss, lambda rising
  linearly from 0 to `beta_regularization` over the search; its gradient, lambda * softmax(alpha_d),
  pulls the leading logits down hardest and keeps them normalised."""

  name = "darts"
  mixes_all_choices = True
  defaults = {**GradientController.defaults, "beta_regularization": 0.0}

  def apply_gradient(self, state, grad):
    weight = float(self.hyper["beta_regularization"])
    if weight > 0:
      ramp = jnp.clip(state["step"] / max(1, self.num_steps - 1), 0.0, 1.0)
      grad = grad + weight * ramp * jax.nn.softmax(self.logits(state["alpha"]), axis=-1)
    return super().apply_gradient(state, grad)

  def relax(self, alpha, key, step):
    del key, step
    return jax.nn.softmax(self.logits(alpha), axis=-1)

  def train_paths(self, state, key, num):
    del key
    weights = np.asarray(self.relax(jnp.asarray(state["alpha"]), None, None), np.float32)
    return np.broadcast_to(weights, (num,) + weights.shape).copy()


class GdasController(GradientController):
  name = "gdas"
  defaults = {**GradientController.defaults, "tau_max": 10.0, "tau_min": 0.1}

  def temperature(self, step: jax.Array) -> jax.Array:
    frac = jnp.clip(step / max(1, self.num_steps - 1), 0.0, 1.0)
    return self.hyper["tau_max"] - (self.hyper["tau_max"] - self.hyper["tau_min"]) * frac

  def relax(self, alpha, key, step):
    logits = self.logits(alpha) + jax.random.gumbel(key, alpha.shape)
    soft = jax.nn.softmax(logits / self.temperature(step), axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(logits, axis=-1), alpha.shape[-1], dtype=soft.dtype)
    return hard - jax.lax.stop_gradient(soft) + soft


class ProxylessController(GradientController):
  name = "proxyless"
  mixes_all_choices = True   # the two sampled candidates' outputs both reach the gradient
  defaults = {"learning_rate": 6e-3, "beta1": 0.0, "beta2": 0.999, "weight_decay": 0.0}

  def relax(self, alpha, key, step):
    del step
    logits = self.logits(alpha)
    # Two candidates per decision, sampled without replacement from softmax(alpha) (Gumbel top-2);
    # a decision with one choice keeps it.
    keys = jnp.argsort(-(logits + jax.random.gumbel(key, alpha.shape)), axis=-1)[:, :2]
    two = jnp.zeros(alpha.shape, bool).at[jnp.arange(alpha.shape[0])[:, None], keys].set(True)
    two &= self.mask == 0
    pair = jax.nn.softmax(jnp.where(two, logits, -1e9), axis=-1)
    pair = jnp.where(two, pair, 0.0)
    # Which of the two gates is open: sampled from their renormalised probabilities.
    u = jax.random.uniform(jax.random.fold_in(key, 1), (alpha.shape[0], 1))
    opened = jnp.argmax(jnp.cumsum(pair, axis=-1) > u, axis=-1)
    gate = jax.nn.one_hot(opened, alpha.shape[-1], dtype=pair.dtype)
    return gate - jax.lax.stop_gradient(pair) + pair

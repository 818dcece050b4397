"""Data-parallel supernet steps on a device mesh: the modern form of TuNAS's pmapped supernet.

`jax.shard_map` over a 1-D mesh axis 'data': each device takes its shard of the batch and its own path
(a row of `paths`), gradients are averaged with `lax.pmean`, so every device applies the same update.
With one path for all devices this is exactly the 1-device step on the whole batch; with different
paths it is the mean of the per-path gradients (both tested).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from oneshot.models import ops

AXIS = "data"


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over the first `num_devices` devices (0: all of them, every process's)."""
  n = num_devices or jax.device_count()
  if n > jax.device_count():
    from oneshot.errors import UserError  # pylint: disable=import-outside-toplevel
    raise UserError(f"--config.num_devices={n} but only {jax.device_count()} devices are visible; "
                    "use 0 for all")
  devices = jax.devices()[:n]
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def shard_batch(mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This process's slice of the global batch -> global arrays split over 'data'."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def shard_paths(mesh, paths: np.ndarray) -> jax.Array:
  """[num_devices, D] paths (identical on every process) -> one row per device."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.make_array_from_callback(paths.shape, sharding, lambda idx: paths[idx])


def replicate(mesh, tree: Any) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, P()))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_optimizer(config, num_steps: int | None = None) -> optax.GradientTransformation:
  """The config's optimizer, its schedule spanning `num_steps` (default: train.num_steps, the search's
  length; a stand-alone child passes its own length, `standalone_steps`)."""
  t = config.train
  num_steps = int(t.num_steps if num_steps is None else num_steps)
  schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps,
                                                max(num_steps, t.warmup_steps + 1))
  return optax.chain(optax.add_decayed_weights(t.weight_decay),
                     optax.sgd(schedule, momentum=t.momentum, nesterov=True))


def keep_if_finite(loss: jax.Array, grads: Any, new: Any, old: Any) -> tuple[Any, jax.Array]:
  """(`new` if loss and every gradient are finite else `old`, finite): a NaN/Inf step changes nothing.

  One check over all gradients at once and one `lax.cond` for the whole state, not a check and a select
  per leaf: per-leaf guards add a fusion per parameter to what XLA compiles, for the same values and
  step time (the compile times before and after are in docs/results.md, "compile time")."""
  leaves = [jnp.ravel(g) for g in jax.tree.leaves(grads)]
  finite = jnp.isfinite(loss)
  if leaves:
    finite &= jnp.all(jnp.isfinite(jnp.concatenate(leaves)))
  return lax.cond(finite, lambda: new, lambda: old), finite


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, mesh,
                    frozen: dict, sync_batch_norm: bool = False) -> Callable:
  """(params, opt_state, batch, paths) -> (params, opt_state, metrics).

  A step whose loss is NaN/Inf leaves params and optimizer state unchanged and reports `finite=0`.
  `frozen` holds the non-trained collections (the supernet's unused batch_stats).
  """

  def per_device(params, opt_state, image, label, path):
    def loss_fn(p):
      with ops.batch_stats_axis(AXIS if sync_batch_norm else None):
        logits = model.apply({"params": p, **frozen}, image, path[0])
      loss = cross_entropy(logits, label).mean()
      return loss, (logits.argmax(-1) == label).mean()

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = lax.pmean(grads, AXIS)
    loss, accuracy = lax.pmean(loss, AXIS), lax.pmean(accuracy, AXIS)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    (new_params, new_opt), finite = keep_if_finite(loss, grads, (new_params, new_opt),
                                                   (params, opt_state))
    metrics = {"loss": loss, "accuracy": accuracy, "finite": finite.astype(jnp.int32)}
    return new_params, new_opt, metrics

  step = jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS)),
                       out_specs=(P(), P(), P()), check_vma=False)

  @jax.jit
  def train_step(params, opt_state, batch, paths):
    return step(params, opt_state, batch["image"], batch["label"], paths)

  return train_step


def make_arch_step(model: nn.Module, controller: Any, mesh, frozen: dict,
                   penalty: Callable | None = None) -> Callable:
  """(params, controller state, validation batch, key) -> (controller state, metrics): one gradient
  step of a gradient-based controller (`controllers.gradient`) on the validation loss, first order.

  Each device relaxes the logits with its own noise (`fold_in` of its index: GDAS and ProxylessNAS
  sample per device, as the weight step's paths) and runs the supernet on the choice weights; the
  gradients in the logits are averaged over devices. A NaN/Inf loss leaves the controller unchanged.
  `penalty(probabilities [D, K])`: a differentiable hardware term added to the loss (the latency
  target's expected latency, `hardware.target.LatencyTarget.expected_penalty`).
  """

  def per_device(params, alpha, step, image, label, key):
    key = jax.random.fold_in(key, lax.axis_index(AXIS))

    def loss_fn(a):
      logits = model.apply({"params": params, **frozen}, image, controller.relax(a, key, step))
      loss = cross_entropy(logits, label).mean()
      if penalty is not None:
        loss = loss + penalty(jax.nn.softmax(controller.logits(a), axis=-1))
      return loss, (logits.argmax(-1) == label).mean()

    (loss, accuracy), grad = jax.value_and_grad(loss_fn, has_aux=True)(alpha)
    return lax.pmean(grad, AXIS), lax.pmean(loss, AXIS), lax.pmean(accuracy, AXIS)

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P(AXIS), P()),
                       out_specs=(P(), P(), P()), check_vma=False)

  @jax.jit
  def arch_step(params, state, batch, key):
    grad, loss, accuracy = step(params, state["alpha"], state["step"], batch["image"],
                                batch["label"], key)
    new, finite = keep_if_finite(loss, grad, controller.apply_gradient(state, grad), state)
    del finite
    return new, {"arch_loss": loss, "arch_accuracy": accuracy}

  return arch_step


def make_score_step(model: nn.Module, mesh, frozen: dict) -> Callable:
  """(params, batch with 'mask', paths) -> [num_devices, 2]: each device's (correct, real rows) for
  its own path on its shard, gathered on every process so every host's controller sees the same.

  One compiled forward serves controller rewards and whole-split evaluation (same batch shape: the
  compile is paid once)."""

  def per_device(params, image, label, mask, path):
    logits = model.apply({"params": params, **frozen}, image, path[0])
    correct = ((logits.argmax(-1) == label) * mask).sum()
    return lax.all_gather(jnp.stack([correct, mask.sum()]), AXIS)

  step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS)),
                       out_specs=P(), check_vma=False)
  return jax.jit(step)


def make_reward_step(model: nn.Module, mesh, frozen: dict,
                     score_step: Callable | None = None) -> Callable:
  """(params, batch, paths) -> accuracy [num_devices] of each device's own path on its shard."""
  score_step = score_step or make_score_step(model, mesh, frozen)

  def reward_step(params, batch, paths):
    mask = batch.get("mask")
    if mask is None:
      mask = jnp.ones(batch["label"].shape, jnp.float32, device=batch["label"].sharding)
    scores = score_step(params, batch["image"], batch["label"], mask, paths)
    return scores[:, 0] / jnp.maximum(scores[:, 1], 1.0)

  return reward_step


class StepMetrics:
  """The device metrics of every step since the last read, fetched in one transfer when the loop needs
  them (a logged, checkpointed, stopping or final step).

  Reading a device value every step would block the host until that step ends, so the next batch and
  path could not be prepared while the device computes. Counting stays exact: `read` sees every
  step's `finite` flag, counts the non-finite ones and tracks the run of consecutive ones across reads.
  """

  def __init__(self, max_nonfinite_steps: int):
    self.max_nonfinite_steps = max_nonfinite_steps
    self.pending: list[tuple[int, dict]] = []
    self.consecutive_nonfinite = 0
    self.nonfinite = 0  # since the last logged row
    self.restart_clock()

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))

  def restart_clock(self) -> None:
    """Starts the next `step_seconds` interval now (after a checkpoint, which is not a step)."""
    self.since, self.steps = time.time(), 0

  def read(self, logged: bool) -> dict:
    """The newest step's metrics as floats, `nonfinite` (non-finite steps since the last logged row)
    and `step_seconds` (mean wall time per step since the last read). A `logged` read starts the next
    row's count. Raises UserError once `max_nonfinite_steps` consecutive steps were non-finite (their
    updates were skipped, so the weights and the last checkpoint are the ones before the run)."""
    from oneshot.errors import UserError  # pylint: disable=import-outside-toplevel
    values = jax.device_get([m for _, m in self.pending])
    for (step, _), value in zip(self.pending, values):
      finite = bool(value["finite"])
      self.nonfinite += not finite
      self.consecutive_nonfinite = 0 if finite else self.consecutive_nonfinite + 1
      if self.consecutive_nonfinite >= self.max_nonfinite_steps:
        raise UserError(f"{self.consecutive_nonfinite} consecutive steps had a NaN/Inf loss at step "
                        f"{step}; lower --config.train.learning_rate (the last good checkpoint is kept)")
    row = {k: float(v) for k, v in values[-1].items() if k != "finite"} if values else {}
    row.update(nonfinite=self.nonfinite,
               step_seconds=(time.time() - self.since) / max(1, self.steps + len(values)))
    self.steps += len(values)
    self.pending = []
    if logged:
      self.nonfinite = 0
      self.restart_clock()
    return row


# --- a stand-alone child (oneshot train, rank's trainings, the band table) ------------------------------
def standalone_steps(config) -> int:
  """A stand-alone child's training length: train.standalone_steps when > 0, else train.num_steps."""
  steps_ = int(config.train.get("standalone_steps", 0) or 0)
  return steps_ if steps_ > 0 else int(config.train.num_steps)


def make_child_train_step(model: nn.Module, tx: optax.GradientTransformation) -> Callable:
  """(params, batch_stats, opt_state, image, label) -> (params, batch_stats, opt_state, metrics) for a
  child's own network on one device; BatchNorm keeps its running averages the usual way.

  As the search's step, a NaN/Inf loss leaves every state unchanged and reports `finite=0`.
  """

  @jax.jit
  def train_step(params, batch_stats, opt_state, image, label):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": batch_stats}, image, train=True,
                                mutable=["batch_stats"])
      loss = cross_entropy(logits, label).mean()
      return loss, (new["batch_stats"], (logits.argmax(-1) == label).mean())

    (loss, (new_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    kept, finite = keep_if_finite(loss, grads, (new_params, new_stats, new_opt),
                                  (params, batch_stats, opt_state))
    metrics = {"loss": loss, "accuracy": accuracy, "finite": finite.astype(jnp.int32)}
    return (*kept, metrics)

  return train_step

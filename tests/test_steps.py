"""The shard_map step is the pmapped TuNAS step: per-device paths, pmean of gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from oneshot import spaces
from oneshot import steps, supernet

CONFIG = dict(name="mobilenet", stem_filters=8, stem_stride=1, stages=((8, 1, 1), (8, 2, 2)),
              kernel_sizes=(3, 5), expansion_ratios=(2, 3), width_multipliers=(0.5, 1.0),
              allow_skip=True)
SPACE = spaces.build(CONFIG)
B = 32


@functools.lru_cache(maxsize=None)  # one supernet per executor for the module
def _built(executor: str):
  assert jax.device_count() == 8, "conftest sets 8 CPU devices"
  model = supernet.build(SPACE, 10, 1, executor, "shift")
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(B, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, B).astype(np.int32)}
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(batch["image"][:1]),
                         jnp.zeros(SPACE.num_decisions, jnp.int32))
  params = variables.pop("params")
  return model, params, dict(variables), batch


@pytest.fixture
def setup():
  return _built("mask")


def _step(model, params, frozen, batch, paths, num_devices, sync=False):
  mesh = steps.make_mesh(num_devices)
  tx = optax.sgd(1.0)
  step = steps.make_train_step(model, tx, mesh, steps.replicate(mesh, frozen), sync)
  params_r = steps.replicate(mesh, params)
  new, _, metrics = step(params_r, steps.replicate(mesh, tx.init(params)),
                         steps.shard_batch(mesh, batch), steps.shard_paths(mesh, paths))
  return new, metrics


@pytest.mark.slow
def test_same_path_on_8_devices_equals_one_device_on_whole_batch(setup):
  model, params, frozen, batch = setup
  dna = np.asarray(SPACE.sample(np.random.default_rng(1)), np.int32)
  one, _ = _step(model, params, frozen, batch, dna[None], 1)
  eight, _ = _step(model, params, frozen, batch, np.tile(dna, (8, 1)), 8, sync=True)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("executor", ["switch", "mask"])
@pytest.mark.slow
def test_different_paths_average_the_per_path_gradients(executor):
  """Both executors: `switch` is what `auto` picks on every platform (the default search, ENAS)."""
  model, params, frozen, batch = _built(executor)
  paths = SPACE.sample(np.random.default_rng(2), 8)
  assert len({tuple(p) for p in paths}) > 1
  eight, _ = _step(model, params, frozen, batch, paths, 8)

  @jax.jit  # one compile for the 8 paths (the DNA is traced)
  def grad(dna, shard):
    def loss(p):
      logits = model.apply({"params": p, **frozen}, shard["image"], dna)
      return steps.cross_entropy(logits, shard["label"]).mean()
    return jax.grad(loss)(params)

  per = B // 8
  grads = [grad(paths[d], {k: v[d * per:(d + 1) * per] for k, v in batch.items()})
           for d in range(8)]
  mean = jax.tree.map(lambda *g: sum(g) / 8, *grads)
  expected = jax.tree.map(lambda p, g: p - g, params, mean)  # sgd, lr 1
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_nonfinite_loss_leaves_params_unchanged(setup):
  model, params, frozen, batch = setup
  bad = dict(batch, image=np.full_like(batch["image"], np.nan))
  paths = SPACE.sample(np.random.default_rng(3), 8)
  new, metrics = _step(model, params, frozen, bad, paths, 8)
  assert int(metrics["finite"]) == 0
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [None, np.inf, -np.inf, np.nan])
def test_one_nonfinite_gradient_entry_anywhere_keeps_the_old_state(bad):
  """The finite check covers every entry of every gradient leaf, whatever its dtype, not only the loss."""
  grads = {"a": jnp.ones((3, 4)), "b": [jnp.ones(5, jnp.bfloat16), jnp.ones(())]}
  new = {"w": jnp.full((2,), 2.0), "n": jnp.int32(7)}
  old = {"w": jnp.zeros((2,)), "n": jnp.int32(1)}
  for leaf in range(3):
    poisoned = jax.tree.leaves(grads)
    if bad is not None:
      poisoned[leaf] = poisoned[leaf].ravel().at[-1].set(bad).reshape(poisoned[leaf].shape)
    kept, finite = jax.jit(steps.keep_if_finite)(
        jnp.float32(1.0), jax.tree.unflatten(jax.tree.structure(grads), poisoned), new, old)
    expected = new if bad is None else old
    assert bool(finite) == (bad is None)
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)


def test_step_metrics_count_every_nonfinite_step_and_runs_across_reads():
  """The loop reads device metrics only now and then; no step's flag may be lost, and a run of
  non-finite steps that spans two reads still stops the search at its `max`-th step."""
  from oneshot.errors import UserError  # pylint: disable=import-outside-toplevel
  pending = steps.StepMetrics(max_nonfinite_steps=3)
  flags = {0: 1, 1: 0, 2: 1, 3: 0, 4: 0}  # step -> finite
  for step, finite in flags.items():
    pending.add(step, {"loss": jnp.float32(step), "finite": jnp.int32(finite)})
  row = pending.read(logged=False)
  assert row["loss"] == 4.0 and row["nonfinite"] == 3 and row["step_seconds"] >= 0
  assert pending.read(logged=True)["nonfinite"] == 3  # counted until a row is logged
  pending.add(5, {"loss": jnp.float32(5), "finite": jnp.int32(1)})
  assert pending.read(logged=True)["nonfinite"] == 0  # a finite step ends the run of 2
  for step in (6, 7, 8, 9):
    pending.add(step, {"loss": jnp.float32(step), "finite": jnp.int32(0)})
  with pytest.raises(UserError, match="3 consecutive steps had a NaN/Inf loss at step 8"):
    pending.read(logged=False)

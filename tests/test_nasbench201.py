"""NAS-Bench-201 supernet vs standalone child: same logits, same gradients, child tree = selection.

The supernet runs the DNA as a traced array (one compilation for every cell), so each executor is jitted
once and fed several DNAs, including ones with 'none' edges, a node with no live input and an all-none
cell. Tiny sizes (C=4, N=1, batch 8) keep the file fast on a shared CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from oneshot.models.nasbench201_child import NasBench201
from oneshot.supernet.nasbench201_supernet import NasBench201Supernet, child_variables
from oneshot.spaces import nasbench201

SPACE = nasbench201.build(dict(channels=4, cells_per_stage=1))
NUM_CLASSES = 10
# Op indices: 0 none, 1 skip_connect, 2 nor_conv_1x1, 3 nor_conv_3x3, 4 avg_pool_3x3.
DNAS = [
    (3, 3, 3, 3, 3, 3),   # every edge a 3x3 conv
    (0, 0, 0, 0, 0, 0),   # all-none cell: the network sees only the shared layers
    (0, 3, 0, 2, 0, 0),   # node1 has no live input, but edge(3<-1) reads it... as none
    (0, 0, 2, 4, 3, 1),   # node1 and node2 are zero; convs on zero nodes still add their BN bias
    (2, 1, 4, 0, 3, 2),
] + [tuple(int(i) for i in d) for d in SPACE.sample(np.random.default_rng(0), 1)]


def _images():
  return jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))


def _labels():
  return jnp.arange(8) % NUM_CLASSES


@functools.lru_cache(maxsize=None)
def _supernet(executor: str):
  """(module, variables, jitted apply(variables, x, dna)) per executor; init is deterministic."""
  model = NasBench201Supernet(SPACE, NUM_CLASSES, 1, executor)
  variables = model.init(jax.random.PRNGKey(1), _images(), jnp.zeros(SPACE.num_decisions, jnp.int32))
  return model, variables, jax.jit(model.apply)


def _child(dna):
  return NasBench201(dict(SPACE.skeleton), SPACE.to_values(dna), NUM_CLASSES, 1)


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("executor", ["switch", "mask"])
@pytest.mark.slow
def test_supernet_logits_match_child(executor):
  model, variables, apply = _supernet(executor)
  x = _images()
  for dna in DNAS:
    logits = apply(variables, x, jnp.asarray(dna, jnp.int32))
    sliced = child_variables(SPACE, variables, dna)
    expected, _ = _child(dna).apply(sliced, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=0,
                               err_msg=f"{executor} {SPACE.format(dna)}")
  del model


@pytest.mark.slow
def test_child_variables_are_the_child_tree():
  _, variables, _ = _supernet("mask")
  total = _count(variables["params"])
  for dna in DNAS:
    sliced = child_variables(SPACE, variables, dna)
    own = _child(dna).init(jax.random.PRNGKey(2), _images())
    # Same names, same shapes, every collection (params and batch_stats).
    assert (jax.tree_util.tree_map(np.shape, sliced) == jax.tree_util.tree_map(np.shape, own)), dna
    assert _count(own["params"]) == _count(sliced["params"]) < total
    # Weights only for the conv ops the cell names, once per cell (3 cells at N=1).
    convs = sum(SPACE.decisions[i].choices[c].startswith("nor_conv") for i, c in enumerate(dna))
    assert sum(name.startswith("cell") for name in own["params"]) == 3 * convs


@pytest.mark.slow
def test_all_none_cell_is_shared_layers_only():
  _, variables, _ = _supernet("switch")
  sliced = child_variables(SPACE, variables, (0,) * SPACE.num_decisions)
  assert sorted(sliced["params"]) == ["classifier", "lastact", "reduce1", "reduce2", "stem"]


def _loss(logits):
  return optax.softmax_cross_entropy_with_integer_labels(logits, _labels()).mean()


@pytest.mark.slow
def test_switch_gradient_matches_child():
  model, variables, _ = _supernet("switch")
  dna = (2, 1, 3, 0, 4, 3)
  x = _images()

  @jax.jit
  def supernet_grad(params, dna_array):
    return jax.grad(lambda p: _loss(model.apply({**variables, "params": p}, x, dna_array)))(params)

  grads = supernet_grad(variables["params"], jnp.asarray(dna, jnp.int32))
  sliced = child_variables(SPACE, variables, dna)
  child = _child(dna)

  def child_loss(p):
    logits, _ = child.apply({**sliced, "params": p}, x, train=True, mutable=["batch_stats"])
    return _loss(logits)

  expected = jax.grad(child_loss)(sliced["params"])
  got = child_variables(SPACE, {"params": grads}, dna)["params"]
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
  for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-5, rtol=0,
                               err_msg=jax.tree_util.keystr(path))
  # Weights of ops the path did not take get exactly zero gradient.
  unused = {k: v for k, v in grads.items() if k not in got}
  assert unused and all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree_util.tree_leaves(unused))


def test_unknown_executor_is_rejected():
  model = NasBench201Supernet(SPACE, NUM_CLASSES, 1, "gather")
  with pytest.raises(ValueError, match="executor"):
    model.init(jax.random.PRNGKey(0), _images(), jnp.zeros(SPACE.num_decisions, jnp.int32))

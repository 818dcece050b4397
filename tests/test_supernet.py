"""Every executor runs exactly the standalone child built from the same (sliced) weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oneshot import spaces
from oneshot import supernet
from oneshot.models import ops

CONFIG = dict(name="mobilenet", stem_filters=8, stem_stride=1, stages=((8, 1, 1), (12, 2, 2)),
              kernel_sizes=(3, 5, 7), expansion_ratios=(3, 6), width_multipliers=(0.5, 1.0),
              allow_skip=True, head_filters=16)
SPACE = spaces.build(CONFIG)
X = jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 1))
LABELS = jnp.arange(16) % 10


def _loss(logits):
  return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), LABELS])


@pytest.fixture(scope="module")
def variables():
  model = supernet.build(SPACE, 10, 1, "mask", "shift")
  return jax.jit(model.init)(jax.random.PRNGKey(0), X, jnp.zeros(SPACE.num_decisions, jnp.int32))


@pytest.mark.parametrize("executor", ["switch", "switch_exact", "mask"])
@pytest.mark.slow
def test_executor_matches_standalone_child(executor, variables):
  model = supernet.build(SPACE, 10, 1, executor, "shift")
  forward = jax.jit(model.apply)
  rng = np.random.default_rng(0)
  dnas = [SPACE.sample(rng) for _ in range(4)] + [tuple([0] * SPACE.num_decisions)]
  for dna in dnas:
    child = supernet.child_model(SPACE, dna, 10, 1, "shift")
    child_vars = supernet.child_variables(SPACE, variables, dna)
    expected, _ = child.apply(child_vars, X, mutable=["batch_stats"])
    got = forward(variables, X, jnp.asarray(dna))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_switch_gradient_matches_child_gradient_on_shared_weights():
  # A smaller space than the value tests: the switch gradient is the slowest thing here to compile.
  space = spaces.build(dict(CONFIG, stages=((8, 2, 2),), kernel_sizes=(3, 5)))
  model = supernet.build(space, 10, 1, "switch", "shift")
  variables = model.init(jax.random.PRNGKey(0), X, jnp.zeros(space.num_decisions, jnp.int32))
  dna = (1, 1, 1, 0, 1, 0)  # width 1.0, block0 k5 e6, block1 k3 e6 kept
  child = supernet.child_model(space, dna, 10, 1, "shift")
  child_vars = supernet.child_variables(space, variables, dna)
  g_super = jax.jit(jax.grad(lambda p: _loss(model.apply({**variables, "params": p}, X,
                                                         jnp.asarray(dna)))))(variables["params"])
  g_child = jax.jit(jax.grad(lambda p: _loss(child.apply(
      {**child_vars, "params": p}, X, mutable=["batch_stats"])[0])))(child_vars["params"])
  sliced = supernet.child_variables(space, {"params": g_super}, dna)["params"]
  for a, b in zip(jax.tree.leaves(sliced), jax.tree.leaves(g_child)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_child_has_fewer_parameters_than_supernet(variables):
  dna = SPACE.sample(np.random.default_rng(5))
  child = supernet.child_model(SPACE, dna, 10, 1, "shift")
  count = lambda t: sum(x.size for x in jax.tree.leaves(t))
  child_init = child.init(jax.random.PRNGKey(0), X)["params"]
  sliced = supernet.child_variables(SPACE, variables, dna)["params"]
  assert count(child_init) == count(sliced) < count(variables["params"])
  assert jax.tree.structure(child_init) == jax.tree.structure(sliced)


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 1)])
@pytest.mark.slow
def test_shift_depthwise_matches_xla_value_and_gradients(k, stride):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 6))
  f = lambda impl: (lambda x, w: jnp.sum(jnp.sin(ops.depthwise_conv2d(x, w, stride, impl))))
  np.testing.assert_allclose(ops.depthwise_conv2d(x, w, stride, "shift"),
                             ops.depthwise_conv2d(x, w, stride, "xla"), atol=1e-4)
  gs = jax.grad(f("shift"), argnums=(0, 1))(x, w)
  gx = jax.grad(f("xla"), argnums=(0, 1))(x, w)
  for a, b in zip(gs, gx):
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("impl", ["shift", "xla"])
@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 1)])
@pytest.mark.slow
def test_traced_kernel_size_runs_the_centre_of_the_largest_kernel(impl, k, stride):
  """The switch executor's one depthwise op for all kernel sizes: a traced `size` on the 7x7 kernel
  computes the k x k centre's convolution, and taps outside the centre get no gradient."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (7, 7, 6))
  off = (7 - k) // 2
  centre = lambda w: w[off:off + k, off:off + k]
  loss = lambda x, w, size: jnp.sum(jnp.sin(ops.depthwise_conv2d(x, w, stride, impl, size)))
  traced = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w, jnp.int32(k))
  static = jax.value_and_grad(lambda x, c: loss(x, c, None), argnums=(0, 1))(x, centre(w))
  np.testing.assert_allclose(traced[0], static[0], rtol=1e-5)
  np.testing.assert_allclose(traced[1][0], static[1][0], atol=1e-5)
  np.testing.assert_allclose(centre(traced[1][1]), static[1][1], atol=1e-4, rtol=1e-5)
  assert not np.asarray(traced[1][1].at[off:off + k, off:off + k].set(0)).any()


@pytest.mark.parametrize("path", ["gemm", "taps", "blocks"])
@pytest.mark.parametrize("k,stride,h", [(3, 1, 8), (5, 2, 8), (7, 2, 7), (7, 1, 8)])
@pytest.mark.slow
def test_every_shift_weight_gradient_path_matches_xla(monkeypatch, path, k, stride, h):
  """The shift op's three ways to the weight gradient (one batched GEMM, a loop of one reduction
  per tap, that loop over blocks of images) give XLA's value and gradients, with a traced centre
  size on a 7x7 kernel and odd sizes under stride 2. The shape thresholds that choose among them
  are forced, since the shapes here are small."""
  monkeypatch.setattr(ops, "_GEMM_BELOW", 1 << 30 if path == "gemm" else 0)
  if path == "blocks":  # 4 images in blocks of 2
    monkeypatch.setattr(ops, "_CACHE_FLOATS", 0)
    monkeypatch.setattr(ops, "_BLOCK_FLOATS", 2 * h * h * 6)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, h, h, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (7, 7, 6))
  off = (7 - k) // 2
  loss = lambda x, w, impl, size: jnp.sum(jnp.sin(ops.depthwise_conv2d(x, w, stride, impl, size)))
  shift = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(x, w, "shift",
                                                                               jnp.int32(k))
  xla = jax.value_and_grad(loss, argnums=(0, 1))(x, w[off:off + k, off:off + k], "xla", None)
  np.testing.assert_allclose(shift[0], xla[0], rtol=1e-5)
  np.testing.assert_allclose(shift[1][0], xla[1][0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(shift[1][1][off:off + k, off:off + k], xla[1][1], atol=1e-3, rtol=1e-4)
  assert not np.asarray(shift[1][1].at[off:off + k, off:off + k].set(0)).any()


def test_unknown_executor_is_a_user_error():
  from oneshot.errors import UserError
  with pytest.raises(UserError, match="executor"):
    supernet.resolve_executor("pmap")


@pytest.mark.parametrize("executor", ["switch", "mask"])
@pytest.mark.slow
def test_separate_depthwise_weights_per_kernel_match_the_child(executor):
  """TuNAS's sharing: each kernel size has its own depthwise kernel and BN; the child gets them."""
  model = supernet.build(SPACE, 10, 1, executor, "shift", "separate")
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), X, jnp.zeros(SPACE.num_decisions, jnp.int32))
  params = variables["params"]
  assert {"block0_depthwise_k3", "block0_depthwise_k5", "block0_depthwise_k7"} <= set(params)
  assert "block0_depthwise" not in params and params["block0_depthwise_k3"]["kernel"].shape[:2] == (3, 3)
  forward = jax.jit(model.apply)
  rng = np.random.default_rng(3)
  for dna in [SPACE.sample(rng) for _ in range(3)] + [tuple([0] * SPACE.num_decisions)]:
    child = supernet.child_model(SPACE, dna, 10, 1, "shift")
    child_vars = supernet.child_variables(SPACE, variables, dna)
    expected, _ = child.apply(child_vars, X, mutable=["batch_stats"])
    np.testing.assert_allclose(forward(variables, X, jnp.asarray(dna)), expected, atol=1e-5, rtol=1e-5)
  # Only the chosen kernel size's weights learn from a path.
  dna = list(SPACE.sample(rng))
  dna[SPACE.names.index("block0/kernel")] = 1  # k5
  grads = jax.jit(jax.grad(lambda p: _loss(model.apply({**variables, "params": p}, X,
                                                       jnp.asarray(dna)))))(params)
  assert float(jnp.abs(grads["block0_depthwise_k5"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["block0_depthwise_k3"]["kernel"]).sum()) == 0
  assert float(jnp.abs(grads["block0_depthwise_k7"]["kernel"]).sum()) == 0


@pytest.mark.parametrize("executor", ["switch", "mask"])
@pytest.mark.slow
def test_kernel_transform_matches_the_child(executor):
  """Once-for-All's sharing: a smaller kernel is the larger one's centre through a learned matrix; the
  child's kernel is the transformed one, and its gradient reaches the matrices."""
  model = supernet.build(SPACE, 10, 1, executor, "shift", "transform")
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), X, jnp.zeros(SPACE.num_decisions, jnp.int32))
  params = variables["params"]
  assert params["block0_transform"]["k5"].shape == (25, 25) and "k7" not in params["block0_transform"]
  np.testing.assert_array_equal(params["block0_transform"]["k3"], np.eye(9))  # starts as the slice
  # Non-identity matrices, so the test can tell a transformed kernel from a plain centre slice.
  params = jax.tree.map(lambda p: p, params)
  for name in [n for n in params if n.endswith("_transform")]:
    params[name] = {k: m + 0.1 * jax.random.normal(jax.random.PRNGKey(len(k)), m.shape)
                    for k, m in params[name].items()}
  variables = {**variables, "params": params}
  forward = jax.jit(model.apply)
  rng = np.random.default_rng(4)
  for dna in [SPACE.sample(rng) for _ in range(3)] + [tuple([0] * SPACE.num_decisions)]:
    child = supernet.child_model(SPACE, dna, 10, 1, "shift")
    child_vars = supernet.child_variables(SPACE, variables, dna)
    assert not any(n.endswith("_transform") for n in child_vars["params"])
    expected, _ = child.apply(child_vars, X, mutable=["batch_stats"])
    np.testing.assert_allclose(forward(variables, X, jnp.asarray(dna)), expected, atol=1e-5, rtol=1e-5)
  dna = [0] * SPACE.num_decisions
  dna[SPACE.names.index("block0/kernel")] = 0  # k3: through both matrices
  grads = jax.jit(jax.grad(lambda p: _loss(model.apply({**variables, "params": p}, X,
                                                       jnp.asarray(dna)))))(params)
  assert float(jnp.abs(grads["block0_transform"]["k3"]).sum()) > 0
  assert float(jnp.abs(grads["block0_transform"]["k5"]).sum()) > 0


@pytest.mark.slow
def test_blocks_keep_their_residual_when_depth_is_not_searched():
  """allow_skip=False removes the skip decisions, not the residual of stride-1, equal-width blocks."""
  from oneshot.models.mobilenet_child import plan  # pylint: disable=import-outside-toplevel
  space = spaces.build(dict(CONFIG, allow_skip=False, width_multipliers=(1.0,)))
  assert not any(name.endswith("/skip") for name in space.names)
  dna = tuple([0] * space.num_decisions)
  assert [b.residual for b in plan(space.skeleton, space.to_values(dna))] == [False, False, True]
  model = supernet.build(space, 10, 1, "switch", "shift")
  variables = model.init(jax.random.PRNGKey(0), X, jnp.asarray(dna))
  child = supernet.child_model(space, dna, 10, 1, "shift")
  expected, _ = child.apply(supernet.child_variables(space, variables, dna), X, mutable=["batch_stats"])
  np.testing.assert_allclose(model.apply(variables, X, jnp.asarray(dna)), expected, atol=1e-5, rtol=1e-5)

"""Gradient-based controllers (DARTS, GDAS, ProxylessNAS): their relaxations, the supernets on choice
weights, the architecture step in the search loop, exact resume, and where they are refused."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oneshot import UserError, api, cli, controllers, nas, search_loop, spaces, supernet
from oneshot.spaces.core import Decision, Space
from tests.conftest import REPO, tiny_config

SPACE = Space("toy", (Decision("a", (1, 2, 3)), Decision("b", (1, 2)), Decision("c", (1, 2, 3, 4))))


def _controller(name, **config):
  return controllers.build(name, SPACE, {"num_steps": 100, **config})


def test_darts_is_the_softmax_of_the_logits():
  c = _controller("darts")
  alpha = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  w = c.relax(alpha, None, 0)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  assert float(w[1, 2:].sum()) == 0.0                        # padded slots of a 2-choice decision
  np.testing.assert_allclose(w[0, :3], jax.nn.softmax(alpha[0, :3]), rtol=1e-6)


@pytest.mark.slow
def test_gdas_is_one_hot_forward_with_the_tempered_softmax_gradient():
  c = _controller("gdas")
  assert float(c.temperature(0)) == 10.0 and abs(float(c.temperature(99)) - 0.1) < 1e-6
  alpha = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  key = jax.random.PRNGKey(3)
  w = c.relax(alpha, key, 50)
  assert set(np.unique(np.round(np.asarray(w), 6))) <= {0.0, 1.0}
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  assert float(w[1, 2:].sum()) == 0.0
  # The gradient is the tempered softmax's (straight-through), whatever the sampled choice.
  probe = jnp.arange(12.0).reshape(3, 4)
  g = jax.grad(lambda a: jnp.sum(c.relax(a, key, 50) * probe))(alpha)
  logits = c.logits(alpha) + jax.random.gumbel(key, alpha.shape)
  soft = lambda a: jax.nn.softmax((c.logits(a) + jax.random.gumbel(key, a.shape)) / c.temperature(50))
  expected = jax.grad(lambda a: jnp.sum(soft(a) * probe))(alpha)
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
  assert int(jnp.argmax(w[0])) == int(jnp.argmax(logits[0]))


@pytest.mark.slow
def test_proxyless_opens_one_of_two_sampled_gates_and_only_they_learn():
  c = _controller("proxyless")
  alpha = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  for seed in range(5):
    key = jax.random.PRNGKey(seed)
    w = c.relax(alpha, key, 0)
    assert set(np.unique(np.round(np.asarray(w), 6))) <= {0.0, 1.0}
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    g = jax.grad(lambda a: jnp.sum(c.relax(a, key, 0) * jnp.arange(12.0).reshape(3, 4)))(alpha)
    learning = np.asarray(jnp.abs(g) > 0)
    assert (learning.sum(-1) <= 2).all() and learning[:, 0].sum() + learning.sum() > 0
    assert not learning[1, 2:].any()                         # never a padded slot
    assert all(learning[d, int(jnp.argmax(w[d]))] or learning[d].sum() == 0 for d in range(3))


@pytest.mark.parametrize("name", ["darts", "gdas", "proxyless"])
def test_adam_step_follows_the_papers_settings(name):
  c = _controller(name)
  state = c.init(jax.random.PRNGKey(0))
  grad = jnp.ones((3, 4))
  new = c.apply_gradient(state, grad)
  lr = 6e-3 if name == "proxyless" else 3e-4
  # Adam's first step moves every real logit by -lr (weight decay is 0 at alpha = 0).
  np.testing.assert_allclose(new["alpha"][0, :3], -lr, rtol=1e-3)
  assert float(jnp.abs(new["alpha"][1, 2:]).sum()) == 0.0 and int(new["step"]) == 1


def test_beta_regularization_pulls_the_leading_logits_down_hardest():
  """beta-DARTS: the gradient of lambda * logsumexp(alpha) is lambda * softmax(alpha), ramped from 0."""
  plain = _controller("darts", weight_decay=0.0)
  reg = _controller("darts", weight_decay=0.0, beta_regularization=2.0)
  alpha = jnp.asarray([[2.0, 0.0, -1.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
  state = {**plain.init(jax.random.PRNGKey(0)), "alpha": alpha, "step": jnp.asarray(99)}
  g = jnp.zeros((3, 4))
  np.testing.assert_array_equal(plain.apply_gradient(state, g)["alpha"], alpha)  # nothing to learn
  moved = reg.apply_gradient(state, g)["alpha"] - alpha
  assert float(moved[0, 0]) < 0 and float(moved[1, 2:].sum()) == 0.0
  # Through Adam every moved logit steps by about -lr; at step 0 the ramp is 0: nothing moves.
  assert float(jnp.abs(reg.apply_gradient({**state, "step": jnp.asarray(0)}, g)["alpha"] - alpha).max()) == 0


MOBILENET = spaces.build(dict(name="mobilenet", stem_filters=8, stem_stride=1, stages=((8, 1, 1), (12, 2, 2)),
                              kernel_sizes=(3, 5), expansion_ratios=(2, 3), width_multipliers=(0.5, 1.0),
                              allow_skip=True, head_filters=0))
NB201 = spaces.build(dict(name="nasbench201", channels=4, cells_per_stage=1))
X = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 1))


class Small(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nas.Choice("k", {3: nn.Conv(4, (3, 3)), 5: nn.Conv(4, (5, 5))})(x)
    x = nas.Choice("op", {"relu": nn.relu, "conv": nn.Conv(4, (1, 1)), "zero": lambda y: 0 * y})(x)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("space_name", ["mobilenet", "nasbench201", "module"])
@pytest.mark.slow
def test_one_hot_choice_weights_run_the_child_and_reach_the_chosen_logit(space_name):
  """Straight-through choice weights (one-hot in value) give the int DNA's logits under both executors;
  under `switch` the gradient reaches the chosen candidate's weight, and equals `mask`'s there."""
  space = {"mobilenet": MOBILENET, "nasbench201": NB201, "module": None}[space_name]
  with nas.serving(Small()) as section:  # one serving: a nested one would unserve Small on exit
    space = space or spaces.build({**section, "input_shape": (8, 8, 1)})
    models = {e: supernet.build(space, 10, 1, e, "shift") for e in ("switch", "mask")}
    variables = models["switch"].init(jax.random.PRNGKey(0), X[:1],
                                      jnp.zeros(space.num_decisions, jnp.int32))
    dna = space.sample(np.random.default_rng(1))
    onehot = jax.nn.one_hot(jnp.asarray(dna), space.max_choices)
    child = models["mask"].apply(variables, X, jnp.asarray(dna))
    grads = {}
    for name, model in models.items():
      loss = lambda w, model=model: (lambda logits: (jnp.sum(jnp.sin(logits)), logits))(
          model.apply(variables, X, w))
      grad, logits = jax.jit(jax.grad(loss, has_aux=True))(onehot)
      np.testing.assert_allclose(logits, child, rtol=1e-5, atol=1e-5)
      grads[name] = np.asarray(grad)
  rows = np.arange(space.num_decisions)
  chosen = grads["switch"][rows, dna]
  assert np.abs(chosen).sum() > 0
  if space_name != "mobilenet":  # mobilenet's mask mixes kernels and widths inside a block (FBNetV2),
    # its switch gates the block's output: two relaxations, equal only in value
    np.testing.assert_allclose(chosen, grads["mask"][rows, dna], rtol=1e-3, atol=1e-5)


def _zero_vs_relu_search(tmp_path, name, steps=30):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 300)
  images = (rng.normal(size=(300, 8, 8, 1)) + labels[:, None, None, None] / 3).astype(np.float32)
  data = api.Arrays(train=(images[:200], labels[:200]), validation=(images[200:], labels[200:]))
  config = tiny_config(num_steps=steps, checkpoint_every=steps, log_every=10)
  config.controller.name = name
  config.controller.learning_rate = 0.05
  config.train.uniform_fraction = 0.3
  config.supernet.executor = "auto"
  return api.search(config, str(tmp_path / name), data=data, model=Small())


@pytest.mark.parametrize("name", ["darts", "gdas", "proxyless"])
@pytest.mark.slow
def test_architecture_step_moves_away_from_a_zero_op(tmp_path, name):
  """A choice between ReLU, a conv and multiplying by zero: the validation gradient must make 'zero'
  the least likely op (its output carries no information about the label)."""
  result = _zero_vs_relu_search(tmp_path, name)
  op = result.record["controller"]["op"]
  assert op[2] < 1 / 3 and op[2] == min(op), op
  with open(result.files["metrics.jsonl"]) as f:
    assert '"arch_accuracy"' in f.read()


@pytest.mark.slow
def test_gradient_controller_resumes_exactly(tmp_path):
  config = tiny_config(num_steps=6, checkpoint_every=3, log_every=2)
  config.controller.name = "gdas"
  config.train.uniform_fraction = 0.0
  straight = search_loop.run(config, str(tmp_path / "a"))
  assert search_loop.run(config, str(tmp_path / "b"), stop_after=3) is None
  resumed = search_loop.run(config, str(tmp_path / "b"))
  assert resumed["dna"] == straight["dna"] and resumed["controller"] == straight["controller"]


def test_mixing_controllers_refuse_the_switch_executor_and_rewards_only_commands(tmp_path, capsys):
  code = cli.main(["search", "--config", f"{REPO}/configs/digits.py", "--workdir", str(tmp_path / "w"),
                   "--config.controller.name=darts", "--config.supernet.executor=switch", "--dry_run"])
  err = capsys.readouterr().err
  assert code == 2 and "executor=mask" in err and err.count("\n") == 1
  with pytest.raises(UserError, match="learns from supernet gradients"):
    controllers.require_reward_based("gdas", "a tabular benchmark")
  assert "gdas" not in controllers.reward_based() and "tunas" in controllers.reward_based()


@pytest.mark.slow
def test_one_device_search_writes_the_usual_files(tmp_path):
  config = tiny_config(num_steps=4, checkpoint_every=4, log_every=2)
  config.controller.name = "proxyless"
  config.num_devices = 1
  config.train.uniform_fraction = 0.0
  result = search_loop.run(config, str(tmp_path))
  assert result["num_devices"] == 1 and result["controller_name"] == "proxyless"
  for name in ("search_result.json", "metrics.jsonl", "controller.png", "controller_history.json",
               "config.json"):
    assert (tmp_path / name).exists(), name


@pytest.mark.slow
def test_gradient_controllers_answer_argmax_alpha_with_the_rescored_pick_beside(tmp_path):
  """DARTS, GDAS and ProxylessNAS answer the argmax of their logits, as their papers do; the generic
  rule's pick (the best rescored finalist) is reported beside it, and `controller.answer="rescored"`
  makes that rule the answer."""
  config = tiny_config(num_steps=4, checkpoint_every=4, log_every=2)
  config.controller.name = "darts"
  config.train.uniform_fraction = 0.0
  config.select.num_candidates = 6
  config.select.top_k = 3
  result = search_loop.run(config, str(tmp_path))
  space = spaces.build(config.space)
  probs = [result["controller"][d.name] for d in space.decisions]
  argmax = space.canonical(np.asarray([[int(np.argmax(p)) for p in probs]], np.int32))[0]
  assert result["dna"] == [int(c) for c in argmax]
  selection = result["selection"]
  assert selection["answer_rule"] == "argmax" and result["reward_basis"] == "controller_argmax"
  pick = selection["rescored_pick"]
  assert pick["rescore"] == max(f["rescore"] for f in selection["finalists"])
  assert pick["accuracy"] is not None and "accuracy" in selection["finalists"][0]
  rescored = controllers.build("darts", space, {"answer": "rescored"})
  assert search_loop.answer_rule(rescored) == "rescored"
  with pytest.raises(UserError, match="controller.answer"):
    controllers.build("gdas", space, {"answer": "best"})

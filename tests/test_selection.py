"""The answer of every controller: candidates rescored with the trained supernet, best wins; and the
controller's life inside a search (its own defaults, no updates during the uniform warm-up)."""

import json
import os

import jax
import numpy as np
import pytest

from oneshot import controllers
from oneshot import spaces
from oneshot.configs.digits import get_config
from oneshot.controllers.evolution import EvolutionController
from oneshot.controllers.rsws import select
from oneshot import checkpoint, search_loop, session as session_lib, steps, storage
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def random_searches(tmp_path_factory):
  """Two seeds of a short random (RSWS) search on the tiny digits space."""
  out = []
  for seed in (0, 1):
    config = tiny_config(num_steps=8, checkpoint_every=8, log_every=2)
    config.controller.name = "random"
    config.seed = seed
    config.select.num_candidates = 40
    config.select.top_k = 5
    workdir = str(tmp_path_factory.mktemp(f"random{seed}"))
    out.append((workdir, config, search_loop.run(config, workdir)))
  return out


@pytest.mark.slow
def test_random_search_answers_the_best_rescored_candidate_and_differs_between_seeds(random_searches):
  (w0, config, r0), (_, _, r1) = random_searches
  assert r0["dna"] != r1["dna"]  # not the argmax of uniform probabilities (all zeros)
  assert r0["selection"]["candidates_scored"] == 40 and len(r0["selection"]["finalists"]) == 5
  assert r0["reward"] == max(f["rescore"] for f in r0["selection"]["finalists"])
  # The figure is a maximum over finalists on the images that chose the answer, and says so.
  assert r0["reward_basis"] == "max_over_finalists"
  # On the supernet, the answer scores at least as well as other random architectures.
  sess = session_lib.build(config)
  state = checkpoint.restore_latest(checkpoint.manager(w0),
                                    sess.initial_state(steps.make_optimizer(config)))[1]
  params = steps.replicate(sess.mesh, state["params"])
  others = sess.space.sample(np.random.default_rng(7), 12)
  scores = [session_lib.evaluate(sess, params, dna) for dna in others]
  assert r0["reward"] >= np.percentile(scores, 75)
  with open(os.path.join(w0, "search_result.json")) as f:
    assert json.load(f)["reward"] == r0["reward"]


@pytest.mark.slow
def test_recalibrated_rescore_is_the_exported_childs_accuracy(random_searches, tmp_path):
  """With `select.recalibrate_batches`, finalists are rescored as `oneshot export` writes them (BN
  recalibrated), the reward is the answer's recalibrated accuracy and the batch-statistics one is kept."""
  from oneshot import child as child_lib  # pylint: disable=import-outside-toplevel
  workdir, config, _ = random_searches[0]
  config = config.copy_and_resolve_references()
  config.select.recalibrate_batches = 3
  sess = session_lib.build(config)
  state = checkpoint.restore_latest(checkpoint.manager(workdir),
                                    sess.initial_state(steps.make_optimizer(config)))[1]
  state["params"] = steps.replicate(sess.mesh, state["params"])
  result = search_loop._finish(sess, state, storage.as_path(tmp_path), [], 0.0, True)

  def recalibrated(dna):
    runner, variables = child_lib.recalibrated_child(sess, state["params"], dna, 3)
    return runner.accuracy(variables, sess.dataset, "validation", config.train.eval_batch_size)

  finalists = result["selection"]["finalists"]
  assert len(finalists) == 5 and result["selection"]["recalibrate_batches"] == 3
  for f in finalists[:2]:
    assert f["rescore"] == pytest.approx(recalibrated(f["dna"]), abs=1e-6)
  assert result["reward"] == max(f["rescore"] for f in finalists)
  assert result["reward"] == pytest.approx(recalibrated(result["dna"]), abs=1e-6)
  batch_stats = [session_lib.evaluate(sess, state["params"], tuple(f["dna"])) for f in finalists]
  assert result["reward_batch_stats"] == batch_stats[[f["dna"] for f in finalists].index(
      list(result["dna"]))]
  assert any(abs(b - f["rescore"]) > 1e-6 for b, f in zip(batch_stats, finalists))
  with open(tmp_path / "search_result.json") as f:
    assert json.load(f)["reward"] == result["reward"]


@pytest.mark.slow
def test_controller_gets_no_feedback_during_the_uniform_warm_up(random_searches):
  workdir, config, _ = random_searches[0]
  sess = session_lib.build(config)
  state = checkpoint.restore_latest(checkpoint.manager(workdir),
                                    sess.initial_state(steps.make_optimizer(config)))[1]
  updates = config.train.num_steps - int(config.train.num_steps * config.train.uniform_fraction)
  assert int(state["controller"]["step"]) == updates == session_lib.controller_config(config)["num_steps"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[0]["step"] == 2 and rows[0]["mean_reward"] is None  # warm-up: steps 1-2 of 8
  assert rows[-1]["mean_reward"] is not None


@pytest.mark.parametrize("name,decay,entropy", [("tunas", 0.95, 0.0), ("enas", 0.99, 1e-4)])
def test_each_controller_runs_with_its_own_defaults(name, decay, entropy):
  config = get_config()
  config.controller.name = name
  controller = controllers.build(name, spaces.build(config.space),
                                 session_lib.controller_config(config))
  assert controller.baseline_decay == decay and controller.entropy_weight == entropy
  config.controller.baseline_decay = 0.5  # an explicit value still reaches the controller
  controller = controllers.build(name, spaces.build(config.space),
                                 session_lib.controller_config(config))
  assert controller.baseline_decay == 0.5


def test_evolution_answer_is_rescored_not_the_luckiest_minibatch():
  space = spaces.core.Space("grid", tuple(spaces.Decision(f"d{i}", range(4)) for i in range(3)))
  truth = {tuple(d): float(sum(d)) for d in space.enumerate()}
  controller = EvolutionController(space, {"population_size": 6, "tournament_size": 2})
  state = controller.init(jax.random.PRNGKey(0))
  lucky, good = (0, 0, 1), (3, 3, 2)
  dnas = np.asarray([lucky, good, (1, 1, 1), (2, 0, 0), (0, 2, 1), (1, 0, 3)], np.int32)
  state, _ = controller.feedback(state, dnas, np.asarray([99.0, 7.0, 3.0, 2.0, 3.0, 4.0], np.float32))
  assert controller.best(state) == lucky  # the best single reward ever seen: winner's curse
  candidates = controller.candidates(state, jax.random.PRNGKey(1), 10)
  assert tuple(candidates[0]) == lucky and len(candidates) == 6
  answer, _ = select(space, candidates, lambda d: np.asarray([truth[tuple(r)] for r in d]), top_k=3,
                     rescore_fn=lambda d: truth[d])
  assert answer == good


def test_policy_controllers_offer_their_choice_plus_distinct_samples():
  space = spaces.build(get_config().space)
  for name in ("enas", "tunas"):
    controller = controllers.build(name, space, {"num_steps": 10})
    state = controller.init(jax.random.PRNGKey(0))
    candidates = controller.candidates(state, jax.random.PRNGKey(1), 16)
    assert tuple(candidates[0]) == tuple(space.canonical(controller.best(state)))
    assert len({tuple(c) for c in candidates}) == len(candidates) == 16


def test_candidates_are_distinct_networks_not_distinct_dnas():
  """Two DNAs that differ only in a dropped block's kernel are one network: one candidate slot."""
  space = spaces.build(get_config().space)
  dna = np.zeros(space.num_decisions, np.int32)
  dna[space.names.index("block1/skip")] = 1
  other = dna.copy()
  other[space.names.index("block1/kernel")] = 2
  assert not space.active(dna[None])[0, space.names.index("block1/kernel")]
  assert (space.canonical(other) == dna).all()
  from oneshot.controllers.base import distinct  # pylint: disable=import-outside-toplevel
  assert len(distinct([dna, other, dna], 10, space)) == 1


def test_sync_batch_norm_is_refused_in_a_search():
  config = tiny_config()
  config.supernet.sync_batch_norm = True
  with pytest.raises(session_lib.UserError, match="sync_batch_norm"):
    session_lib.build(config)


@pytest.mark.slow
def test_random_search_without_rewards_has_no_controller_choice(tmp_path):
  """`controller_choice` is the controller's own answer; random search that was never told a reward
  (the whole search on uniform warm-up paths) has none, rather than the all-zeros DNA."""
  config = tiny_config(num_steps=4, checkpoint_every=4, log_every=2, uniform_fraction=1.0)
  config.controller.name = "random"
  config.select.num_candidates = 4
  config.select.top_k = 2
  result = search_loop.run(config, str(tmp_path / "w"))
  assert result["selection"]["controller_choice"] is None
  assert result["dna"] is not None

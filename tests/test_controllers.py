"""Controllers: checkpoint round trips, learning on toy rewards, validity, ENAS log-probs, RSWS."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from oneshot import controllers
from oneshot.controllers.enas import EnasController
from oneshot.controllers.evolution import EvolutionController
from oneshot.controllers.rsws import rsws_select
from oneshot.controllers.tunas import TunasController
from oneshot.errors import UserError
from oneshot.spaces.core import Decision, Space

# Unequal choice counts on purpose: padded logit slots are where masking bugs hide.
MIXED = Space("mixed", (Decision("a", (0, 1, 2)), Decision("b", ("x", "y")), Decision("c", range(5)),
                        Decision("d", (1, 2, 3, 4))))
CONFIGS = {"random": {}, "tunas": {"num_steps": 20, "learning_rate": 0.1},
           "enas": {"hidden_size": 16, "learning_rate": 0.01},
           "evolution": {"population_size": 6, "tournament_size": 3}}


def _toy_reward(dnas: np.ndarray) -> np.ndarray:
  return (np.asarray(dnas) == 1).sum(axis=1).astype(np.float32)


def _train(controller, state, steps: int, batch: int, seed: int = 0):
  key = jax.random.PRNGKey(seed)
  for _ in range(steps):
    key, sub = jax.random.split(key)
    dnas = controller.propose(state, sub, batch)
    state, metrics = controller.feedback(state, dnas, _toy_reward(dnas))
  return state, metrics


@pytest.mark.parametrize("name", ["random", "tunas", "enas", "evolution"])
@pytest.mark.slow
def test_checkpoint_round_trip_keeps_proposals(name, tmp_path):
  controller = controllers.build(name, MIXED, CONFIGS[name])
  state = controller.init(jax.random.PRNGKey(0))
  state, _ = _train(controller, state, steps=4, batch=4)  # past warm-up / the initial population
  key = jax.random.PRNGKey(42)
  before = controller.propose(state, key, 256)  # batch sizes shared across tests: fewer compiles

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "controller", state)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = checkpointer.restore(tmp_path / "controller", abstract)

  assert jax.tree.structure(restored) == jax.tree.structure(state)
  np.testing.assert_array_equal(controller.propose(restored, key, 256), before)
  np.testing.assert_allclose(controller.probabilities(restored), controller.probabilities(state))
  assert controller.best(restored) == controller.best(state)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_proposals_are_always_valid(name):
  controller = controllers.build(name, MIXED, CONFIGS[name])
  state = controller.init(jax.random.PRNGKey(1))
  for step in range(6):
    dnas = controller.propose(state, jax.random.PRNGKey(step), 256)
    assert dnas.shape == (256, MIXED.num_decisions) and dnas.dtype == np.int32
    assert ((dnas >= 0) & (dnas < MIXED.num_choices[None, :])).all()
    state, metrics = controller.feedback(state, dnas[:4], _toy_reward(dnas[:4]))
    assert all(np.isfinite(v) for v in metrics.values())
  p = controller.probabilities(state)
  assert p.shape == (MIXED.num_decisions, MIXED.max_choices)
  np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
  assert (p[~MIXED.choice_mask()] == 0).all()
  assert MIXED.is_valid(controller.best(state))


def test_tunas_concentrates_on_rewarded_choice_and_stays_finite():
  controller = TunasController(MIXED, {"num_steps": 200, "learning_rate": 0.1})
  state = controller.init(jax.random.PRNGKey(0))
  state, metrics = _train(controller, state, steps=200, batch=4)
  p = controller.probabilities(state)
  assert np.isfinite(np.asarray(state["logits"])).all()  # padded slots used to turn whole rows NaN
  assert (p[:, 1] > 0.8).all(), p
  assert controller.best(state) == (1, 1, 1, 1)
  assert metrics["reward"] > 3.0


def test_tunas_learning_rate_is_zero_during_warmup():
  controller = TunasController(MIXED, {"num_steps": 40, "learning_rate": 0.5})
  state = controller.init(jax.random.PRNGKey(0))
  state, _ = _train(controller, state, steps=10, batch=4)  # the first 25% of 40 steps
  np.testing.assert_array_equal(np.asarray(state["logits"]), 0.0)
  assert float(state["baseline"]) > 0  # the baseline still tracks the reward during warm-up
  state, _ = _train(controller, state, steps=1, batch=4, seed=1)
  assert np.abs(np.asarray(state["logits"])).max() > 0


def test_enas_concentrates_on_rewarded_choice():
  controller = EnasController(MIXED, CONFIGS["enas"])
  state = controller.init(jax.random.PRNGKey(0))
  state, metrics = _train(controller, state, steps=150, batch=4)
  p = controller.probabilities(state)
  assert (p[:, 1] > 0.8).all(), p
  assert controller.best(state) == (1, 1, 1, 1)
  assert set(metrics) == {"reward", "baseline", "entropy", "controller_loss"}


@pytest.mark.slow
def test_enas_sampled_log_probs_match_its_log_prob_and_normalize():
  controller = EnasController(MIXED, CONFIGS["enas"])
  state = controller.init(jax.random.PRNGKey(3))
  state, _ = _train(controller, state, steps=3, batch=4)  # away from the symmetric init
  dnas, logp, entropy = controller.sample_with_log_probs(state, jax.random.PRNGKey(5), 256)
  np.testing.assert_allclose(logp, controller.log_probs(state, dnas), rtol=1e-5, atol=1e-5)
  assert (entropy > 0).all()
  every = MIXED.enumerate()  # 120 points: the policy is a distribution over exactly these
  np.testing.assert_allclose(np.exp(controller.log_probs(state, every)).sum(), 1.0, atol=1e-4)


@pytest.mark.slow
def test_enas_logits_are_bounded_by_tanh_constant():
  controller = EnasController(MIXED, {"hidden_size": 16, "tanh_constant": 1.0, "learning_rate": 0.1})
  state = controller.init(jax.random.PRNGKey(0))
  state, _ = _train(controller, state, steps=60, batch=4)
  # With |logit| <= 1, no choice of a 5-way decision can fall below e^-1 / (e^-1 + 4e) = 0.033.
  logp = controller.log_probs(state, MIXED.enumerate())
  bound = sum(np.log(np.exp(-1) / (np.exp(-1) + (k - 1) * np.exp(1))) for k in MIXED.num_choices)
  assert logp.min() >= bound - 1e-4


def test_evolution_finds_optimum_of_separable_problem():
  space = Space("sep", tuple(Decision(f"d{i}", range(4)) for i in range(5)))
  scores = np.random.default_rng(0).normal(size=(5, 4))
  optimum = tuple(int(i) for i in scores.argmax(axis=1))
  controller = EvolutionController(space, {"population_size": 10, "tournament_size": 4})
  state = controller.init(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(0)
  for _ in range(250):
    key, sub = jax.random.split(key)
    dna = controller.propose(state, sub, 1)
    state, _ = controller.feedback(state, dna, scores[np.arange(5), dna[0]].sum(keepdims=True))
  assert controller.best(state) == optimum
  assert int(state["count"]) == 250


def test_evolution_ages_out_the_oldest_and_keeps_best_ever():
  space = Space("line", (Decision("x", range(10)),))
  controller = EvolutionController(space, {"population_size": 3, "tournament_size": 2})
  state = controller.init(jax.random.PRNGKey(0))
  for x, r in [(9, 100.0), (1, 1.0), (2, 2.0), (3, 3.0)]:  # 9 is born first, so it dies first
    state, _ = controller.feedback(state, np.array([[x]]), np.array([r]))
  assert sorted(np.asarray(state["dnas"])[:, 0].tolist()) == [1, 2, 3]
  assert controller.best(state) == (9,)
  assert np.argmax(controller.probabilities(state)[0]) != 9
  with pytest.raises(UserError, match="tournament_size"):
    EvolutionController(space, {"population_size": 3, "tournament_size": 5})


def test_rsws_rescoring_top_k_recovers_true_best():
  space = Space("grid", tuple(Decision(f"d{i}", range(3)) for i in range(4)))
  truth = {tuple(d): float(v) for d, v in
           zip(space.enumerate(), np.random.default_rng(1).permutation(81))}
  noise = np.random.default_rng(2)

  def score_fn(dnas):
    return np.array([truth[tuple(d)] for d in dnas]) + noise.normal(0, 3.0, len(dnas))

  best, table = rsws_select(space, score_fn, num_candidates=81, top_k=20,
                            rescore_fn=lambda dna: truth[dna], seed=0)
  assert best == max(truth, key=truth.get)
  assert len(table) == 81 and len({tuple(r["dna"]) for r in table}) == 81  # distinct candidates
  assert sum(r["rescore"] is not None for r in table) == 20
  assert [r["score"] for r in table] == sorted((r["score"] for r in table), reverse=True)
  with pytest.raises(UserError, match="top_k"):
    rsws_select(space, score_fn, num_candidates=5, top_k=6)


def test_registry_names_every_controller():
  assert set(controllers.registry()) == {"random", "tunas", "enas", "evolution", "darts", "gdas",
                                         "proxyless"}
  assert controllers.reward_based() == ["enas", "evolution", "random", "tunas"]


# -- hierarchical log-probabilities: a skipped block's kernel/expansion choices do not count ----------
def _skippy_space():
  from oneshot import spaces  # pylint: disable=import-outside-toplevel
  return spaces.build({"name": "mobilenet", "stem_filters": 8, "stages": ((8, 2, 1),),
                       "kernel_sizes": (3, 5), "expansion_ratios": (3, 6), "width_multipliers": (1.0,),
                       "allow_skip": True, "head_filters": 0})


def _skipping_batch(space):
  """8 DNAs that all drop block1, with varied (irrelevant) kernel/expansion choices for it."""
  names = space.names
  dnas = np.zeros((8, space.num_decisions), np.int32)
  dnas[:, names.index("block1/skip")] = 1
  dnas[:, names.index("block1/kernel")] = [0, 1, 0, 1, 0, 0, 0, 1]
  dnas[:, names.index("block1/expansion")] = [1, 1, 1, 0, 1, 1, 0, 1]
  return dnas


def test_tunas_log_prob_ignores_choices_of_a_skipped_block():
  space = _skippy_space()
  names = space.names
  controller = TunasController(space, {"num_steps": 10, "warmup_fraction": 0.0, "learning_rate": 0.1})
  state = controller.init(jax.random.PRNGKey(0))
  # A first step with a different reward sets the baseline, so the second has a positive advantage.
  state, _ = controller.feedback(state, _skipping_batch(space), np.full(8, 0.0, np.float32))
  before = np.asarray(state["logits"]).copy()
  state, _ = controller.feedback(state, _skipping_batch(space), np.full(8, 1.0, np.float32))
  after = np.asarray(state["logits"])
  for name in ("block1/kernel", "block1/expansion"):
    np.testing.assert_array_equal(after[names.index(name)], before[names.index(name)], err_msg=name)
  skip = names.index("block1/skip")
  assert after[skip, 1] > before[skip, 1]  # rewarded: skipping became more likely
  kernel0 = names.index("block0/kernel")  # block0 is always active: its choices still learn
  assert not np.array_equal(after[kernel0], before[kernel0])


@pytest.mark.slow
def test_enas_log_prob_is_the_full_probability_of_what_it_sampled():
  """ENAS's LSTM samples a block's kernel and expansion before its skip decision and feeds them on, so
  REINFORCE needs the log-probability of every token it sampled: over all DNAs of the space (a
  skipped block's choices included) the probabilities sum to 1, and the update trains the heads of
  a skipped block's decisions too."""
  space = _skippy_space()
  names = space.names
  controller = EnasController(space, {"hidden_size": 16, "learning_rate": 0.05})
  state = controller.init(jax.random.PRNGKey(0))
  state, _ = controller.feedback(state, _skipping_batch(space), np.full(8, 0.0, np.float32))
  every = space.enumerate()
  np.testing.assert_allclose(np.exp(controller.log_probs(state, every)).sum(), 1.0, atol=1e-4)
  dnas, logp, _ = controller.sample_with_log_probs(state, jax.random.PRNGKey(1), 64)
  np.testing.assert_allclose(logp, controller.log_probs(state, dnas), rtol=1e-5, atol=1e-5)
  before = np.asarray(state["params"]["params"]["head"]).copy()
  state, _ = controller.feedback(state, _skipping_batch(space), np.full(8, 1.0, np.float32))
  after = np.asarray(state["params"]["params"]["head"])
  for name in ("block1/kernel", "block1/expansion", "block1/skip"):
    assert not np.array_equal(after[names.index(name)], before[names.index(name)]), name


@pytest.mark.parametrize("name", ["tunas", "enas"])
@pytest.mark.slow
def test_rank_advantage_is_scale_free_and_takes_batches(name):
  """advantage="rank": rewards x100 (+ an outlier's size) change nothing; several rewards per call."""
  config = {**CONFIGS[name], "advantage": "rank", "rank_window": 8, "warmup_fraction": 0.0}
  controller = controllers.build(name, MIXED, config)
  states = []
  for scale in (1.0, 100.0):
    state = controller.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    for _ in range(5):
      key, sub = jax.random.split(key)
      dnas = controller.propose(state, sub, 4)
      state, metrics = controller.feedback(state, dnas, scale * _toy_reward(dnas))
      assert all(np.isfinite(v) for v in metrics.values())
    states.append(state)
  assert int(states[0]["window_count"]) == 8
  np.testing.assert_array_equal(controller.propose(states[0], jax.random.PRNGKey(9), 64),
                                controller.propose(states[1], jax.random.PRNGKey(9), 64))


# -- the fair warm-up (FairNAS) -----------------------------------------------------------------------
@pytest.mark.parametrize("devices", [1, 2, 3, 8])
def test_fair_warm_up_trains_every_choice_equally_in_each_group(devices):
  from oneshot.controllers.uniform import FairSampler  # pylint: disable=import-outside-toplevel
  space = _three_and_two_choice_space()
  sampler = FairSampler(space, seed=0)
  assert sampler.group_size == 6  # lcm of 3 and 2 choices
  paths = np.concatenate([sampler.propose({"step": np.asarray(step)}, jax.random.PRNGKey(step),
                                          devices) for step in range(24)])
  for start in range(0, len(paths) - 5, 6):  # slots run devices first, then steps
    group = paths[start:start + 6]
    for d, count in enumerate(space.num_choices):
      assert np.bincount(group[:, d], minlength=count).tolist() == [6 // count] * count
  first_groups = [tuple(map(tuple, paths[i:i + 6])) for i in range(0, 24, 6)]
  assert len(set(first_groups)) == 4  # each group its own order
  # A resumed search (a new sampler, any step) proposes the same paths; another seed others.
  again = FairSampler(space, seed=0).propose({"step": np.asarray(5)}, jax.random.PRNGKey(0), devices)
  np.testing.assert_array_equal(again, paths[5 * devices:6 * devices])
  other = np.concatenate([FairSampler(space, seed=1).propose({"step": np.asarray(step)},
                                                             jax.random.PRNGKey(step), devices)
                          for step in range(24)])
  assert not np.array_equal(other, paths)


def test_fair_warm_up_falls_back_to_the_largest_choice_count_for_long_groups():
  from oneshot.controllers.uniform import FairSampler  # pylint: disable=import-outside-toplevel
  from oneshot.spaces.core import Decision, Space  # pylint: disable=import-outside-toplevel
  space = Space("coprime", (Decision("a", (0, 1, 2, 3, 4)), Decision("b", (0, 1, 2, 3)),
                            Decision("c", (0, 1, 2))))
  sampler = FairSampler(space, seed=3)
  assert sampler.group_size == 5  # lcm 60 > 4 * 5
  group = sampler.group(0)
  assert sorted(group[:, 0].tolist()) == [0, 1, 2, 3, 4]
  assert np.bincount(group[:, 1], minlength=4).min() == 1  # 4 choices in 5 slots: each at least once
  assert np.bincount(group[:, 2], minlength=3).min() == 1


def _three_and_two_choice_space():
  from oneshot import spaces  # pylint: disable=import-outside-toplevel
  return spaces.build({"name": "mobilenet", "stem_filters": 8, "stages": ((8, 2, 1), (16, 1, 2)),
                       "kernel_sizes": (3, 5, 7), "expansion_ratios": (3, 6),
                       "width_multipliers": (0.25, 0.5, 1.0), "allow_skip": True,
                       "head_filters": 0})


# -- the sandwich warm-up (BigNAS) ---------------------------------------------------------------------
def _sized_space():
  from oneshot import spaces  # pylint: disable=import-outside-toplevel
  from oneshot.hardware import workload  # pylint: disable=import-outside-toplevel
  space = spaces.build({"name": "mobilenet", "stem_filters": 8, "stages": ((8, 2, 1), (16, 1, 2)),
                        "kernel_sizes": (3, 5), "expansion_ratios": (3, 6),
                        "width_multipliers": (0.5, 1.0), "allow_skip": True, "head_filters": 0})
  return space, lambda dnas: workload.weight_counts(workload.layer_table(space, dnas, (8, 8, 1), 10))


def test_weight_counts_by_hand():
  space, size = _sized_space()
  values = {"stage0/width": 0.5, "block0/kernel": 5, "block0/expansion": 3, "block1/kernel": 3,
            "block1/expansion": 6, "block1/skip": True, "stage1/width": 1.0, "block2/kernel": 3,
            "block2/expansion": 3}
  dna = space.from_values(values)
  stem = 3 * 3 * 1 * 8
  block0 = 8 * 24 + 5 * 5 * 24 + 24 * 4       # stage width 8 * 0.5 = 4
  block2 = 4 * 12 + 3 * 3 * 12 + 12 * 16     # block1 dropped: in 4, mid 12, out 16
  dense = 16 * 10
  assert size(np.asarray([dna]))[0] == stem + block0 + block2 + dense


def test_sandwich_extremes_are_the_largest_and_smallest_networks():
  from oneshot.controllers.uniform import SandwichSampler  # pylint: disable=import-outside-toplevel
  space, size = _sized_space()
  every = space.enumerate()
  sampler = SandwichSampler(space, size)
  sizes = size(every)
  assert size(sampler.largest[None])[0] == sizes.max()
  assert size(sampler.smallest[None])[0] == sizes.min()
  assert tuple(sampler.largest) != tuple(sampler.smallest)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.slow
def test_sandwich_gives_largest_and_smallest_one_path_in_four_each(devices):
  from oneshot.controllers.uniform import SandwichSampler  # pylint: disable=import-outside-toplevel
  space, size = _sized_space()
  sampler = SandwichSampler(space, size)
  paths = np.concatenate([sampler.propose({"step": np.asarray(step)}, jax.random.PRNGKey(step),
                                          devices) for step in range(8)])
  is_largest = (paths == sampler.largest).all(axis=1)
  is_smallest = (paths == sampler.smallest).all(axis=1)
  assert is_largest[::4].all() and is_smallest[1::4].all()  # slots 0, 4, 8, ...: devices, then steps
  others = paths[(np.arange(len(paths)) % 4) >= 2]
  assert len({tuple(p) for p in others}) > len(others) // 2  # the rest are uniform draws
  assert all(space.is_valid(p) for p in paths)


def test_random_best_is_its_best_rewarded_architecture_or_none():
  """A uniform policy has no mode: its answer is the best DNA it was told about, not the argmax of
  uniform probabilities (the all-zeros DNA), and None before any usable reward."""
  controller = controllers.build("random", MIXED)
  state = controller.init(jax.random.PRNGKey(0))
  assert controller.best(state) is None
  state, _ = controller.feedback(state, np.asarray([[1, 1, 2, 3], [2, 0, 4, 1]], np.int32),
                                 np.asarray([0.3, 0.7], np.float32))
  assert controller.best(state) == (2, 0, 4, 1)
  state, _ = controller.feedback(state, np.asarray([[0, 1, 1, 1], [1, 0, 0, 2]], np.int32),
                                 np.asarray([np.nan, 0.5], np.float32))  # a failed evaluation never wins
  assert controller.best(state) == (2, 0, 4, 1)
  nan_only = controller.feedback(controller.init(jax.random.PRNGKey(0)), np.zeros((1, 4), np.int32),
                                 np.asarray([np.nan], np.float32))[0]
  assert controller.best(nan_only) is None
  evolution = controllers.build("evolution", MIXED, CONFIGS["evolution"])
  assert evolution.best(evolution.init(jax.random.PRNGKey(0))) is None  # nothing evaluated yet


def test_evolution_initial_population_is_random_even_when_training_paths_share_the_batch(monkeypatch):
  """The search proposes one training path and one reward path per call and rewards only the second:
  the first P rewarded architectures must all be random draws, none a mutant of a partial population."""
  controller = EvolutionController(MIXED, {"population_size": 4, "tournament_size": 2})
  mutated_at = []
  original = Space.mutate
  state = controller.init(jax.random.PRNGKey(0))

  def watched(space, dna, rng):
    mutated_at.append(int(state["count"]))
    return original(space, dna, rng)

  monkeypatch.setattr(Space, "mutate", watched)
  for step in range(6):
    proposals = controller.propose(state, jax.random.PRNGKey(step), 2)
    state, _ = controller.feedback(state, proposals[1:], _toy_reward(proposals[1:]))
  assert mutated_at and min(mutated_at) >= 4, mutated_at  # mutants only once P rewards are in


@pytest.mark.slow
def test_tunas_released_learning_rate_leaves_a_short_search_near_uniform():
  """Why TuNAS's default lr is this project's 0.05, not the released 0.0003 x batch/256 grown 10x: at
  this project's batches and ~1,500 controller updates the released rate hardly moves the policy on a
  problem the default solves (test_tunas_concentrates_on_rewarded_choice_and_stays_finite)."""
  from oneshot.controllers import tunas  # pylint: disable=import-outside-toplevel
  assert tunas.released_learning_rate(4096) == pytest.approx(0.0048)
  assert TunasController(MIXED, {}).optimizer is not None and tunas.DEFAULT_LEARNING_RATE == 0.05
  updates = 1500
  controller = TunasController(MIXED, {"num_steps": updates, "warmup_fraction": 0.0, "lr_growth": 10.0,
                                       "learning_rate": tunas.released_learning_rate(128)})
  state, _ = _train(controller, controller.init(jax.random.PRNGKey(0)), steps=updates, batch=2)
  assert np.abs(np.asarray(state["logits"])).max() < 1.0
  assert controller.probabilities(state)[:, 1].min() < 0.75

"""Export -> load equals the supernet path; BN recalibration is exact; `oneshot train` resumes exactly;
`oneshot rank` writes its report; bad input is one line and writes nothing.

The mobilenet search (6 steps, random controller, mask executor) is shared by the whole module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oneshot import checkpoint, cli, supernet
from oneshot import child as child_lib
from oneshot.errors import UserError
from tests.conftest import REPO, tiny_config
from tests.searched import Searched

DIGITS = os.path.join(REPO, "configs", "digits.py")
TRAIN_FLAGS = ["--config.train.batch_size=16", "--config.train.eval_batch_size=80",
               "--config.train.checkpoint_every=2", "--config.train.log_every=2"]


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
  return Searched("mobilenet", tmp_path_factory.mktemp("mobilenet"))


@pytest.fixture(scope="module", params=[
    "mobilenet", "nasbench201", pytest.param("nasbench201-searched", marks=pytest.mark.slow)])
def searched(request, tmp_path_factory, mobilenet):
  if request.param == "mobilenet":
    return mobilenet
  space = request.param.split("-")[0]
  return Searched(space, tmp_path_factory.mktemp(space), searched=request.param.endswith("searched"))


def _batch(s: Searched):
  return s.sess.dataset.batch("validation", 0, 32, 0)["image"]


def _count(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_loaded_child_equals_the_supernet_path(searched):
  model, variables = child_lib.load(searched.out)
  dna = searched.record["dna"]
  assert dna == searched.result["dna"]
  x = _batch(searched)
  expected = jax.jit(searched.sess.model.apply)(searched.sess.variables(searched.params), x,
                                                jnp.asarray(dna, jnp.int32))
  got, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=0)
  # Eval mode uses the recalibrated statistics, which are not the supernet's untouched zeros/ones.
  stats = jax.tree.leaves(variables["batch_stats"])
  assert any(float(np.abs(np.asarray(s)).max()) not in (0.0, 1.0) for s in stats)


@pytest.mark.slow
def test_export_holds_exactly_the_child(searched):
  record, space = searched.record, searched.space
  _, variables = child_lib.load(searched.out)
  ds = searched.sess.dataset
  child = supernet.child_model(space, record["dna"], ds.num_classes, ds.image_shape[-1])
  own = jax.eval_shape(child.init, jax.random.PRNGKey(0), jnp.zeros((1,) + ds.image_shape))
  assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, dict(own))
  assert _count(variables["params"]) == _count(own["params"]) == record["num_params"]
  assert record["num_params"] < _count(searched.params)
  for key in ("space", "dna", "architecture", "string", "skeleton", "num_classes", "image_shape",
              "dataset", "validation_accuracy", "recalibrate_batches"):
    assert key in record
  for value in record["validation_accuracy"].values():
    assert 0.0 <= value <= 1.0
  assert sorted(os.listdir(searched.out)) == ["README.md", "architecture.json", "checkpoint",
                                              "model.jax_export"]


@pytest.mark.slow
def test_recalibration_gives_the_exact_statistics(mobilenet):
  s = mobilenet
  model, variables = child_lib.load(s.out)
  runner = child_lib.ChildRunner(model)
  ds = s.sess.dataset
  b0, b1 = (ds.batch("train", i, 16, 0) for i in range(2))
  # One batch: eval mode with those statistics is train mode on that batch.
  one = runner.recalibrate(variables, [b0])
  train_logits, _ = model.apply(one, b0["image"], train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(model.apply(one, b0["image"], train=False)),
                             np.asarray(train_logits), atol=1e-4, rtol=1e-4)
  # Two batches: the stem's statistics are those of both batches together (not an EMA).
  two = runner.recalibrate(variables, [b0, b1])
  from oneshot.models import ops  # pylint: disable=import-outside-toplevel
  y = ops.conv2d(jnp.concatenate([b0["image"], b1["image"]]), variables["params"]["stem"]["kernel"],
                 int(s.space.skeleton.get("stem_stride", 1)))
  y = np.asarray(y, np.float64)
  np.testing.assert_allclose(two["batch_stats"]["stem"]["mean"], y.mean((0, 1, 2)), atol=1e-5)
  np.testing.assert_allclose(two["batch_stats"]["stem"]["var"], y.var((0, 1, 2)), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.slow
def test_load_needs_no_supernet_or_search_code(mobilenet):
  code = ("import sys, jax.numpy as jnp\n"
          "from oneshot import child\n"
          f"model, variables = child.load({mobilenet.out!r})\n"
          "model.apply(variables, jnp.zeros((2, 8, 8, 1)), train=False)\n"
          "bad = [m for m in sys.modules if m.startswith(('oneshot.supernet', 'oneshot.search', "
          "'oneshot.session', 'oneshot.steps', 'oneshot.export', 'controllers'))]\n"
          "assert not bad, bad\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _fails_cleanly(argv, out, capsys, needle):
  code = cli.main(argv)
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
  assert not os.path.exists(out)
  assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".tmp-")]


@pytest.mark.slow
def test_bad_export_input_is_one_line_and_writes_nothing(mobilenet, tmp_path, capsys):
  out = str(tmp_path / "out")
  _fails_cleanly(["export", "--workdir", str(tmp_path / "nope"), "--out", out], out, capsys,
                 "does not exist")
  empty = tmp_path / "empty"
  empty.mkdir()
  _fails_cleanly(["export", "--workdir", str(empty), "--out", out], out, capsys, "no checkpoint")
  n = mobilenet.space.num_decisions
  for dna, needle in ((",".join(["0"] * (n - 1)), "decisions"), (",".join(["9"] * n), "must be in"),
                      ("a,b", "cannot read")):
    _fails_cleanly(["export", "--workdir", mobilenet.workdir, "--dna", dna, "--out", out], out, capsys,
                   needle)
  unfinished = tmp_path / "unfinished"
  shutil.copytree(mobilenet.workdir, unfinished)
  os.remove(unfinished / "search_result.json")
  _fails_cleanly(["export", "--workdir", str(unfinished), "--out", out], out, capsys, "--dna")
  _fails_cleanly(["export", "--workdir", mobilenet.workdir, "--out", out, "--recalibrate-batches",
                  "0"], out, capsys, "recalibrate")
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  assert cli.main(["export", "--workdir", mobilenet.workdir, "--out", str(busy)]) == 2
  assert "not an export" in capsys.readouterr().err
  assert os.listdir(busy) == ["notes.txt"]


@pytest.mark.slow
def test_export_replaces_an_earlier_export(mobilenet, tmp_path, capsys):
  out = tmp_path / "again"
  shutil.copytree(mobilenet.out, out)
  dna = [0] * mobilenet.space.num_decisions
  assert cli.main(["export", "--workdir", mobilenet.workdir, "--out", str(out), "--dna",
                   ",".join(map(str, dna)), "--recalibrate-batches", "1"]) == 0
  assert "exported" in capsys.readouterr().out
  assert child_lib.read_architecture(str(out))["dna"] == dna
  assert sorted(os.listdir(tmp_path)) == ["again"]  # no temp or old copies left behind
  model, variables = child_lib.load(str(out))
  assert model.apply(variables, _batch(mobilenet), train=False).shape == (32, 10)


def _final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  mngr = checkpoint.manager(workdir, read_only=True)
  return mngr.restore(max(mngr.all_steps()), args=ocp.args.StandardRestore())


@pytest.mark.slow
def test_train_resumes_exactly(mobilenet, tmp_path, capsys):
  from oneshot import train  # pylint: disable=import-outside-toplevel
  straight = str(tmp_path / "straight")
  assert cli.main(["train", "--arch", mobilenet.out, "--config", DIGITS, "--workdir", straight,
                   "--config.train.num_steps=4", *TRAIN_FLAGS]) == 0
  assert "test accuracy" in capsys.readouterr().out
  with open(os.path.join(straight, "train_result.json")) as f:
    result = json.load(f)
  assert result["steps"] == 4 and 0 <= result["test_accuracy"] <= 1
  for key in ("validation_accuracy", "wall_seconds", "dna"):
    assert key in result
  config = tiny_config(num_steps=4, checkpoint_every=2)
  resumed = str(tmp_path / "resumed")
  assert train.run(config, mobilenet.out, resumed, stop_after=2) is None
  assert not os.path.exists(os.path.join(resumed, "train_result.json"))
  again = train.run(config, mobilenet.out, resumed)
  a, b = _final_state(straight), _final_state(resumed)
  for key in ("params", "batch_stats", "opt_state", "step"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert again["test_accuracy"] == result["test_accuracy"]
  with pytest.raises(UserError, match="init_from_export"):
    train.run(config, mobilenet.out, resumed, init_from_export=True)


@pytest.mark.slow
def test_train_fine_tunes_from_the_export(mobilenet, tmp_path):
  workdir = tmp_path / "fine"
  assert cli.main(["train", "--arch", mobilenet.out, "--workdir", str(workdir), "--init-from-export",
                   "--config.train.num_steps=1", "--config.train.learning_rate=0.0",
                   *TRAIN_FLAGS]) == 0
  assert json.loads((workdir / "train_setup.json").read_text())["init_from_export"] is True
  # At learning rate 0 the weights stay the exported ones (a fresh init would differ everywhere).
  _, exported = child_lib.load(mobilenet.out)
  trained = _final_state(str(workdir))["params"]
  for a, b in zip(jax.tree.leaves(exported["params"]), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_standalone_training_through_the_supernet_is_the_childs(mobilenet):
  """rank's shortcut: S steps of the supernet on one path train exactly the child, from the child's
  own initialisation distribution."""
  from oneshot import rank, steps  # pylint: disable=import-outside-toplevel
  s = mobilenet
  sess, space = s.sess, s.space
  dna = space.sample(np.random.default_rng(5))
  fresh = jax.device_get(sess.initial_params)
  params = rank.child_init_scale(space, fresh, dna)
  ds = sess.dataset
  child = supernet.child_model(space, dna, ds.num_classes, ds.image_shape[-1])
  own = jax.jit(child.init)(jax.random.PRNGKey(3), jnp.zeros((1,) + ds.image_shape))["params"]
  mine = supernet.child_variables(space, {"params": params}, dna)["params"]
  big = max(jax.tree.leaves(own), key=np.size)
  mine_big = max(jax.tree.leaves(mine), key=np.size)
  assert abs(np.std(mine_big) / np.std(big) - 1) < 0.15  # same init scale as the child's own
  tx = steps.make_optimizer(s.config, 10)
  step = steps.make_train_step(sess.model, tx, sess.mesh, sess.frozen, sync_batch_norm=True)
  paths = steps.shard_paths(sess.mesh, np.tile(np.asarray(dna, np.int32), (sess.num_devices, 1)))
  child_vars = supernet.child_variables(space, {"params": params, **jax.device_get(sess.frozen)}, dna)
  child_step = steps.make_child_train_step(child, tx)
  p, opt = steps.replicate(sess.mesh, params), steps.replicate(sess.mesh, tx.init(params))
  cp, cs, copt = child_vars["params"], child_vars["batch_stats"], tx.init(child_vars["params"])
  for i in range(3):  # step 0 has learning rate 0 (warm-up)
    batch = ds.batch("train", i, 16, 0)
    p, opt, _ = step(p, opt, steps.shard_batch(sess.mesh, batch), paths)
    cp, cs, copt, _ = child_step(cp, cs, copt, batch["image"], batch["label"])
  sliced = supernet.child_variables(space, {"params": jax.device_get(p)}, dna)["params"]
  for x, y in zip(jax.tree.leaves(sliced), jax.tree.leaves(cp)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_rank_writes_the_report(mobilenet, tmp_path, capsys):
  out = tmp_path / "r" / "rank.json"
  assert cli.main(["rank", "--workdir", mobilenet.workdir, "--num-archs", "3", "--out", str(out),
                   "--train-steps", "2", "--recalibrate-batches", "1", "--train-seeds", "2"]) == 0
  assert "Kendall tau" in capsys.readouterr().out
  report = json.loads(out.read_text())
  for key in ("kendall_tau", "spearman", "archs", "search_result_percentile", "top_k_overlap"):
    assert key in report
  assert len(report["archs"]) == 3
  assert len({tuple(a["dna"]) for a in report["archs"]}) == 3
  assert [a["is_search_result"] for a in report["archs"]] == [True, False, False]
  for a in report["archs"]:
    for key in ("dna", "string", "supernet_accuracy", "standalone_accuracy"):
      assert key in a
    assert 0 <= a["supernet_accuracy"] <= 1 and 0 <= a["standalone_accuracy"] <= 1
  assert all(len(a["standalone_accuracies"]) == 2 for a in report["archs"])
  assert "kendall_tau_seed0_vs_seed1" in report["context"]
  assert (out.parent / "rank.png").stat().st_size > 1000
  assert "kendall_tau_num_params" in report["context"]
  for key in ("kendall_tau_standard_error", "kendall_tau_margin_over_num_params",
              "kendall_tau_margin_interval_90"):
    assert key in report["context"]
  _fails_cleanly(["rank", "--workdir", mobilenet.workdir, "--num-archs", "1", "--out",
                  str(tmp_path / "x.json")], str(tmp_path / "x.json"), capsys, "--num-archs")
  # --reuse: the same setup takes the stand-alone scores instead of training again.
  again = tmp_path / "again.json"
  assert cli.main(["rank", "--workdir", mobilenet.workdir, "--num-archs", "3", "--out", str(again),
                   "--train-steps", "2", "--recalibrate-batches", "1", "--train-seeds", "2",
                   "--reuse", str(out)]) == 0
  capsys.readouterr()
  second = json.loads(again.read_text())
  assert second["reused_standalone"] == 3
  assert [a["standalone_accuracies"] for a in second["archs"]] == [
      a["standalone_accuracies"] for a in report["archs"]]
  _fails_cleanly(["rank", "--workdir", mobilenet.workdir, "--num-archs", "3", "--out",
                  str(tmp_path / "y.json"), "--train-steps", "3", "--recalibrate-batches", "1",
                  "--reuse", str(out)], str(tmp_path / "y.json"), capsys, "stand-alone setup")


@pytest.mark.slow
def test_sample_is_balanced_and_distinct(mobilenet):
  from oneshot import rank  # pylint: disable=import-outside-toplevel
  space = mobilenet.space
  first = tuple(mobilenet.result["dna"])
  dnas = rank.sample_architectures(space, 13, 0, first)
  assert dnas[0] == first and len(set(dnas)) == 13
  rest = np.asarray(dnas[1:])
  for i, d in enumerate(space.decisions):
    counts = np.bincount(rest[:, i], minlength=d.num_choices)
    assert counts.max() - counts.min() <= 2, (d.name, counts)  # +-1 by design, +-2 after redraws


def test_rank_statistics():
  from oneshot import rank, rank_stats  # pylint: disable=import-outside-toplevel
  stats = rank_stats.correlations([0.1, 0.2, 0.3, 0.4], [0.15, 0.25, 0.35, 0.45], 2)
  assert stats["kendall_tau"] == pytest.approx(1) and stats["spearman"] == pytest.approx(1)
  assert stats["top_k_overlap"] == 1
  stats = rank_stats.correlations([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], 2)
  assert stats["kendall_tau"] == pytest.approx(-1) and stats["top_k_overlap"] == 0
  assert rank_stats.correlations([0.5, 0.5, 0.5], [0.1, 0.2, 0.3], 1)["kendall_tau"] is None
  archs = [{"is_search_result": True, "standalone_accuracy": 0.9}] + [
      {"is_search_result": False, "standalone_accuracy": a} for a in (0.8, 0.9, 0.95, 0.7)]
  assert rank.search_percentile(archs) == pytest.approx(100 * 2.5 / 4)


@pytest.mark.slow
def test_rank_uncertainty_separates_a_clear_margin_from_noise():
  from oneshot import rank_stats  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  truth = rng.normal(size=20)
  # The supernet orders perfectly, the parameter count backwards: the margin is 2 and sure.
  sure = rank_stats.tau_uncertainty(truth, -truth, truth)
  assert sure["margin"] == pytest.approx(2)
  assert sure["margin_interval_90"][0] > 1.5
  # Two rankers equally noisy: the margin's interval holds 0, tau's standard error is ~0.1-0.2.
  noisy = rank_stats.tau_uncertainty(truth + rng.normal(size=20), truth + rng.normal(size=20),
                                     truth)
  low, high = noisy["margin_interval_90"]
  assert low < 0 < high and high - low > 0.2
  assert 0.05 < noisy["standard_error"] < 0.3
  assert (rank_stats.tau_uncertainty(truth, truth, truth)
          == rank_stats.tau_uncertainty(truth, truth, truth))
  assert rank_stats.tau_uncertainty([0.5] * 4, [1, 2, 3, 4], [1, 2, 3, 4])[
      "standard_error"] is None


def test_rank_ground_truth_does_not_depend_on_the_search_seed():
  """Supernets searched with other seeds are ranked on one stand-alone ground truth (--reuse)."""
  from oneshot import rank  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  other = tiny_config()
  other.seed = int(config.seed) + 7
  assert rank.standalone_setup(config, 5, 1, 2, 0) == rank.standalone_setup(other, 5, 1, 2, 0)
  assert rank.standalone_setup(config, 5, 1, 2, 0) != rank.standalone_setup(config, 5, 1, 2, 1)

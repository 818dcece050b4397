"""Hardware co-search: Pareto filter, latency tables, resume, infeasible accelerators, end to end.

One tiny supernet (6 steps) is trained once per module; every co-search test reuses its compiled reward
step and accuracy memo through `cosearch.run(..., evaluator=ev)`, so each costs about a second.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from oneshot.configs import digits_cosearch
from oneshot import cosearch
from oneshot.errors import UserError
from oneshot.hardware import latency, latency_table, settings as hardware_settings
from oneshot.spaces import accelerator, mobilenet
from tests.conftest import REPO

SPACE = dict(name="mobilenet", stem_filters=8, stem_stride=1, stages=((8, 1, 1), (16, 2, 2)),
             kernel_sizes=(3, 5), expansion_ratios=(2,), width_multipliers=(0.5, 1.0),
             allow_skip=True, head_filters=0)


def tiny_config(**cosearch_overrides):
  c = digits_cosearch.get_config()
  c.space = dict(SPACE)
  c.controller.name = "random"
  c.supernet.executor = "mask"  # compiles faster than switch; same numbers
  t = c.train
  t.num_steps, t.checkpoint_every, t.log_every, t.warmup_steps = 6, 6, 3, 2
  t.batch_size, t.reward_batch_size, t.eval_batch_size = 32, 32, 300
  cs = c.cosearch
  cs.outer_budget, cs.inner_steps, cs.inner_paths, cs.reward_batch_size = 3, 2, 4, 64
  cs.outer.population_size, cs.outer.tournament_size = 2, 1
  cs.inner.population_size, cs.inner.tournament_size = 4, 2
  for k, v in cosearch_overrides.items():
    cs[k] = v
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir, evaluator, result) of one end-to-end run: supernet training included."""
  workdir = str(tmp_path_factory.mktemp("cosearch"))
  config = tiny_config()
  ev = cosearch.prepare(config, workdir)
  return config, workdir, ev, cosearch.run(config, workdir, evaluator=ev)


def point(acc, lat, energy, area, **extra):
  return dict(accuracy=acc, latency_ms=lat, energy_mj=energy, area_mm2=area, **extra)


def test_pareto_mask_hand_points():
  points = [point(0.9, 1.0, 1.0, 1.0),   # 0: front
            point(0.8, 1.0, 1.0, 1.0),   # 1: dominated by 0 (less accurate, same costs)
            point(0.95, 2.0, 1.0, 1.0),  # 2: front (more accurate, slower)
            point(0.9, 1.0, 1.0, 1.0),   # 3: equal to 0: neither dominates, both kept
            point(0.9, 1.0, 0.5, 1.0),   # 4: dominates 0 and 3 (less energy)
            point(0.5, 0.1, 9.0, 9.0),   # 5: front (fastest)
            point(0.5, 0.2, 9.0, 9.0)]   # 6: dominated by 5 (slower, rest equal)
  assert cosearch.pareto_mask(points).tolist() == [False, False, True, False, True, True, False]
  assert cosearch.pareto_mask(points[:4]).tolist() == [True, False, True, True]
  assert cosearch.pareto_mask([]).tolist() == []


def _lut(space, ms_of):
  """A synthetic lut.json for `space` whose every entry's ms comes from ms_of(entry)."""
  entries = latency_table._specs(space, (8, 8, 1), 10)  # pylint: disable=protected-access
  out = []
  for e in entries:
    e = {k: v for k, v in e.items() if k not in ("plan", "head", "shape")}
    out.append({**e, "ms": ms_of(e)})
  return {"format": latency.FORMAT, "device_kind": "test", "batch_size": 4, "entries": out}


def test_latency_table_lookups_sum():
  space = mobilenet.build(SPACE)
  # Distinct powers of two per entry: any wrong or missing term changes the sum.
  code = {}
  lut = _lut(space, lambda e: code.setdefault(
      (e["part"], e["block"], e["kernel"], e["expansion"], e["width_in"], e["width_out"]),
      2.0 ** len(code)))
  table = latency.LatencyTable(lut, space)
  rng = np.random.default_rng(0)
  dnas = np.stack([rng.integers(k, size=64) for k in space.num_choices], 1).astype(np.int32)
  values = [space.to_values(d) for d in dnas]
  expected = []
  for v in values:
    widths = [round(f * v[f"stage{s}/width"]) for s, (f, _, _) in enumerate(SPACE["stages"])]
    chans = [8, widths[0], widths[1], widths[1]]
    total = code[("stem", None, 3, None, 1, 8)]
    for i in range(3):
      if not v.get(f"block{i}/skip", False):
        total += code[("block", i, v[f"block{i}/kernel"], 2, chans[i], chans[i + 1])]
    expected.append(total + code[("head", None, 1, None, chans[3], 10)])
  assert table.latency_ms(dnas).tolist() == expected
  skipped = [d for d, v in zip(dnas, values) if v["block2/skip"]]
  assert skipped  # the skip branch is exercised
  # The same table drives the co-search cost model; energy and area stay analytical.


def test_latency_table_errors(tmp_path):
  space = mobilenet.build(SPACE)
  lut = _lut(space, lambda e: 1.0)
  lut["entries"] = [e for e in lut["entries"] if not (e["part"] == "block" and e["block"] == 2)]
  with pytest.raises(UserError, match="no entry for block 2 .*regenerate it"):
    latency.LatencyTable(lut, space)
  with pytest.raises(UserError, match="cannot read latency table"):
    latency.load(str(tmp_path / "missing.json"), space)
  with pytest.raises(UserError, match="unknown cost model 'simulated'"):
    latency.cost_function("simulated", "", space, accelerator.build({}), (8, 8, 1), 10)
  with pytest.raises(UserError, match="--out is required"):
    latency_table.main(["--config", os.path.join("configs", "digits.py")])


def test_latency_table_measure_and_table_cost_model(tmp_path):
  config = digits_cosearch.get_config()
  config.space = dict(SPACE, stages=((8, 2, 1),), kernel_sizes=(3,), width_multipliers=(1.0,))
  lut = latency_table.measure(config, batch_size=4, repeats=2)
  assert lut["batch_size"] == 4 and lut["device_kind"]
  assert [e["part"] for e in lut["entries"]] == ["stem", "block", "block", "head"]
  assert all(e["ms"] > 0 for e in lut["entries"])
  path = str(tmp_path / "lut.json")
  with open(path, "w") as f:
    json.dump(lut, f)
  from oneshot.spaces import build  # pylint: disable=import-outside-toplevel
  space = build(config.space)
  fn = latency.cost_function("table", path, space, accelerator.build({}), (8, 8, 1), 10)
  keep, skip = np.array([[0, 0, 0, 0, 0, 0]]), np.array([[0, 0, 0, 0, 0, 1]])
  ms = [e["ms"] for e in lut["entries"]]
  out = fn(np.concatenate([keep, skip]), np.zeros((1, 8), np.int32))
  assert np.allclose(out["latency_ms"], [sum(ms), ms[0] + ms[1] + ms[3]])
  assert out["energy_mj"].shape == (2,) and out["area_mm2"].shape == (2,)


@pytest.mark.slow
def test_end_to_end_writes_results(trained, capsys, tmp_path):
  config, workdir, ev, res = trained
  paths = -(-4 // ev.session.num_devices) * ev.session.num_devices  # rounded up to the devices
  with open(os.path.join(workdir, "cosearch.json")) as f:
    saved = json.load(f)
  assert {"points", "pareto", "best"} <= set(saved)
  assert len(saved["points"]) == 3 and saved["evaluations"] == 3 * 2 * paths
  for p in saved["points"]:
    assert {"accelerator", "architecture", "accuracy", "latency_ms", "energy_mj", "area_mm2",
            "reward"} <= set(p)
    assert 0.0 <= p["accuracy"] <= 1.0 and p["latency_ms"] > 0
  assert saved["best"] == max(saved["points"], key=lambda p: p["reward"])
  assert saved["pareto"] and all(p in saved["points"] for p in saved["pareto"])
  assert saved["pareto"] == [p for p, m in zip(saved["points"], cosearch.pareto_mask(saved["points"]))
                             if m]
  with open(os.path.join(workdir, "pareto.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert res["best"] == saved["best"]
  # The CLI on the finished workdir rewrites the results without rebuilding anything.
  config_file = tmp_path / "tiny_config.py"
  config_file.write_text("import json\nimport ml_collections\n\n\ndef get_config():\n"
                         f"  return ml_collections.ConfigDict(json.loads({json.dumps(json.dumps(config.to_dict()))}))\n")
  os.remove(os.path.join(workdir, "pareto.png"))
  assert cosearch.main(["--config", str(config_file), "--workdir", workdir]) == 0
  assert "co-searched 3 accelerators" in capsys.readouterr().out
  assert os.path.exists(os.path.join(workdir, "pareto.png"))


@pytest.mark.slow
def test_resume_continues_without_repeating(trained, tmp_path):
  config, _, ev, _ = trained
  big = tiny_config(outer_budget=4)
  assert cosearch.run(big, str(tmp_path / "a"), evaluator=ev, stop_after=2) is None
  with open(tmp_path / "a" / cosearch.STATE_FILE) as f:
    assert len(json.load(f)["points"]) == 2
  resumed = cosearch.run(big, str(tmp_path / "a"), evaluator=ev)
  straight = cosearch.run(big, str(tmp_path / "b"), evaluator=ev)
  # A smaller budget first, then a bigger one: continues the same trajectory.
  assert len(cosearch.run(config, str(tmp_path / "c"), evaluator=ev)["points"]) == 3
  grown = cosearch.run(big, str(tmp_path / "c"), evaluator=ev)
  assert resumed["points"] == straight["points"] == grown["points"]
  assert [p["index"] for p in resumed["points"]] == [0, 1, 2, 3]
  assert len({tuple(p["accelerator_dna"]) for p in resumed["points"]}) == 4
  changed = tiny_config(outer_budget=4)
  changed.hardware.target_latency_ms = 1.0
  with pytest.raises(UserError, match=r"changed: hardware.target_latency_ms"):
    cosearch.run(changed, str(tmp_path / "a"), evaluator=ev)


@pytest.mark.slow
def test_infeasible_accelerators_never_recorded(trained, tmp_path):
  _, _, ev, _ = trained
  config = tiny_config(outer_controller="random", outer_budget=3)
  config.hardware.area_budget_mm2 = 0.5  # ~16% of the space fits
  ev.accel_space = hardware_settings.read(config, "cosearch").accelerators
  try:
    res = cosearch.run(config, str(tmp_path / "w"), evaluator=ev)
    assert res["rejected"] > 0 and res["proposals"] == res["rejected"] + 3
    dnas = np.array([p["accelerator_dna"] for p in res["points"]])
    assert accelerator.feasible(ev.accel_space, dnas).all()
    assert all(p["area_mm2"] <= 0.5 for p in res["points"])
    config.hardware.area_budget_mm2 = 0.13  # ~0.03% fits
    config.cosearch.max_proposals = 20
    ev.accel_space = hardware_settings.read(config, "cosearch").accelerators
    with pytest.raises(UserError, match="raise --config.hardware.area_budget_mm2"):
      cosearch.run(config, str(tmp_path / "x"), evaluator=ev)
  finally:
    ev.accel_space = hardware_settings.read(tiny_config(), "cosearch").accelerators


def test_bad_config_fails_before_training(tmp_path):
  from oneshot.configs import digits  # pylint: disable=import-outside-toplevel
  with pytest.raises(UserError, match="the config has no cosearch section"):
    cosearch.run(digits.get_config(), str(tmp_path / "w"))
  one_device = tiny_config()
  one_device.hardware.accelerator_choices = digits.get_config().hardware.accelerator_choices
  with pytest.raises(UserError, match="a co-search searches accelerators, but "
                                      "--config.hardware.accelerator_choices is empty"):
    cosearch.run(one_device, str(tmp_path / "w"))
  config = tiny_config()
  config.hardware.reward = "pareto"
  with pytest.raises(UserError, match="unknown reward 'pareto'; set --config.hardware.reward"):
    cosearch.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.parametrize("override, needle", [
    ("--config.hardware.accelerator_choices.rows=(0, 8)",
     "--config.hardware.accelerator_choices.rows must be positive"),
    ("--config.hardware.accelerator_choices.dataflow=('ws', 'rs')",
     "unknown dataflow 'rs' in --config.hardware.accelerator_choices.dataflow"),
    ("--config.hardware.accelerator.clock_mhz=0.0",
     "--config.hardware.accelerator.clock_mhz must be positive"),
    ("--config.hardware.area_budget_mm2=-1.0", "--config.hardware.area_budget_mm2 must be positive"),
    ("--config.hardware.target_energy_mj=-1.0", "--config.hardware.target_energy_mj must be positive"),
    ("--config.hardware.latency_weight=-1.0", "--config.hardware.latency_weight must be >= 0"),
    ("--config.hardware.metric=speed", "set --config.hardware.metric to one of"),
    ("--config.hardware.cost_model=table", "set --config.hardware.table to a lut.json"),
])
def test_bad_hardware_values_name_their_flag(override, needle, tmp_path, capsys):
  """Every wrong value of the hardware section is one line naming its --config.hardware flag, before
  anything is trained or written."""
  from oneshot import cli  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  argv = ["cosearch", "--config", os.path.join(REPO, "configs", "digits_cosearch.py"), "--workdir",
          str(workdir), override]
  if "metric" in override:
    argv.append("--config.hardware.reward=tunas")
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and needle in err, err
  assert not workdir.exists()

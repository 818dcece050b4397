"""Band tables: the sampler stays inside the band and is deterministic, the builder resumes and
reproduces its rows, and `oneshot rank --table` reports per band against the free baselines."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from oneshot import band_rank, bands, cli, rank_stats, spaces
from tests.conftest import tiny_config


def _setup(num_steps: int = 3):
  config = tiny_config()
  config.controller.name = "random"
  space = spaces.build(config.space)
  costs = bands.latency_function(config, space, (8, 8, 1), 10)
  latency = costs(space.sample(np.random.default_rng(0), 2000))[0]
  target = float(np.median(latency))
  return config, space, costs, target


@pytest.mark.slow
def test_band_sample_is_inside_the_band_distinct_canonical_and_deterministic():
  _, space, costs, target = _setup()
  archs = bands.band_architectures(space, costs, target, 0.03, 12, seed=5)
  assert len(set(archs)) == 12
  latency = costs(np.asarray(archs))[0]
  assert np.all(np.abs(latency / target - 1) <= 0.03)
  assert np.array_equal(space.canonical(np.asarray(archs)), np.asarray(archs))
  assert archs == bands.band_architectures(space, costs, target, 0.03, 12, seed=5)
  assert archs[:5] == bands.band_architectures(space, costs, target, 0.03, 5, seed=5)
  assert archs != bands.band_architectures(space, costs, target, 0.03, 12, seed=6)
  with pytest.raises(bands.UserError, match="widen the band"):
    bands.band_architectures(space, costs, 100 * target, 0.03, 2, seed=0)


def test_band_sample_is_uniform_over_networks_not_dnas():
  """A network with a dropped block is built by many DNAs; drawn per DNA it would be over-sampled."""
  _, space, costs, _ = _setup()
  networks = np.unique(space.canonical(space.enumerate()), axis=0)
  dropped = lambda dnas: (space.active(dnas).sum(1) < space.num_decisions).mean()
  per_network, per_dna = dropped(networks), dropped(space.enumerate())
  assert per_dna - per_network > 0.2  # the two samplers differ clearly on this space
  sample = np.asarray(bands.band_architectures(space, costs, 0.0, 0.03, len(networks) // 2, seed=0))
  assert abs(dropped(sample) - per_network) < 0.1


def _rows(path):
  with open(path, newline="") as f:
    return sorted((r for r in csv.DictReader(f)), key=lambda r: (r["dna"], r["seed"]))


def _measured(rows):
  return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def test_plan_keeps_the_seeds_of_an_architecture_together_and_short_lengths_first():
  _, space, costs, target = _setup()
  jobs = bands.plan(space, costs, [target, 0.0], 0.03, 2, seeds=[0, 1], steps=[5, 3], sample_seed=0)
  assert len(jobs) == 16 and len({j.key for j in jobs}) == 16
  assert [j.steps for j in jobs] == [3] * 8 + [5] * 8
  assert [(j.band_ms, j.seed) for j in jobs[:4]] == [(target, 0), (target, 1), (0.0, 0), (0.0, 1)]
  assert jobs[0].dna == jobs[1].dna != jobs[4].dna


@pytest.mark.slow
def test_builder_resumes_and_reproduces_its_rows(tmp_path):
  config, space, costs, target = _setup()
  jobs = bands.plan(space, costs, [target], 0.03, 1, seeds=[0, 1], steps=[3], sample_seed=0)
  path = tmp_path / "a.csv"
  assert bands.build(config, path, jobs, costs, workers=0) == 2
  rows = _rows(path)
  assert len(rows) == 2 and set(rows[0]) == set(bands.COLUMNS)
  assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
  assert rows[0]["test_loss"] != rows[1]["test_loss"]  # the seed changes the training
  # Everything trained: a rerun trains nothing.
  assert bands.build(config, path, jobs, costs, workers=0) == 0
  # A build killed mid-row: the partial row is cut and that job alone is trained again, by a fresh
  # trainer, to the same numbers.
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:15])
  assert bands.build(config, path, jobs, costs, workers=0) == 1
  assert _measured(_rows(path)) == _measured(rows)
  assert len(path.read_text().splitlines()) == 3


def test_builder_refuses_a_file_that_is_not_a_table(tmp_path):
  path = tmp_path / "notes.csv"
  path.write_text("name,value\nx,1\n")
  with pytest.raises(bands.UserError, match="not a band table"):
    bands.read_table(path)
  assert path.read_text() == "name,value\nx,1\n"


def _arch(band, acc, params, flops, seeds=None):
  seeds = seeds or {0: acc, 1: acc, 2: acc}
  return band_rank.TableArch(band, (0,), params, flops, 0.1, seeds)


def test_seed_agreement_and_noise_ceiling():
  rng = np.random.default_rng(0)
  truth = np.linspace(0.8, 0.9, 300)
  clean = [_arch(1.0, t, 1, 1, {s: t for s in range(3)}) for t in truth]
  agree = band_rank.seed_agreement(clean)
  assert agree["seed_vs_rest_tau"] == pytest.approx(1) and agree["noise_ceiling"] == pytest.approx(1)
  noisy = [_arch(1.0, t, 1, 1, {s: t + rng.normal(0, 0.03) for s in range(3)}) for t in truth]
  agree = band_rank.seed_agreement(noisy)
  assert agree["seed_pair_tau"] < agree["seed_vs_rest_tau"] < agree["noise_ceiling"] < 1
  # The ceiling is what the truth itself scores against the 3-seed mean.
  perfect = rank_stats.kendall(truth, [a.accuracy for a in noisy])
  assert agree["noise_ceiling"] == pytest.approx(perfect, abs=0.04)


def test_split_half_and_loss_agreement():
  """With 4+ seeds the halves' means agree better than one seed with the rest (each side averages
  noise away); the loss reading ranks lower-is-better, so a loss that mirrors accuracy agrees alike."""
  rng = np.random.default_rng(1)
  truth = np.linspace(0.8, 0.9, 200)
  noise = {i: rng.normal(0, 0.03, 6) for i in range(len(truth))}
  archs = [band_rank.TableArch(1.0, (0,), 1, 1, 0.1, {s: t + noise[i][s] for s in range(6)},
                               {s: 1 - t - noise[i][s] for s in range(6)})
           for i, t in enumerate(truth)]
  acc, loss = band_rank.seed_agreement(archs), band_rank.seed_agreement(archs, "loss")
  assert acc["seed_vs_rest_tau"] < acc["split_half_tau"] < acc["noise_ceiling"]
  assert loss["split_half_tau"] == pytest.approx(acc["split_half_tau"])
  assert acc["mean_seed_sd"] == pytest.approx(0.03, rel=0.1)
  three_seeds = [band_rank.TableArch(1.0, (0,), 1, 1, 0.1, {0: t, 1: t, 2: t}) for t in truth]
  assert band_rank.seed_agreement(three_seeds)["split_half_tau"] is None
  report = band_rank.table_report([
      {"band_ms": "1.0", "dna": f"{i}", "num_params": "1", "flops": "1", "latency_ms": "0.1",
       "seed": str(s), "steps": "5", "test_accuracy": str(a.seeds[s]), "test_loss": str(a.losses[s])}
      for i, a in enumerate(archs[:20]) for s in range(6)])
  assert len(report) == 1 and report[0]["kendall_tau"] is None and report[0]["num_archs"] == 20
  assert "split-half" in band_rank.table_summary(report)


def test_band_report_baselines_and_regression_sees_only_other_bands():
  # In band A accuracy falls with size; in band B it rises. The regression, fitted on B only, ranks
  # A backwards; the parameter count does too; a perfect ranker wins by a clear margin.
  a = [_arch(1.0, 0.9 - 0.01 * i, 100 + 10 * i, 1000 + 50 * i) for i in range(10)]
  b = [_arch(2.0, 0.8 + 0.01 * i, 100 + 10 * i, 1000 + 40 * i) for i in range(10)]
  report = band_rank.band_report(a, [x.accuracy for x in a], b)
  assert report["kendall_tau"] == pytest.approx(1)
  assert report["baseline_kendall_tau"]["num_params"] == pytest.approx(-1)
  assert report["baseline_kendall_tau"]["size_regression"] == pytest.approx(-1)
  assert report["margin_over_best_baseline"] > 0 and report["margin_interval_90"][0] > 0
  assert band_rank.size_regression(b[:3], a) is None  # too few points to fit


def test_choice_bias_names_the_misjudged_choice_and_counts_only_active_decisions():
  """The table likes kernel 3, the ranker dislikes it and agrees about width: kernel=3 leads the list.
  A skipped block's kernel does not count."""
  runs = ("block1/skip", (False,))  # block1's choices matter only while the block runs
  space = spaces.core.Space("toy", (
      spaces.core.Decision("block0/kernel", (3, 5)),
      spaces.core.Decision("block1/kernel", (3, 5), active_if=runs),
      spaces.core.Decision("block1/skip", (False, True)),
      spaces.core.Decision("block1/width", (1, 2), active_if=runs)))
  dnas = [(0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 1), (1, 0, 0, 0), (1, 1, 0, 1), (1, 1, 1, 0),
          (0, 1, 0, 0), (1, 0, 0, 1)]
  active = space.active(np.array(dnas))
  threes = [sum(1 for j in (0, 1) if active[n, j] and d[j] == 0) for n, d in enumerate(dnas)]
  wide = [int(active[n, 3] and d[3] == 1) for n, d in enumerate(dnas)]
  archs = [band_rank.TableArch(1.0, dna, 100, 1000, 0.1, {0: 0.8 + 0.01 * t + 0.003 * w})
           for dna, t, w in zip(dnas, threes, wide)]
  scores = [0.8 - 0.01 * t + 0.003 * w for t, w in zip(threes, wide)]
  bias = band_rank.choice_bias(space, archs, scores)
  assert (bias[0]["decision"], bias[0]["choice"]) in {("kernel", 3), ("kernel", 5)}
  kernel3 = next(b for b in bias if (b["decision"], b["choice"]) == ("kernel", 3))
  assert kernel3["ranker_tau"] < -0.5 < 0.5 < kernel3["table_tau"] and kernel3["gap"] < -1
  width = [b for b in bias if b["decision"] == "width"]
  assert width and all(abs(b["gap"]) < 0.5 for b in width)
  # (0, 0, 1, 0) and (1, 1, 1, 0): block1 skipped, so its kernel does not count; counting it would
  # give another tau.
  every = [sum(1 for j in (0, 1) if d[j] == 0) for d in dnas]
  assert kernel3["ranker_tau"] == pytest.approx(rank_stats.kendall(threes, scores))
  assert rank_stats.kendall(every, scores) != pytest.approx(kernel3["ranker_tau"])


def _workdir(config, path, answer):
  """A search workdir as the search writes it, untrained: rank --table only reads the weights."""
  from oneshot import checkpoint, configuration, session as session_lib, steps, storage
  sess = session_lib.build(config)
  checkpoint.save(checkpoint.manager(str(path)), 0, sess.initial_state(steps.make_optimizer(config)))
  storage.write_text(str(path / "config.json"), configuration.to_json(config))
  storage.write_json(str(path / "search_result.json"), sess.space.to_json(answer))


def _synthetic_table(path, archs, costs, rng):
  """A table in the builder's format with made-up accuracies: rank --table trains nothing."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=bands.COLUMNS)
    writer.writeheader()
    for band, dna in archs:
      latency, flops = costs(np.asarray(dna)[None])
      for seed in range(3):
        writer.writerow({"band_ms": f"{band:g}", "dna": bands.format_dna(dna), "string": "",
                         "latency_ms": latency[0], "num_params": 1000 + sum(dna), "flops": flops[0],
                         "seed": seed, "steps": 7, "validation_accuracy": 0.5,
                         "validation_loss": 1.0, "test_accuracy": rng.uniform(0.5, 0.9),
                         "test_loss": 1.0, "train_seconds": 1.0})


@pytest.mark.slow
def test_rank_table_scores_every_band(tmp_path, capsys):
  config, space, costs, target = _setup()
  low = bands.band_architectures(space, costs, target, 0.03, 4, seed=0)
  high = bands.band_architectures(space, costs, 1.3 * target, 0.03, 3, seed=0)
  answer = high[0]
  workdir = tmp_path / "search"
  _workdir(config, workdir, answer)
  table = tmp_path / "t.csv"
  _synthetic_table(table, [(target, d) for d in low] + [(1.3 * target, d) for d in high], costs,
                   np.random.default_rng(0))
  out = tmp_path / "rank.json"
  assert cli.main(["rank", "--workdir", str(workdir), "--table", str(table), "--out", str(out),
                   "--recalibrate-batches", "1"]) == 0
  printed = capsys.readouterr().out
  assert "supernet tau" in printed and "mean supernet tau" in printed
  report = json.loads(out.read_text())
  assert [b["band_ms"] for b in report["bands"]] == pytest.approx([target, 1.3 * target])
  for b in report["bands"]:
    for key in ("kendall_tau", "seed_vs_rest_tau", "noise_ceiling", "baseline_kendall_tau",
                "best_baseline", "margin_over_best_baseline", "margin_interval_90"):
      assert key in b
    assert set(b["baseline_kendall_tau"]) == set(band_rank.BASELINES)
  assert report["steps"] == 7 and len(report["archs"]) == 7
  # The search's answer is scored for its percentile but left out of its band's tau.
  assert [b["num_archs"] for b in report["bands"]] == [4, 2]
  assert report["bands"][0]["search_result_percentile"] is None
  assert report["bands"][1]["search_result_percentile"] is not None
  assert sum(a["is_search_result"] for a in report["archs"]) == 1
  # Bad input: one line, exit 2, nothing written.
  bad = tmp_path / "bad.json"
  for table_arg, says in ((tmp_path / "none.csv", "--table"), (tmp_path / "search" / "config.json",
                                                               "not a band table")):
    assert cli.main(["rank", "--workdir", str(workdir), "--table", str(table_arg),
                     "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and not bad.exists()


def test_band_search_json_keeps_the_cells_of_earlier_invocations(tmp_path):
  """`band_search.py --seeds 2` after `--seeds 0,1` adds seed 2's cells; a rerun cell replaces its own."""
  import pathlib, runpy  # pylint: disable=import-outside-toplevel,multiple-imports
  script = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "benchmarks" / "band_search.py"))
  cell = lambda band, seed, acc: {"band_ms": band, "search_seed": seed, "answer_test_accuracy": acc}
  script["_write"](str(tmp_path), [cell(0.19, 0, 0.8), cell(0.12, 0, 0.7), cell(0.12, 1, 0.71)], 80.0,
                   300, 300)
  script["_write"](str(tmp_path), [cell(0.12, 2, 0.72), cell(0.12, 1, 0.75)], 80.0, 300, 300)
  cells = json.loads((tmp_path / "band_search.json").read_text())["cells"]
  assert [(c["band_ms"], c["search_seed"], c["answer_test_accuracy"]) for c in cells] == [
      (0.12, 0, 0.7), (0.12, 1, 0.75), (0.12, 2, 0.72), (0.19, 0, 0.8)]

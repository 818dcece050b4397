"""`oneshot tabular` on a synthetic NAS-Bench-201 table: output, trajectories, and one-line errors."""

from __future__ import annotations

import csv
import itertools
import json
import re

import numpy as np
import pytest

from oneshot import spaces
from oneshot import cli, tabular
from oneshot.errors import UserError

SPACE = spaces.build({"name": "nasbench201", "channels": 16, "cells_per_stage": 5})


def _write(path, rows, header=("arch", "acc")):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return str(path)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
  """All 15,625 cells; reward = sum of per-edge op scores + noise (unique optimum: all conv3x3)."""
  rng = np.random.default_rng(0)
  scores = np.array([0.0, 1.0, 2.0, 3.0, 1.5]) + rng.normal(0, 0.1, (6, 5))
  scores[:, 3] += 1.0
  rows, lookup = [], {}
  for dna in itertools.product(range(5), repeat=6):
    reward = float(scores[np.arange(6), dna].sum() + rng.normal(0, 0.05))
    rows.append((SPACE.format(dna), f"{reward:.4f}"))
    lookup[dna] = float(f"{reward:.4f}")
  return _write(tmp_path_factory.mktemp("nb201") / "nb201.csv", rows), lookup


def _args(path, *extra):
  return ["--space", "nasbench201", "--table", path, "--arch-column", "arch",
          "--reward-column", "acc", *extra]


@pytest.mark.slow
def test_runs_all_four_and_writes_trajectories(table, tmp_path, capsys):
  path, lookup = table
  out = tmp_path / "runs.json"
  assert tabular.main(_args(path, "--budget", "12", "--seeds", "2", "--out", str(out))) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 5
  for line, name in zip(lines, tabular.ALGORITHMS):
    assert re.fullmatch(rf"{name} +best reward after 12 queries: -?[\d.]+ \+- [\d.]+ over 2 seeds",
                        line), line
  optimum = max(lookup.values())
  assert lines[-1].startswith(f"table optimum: {optimum:.4f} ")
  assert SPACE.format((3,) * 6) in lines[-1] and "(15625 architectures)" in lines[-1]

  report = json.loads(out.read_text())
  assert report["budget"] == 12 and report["seeds"] == [0, 1]
  assert report["table_optimum"]["dna"] == [3] * 6
  assert report["hyperparameters"]["tunas"]["learning_rate"] == tabular.DEFAULTS["tunas"]["learning_rate"]
  for name in tabular.ALGORITHMS:
    runs = report["runs"][name]
    assert [r["seed"] for r in runs] == [0, 1]
    finals = []
    for r in runs:
      assert len(r["dnas"]) == len(r["rewards"]) == len(r["best_so_far"]) == 12
      np.testing.assert_allclose(r["rewards"], [lookup[tuple(d)] for d in r["dnas"]], rtol=1e-6)
      np.testing.assert_allclose(r["best_so_far"], np.maximum.accumulate(r["rewards"]))
      finals.append(r["best_so_far"][-1])
    summary = report["summary"][name]
    assert summary["mean"] == pytest.approx(np.mean(finals))
    assert summary["std"] == pytest.approx(np.std(finals, ddof=1), abs=1e-9)


@pytest.mark.slow
def test_algorithm_list_overrides_and_seed_reproducibility(table, tmp_path, capsys):
  path, _ = table
  outs = []
  for i in range(2):
    out = tmp_path / f"r{i}.json"
    tabular.main(_args(path, "--algorithm", "evolution,random", "--algorithm", "tunas",
                       "--budget", "30", "--seeds", "1", "--first-seed", "7",
                       "--set", "evolution.population_size=5", "--set", "evolution.tournament_size=3",
                       "--set", "tunas.batch_size=4",
                       "--out", str(out)))
    outs.append(json.loads(out.read_text()))
  lines = capsys.readouterr().out.splitlines()
  assert [l.split()[0] for l in lines[:3]] == ["evolution", "random", "tunas"]
  assert outs[0]["runs"] == outs[1]["runs"]  # same seed, same trajectory
  assert outs[0]["hyperparameters"]["evolution"]["population_size"] == 5
  assert outs[0]["runs"]["tunas"][0]["seed"] == 7 and len(outs[0]["runs"]["tunas"][0]["dnas"]) == 30


def _error(argv) -> str:
  with pytest.raises(UserError) as info:
    tabular.main(argv)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_missing_column_names_available_columns(table):
  path, _ = table
  message = _error(["--table", path, "--arch-column", "arch", "--reward-column", "valid_acc"])
  assert "'valid_acc'" in message and "['arch', 'acc']" in message


def test_malformed_architecture_names_row_and_string(tmp_path):
  bad = "|nor_conv_3x3~0|+|nor_conv_3x3~0|"
  path = _write(tmp_path / "t.csv", [(SPACE.format((1,) * 6), "1.0"), (bad, "2.0")])
  message = _error(_args(path))
  assert "row 3" in message and bad in message


def test_non_numeric_reward_names_row_and_column(tmp_path):
  path = _write(tmp_path / "t.csv", [(SPACE.format((1,) * 6), "1.0"), (SPACE.format((2,) * 6), "n/a")])
  message = _error(_args(path))
  assert "row 3" in message and "'acc'" in message and "'n/a'" in message


def test_duplicate_rows_are_an_error(tmp_path):
  arch = SPACE.format((1,) * 6)
  path = _write(tmp_path / "t.csv", [(arch, "1.0"), (SPACE.format((2,) * 6), "2.0"), (arch, "3.0")])
  message = _error(_args(path))
  assert "rows 2 and 4" in message and arch in message


def test_query_outside_a_partial_table_names_the_architecture(tmp_path):
  path = _write(tmp_path / "t.csv", [(SPACE.format((1,) * 6), "1.0")])
  message = _error(_args(path, "--algorithm", "random", "--budget", "5", "--seeds", "1"))
  assert "not in" in message and re.search(r"\|[a-z0-9_]+~0\|\+", message)


def test_cli_reports_bad_input_as_one_line(table, capsys):
  path, _ = table
  assert cli.main(["tabular", *_args(path, "--algorithm", "darts")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("oneshot tabular: error:") and "darts" in err and "\n" not in err


def test_bad_hyperparameters_fail_before_any_run(table, capsys):
  path, _ = table
  assert "'learning_rate'" in _error(_args(path, "--set", "tunas.lr=0.1"))
  assert "'abc'" in _error(_args(path, "--set", "tunas.learning_rate=abc"))
  assert "batch_size" in _error(_args(path, "--set", "enas.batch_size=0"))
  assert capsys.readouterr().out == ""


def _finals(lookup, algorithm, seeds, budget, **kwargs):
  hp = tabular.DEFAULTS[algorithm]
  return np.array([tabular.run(SPACE, lookup, algorithm, s, budget, hp, **kwargs)["best_so_far"][-1]
                   for s in seeds])


@pytest.mark.slow
def test_enas_and_tunas_beat_random_search_with_default_hyperparameters(table):
  """On a separable table (conv3x3 best on every edge) learning must beat uniform sampling clearly."""
  _, lookup = table
  seeds, budget = range(6), 60
  base = _finals(lookup, "random", seeds, budget)
  for name in ("enas", "tunas"):
    finals = _finals(lookup, name, seeds, budget)
    se = np.sqrt(finals.var(ddof=1) / len(finals) + base.var(ddof=1) / len(base))
    assert finals.mean() - base.mean() > max(2 * se, 0.5), (name, finals, base)


def test_repeated_proposals_are_replaced_by_fresh_ones(table):
  _, lookup = table
  hp = {**tabular.DEFAULTS["evolution"], "population_size": 2, "tournament_size": 2}
  # A 2-member population mutating its best proposes the same children again and again.
  repeats = tabular.run(SPACE, lookup, "evolution", 0, 40, hp, retries=0)
  fresh = tabular.run(SPACE, lookup, "evolution", 0, 40, hp, retries=10)
  assert repeats["distinct"] < 40 and fresh["distinct"] == 40


def test_evolution_defaults_select_hard_and_beat_random_search(table):
  """The tabular defaults select strongly (S close to P: at ~80 children strong selection pays, see
  DEFAULTS) and are a valid controller config; on a separable table evolution must beat uniform
  sampling clearly and get within reach of the optimum."""
  _, lookup = table
  hp = tabular.DEFAULTS["evolution"]
  assert 1 <= hp["tournament_size"] <= hp["population_size"] < 100
  assert hp["tournament_size"] >= 0.75 * hp["population_size"]
  seeds, budget = range(6), 60
  base = _finals(lookup, "random", seeds, budget)
  finals = _finals(lookup, "evolution", seeds, budget)
  se = np.sqrt(finals.var(ddof=1) / len(finals) + base.var(ddof=1) / len(base))
  assert finals.mean() - base.mean() > max(2 * se, 0.5), (finals, base)


def test_random_export_is_its_best_queried_architecture(table):
  """Random search's export is the best architecture it queried (its `best_so_far`), not the
  all-zeros DNA that the argmax of uniform probabilities would give."""
  _, lookup = table
  result = tabular.run(SPACE, lookup, "random", 0, 20, tabular.DEFAULTS["random"])
  assert result["export"]["reward"] == pytest.approx(result["best_so_far"][-1])
  assert result["export"]["dna"] == result["dnas"][int(np.argmax(result["rewards"]))]


@pytest.mark.slow
def test_test_column_reports_the_chosen_architectures_test_value(table, tmp_path, capsys):
  """NAS-Bench-201's practice: the search sees the reward column only; the report adds the test
  column of the architecture it chose (its best reward), not the test column's own best."""
  _, lookup = table
  test_of = {dna: round(100.0 - 7.0 * reward, 4) for dna, reward in lookup.items()}  # never the max
  path = _write(tmp_path / "with_test.csv",
                [(SPACE.format(d), f"{r:.4f}", f"{test_of[d]:.4f}") for d, r in lookup.items()],
                header=("arch", "acc", "test"))
  out = tmp_path / "runs.json"
  assert tabular.main(_args(path, "--test-column", "test", "--algorithm", "random,tunas",
                            "--budget", "10", "--seeds", "2", "--out", str(out))) == 0
  lines = capsys.readouterr().out.splitlines()
  report = json.loads(out.read_text())
  assert report["test_column"] == "test"
  for name in ("random", "tunas"):
    tests = []
    for r in report["runs"][name]:
      chosen = tuple(r["chosen"]["dna"])
      assert r["chosen"]["reward"] == pytest.approx(max(r["rewards"]))
      assert lookup[chosen] == pytest.approx(max(r["rewards"]))
      assert r["chosen"]["test"] == pytest.approx(test_of[chosen])
      tests.append(test_of[chosen])
    assert report["summary"][name]["test_mean"] == pytest.approx(np.mean(tests))
    assert any(l.startswith(name) and "; test of the chosen: " in l for l in lines)
  with pytest.raises(UserError, match=r"no column 'nope' \(--test-column\)"):
    tabular.main(_args(path, "--test-column", "nope", "--budget", "2", "--seeds", "1"))

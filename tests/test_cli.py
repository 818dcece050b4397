"""One flag style for every subcommand: absl flags, spelled with dashes or underscores, and --help."""

import re

import pytest

from oneshot import cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_lists_every_flag_with_a_description(command, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main([command, "--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: oneshot {command}")
  described = re.findall(r"^\s+--(?:\[no\])?(\w+):\s*\S", out, re.M)
  assert len(described) >= 2, out
  assert all("-" not in name for name in described)


@pytest.mark.parametrize("spelling", ["--num-archs=abc", "--num_archs=abc"])
def test_dashes_and_underscores_name_the_same_flag(spelling, capsys):
  assert cli.main(["rank", "--workdir", "w", "--out", "o.json", spelling]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "num_archs" in err and "abc" in err, err


@pytest.mark.parametrize("argv, needle", [
    (["export", "--out", "x"], "--workdir is required"),
    (["rank", "--workdir", "w"], "--out is required"),
    (["tabular", "--table", "t.csv", "--reward-column", "r"], "--arch-column is required"),
    (["export", "--workdir", "w", "--out", "x", "--no-such-flag"], "unknown argument '--no_such_flag'"),
])
def test_missing_and_unknown_flags_are_one_line(argv, needle, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and needle in err, err

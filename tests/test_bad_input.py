"""Bad input through the real entry point `oneshot.cli.main`: exit status 2, one line on stderr that names
the problem and the fix, no traceback, nothing (half-)written.

The rows of the README's "Bad input" table that tests/test_search.py, test_spaces.py, test_launch.py,
test_tabular.py and test_cost_model.py do not already check end to end live here, plus a property test:
random `--config.*` overrides never produce a traceback.

Unwritable workdirs: the tests run as root, for whom chmod does not stop writes, so they use places the
kernel refuses to anyone: a path below a regular file (ENOTDIR), /proc/self (an existing directory that
is not writable) and /sys/kernel (where `os.access` says yes to root but creating a file fails). A full
disk is simulated with RLIMIT_FSIZE: writes past the limit fail with EFBIG ("File too large") through
the same OSError paths a real ENOSPC takes, with no privileges or loop devices needed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from oneshot import checkpoint, cli, data, session as session_lib, steps
from tests import faults
from tests.conftest import REPO, config_file, tiny_config

NB201_OK = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def _fails(capsys, argv: list[str], *needles: str) -> str:
  """Runs the CLI; asserts exit 2 and exactly one stderr line, besides the progress lines of a run that
  got under way, holding every needle. Returns the line."""
  code = cli.main(argv)
  captured = capsys.readouterr()
  lines = [l for l in captured.err.strip().splitlines() if not re.match(r"step \d+/\d+ loss ", l)]
  assert code == 2, captured.err
  assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
  assert lines[0].startswith(f"oneshot {argv[0]}: error: ")
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def _no_temporary_files(directory) -> None:
  for root, dirs, files in os.walk(directory):
    leftovers = [n for n in dirs + files if n.startswith(".tmp-") or "orbax-checkpoint-tmp" in n]
    assert not leftovers, (root, leftovers)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
  return config_file(tmp_path_factory.mktemp("config") / "tiny.py", tiny_config())


# --- architecture strings and DNAs (through `oneshot tabular`, which reads them from a table) -------
def _tabular(tmp_path, arch: str) -> list[str]:
  path = tmp_path / "table.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([("arch", "acc"), (NB201_OK, "0.5"), (arch, "0.7")])
  return ["tabular", "--space", "nasbench201", "--table", str(path), "--arch-column", "arch",
          "--reward-column", "acc", "--budget", "5", "--seeds", "1", "--out", str(tmp_path / "o.json")]


def test_malformed_architecture_string(capsys, tmp_path):
  bad = "|nor_conv_3x3~0|+|nor_conv_3x3~0|"
  _fails(capsys, _tabular(tmp_path, bad), "malformed NAS-Bench-201 string", "row 3", "expected 3 nodes")
  assert not (tmp_path / "o.json").exists()


def test_malformed_dna(capsys, tmp_path):
  _fails(capsys, _tabular(tmp_path, "0,x,1,2,3,4"), "cannot read '0,x,1,2,3,4' as a DNA",
         "comma-separated choice indices")
  assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("dna,needle", [("0,1,2,3,4,9", "DNA entry 5"),
                                        ("0,1,2", "DNA has 3 entries but space")])
def test_dna_that_does_not_fit_the_space(capsys, tmp_path, dna, needle):
  _fails(capsys, _tabular(tmp_path, dna), needle)
  assert not (tmp_path / "o.json").exists()


# --- accelerators ------------------------------------------------------------------------------------
def test_impossible_tpu_accelerator(capsys, tmp_path):
  config = tmp_path / "c.py"
  config.write_text("import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict()\n")
  _fails(capsys, ["launch", "--config", str(config), "--tpu", "t", "--zone", "us-central2-b",
                  "--accelerator-type", "v9-8", "--dry-run"], "accelerator type 'v9-8'", "v4-32")
  assert capsys.readouterr().out == ""  # not a single command printed


@pytest.mark.parametrize("override,needles", [
    ("--config.hardware.accelerator_choices.rows=(0, 8)",
     ("--config.hardware.accelerator_choices.rows must be positive",)),
    ("--config.hardware.accelerator_choices.dataflow=('ws', 'rs')", ("unknown dataflow 'rs'",)),
])
def test_impossible_hardware_accelerator(capsys, tmp_path, override, needles):
  """Checked before the supernet is trained. (An area budget no accelerator meets is only found while
  sampling accelerators, after training: not covered here.)"""
  _fails(capsys, ["cosearch", "--config", os.path.join(REPO, "configs", "digits_cosearch.py"),
                  "--workdir", str(tmp_path / "w"), override], *needles)
  assert not (tmp_path / "w").exists()


# --- config files ------------------------------------------------------------------------------------
BAD_CONFIG_FILES = {
    "syntax": ("def get_config(:\n", ("(line 1): invalid syntax", "fix the file")),
    "import": ("import no_such_module_here\n\ndef get_config():\n  return None\n",
               ("(line 1): ModuleNotFoundError: No module named 'no_such_module_here'",)),
    "raises": ("def get_config():\n  return 1 / 0\n", ("(line 2): ZeroDivisionError: division by zero",)),
    "value": ("def get_config():\n  return int('x')\n", ("(line 2): ValueError: invalid literal",)),
    "no get_config": ("x = 1\n", ("has no get_config()", "define get_config()")),
    "returns None": ("def get_config():\n  pass\n", ("get_config() returned None",)),
    # ml_collections defers OSErrors to the config's first use (they surfaced mid-run, exit 1).
    "OSError in get_config": ("def get_config():\n  return open('/no/such/file')\n",
                              ("(line 2): FileNotFoundError:", "/no/such/file")),
    "OSError at import": ("open('/no/such/file')\n", ("OSError: [Errno 2]", "/no/such/file")),
}


@pytest.mark.parametrize("command", ["search", "train", "cosearch", "latency-table", "launch"])
def test_config_file_that_does_not_exist(capsys, tmp_path, command):
  missing = str(tmp_path / "no_such_config.py")
  _fails(capsys, [command, "--config", missing], f"config file {missing} not found",
         "--config configs/digits.py")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["search", "train", "cosearch", "latency-table", "launch"])
@pytest.mark.parametrize("kind", sorted(BAD_CONFIG_FILES))
def test_config_file_that_does_not_load(capsys, tmp_path, command, kind):
  text, needles = BAD_CONFIG_FILES[kind]
  path = tmp_path / "bad.py"
  path.write_text(text)
  out = ["--out", str(tmp_path / "w")] if command == "latency-table" else ["--workdir", str(tmp_path / "w")]
  line = _fails(capsys, [command, "--config", str(path)] + out, *needles)
  assert kind == "returns None" or str(path) in line
  assert not (tmp_path / "w").exists()
  if command == "search":  # with an override, ml_collections touches the loaded config at once
    _fails(capsys, [command, "--config", str(path), "--config.seed=1"] + out, *needles)


# --- config values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("--config.space.kernel_sizes=(3, 4)", "odd positive kernel sizes"),
    ("--config.space.stages=0", "(filters, blocks, stride) triples"),
    ("--config.space.stem_filters=0", "--config.space.stem_filters=0 is not an integer >= 1"),
    ("--config.train.log_every=0", "--config.train.log_every must be positive"),
    ("--config.train.uniform_fraction=1.5", "uniform_fraction must be in [0, 1]"),
    ("--config.train.warmup_sampler=fairnas",
     "warmup_sampler must be uniform, fair or sandwich, got 'fairnas'"),
    ("--config.select.recalibrate_batches=-1", "recalibrate_batches must be >= 0"),
    ("--config.cpu_devices=-2", "--config.cpu_devices=-2 must be in 0.."),
    ("--config.num_devices=64", "only 8 devices are visible"),
])
def test_config_value_out_of_range(capsys, tmp_path, tiny_file, override, needle):
  _fails(capsys, ["search", "--config", tiny_file, "--workdir", str(tmp_path / "w"), override], needle)
  assert not (tmp_path / "w").exists()


# --- workdirs ----------------------------------------------------------------------------------------
def test_workdir_below_a_file(capsys, tmp_path, tiny_file):
  (tmp_path / "file").write_text("x")
  _fails(capsys, ["search", "--config", tiny_file, "--workdir", str(tmp_path / "file" / "w")],
         "cannot create workdir", "Not a directory", "pick a writable --workdir")


@pytest.mark.parametrize("workdir", ["/proc/self", "/sys/kernel"])
def test_existing_unwritable_workdir(capsys, tiny_file, workdir):
  """Both are full of entries that are not a workdir's: refused as such before any write is tried."""
  if not os.path.isdir(workdir):
    pytest.skip(f"{workdir} is not on this machine")
  before = set(os.listdir(workdir))
  _fails(capsys, ["search", "--config", tiny_file, "--workdir", workdir],
         f"--workdir {workdir} is not empty and is not a oneshot workdir", "pick a new or empty")
  assert set(os.listdir(workdir)) <= before


@pytest.mark.parametrize("workdir", ["/proc/self", "/sys/kernel"])
def test_unwritable_workdir_through_the_writability_check(capsys, monkeypatch, tiny_file, workdir):
  """The writability check itself, for a directory that passes as empty (module docstring)."""
  if not os.path.isdir(workdir):
    pytest.skip(f"{workdir} is not on this machine")
  from oneshot import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(workdir_lib, "_entries", lambda path: [])
  _fails(capsys, ["search", "--config", tiny_file, "--workdir", workdir], "is not writable",
         "pick a writable --workdir")


def _run_with_file_size_limit(argv: list[str], size: int) -> tuple[int, str]:
  """Runs the CLI in a child process whose files may not grow past `size` bytes (a full disk, see the
  module docstring). A child process, because the limit also binds pytest's own output files."""
  def limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
  proc = subprocess.run([sys.executable, "-m", "oneshot.cli", *argv], capture_output=True, text=True,
                        preexec_fn=limit, timeout=600, cwd=REPO)
  return proc.returncode, proc.stderr


def _one_error_line(stderr: str, *needles: str) -> str:
  lines = [l for l in stderr.splitlines() if "error:" in l]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


_UNRETRIEVED_TASKS = r"""
import asyncio, gc, logging, sys
from oneshot import checkpoint
logging.basicConfig()
if sys.argv[1] == "quiet":
  checkpoint._quiet_unretrieved_write_failures()
async def fail(message):
  raise ValueError(message)
WRITE_ERROR = "Failed to write 16098 bytes to file 8: File too large [os_error_code='27']"
loop = asyncio.new_event_loop()
async def start():  # orbax gathers its write tasks: the gathering future is logged too (CI saw it)
  return [asyncio.ensure_future(fail(WRITE_ERROR)), asyncio.gather(fail(WRITE_ERROR), fail("x")),
          asyncio.ensure_future(fail("an unrelated bug"))]
futures = loop.run_until_complete(start())
loop.run_until_complete(asyncio.sleep(0.01))
loop.close()
del futures
gc.collect()
"""


@pytest.mark.parametrize("mode", ["quiet", "default"])
@pytest.mark.slow
def test_tasks_that_died_of_a_failed_write_are_not_logged_after_the_error_line(mode):
  """A full disk fails many orbax write tasks; asyncio logs each one the checkpoint error did not
  retrieve whenever the garbage collector reaches it (even at exit), with a traceback. Only those
  records are dropped: an unrelated task failure is still logged."""
  stderr = subprocess.run([sys.executable, "-c", _UNRETRIEVED_TASKS, mode], cwd=REPO,
                          capture_output=True, text=True, timeout=120).stderr
  assert "an unrelated bug" in stderr
  assert ("File too large" in stderr) == (mode == "default"), stderr


@pytest.mark.slow
def test_full_workdir_at_the_second_checkpoint(tmp_path):
  """The disk fills while checkpoint 4 is written (tests/faults.py): one line on stderr besides the
  progress lines, exit 2; checkpoint 2 and every file written before stay whole and usable."""
  config = tiny_config(num_steps=6, checkpoint_every=2, log_every=2)
  config.compilation_cache_dir = ""  # the XLA cache is not under test (and not in the workdir)
  data.load(config.dataset)  # prepare the dataset (a first run writes it) before the disk "fills"
  workdir = tmp_path / "w"
  proc = faults.run(["search", "--config", config_file(tmp_path / "tiny.py", config), "--workdir",
                     str(workdir)], "full-disk-at-save", 4, timeout=600)
  assert proc.returncode == 2
  _one_error_line(proc.stderr, "cannot write checkpoint 4", "File too large", "free disk space",
                  "resume")
  other = [l for l in proc.stderr.splitlines()
           if l.strip() and "error:" not in l and not re.match(r"step \d+/6 ", l)]
  assert not other, other
  assert not os.path.exists(workdir / "search_result.json")
  assert os.listdir(workdir / "checkpoints") == ["2"]  # the partial step 4 was removed
  _no_temporary_files(workdir)
  json.loads((workdir / "config.json").read_text())  # what was written is whole
  assert json.loads((workdir / "controller_history.json").read_text())["history"]
  assert [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()] == [
      2, 4]
  sess = session_lib.build(config)
  restored = checkpoint.restore_latest(checkpoint.manager(str(workdir), read_only=True),
                                       sess.initial_state(steps.make_optimizer(config)))
  assert restored is not None and int(restored[1]["step"]) == 2


@pytest.mark.slow
def test_full_workdir_at_the_first_write(tmp_path, tiny_file):
  workdir = tmp_path / "w"
  code, stderr = _run_with_file_size_limit(["search", "--config", tiny_file, "--workdir",
                                            str(workdir), "--config.compilation_cache_dir="], 64)
  assert code == 2
  _one_error_line(stderr, "config.json", "File too large", "the disk is not full")
  assert not os.path.exists(workdir / "config.json")
  _no_temporary_files(workdir)


# --- --dry-run and random overrides ------------------------------------------------------------------
def test_dry_run_checks_the_config_and_writes_nothing(capsys, tmp_path, tiny_file):
  assert cli.main(["search", "--config", tiny_file, "--workdir", str(tmp_path / "w"),
                   "--dry-run"]) == 0
  assert "config OK" in capsys.readouterr().out
  assert not (tmp_path / "w").exists()
  _fails(capsys, ["search", "--config", tiny_file, "--dry-run", "--config.controller.name=x"],
         "unknown controller 'x'")


def _leaves(config, prefix: str = "") -> list[str]:
  out = []
  for key, value in config.items():
    if hasattr(value, "items"):
      out += _leaves(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out


FIELDS = sorted(_leaves(tiny_config())) + ["no_such_field", "train.no_such_field", "space"]
SMALL_INT = st.integers(-3, 40)
VALUES = st.one_of(
    SMALL_INT.map(str),
    st.floats(-2, 50).map(repr),
    st.sampled_from(["True", "False", "None", "''", "nan", "inf", "-1e9", "1e9", "(3, 5)", "[]", "()",
                     "((8, 1, 1),)", "((8, 1), (12, 2, 2))", "((0, 1, 1),)", "((8, 0, 1),)",
                     "(0.5, 1.0)", "(3, 'x')", "mobilenet", "nasbench201", "tunas", "mask", "switch",
                     "digits", "ws", "{", "(", "$HOME", "1,2"]),
    st.tuples(SMALL_INT, SMALL_INT).map(str),
    st.text("abc019_-., ()'", max_size=8),
)


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=3))
@pytest.mark.slow
def test_random_overrides_never_produce_a_traceback(capsys, monkeypatch, tmp_path, tiny_file,
                                                   overrides):
  """Any exception other than UserError escapes `cli.main` with its traceback and fails this test.

  Runs in a scratch directory: a random `dataset.data_dir` is a relative path the digits dataset gets
  prepared in."""
  monkeypatch.chdir(tmp_path)
  argv = ["search", "--config", tiny_file, "--dry-run"] + [f"--config.{k}={v}" for k, v in overrides]
  code = cli.main(argv)
  captured = capsys.readouterr()
  assert code in (0, 2), captured.err
  assert "Traceback" not in captured.err
  if code == 2:  # TFDS's two progress lines come first when a new data_dir is prepared on the way
    lines = [l for l in captured.err.strip().splitlines()
             if not re.match(r"(Downloading and preparing dataset|Dataset \w+ downloaded and prepared)", l)]
    assert len(lines) == 1 and lines[0].startswith("oneshot search: error: "), captured.err

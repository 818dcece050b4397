"""Trust boundaries (issue 28): nothing imported, deleted, overwritten or mixed that the user did not ask
for.

The three scenarios that went wrong with files and folders a colleague might hand over each have a test
here that fails on the code before the issue: an export folder that ran its own `helpers.py`, `oneshot
export --out` deleting a thesis beside an architecture.json, and a second search resuming a workdir with
another config (or while another search held it). Then a matrix of bad input across search, export,
train, rank, cosearch and launch's dry run, each exit 2 with exactly one stderr line, no traceback and a
file tree unchanged before/after, and a property test that mutates valid architecture.json and
config.json files field by field.

One searched workdir (6 steps, stopped at step 3) and one export of it are shared by the module; every
test that changes them works on a copy in its own tmp_path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from oneshot import api, checkpoint, cli, export, search_loop, workdir as workdir_lib
from oneshot import child as child_lib
from oneshot.errors import UserError
from tests.conftest import REPO, config_file, tiny_config
from tests.fake_bucket import fake_bucket

COSEARCH = os.path.join(REPO, "configs", "digits_cosearch.py")
ZEROS = ",".join("0" * 9)  # a DNA of the tiny config's 9-decision MobileNet space


# --- helpers ---------------------------------------------------------------------------------------
def snapshot(*roots) -> dict:
  """Every file and directory under `roots`: path -> content hash (None for a directory)."""
  out = {}
  for root in roots:
    for directory, dirs, files in os.walk(root):
      for name in dirs:
        out[os.path.join(directory, name)] = None
      for name in files:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
          out[path] = hashlib.sha256(f.read()).hexdigest()
  return out


def refused(capfd, argv: list[str], needle: str, *roots) -> str:
  """Runs the CLI in this process: exit 2, exactly one stderr line (nothing filtered), no traceback,
  nothing under `roots` written or removed. Returns the line."""
  before = snapshot(*roots)
  code = cli.main(argv)
  out, err = capfd.readouterr()
  assert code == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  assert lines[0].startswith(f"oneshot {argv[0]}: error: ") and needle in lines[0], lines[0]
  assert snapshot(*roots) == before
  return lines[0]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  """(config, workdir) of a search stopped at its step-3 checkpoint."""
  root = tmp_path_factory.mktemp("searched")
  config = tiny_config()
  workdir = str(root / "w")
  assert search_loop.run(config, workdir, stop_after=3) is None
  return config, workdir


@pytest.fixture(scope="module")
def exported(searched, tmp_path_factory):
  """An export of the searched workdir (its step-3 weights)."""
  config, workdir = searched
  out = str(tmp_path_factory.mktemp("exported") / "child")
  export.export(workdir, out, dna_text=ZEROS, recalibrate_batches=1)
  return out


def _copy(src: str, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def _edit_json(path, change) -> None:
  """`change(record)` edits the record in place (what it returns is ignored)."""
  with open(path) as f:
    record = json.load(f)
  change(record)
  with open(path, "w") as f:
    json.dump(record, f)


def _as_list(path) -> None:
  with open(path) as f:
    record = json.load(f)
  with open(path, "w") as f:
    json.dump([record], f)


def _module_export(tmp_path, module: str) -> str:
  """An export folder of a `module` space naming `module`, with a helpers.py beside it whose top-level
  code leaves a mark when it runs."""
  folder = tmp_path / "handed-over"
  (folder / "checkpoint").mkdir(parents=True)
  (folder / "helpers.py").write_text(
      "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('code ran')\n"
      "import flax.linen as nn\nclass Net(nn.Module):\n  @nn.compact\n"
      "  def __call__(self, x, train=True):\n    return nn.Dense(10)(x.reshape(len(x), -1))\n")
  record = {"space": "module", "architecture": {"op": 0}, "dna": [0], "string": "op=0",
            "format_version": 1, "model": ["oneshot.nas", "FixedArchitecture"],
            "skeleton": {"module": module, "kwargs": {}, "input_shape": [8, 8, 1]},
            "num_classes": 10, "image_shape": [8, 8, 1], "dataset": "digits", "dataset_config": {},
            "num_params": 1, "recalibrate_batches": 1, "recalibrate_batch_size": 16,
            "validation_accuracy": {"supernet_batch_stats": 0.5, "recalibrated": 0.5},
            "source": {"workdir": "w", "step": 3}, "checkpoint": "checkpoint"}
  (folder / "architecture.json").write_text(json.dumps(record))
  return str(folder)


# --- scenario 1: an export folder can run code -----------------------------------------------------
def test_export_folder_cannot_run_its_own_code(tmp_path, monkeypatch, capsys):
  folder = _module_export(tmp_path, "helpers:Net")
  monkeypatch.chdir(folder)
  monkeypatch.syspath_prepend(folder)  # as `python` started inside the folder would have it
  monkeypatch.delitem(sys.modules, "helpers", raising=False)
  with pytest.raises(UserError, match="--trust-module helpers") as info:
    api.load(folder)
  assert "\n" not in str(info.value)
  assert "helpers" not in sys.modules and not os.path.exists(os.path.join(folder, "RAN"))


def test_module_name_from_a_file_is_never_imported(tmp_path, capsys, monkeypatch):
  """`this` prints the Zen of Python when imported: a name in architecture.json does not import it."""
  monkeypatch.delitem(sys.modules, "this", raising=False)
  with pytest.raises(UserError, match="--trust-module this"):
    api.load(_module_export(tmp_path, "this:Nope"))
  assert "this" not in sys.modules and "Zen" not in capsys.readouterr().out


def test_a_trusted_module_is_imported(tmp_path, monkeypatch):
  """Trusting it is the way in: the module's code runs (and its class is checked as before)."""
  folder = _module_export(tmp_path, "helpers:Net")
  monkeypatch.syspath_prepend(folder)
  monkeypatch.delitem(sys.modules, "helpers", raising=False)
  with pytest.raises(UserError, match="checkpoint"):  # the empty checkpoint/ is the next complaint
    api.load(folder, trust=["helpers"])
  assert os.path.exists(os.path.join(folder, "RAN"))
  sys.modules.pop("helpers", None)


# --- scenario 2: export --out deletes the user's files ---------------------------------------------
def test_export_never_replaces_a_folder_that_is_not_exactly_an_export(searched, exported, tmp_path,
                                                                      capfd):
  _, workdir = searched
  thesis = tmp_path / "thesis"
  (thesis / "data").mkdir(parents=True)
  shutil.copy(os.path.join(exported, "architecture.json"), thesis)
  (thesis / "thesis.tex").write_text("\\documentclass{article}")
  (thesis / "data" / "x.csv").write_text("1,2\n")
  refused(capfd, ["export", "--workdir", workdir, "--out", str(thesis), "--dna", ZEROS],
          "is not an export", tmp_path)
  assert (thesis / "thesis.tex").exists() and (thesis / "data" / "x.csv").exists()


def test_export_never_replaces_a_bucket_folder_that_is_not_an_export(searched, exported, tmp_path,
                                                                     capfd):
  _, workdir = searched
  root = tmp_path / "buckets"
  thesis = root / "b" / "thesis"
  thesis.mkdir(parents=True)
  shutil.copy(os.path.join(exported, "architecture.json"), thesis)
  (thesis / "thesis.tex").write_text("mine")
  with fake_bucket(str(root)):
    refused(capfd, ["export", "--workdir", workdir, "--out", "gs://b/thesis", "--dna",
                    ZEROS], "is not an export", tmp_path)


@pytest.mark.slow
def test_an_earlier_export_is_still_replaced(searched, exported, tmp_path, capfd):
  _, workdir = searched
  out = _copy(exported, tmp_path / "again")
  assert cli.main(["export", "--workdir", workdir, "--out", out, "--dna", "1," + ZEROS[2:],
                   "--recalibrate-batches", "1"]) == 0
  assert child_lib.read_architecture(out)["dna"][0] == 1 and sorted(os.listdir(tmp_path)) == ["again"]


# --- scenario 3: a search silently mixes runs ------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    (["--config.train.learning_rate=0.3", "--config.seed=5", "--config.train.num_steps=9"],
     "config field seed is 0 there, 5 now"),
    (["--config.space.kernel_sizes=(3,)"], "space.kernel_sizes"),
    (["--config.controller.name=random"], "controller.name is 'tunas' there, 'random' now"),
])
def test_second_search_with_another_config_is_refused(searched, tmp_path, capfd, override, key):
  config, workdir = searched
  line = refused(capfd, ["search", "--config", config_file(tmp_path / "c.py", config), "--workdir",
                         workdir, *override], key, workdir)
  assert "use a new --workdir" in line
  assert not any(n.endswith(".unreadable") for n in os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.mark.slow
def test_reporting_fields_may_differ_on_resume(searched, tmp_path):
  config, workdir = searched
  mine = _copy(workdir, tmp_path / "w")
  assert cli.main(["search", "--config", config_file(tmp_path / "c.py", config), "--workdir", mine,
                   "--config.train.log_every=3", "--config.compilation_cache_dir="]) == 0
  with open(os.path.join(mine, "config.json")) as f:
    assert json.load(f)["train"]["log_every"] == 2  # config.json stays the run's own


@contextlib.contextmanager
def _held_by(workdir: str, pid: int, host: str):
  """Another process's lock, as the kernel sees it: a second open file description with the flock."""
  fd = os.open(os.path.join(workdir, workdir_lib.LOCK_FILE), os.O_RDWR | os.O_CREAT)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": pid, "host": host}).encode())
    yield
  finally:
    os.close(fd)


def test_second_search_while_one_runs_is_refused(searched, tmp_path, capfd):
  config, workdir = searched
  mine = _copy(workdir, tmp_path / "w")
  argv = ["search", "--config", config_file(tmp_path / "c.py", config), "--workdir", mine]
  with _held_by(mine, 4242, "elsewhere"):
    refused(capfd, argv, "in use by another run (pid 4242 on host elsewhere)", mine)


def test_a_user_folder_is_never_written_into(tmp_path, capfd):
  folder = tmp_path / "mine"
  folder.mkdir()
  (folder / "metrics.jsonl").write_text('{"my": 1}\n')
  (folder / "config.json").write_text('{"learning_rate": 3}')
  refused(capfd, ["search", "--config", config_file(tmp_path / "c.py", tiny_config()), "--workdir",
                  str(folder)], "not a oneshot config", folder)


def test_restore_of_another_runs_checkpoint_is_one_line_and_renames_nothing(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, 3, {"w": jnp.zeros((2, 3)), "step": np.zeros((), np.int32)})
  with pytest.raises(UserError, match="holds another run: checkpoint 3 does not fit") as info:
    checkpoint.restore_latest(mngr, {"w": jnp.zeros((2, 4)), "step": np.zeros((), np.int32)})
  with pytest.raises(UserError, match="holds another run: checkpoint 3 does not fit"):
    checkpoint.restore_latest(mngr, {"v": jnp.zeros((2, 3)), "step": np.zeros((), np.int32)})
  assert "\n" not in str(info.value) and os.listdir(tmp_path / "checkpoints") == ["3"]


@pytest.mark.slow
def test_damaged_controller_history_is_rebuilt(searched, tmp_path, capsys):
  config, workdir = searched
  mine = _copy(workdir, tmp_path / "w")
  with open(os.path.join(mine, "controller_history.json"), "w") as f:
    f.write('{"history": [{"step": 2, "probab')
  result = search_loop.run(config, mine)
  assert result is not None and result["steps"] == 6
  assert "controller_history.json is damaged" in capsys.readouterr().err
  with open(os.path.join(mine, "controller_history.json")) as f:
    assert [h["step"] for h in json.load(f)["history"]] == [4, 6]


# --- the lock in a bucket ----------------------------------------------------------------------------
def test_bucket_lock_is_exclusive_and_goes_stale(tmp_path, monkeypatch):
  from etils import epath  # pylint: disable=import-outside-toplevel
  (tmp_path / "b" / "w").mkdir(parents=True)
  with fake_bucket(str(tmp_path)):
    path = epath.Path("gs://b/w") / workdir_lib.LOCK_FILE
    first = workdir_lib._BucketLock(path)  # pylint: disable=protected-access
    with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()} on host "):
      workdir_lib._BucketLock(path)  # pylint: disable=protected-access
    first._stop.set()  # pylint: disable=protected-access  # its owner dies: no more heartbeats
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "heartbeat": time.time() - workdir_lib.STALE_SECONDS - 1}))
    second = workdir_lib._BucketLock(path)  # pylint: disable=protected-access  # taken over
    assert json.loads(path.read_text())["token"] == second.token
    first.release()  # not its lock any more: leaves it alone
    assert json.loads(path.read_text())["token"] == second.token
    second.release()
    assert not path.exists() and not list(path.parent.glob(f"{path.name}.takeover-*"))
    # Same host, a pid that no longer runs: stale at once.
    path.write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(), "token": "t",
                                "heartbeat": time.time()}))
    workdir_lib._BucketLock(path).release()  # pylint: disable=protected-access


# --- the bad-input matrix ------------------------------------------------------------------------------
def _search(ctx, *extra, config=None):
  return ["search", "--config", config_file(ctx["tmp"] / "c.py", config or ctx["config"]),
          "--workdir", *extra]


def _copy_workdir(ctx, change=None):
  mine = _copy(ctx["workdir"], ctx["tmp"] / "w")
  if change is not None:
    change(os.path.join(mine, "config.json"))
  return mine


def _copy_export(ctx, change=None):
  mine = _copy(ctx["export"], ctx["tmp"] / "x")
  if change is not None:
    _edit_json(os.path.join(mine, "architecture.json"), change)
  return mine


def _truncate(path):
  with open(path, "r+") as f:
    f.truncate(40)


def _set(path, key, value):
  def change(record):
    node = record
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  _edit_json(path, change)


def _user_folder(ctx, *files):
  folder = ctx["tmp"] / "mine"
  folder.mkdir()
  for name in files:
    (folder / name).write_text("{}")
  return str(folder)


def _module_config(ctx, module):
  path = ctx["tmp"] / "m.py"
  path.write_text("from oneshot.configs.digits import get_config as _d\n\ndef get_config():\n"
                  f"  c = _d()\n  c.space = dict(name='module', module={module!r}, kwargs={{}})\n"
                  "  return c\n")
  return str(path)


def _export(workdir, out):
  return ["export", "--workdir", workdir, "--out", out, "--dna", ZEROS]


def _train(ctx, arch):
  return ["train", "--arch", arch, "--workdir", str(ctx["tmp"] / "t")]


def _module_workdir(ctx):
  return _copy_workdir(ctx, lambda p: _set(p, "space", {"name": "module", "module": "helpers:Net",
                                                        "kwargs": {}, "input_shape": [8, 8, 1]}))


MATRIX = {
    # search: identity, same run, lock, damaged files, module names
    "search: non-empty folder of the user's": (
        lambda c: _search(c, _user_folder(c, "notes.txt")), "is not empty and is not a oneshot workdir"),
    "search: the user's own config.json": (
        lambda c: _search(c, _user_folder(c, "config.json", "metrics.jsonl")), "not a oneshot config"),
    "search: workdir is a file": (
        lambda c: _search(c, str(c["tmp"] / "c.py")), "is a file"),
    "search: another learning rate": (
        lambda c: _search(c, c["workdir"]) + ["--config.train.learning_rate=0.5"],
        "train.learning_rate is 0.1 there, 0.5 now"),
    "search: another step count": (
        lambda c: _search(c, c["workdir"]) + ["--config.train.num_steps=8"], "train.num_steps"),
    "search: another dataset": (
        lambda c: _search(c, c["workdir"]) + ["--config.dataset.image_size=6"], "dataset.image_size"),
    "search: a train workdir": (
        lambda c: _search(c, _user_folder(c, "train_setup.json", "config.json")),
        "holds an `oneshot train` run"),
    "search: truncated config.json": (
        lambda c: _search(c, _copy_workdir(c, _truncate)), "the file is damaged"),
    "search: config.json field of the wrong type": (
        lambda c: _search(c, _copy_workdir(c, lambda p: _set(p, "train.num_steps", "ten"))),
        "train.num_steps is 'ten', not a int"),
    "search: config.json without its space": (
        lambda c: _search(c, _copy_workdir(c, lambda p: _edit_json(p, lambda r: r.pop("space")))),
        "section 'space' missing"),
    "search: config.json is a list": (
        lambda c: _search(c, _copy_workdir(c, _as_list)),
        "holds a JSON list"),
    "search: module name '.x:Y'": (
        lambda c: ["search", "--config", _module_config(c, ".x:Y"), "--workdir", str(c["tmp"] / "n")],
        "malformed module name '.x:Y'"),
    "search: module name 'abc'": (
        lambda c: ["search", "--config", _module_config(c, "abc"), "--workdir", str(c["tmp"] / "n")],
        "'package.file:Class'"),
    # export
    "export: --out holds a thesis beside architecture.json": (
        lambda c: _export(c["workdir"], _user_folder(c, "architecture.json", "thesis.tex")),
        "is not an export"),
    "export: --out an export of another format": (
        lambda c: _export(c["workdir"], _copy_export(c, lambda r: r.update(format_version=0))),
        "is not an export"),
    "export: config.json field of the wrong type": (
        lambda c: _export(_copy_workdir(c, lambda p: _set(p, "train.batch_size", "x")),
                          str(c["tmp"] / "o")), "train.batch_size is 'x'"),
    "export: truncated config.json": (
        lambda c: _export(_copy_workdir(c, _truncate), str(c["tmp"] / "o")), "the file is damaged"),
    "export: config.json names an untrusted module": (
        lambda c: _export(_module_workdir(c), str(c["tmp"] / "o")), "--trust-module helpers"),
    # train
    "train: num_classes 'ten'": (
        lambda c: _train(c, _copy_export(c, lambda r: r.update(num_classes="ten"))),
        "'num_classes' is 'ten'"),
    "train: architecture.json without skeleton": (
        lambda c: _train(c, _copy_export(c, lambda r: r.pop("skeleton"))), "'skeleton' is missing"),
    "train: checkpoint outside the export": (
        lambda c: _train(c, _copy_export(c, lambda r: r.update(checkpoint="../../w/checkpoints/3"))),
        "'checkpoint' is '../../w/checkpoints/3'"),
    "train: truncated architecture.json": (
        lambda c: _train(c, _copy_export(c) and _truncated_export(c)), "cannot read"),
    "train: module '.x:Y' in architecture.json": (
        lambda c: _train(c, _module_export(c["tmp"], ".x:Y")), "malformed module name '.x:Y'"),
    "train: untrusted module in architecture.json": (
        lambda c: _train(c, _module_export(c["tmp"], "this:Nope")), "--trust-module this"),
    "train: a search workdir": (
        lambda c: ["train", "--arch", c["export"], "--workdir", c["workdir"]],
        "a search workdir, not an `oneshot train` one"),
    # rank
    "rank: truncated config.json": (
        lambda c: ["rank", "--workdir", _copy_workdir(c, _truncate), "--out", str(c["tmp"] / "r.json")],
        "the file is damaged"),
    "rank: config.json names an untrusted module": (
        lambda c: ["rank", "--workdir", _module_workdir(c), "--out", str(c["tmp"] / "r.json")],
        "--trust-module helpers"),
    # cosearch
    "cosearch: non-empty folder of the user's": (
        lambda c: ["cosearch", "--config", COSEARCH, "--workdir", _user_folder(c, "notes.txt")],
        "is not a oneshot workdir"),
    "cosearch: damaged state file": (
        lambda c: ["cosearch", "--config", COSEARCH, "--workdir", _user_folder(c, "cosearch_state.json")],
        "cosearch_state.json is damaged"),
    # launch --dry-run
    "launch: --repo-url that is an option": (
        lambda c: ["launch", "--config", COSEARCH, "--tpu", "t", "--zone", "us-central2-b",
                   "--accelerator-type", "v4-8", "--repo-url=--upload-pack=x", "--dry-run"],
        "begins with '-'"),
    "launch: --workdir a remote shell would read": (
        lambda c: ["launch", "--config", COSEARCH, "--tpu", "t", "--zone", "us-central2-b",
                   "--accelerator-type", "v4-8", "--workdir", "w;reboot", "--dry-run"],
        "a remote shell would interpret"),
}


def _truncated_export(ctx) -> str:
  path = ctx["tmp"] / "x" / "architecture.json"
  _truncate(path)
  return str(path.parent)


@pytest.fixture
def ctx(searched, exported, tmp_path, monkeypatch):
  monkeypatch.delitem(sys.modules, "this", raising=False)
  config, workdir = searched
  return {"config": config, "workdir": workdir, "export": exported, "tmp": tmp_path}


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_bad_input_matrix(case, ctx, capfd):
  argv, needle = MATRIX[case]
  argv = argv(ctx)
  capfd.readouterr()
  refused(capfd, argv, needle, ctx["tmp"], os.path.dirname(ctx["workdir"]),
          os.path.dirname(ctx["export"]))
  assert "this" not in sys.modules and "helpers" not in sys.modules


# --- property: valid files mutated field by field ---------------------------------------------------
OTHER_TYPE = st.sampled_from([None, "x", -1, 2.5, True, [], [1, "a"], {}, {"k": 0}])


def _other_type(value, draw_value):
  """`draw_value`, unless it is of `value`'s JSON type (then a string or a list)."""
  same = type(draw_value) is type(value) or (
      isinstance(value, (int, float)) and isinstance(draw_value, (int, float))
      and not isinstance(value, bool) and not isinstance(draw_value, bool))
  if not same:
    return draw_value
  return "?" if not isinstance(value, str) else ["?"]


def _leaves(record: dict, prefix: str = "") -> list[str]:
  out = []
  for k, v in record.items():
    if isinstance(v, dict) and v:
      out += _leaves(v, f"{prefix}{k}.")
    else:
      out.append(f"{prefix}{k}")
  return out


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_architecture_json_is_one_line(ctx, capfd, data):
  """Deleting any field of a valid architecture.json, or giving it a value of another type: `oneshot
  train --arch` on the folder exits 2 with one line and writes nothing."""
  with open(os.path.join(ctx["export"], "architecture.json")) as f:
    record = json.load(f)
  key = data.draw(st.sampled_from(sorted(record)), label="field")
  if data.draw(st.booleans(), label="delete"):
    record.pop(key)
  else:
    record[key] = _other_type(record[key], data.draw(OTHER_TYPE, label="value"))
  folder = pathlib.Path(tempfile.mkdtemp(dir=ctx["tmp"])) / "x"  # one per example
  shutil.copytree(ctx["export"], folder)
  (folder / "architecture.json").write_text(json.dumps(record))
  capfd.readouterr()
  refused(capfd, ["train", "--arch", str(folder), "--workdir", str(ctx["tmp"] / "t")], "error:",
          ctx["tmp"], os.path.dirname(ctx["export"]))


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.slow
def test_mutated_config_json_is_one_line(ctx, capfd, data):
  """Deleting a field of a search workdir's config.json, giving it another value (of its type or not),
  or cutting the file short: the same search command on it exits 2 with one line and writes nothing.
  (The reporting-only fields, which may differ, are left alone.)"""
  with open(os.path.join(ctx["workdir"], "config.json")) as f:
    record = json.load(f)
  keys = [k for k in _leaves(record) if not any(
      k == p or k.startswith(p + ".") for p in workdir_lib.REPORTING_ONLY + workdir_lib.MAY_GROW)]
  key = data.draw(st.sampled_from(keys), label="field")
  how = data.draw(st.sampled_from(["delete", "other type", "other value", "truncate"]), label="how")
  *parents, last = key.split(".")
  node = record
  for p in parents:
    node = node[p]
  if how == "delete":
    node.pop(last)
  elif how == "other type":
    node[last] = _other_type(node[last], data.draw(OTHER_TYPE, label="value"))
  elif how == "other value":
    old = node[last]
    node[last] = (not old if isinstance(old, bool) else old + 1 if isinstance(old, (int, float))
                  else old + "x" if isinstance(old, str) else [old] if old is not None else 1)
  text = json.dumps(record)
  if how == "truncate":
    text = text[:data.draw(st.integers(0, len(text) - 1), label="length")]
  workdir = pathlib.Path(tempfile.mkdtemp(dir=ctx["tmp"])) / "w"
  shutil.copytree(ctx["workdir"], workdir)
  (workdir / "config.json").write_text(text)
  capfd.readouterr()
  refused(capfd, ["search", "--config", config_file(ctx["tmp"] / "c.py", ctx["config"]), "--workdir",
                  str(workdir)], "error:", ctx["tmp"], os.path.dirname(ctx["workdir"]))

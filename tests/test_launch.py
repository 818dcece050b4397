"""`oneshot launch` builds the right gcloud plan, and multi-process start-up refuses bad settings.

Nothing here talks to Google Cloud or starts a distributed job: dry runs print, real runs go through a
fake subprocess.run.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import tempfile
import textwrap

import pytest

from oneshot.launch import accelerators, distributed, tpu
from oneshot import cli
from oneshot.errors import UserError

CONFIG = """
import ml_collections

def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.train = ml_collections.ConfigDict({"steps": 10, "lr": 0.1})
  c.name = "run"
  %s
  return c
"""
LAUNCH = ("c.launch = ml_collections.ConfigDict({'tpu': 'cfg-tpu', 'zone': 'europe-west4-a', "
          "'accelerator_type': 'v5litepod-16', 'spot': True})")
POD = ["--tpu", "my-pod", "--zone", "us-central2-b", "--accelerator-type", "v4-32"]


@pytest.fixture
def config(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent(CONFIG % ""))
  return str(path)


@pytest.fixture
def launch_config(tmp_path):
  path = tmp_path / "cfg_launch.py"
  path.write_text(textwrap.dedent(CONFIG % LAUNCH))
  return str(path)


def dry_run(capsys, *argv: str) -> list[list[str]]:
  """The printed commands, each already split the way a shell would split it."""
  assert tpu.main(["--dry-run", *argv]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  parsed = [shlex.split(line) for line in lines]  # every line, comments included, must parse
  return [argv for argv in parsed if argv and argv[0] != "#"]


def index(commands: list[list[str]], *words: str) -> int:
  hits = [i for i, argv in enumerate(commands) if all(w in " ".join(argv) for w in words)]
  assert len(hits) == 1, (words, commands)
  return hits[0]


def remote(argv: list[str]) -> list[str]:
  return shlex.split(argv[argv.index("--command") + 1])


def test_dry_run_v4_32_pod_in_order(capsys, config):
  commands = dry_run(capsys, "--config", config, *POD, "--config.train.steps", "5",
                     "--config.name=a b")
  create = index(commands, "tpu-vm create")
  copy = index(commands, "tpu-vm scp", "--worker=all")
  install = index(commands, "tpu-vm ssh", "pip install")
  run = index(commands, "tpu-vm ssh", "oneshot search")
  fetch = index(commands, "tpu-vm scp", "--worker=0")
  delete = index(commands, "tpu-vm delete")
  assert create < copy < install < run < fetch < delete == len(commands) - 1
  assert commands[create][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-pod"]
  assert {"--zone=us-central2-b", "--accelerator-type=v4-32",
          "--version=tpu-ubuntu2204-base"} <= set(commands[create])
  assert "--spot" not in commands[create]
  assert "--worker=all" in commands[install] and "jax[tpu]" in remote(commands[install])
  assert "--worker=all" in commands[run]
  search = remote(commands[run])
  start = search.index("oneshot")
  assert search[start:start + 2] == ["oneshot", "search"]
  assert search[-3:] == ["--config.train.steps", "5", "--config.name=a b"]  # verbatim, in order
  assert search[search.index("--workdir") + 1] == "workdirs/my-pod"
  assert search[search.index("--config") + 1] == "cfg.py"  # out-of-tree config is copied alongside
  assert config in commands[copy]
  assert "my-pod:workdirs/my-pod" in commands[fetch]
  assert "--quiet" in commands[delete] and "--zone=us-central2-b" in commands[delete]


def test_in_tree_config_rides_with_the_source(capsys, tmp_path):
  (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "c.py").write_text(textwrap.dedent(CONFIG % ""))
  commands = dry_run(capsys, "--config", str(tmp_path / "configs" / "c.py:arg"), *POD,
                     "--source", str(tmp_path))
  copy = commands[index(commands, "tpu-vm scp", "--worker=all")]
  assert not any(a.endswith("c.py") for a in copy)
  search = remote(commands[index(commands, "oneshot search")])
  assert search[search.index("--config") + 1] == "oneshot-src/configs/c.py:arg"
  assert commands[index(commands, "tar -czf")][-2:] == [str(tmp_path), "."]


def test_spot(capsys, config):
  commands = dry_run(capsys, "--config", config, *POD, "--spot")
  assert "--spot" in commands[index(commands, "tpu-vm create")]


def test_queued_waits_and_deletes_the_queued_resource(capsys, config):
  commands = dry_run(capsys, "--config", config, *POD, "--queued", "--spot", "--project", "p1")
  create = index(commands, "queued-resources create")
  wait = index(commands, "queued-resources describe")
  run = index(commands, "oneshot search")
  delete = index(commands, "queued-resources delete")
  assert create < wait < run < delete
  assert {"--node-id=my-pod", "--runtime-version=tpu-ubuntu2204-base", "--spot",
          "--project=p1"} <= set(commands[create])
  assert commands[wait][:2] == ["sh", "-c"] and "ACTIVE" in commands[wait][2]
  assert "--force" in commands[delete]
  assert not any("tpu-vm create" in " ".join(c) for c in commands)


def test_gs_workdir_is_fetched_with_gcloud_storage(capsys, config):
  commands = dry_run(capsys, "--config", config, *POD, "--workdir", "gs://b/runs/1")
  assert commands[index(commands, "storage cp")][-2:] == ["gs://b/runs/1", "workdirs"]


def test_config_launch_section_used_and_flags_win(capsys, launch_config):
  commands = dry_run(capsys, "--config", launch_config)
  create = commands[index(commands, "tpu-vm create")]
  assert {"cfg-tpu", "--zone=europe-west4-a", "--accelerator-type=v5litepod-16",
          "--version=v2-alpha-tpuv5-lite", "--spot"} <= set(create)
  commands = dry_run(capsys, "--config", launch_config, "--tpu", "flag-tpu", "--nospot",
                     "--accelerator-type", "v5p-8", "--runtime-version", "my-runtime")
  create = commands[index(commands, "tpu-vm create")]
  assert {"flag-tpu", "--zone=europe-west4-a", "--accelerator-type=v5p-8",
          "--version=my-runtime"} <= set(create)
  assert "--spot" not in create
  commands = dry_run(capsys, "--config", launch_config, "--config.launch.zone=us-east5-a")
  assert "--zone=us-east5-a" in commands[index(commands, "tpu-vm create")]


@pytest.mark.parametrize("accelerator", ["v4", "v4-x", "tpu-v4-32", "v9-8", "v4-0"])
def test_bad_accelerator_type(config, accelerator):
  with pytest.raises(UserError, match="accelerator type.*v4-32"):
    tpu.main(["--config", config, "--tpu", "t", "--zone", "us-central2-b", "--accelerator-type",
              accelerator, "--dry-run"])


def test_v5e_spelling_gets_the_cloud_name(config):
  with pytest.raises(UserError, match="v5litepod-16"):
    tpu.main(["--config", config, "--tpu", "t", "--zone", "us-central2-b", "--accelerator-type",
              "v5e-16", "--dry-run"])
  with pytest.raises(UserError, match="spelled v5litepod.*v5litepod-1, v5litepod-4,.*=v5litepod-4$"):
    tpu.parse_accelerator("v5e-3")


def test_size_cloud_tpu_does_not_offer_lists_the_generations_sizes(config):
  with pytest.raises(UserError, match=r"^accelerator type 'v4-33' does not exist on Cloud TPU; v4 comes "
                     r"as v4-8, v4-16, v4-32, v4-64 or v4-N for N a multiple of 128 up to 8192; "
                     r"use e\.g\. --accelerator-type=v4-32$"):
    tpu.main(["--config", config, *POD[:-1], "v4-33", "--dry-run"])
  for bad, sizes in [("v3-16", "v3-8, v3-32, v3-64,"), ("v2-64", "v2-8, v2-32, v2-128,"),
                     ("v5litepod-2", "v5litepod-1, v5litepod-4,"), ("v6e-512", "v6e-128 or v6e-256"),
                     ("v4-96", "v4-64 or v4-N"), ("v5p-12416", "up to 12288"), ("v4-", "v4-8, v4-16")]:
    with pytest.raises(UserError, match=f"'{bad}' does not exist.*{sizes}"):
      tpu.parse_accelerator(bad)


def test_every_generation_accepts_its_smallest_and_largest_size():
  assert set(accelerators.ACCELERATOR_SIZES) == set(accelerators.DEFAULT_RUNTIME)  # each generation has a runtime
  for generation in accelerators.ACCELERATOR_SIZES:
    sizes = accelerators._sizes(generation)  # pylint: disable=protected-access
    for size in (sizes[0], sizes[-1]):
      assert tpu.parse_accelerator(f"{generation}-{size}") == (generation, size)
  assert [tpu.parse_accelerator(t)[1] for t in ("v2-8", "v3-8", "v4-8", "v5litepod-1", "v5p-8",
                                                "v6e-1", "v4-32", "v4-384", "v5p-384")] == \
      [8, 8, 8, 1, 8, 1, 32, 384, 384]


def test_unknown_generation_lists_the_generations():
  with pytest.raises(UserError, match="generation one of v2, v3, v4, v5litepod, v5p, v6e, "):
    tpu.parse_accelerator("v7-8")


@pytest.mark.parametrize("missing", ["--tpu", "--zone", "--accelerator-type"])
def test_missing_setting_names_flag_and_config_field(config, missing):
  argv = list(POD)
  del argv[argv.index(missing):argv.index(missing) + 2]
  field = missing[2:].replace("-", "_")
  with pytest.raises(UserError, match=f"{missing} is required.*config.launch.{field}"):
    tpu.main(["--config", config, *argv, "--dry-run"])


def test_unknown_launch_field(tmp_path):
  path = tmp_path / "c.py"
  path.write_text(textwrap.dedent(CONFIG % "c.launch = ml_collections.ConfigDict({'zon': 'x'})"))
  with pytest.raises(UserError, match="unknown field 'zon'"):
    tpu.main(["--config", str(path), *POD, "--dry-run"])


def test_cli_prints_one_line_and_exits_2(capsys, config):
  assert cli.main(["launch", "--config", config, "--tpu", "t", "--accelerator-type", "v4-32"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "--zone is required" in err


def test_no_gcloud_fails_before_running_anything(monkeypatch, config):
  monkeypatch.setattr(tpu.shutil, "which", lambda name: None)
  ran = []
  monkeypatch.setattr(tpu.subprocess, "run", lambda *a, **k: ran.append(a))
  with pytest.raises(UserError, match="gcloud not found on PATH.*--dry-run"):
    tpu.main(["--config", config, *POD])
  assert ran == []


def fake_gcloud(monkeypatch, fail_on: str | None = None) -> list[str]:
  ran: list[str] = []

  def run(argv, check=False, **kwargs):
    ran.append(shlex.join(argv))
    code = 1 if fail_on and fail_on in ran[-1] else 0
    if check and code:
      raise subprocess.CalledProcessError(code, argv)
    return subprocess.CompletedProcess(argv, code)

  monkeypatch.setattr(tpu.shutil, "which", lambda name: f"/usr/bin/{name}")
  monkeypatch.setattr(tpu.subprocess, "run", run)
  return ran


def test_real_run_executes_the_dry_run_plan(monkeypatch, capsys, config):
  """The same commands, except the private staging folder's random name (a dry run creates none)."""
  printed = [shlex.join(c) for c in dry_run(capsys, "--config", config, *POD)]
  ran = fake_gcloud(monkeypatch)
  assert tpu.main(["--config", config, *POD]) == 0
  staging = re.search(r"oneshot-launch-\w+", ran[0]).group(0)
  assert staging != "oneshot-launch-XXXXXXXX" and not os.path.exists(
      os.path.join(tempfile.gettempdir(), staging))  # removed after the upload
  assert [r.replace(staging, "oneshot-launch-XXXXXXXX") for r in ran] == printed


def test_source_is_packed_privately_and_removed_after_the_upload(capsys, config):
  commands = dry_run(capsys, "--config", config, *POD)
  pack = commands[index(commands, "tar -czf")]
  tarball = pack[pack.index("-czf") + 1]
  assert os.path.dirname(tarball) == tpu.DRY_RUN_STAGING and "my-pod" not in tarball
  copy, remove = index(commands, "tpu-vm scp", "--worker=all"), index(commands, "rm -rf", "launch")
  assert tarball in commands[copy] and remove == copy + 1
  assert commands[remove] == ["rm", "-rf", tpu.DRY_RUN_STAGING]


def test_repo_url_is_never_an_option_of_git(capsys, config):
  commands = dry_run(capsys, "--config", config, *POD, "--repo-url", "https://example.com/x.git")
  install = remote(commands[index(commands, "tpu-vm ssh", "git clone")])
  assert install[install.index("clone"):install.index("clone") + 4] == [
      "clone", "--depth=1", "--", "https://example.com/x.git"]


@pytest.mark.parametrize("flag, value, needle", [
    ("--repo-url", "--upload-pack=touch /tmp/x", "begins with '-'"),
    ("--fetch-dir", "-rf", "begins with '-'"),
    ("--workdir", "-x", "begins with '-'"),
    ("--project", "--impersonate=x", "begins with '-'"),
    ("--runtime-version", "-v", "begins with '-'"),
    ("--workdir", "w;rm -rf ~", "a remote shell would interpret"),
    ("--workdir", "w $(id)", "a remote shell would interpret"),
])
def test_values_that_a_command_would_misread_are_refused(capsys, config, flag, value, needle):
  assert cli.main(["launch", "--config", config, *POD, f"{flag}={value}", "--dry-run"]) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err.count("\n") == 1 and needle in captured.err


def test_failed_step_still_deletes_the_tpu(monkeypatch, config):
  ran = fake_gcloud(monkeypatch, fail_on="oneshot search")
  with pytest.raises(UserError, match="run the search.*exit code 1.*being deleted"):
    tpu.main(["--config", config, *POD])
  assert "tpu-vm delete my-pod" in ran[-1]


def test_failed_create_deletes_nothing(monkeypatch, config):
  ran = fake_gcloud(monkeypatch, fail_on="tpu-vm create")
  with pytest.raises(UserError, match="no TPU was created"):
    tpu.main(["--config", config, *POD])
  assert not any("delete" in r for r in ran)


# --- launch.distributed -----------------------------------------------------------------------------

# Every variable detect_cluster reads, so that the machine running the tests (a SLURM node, a TPU VM, a
# Kubernetes CI pod) cannot leak a cluster into a test.
CLUSTER_ENV = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", *distributed._SLURM,
               "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES",
               "TPU_SKIP_MDS_QUERY", "TPU_LIBRARY_PATH", "JAX_FORCE_TPU_INIT", "KUBERNETES_SERVICE_HOST",
               "JOB_COMPLETION_INDEX")
SLURM_STEP = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "4",
              "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}


@pytest.fixture
def clean_env(monkeypatch):
  for name in list(distributed.ENV.values()) + list(CLUSTER_ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_tpu_runtime_installed", lambda environ: False)
  return monkeypatch


@pytest.fixture
def initialize_calls(clean_env):
  """Records jax.distributed.initialize calls instead of joining anything."""
  import jax
  calls = []
  clean_env.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  return calls


def test_maybe_initialize_is_a_no_op_without_settings(clean_env, initialize_calls):
  distributed.maybe_initialize()
  distributed.maybe_initialize(None)  # idempotent
  clean_env.setenv("ONESHOT_NUM_PROCESSES", "1")
  distributed.maybe_initialize()
  for name, value in {**SLURM_STEP, "SLURM_NTASKS": "1"}.items():  # a one-task SLURM step
    clean_env.setenv(name, value)
  clean_env.delenv("ONESHOT_NUM_PROCESSES")
  distributed.maybe_initialize()
  assert initialize_calls == []


def test_detected_cluster_gets_a_no_argument_initialize_and_oneshot_settings_override_it(
    clean_env, initialize_calls):
  for name, value in SLURM_STEP.items():
    clean_env.setenv(name, value)
  distributed.maybe_initialize()
  assert initialize_calls == [((), {})]  # jax reads SLURM itself
  clean_env.setenv("ONESHOT_NUM_PROCESSES", "1")  # the opt-out, even inside the cluster
  distributed.maybe_initialize()
  assert len(initialize_calls) == 1
  clean_env.setenv("ONESHOT_COORDINATOR_ADDRESS", "10.0.0.2:1234")
  clean_env.setenv("ONESHOT_NUM_PROCESSES", "2")
  clean_env.setenv("ONESHOT_PROCESS_ID", "1")
  distributed.maybe_initialize()
  assert initialize_calls[1] == ((), {
      "coordinator_address": "10.0.0.2:1234", "num_processes": 2, "process_id": 1,
      "local_device_ids": None, "cluster_detection_method": "deactivate"})


def test_already_initialized_is_left_alone(clean_env, initialize_calls):
  import jax
  clean_env.setattr(jax.distributed, "is_initialized", lambda: True)
  distributed.maybe_initialize(coordinator_address="h:1", num_processes=2, process_id=0)
  assert initialize_calls == []


def test_cluster_jax_cannot_join(clean_env, capsys):
  import jax

  def no_cluster(*args, **kwargs):
    raise ValueError("coordinator_address should be defined.")

  clean_env.setattr(jax.distributed, "initialize", no_cluster)
  clean_env.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
  with pytest.raises(UserError, match="TPU slice.*2 processes.*ONESHOT_NUM_PROCESSES=1 to run alone"):
    distributed.maybe_initialize()
  clean_env.delenv("TPU_WORKER_HOSTNAMES")
  clean_env.setattr(distributed, "_tpu_runtime_installed", lambda environ: True)
  distributed.maybe_initialize()  # a TPU VM that jax finds no slice on: one process, with a note
  assert "Cloud TPU VM" in capsys.readouterr().err


@pytest.mark.parametrize("environ,expected", [
    ({}, None),
    ({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, 4),
    ({"TPU_WORKER_HOSTNAMES": "a"}, 1),
    ({"TPU_PROCESS_ADDRESSES": "a:1,b:1", "MEGASCALE_NUM_SLICES": "2"}, 4),
    ({"OMPI_MCA_orte_hnp_uri": "123.0;tcp://10.0.0.1:5000", "OMPI_COMM_WORLD_SIZE": "3"}, 3),
    (SLURM_STEP, 4),
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4"}, None),  # a batch script outside srun: jax sees none
])
def test_detect_cluster_from_environment(clean_env, environ, expected):
  cluster = distributed.detect_cluster(environ)
  assert (cluster.num_processes if cluster else None) == expected


def test_cloud_tpu_vm_is_left_to_jax(clean_env):
  clean_env.setattr(distributed, "_tpu_runtime_installed", lambda environ: True)
  assert distributed.detect_cluster({}) == ("a Cloud TPU VM", None)
  assert distributed.detect_cluster({"TPU_SKIP_MDS_QUERY": "1"}) is None  # jax: no TPU chips here


def test_launch_uses_no_private_jax_modules():
  sources = pathlib.Path(distributed.__file__).parent.glob("*.py")
  offenders = [path.name for path in sources if "jax._src" in path.read_text()]
  assert offenders == []


def test_process_id_not_below_count(clean_env):
  clean_env.setenv("ONESHOT_COORDINATOR_ADDRESS", "10.0.0.2:1234")
  clean_env.setenv("ONESHOT_NUM_PROCESSES", "4")
  clean_env.setenv("ONESHOT_PROCESS_ID", "4")
  with pytest.raises(UserError, match="ONESHOT_PROCESS_ID=4 is not below ONESHOT_NUM_PROCESSES=4"):
    distributed.maybe_initialize()
  with pytest.raises(UserError, match="process_id=5 is not below"):
    distributed.resolve(num_processes=2, process_id=5, coordinator_address="h:1", environ={})


def test_resolve_precedence_and_validation():
  env = {"ONESHOT_COORDINATOR_ADDRESS": "h:9", "ONESHOT_NUM_PROCESSES": "2",
         "ONESHOT_PROCESS_ID": "1", "ONESHOT_LOCAL_DEVICE_IDS": "0,1"}
  s = distributed.resolve(environ=env)
  assert (s.coordinator_address, s.num_processes, s.process_id, s.local_device_ids) == \
      ("h:9", 2, 1, (0, 1))
  assert distributed.resolve(environ=env, process_id=0).process_id == 0  # arguments win
  assert distributed.resolve(environ={}) is None
  with pytest.raises(UserError, match="no coordinator"):
    distributed.resolve(environ={"ONESHOT_NUM_PROCESSES": "2", "ONESHOT_PROCESS_ID": "0"})
  with pytest.raises(UserError, match="not HOST:PORT"):
    distributed.resolve(environ={**env, "ONESHOT_COORDINATOR_ADDRESS": "h"})
  with pytest.raises(UserError, match="not an integer"):
    distributed.resolve(environ={**env, "ONESHOT_NUM_PROCESSES": "two"})

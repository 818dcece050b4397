"""`oneshot launch`: run a search config on a Cloud TPU VM or pod slice, then fetch results and delete it.

The launcher is a plan of plain `gcloud` (and `tar`/`mkdir`) command lines. `--dry-run` prints that plan
with shell quoting; a real run executes the very same argv lists, so what you review is what runs.

Launch settings come from flags, else from the config's optional `launch` section (`config.launch.tpu`,
`.zone`, `.accelerator_type`, `.runtime_version`, `.project`, `.spot`, `.queued`, `.workdir`); flags win.
`--config.*` overrides are applied locally (so a bad override fails here, not on a paid pod) and are also
passed verbatim to the remote `oneshot search`, which loads the same config file.

Default runtime (software) versions follow https://cloud.google.com/tpu/docs/runtimes:
v2/v3/v4 -> tpu-ubuntu2204-base, v5e (v5litepod) -> v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5,
v6e -> v2-alpha-tpuv6e.

Every host of a pod runs the same `oneshot search` command (`--worker=all`); the search calls
`launch.distributed.maybe_initialize()`, which lets jax.distributed auto-detect the pod. On a real run
the TPU is deleted after the last step, and also when a step fails or the run is interrupted (unless
`--keep`), because a forgotten v4-32 costs far more than a re-run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from absl import flags

from oneshot.launch.accelerators import DEFAULT_RUNTIME, parse_accelerator
from oneshot import configuration
from oneshot.errors import UserError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fields the config's `launch` section may set; the flag of the same name (dashes) overrides each.
LAUNCH_FIELDS = ("tpu", "zone", "accelerator_type", "runtime_version", "project", "spot", "queued",
                 "workdir")

REMOTE_SRC = "oneshot-src"  # directory, relative to each worker's home, holding the project
# Left out of the source tarball: history, environments, outputs and caches are large and host-specific.
TAR_EXCLUDES = (".git", ".venv", "venv", "workdirs", "__pycache__", "*.egg-info", ".pytest_cache",
                ".hypothesis")
PIP_INSTALL = ("python3", "-m", "pip", "install", "--upgrade", "jax[tpu]", f"./{REMOTE_SRC}[gcs]")
# pip falls back to a user install on TPU VM images, whose scripts dir is not on a non-login PATH.
REMOTE_PATH = 'export PATH="$HOME/.local/bin:$PATH" && '

_TPU_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# The workdir ends up inside a remote path (`TPU:WORKDIR`) that the worker's shell reads: plain
# characters only, so nothing in it is expanded or split there.
_WORKDIR = re.compile(r"^(gs://)?[A-Za-z0-9._+@=,/-]+$")
# A mkdtemp name in a dry run, which creates nothing: the real run packs the source in a private
# folder of this form whose random part replaces the X's.
DRY_RUN_STAGING = os.path.join(tempfile.gettempdir(), "oneshot-launch-XXXXXXXX")
TARBALL = "oneshot-src.tar.gz"
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_QR_DONE = {"ACTIVE": 0, "FAILED": 1, "SUSPENDING": 1, "SUSPENDED": 1}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the plan depends on, resolved from flags, the config and defaults."""
  tpu: str
  zone: str
  accelerator_type: str
  runtime_version: str
  config_path: str  # local path of the config file
  config_arg: str  # the `:arg` suffix of --config, '' if none
  overrides: tuple[str, ...]  # the --config.* tokens, verbatim
  workdir: str
  fetch_dir: str = "workdirs"
  project: str | None = None
  spot: bool = False
  queued: bool = False
  source: str | None = None
  repo_url: str | None = None
  keep: bool = False
  dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class Step:
  title: str
  argv: tuple[str, ...]
  allocates: bool = False  # once this step succeeds the TPU exists and must be deleted


def _define(fv: flags.FlagValues) -> None:
  s = lambda name, help: flags.DEFINE_string(name, None, help, flag_values=fv)  # noqa: E731
  s("tpu", "TPU VM name (or config.launch.tpu).")
  s("zone", "Cloud zone, e.g. us-central2-b (or config.launch.zone).")
  s("accelerator_type", "e.g. v4-32, v5litepod-16, v5p-8 (or config.launch.accelerator_type).")
  s("runtime_version", "TPU software version; default by generation, see `launch/tpu.py`.")
  s("project", "Google Cloud project; default: gcloud's configured project.")
  s("workdir", "Workdir for the remote search; gs://... recommended on pods. "
    "Default: workdirs/<tpu> in each worker's home.")
  s("source", "Local project directory to copy to the workers (default: this checkout).")
  s("repo_url", "Git URL to clone on the workers instead of copying --source.")
  s("fetch_dir", "Local directory that receives the workdir from worker 0 (default: workdirs).")
  flags.DEFINE_boolean("spot", None, "Use Spot capacity (preemptible, cheaper).", flag_values=fv)
  flags.DEFINE_boolean("queued", None, "Request the TPU as a queued resource and wait until it is "
                       "ACTIVE.", flag_values=fv)
  flags.DEFINE_boolean("dry_run", False, "Print the commands and run nothing.", flag_values=fv)
  flags.DEFINE_boolean("keep", False, "Do not delete the TPU at the end (print the delete command).",
                       flag_values=fv)


def settings_from_flags(fv: flags.FlagValues, argv: Sequence[str]) -> Settings:
  """Merges flags over `config.launch` and validates, so a typo fails before anything is paid for."""
  config = configuration.load(fv)
  section = configuration.section(config, "launch", LAUNCH_FIELDS)

  def pick(field: str) -> Any:
    value = fv[field].value
    return section.get(field) if value is None else value

  values = {field: pick(field) for field in LAUNCH_FIELDS}
  for field in ("tpu", "zone", "accelerator_type"):
    if not values[field]:
      flag = "--" + field.replace("_", "-")
      raise UserError(f"{flag} is required (or set config.launch.{field} in the config)")
  for field in ("spot", "queued"):
    if values[field] is not None and not isinstance(values[field], bool):
      raise UserError(f"config.launch.{field} must be True or False, "
                      f"not {values[field]!r}")
  for field in ("tpu", "zone", "accelerator_type", "runtime_version", "project", "workdir"):
    if values[field] is not None and not isinstance(values[field], str):
      raise UserError(f"config.launch.{field} must be a string, not {values[field]!r}")
  given = {**values, "source": fv["source"].value, "repo_url": fv["repo_url"].value,
           "fetch_dir": fv["fetch_dir"].value, "config": fv["config"].config_filename}
  for field, value in given.items():
    if isinstance(value, str) and value.startswith("-"):
      raise UserError(f"--{field.replace('_', '-')} {value!r} begins with '-', which a command it is "
                      "passed to would read as an option; give a value that does not")
  if values["workdir"] is not None and not _WORKDIR.match(values["workdir"]):
    raise UserError(f"--workdir {values['workdir']!r} has characters a remote shell would interpret; use "
                    "letters, digits and . _ + @ = , / - (or a gs:// path of those)")
  tpu, zone = values["tpu"], values["zone"]
  if not _TPU_NAME.match(tpu):
    raise UserError(f"bad TPU name {tpu!r}; use lowercase letters, digits and dashes, "
                    "starting with a letter (at most 63), e.g. --tpu=oneshot-v4")
  if not _ZONE.match(zone):
    raise UserError(f"bad zone {zone!r}; use a Cloud zone like --zone=us-central2-b "
                    "(`gcloud compute tpus locations list` shows them)")
  generation, _ = parse_accelerator(values["accelerator_type"])
  source, repo_url = fv["source"].value, fv["repo_url"].value
  if source and repo_url:
    raise UserError("--source and --repo-url both given; pass one (copy a local checkout, "
                    "or clone a repository on the workers)")
  if not repo_url:
    source = os.path.abspath(source or PROJECT_ROOT)
    if not os.path.isfile(os.path.join(source, "pyproject.toml")):
      raise UserError(f"{source} has no pyproject.toml; pass --source DIR (a oneshot "
                      "checkout) or --repo-url URL")
  config_path, config_arg = _split_config_value(fv["config"].config_filename)
  workdir = values["workdir"] or f"workdirs/{tpu}"
  return Settings(
      tpu=tpu, zone=zone, accelerator_type=values["accelerator_type"],
      runtime_version=values["runtime_version"] or DEFAULT_RUNTIME[generation],
      config_path=os.path.abspath(config_path), config_arg=config_arg,
      overrides=tuple(config_overrides(argv, fv)), workdir=workdir,
      fetch_dir=fv["fetch_dir"].value or "workdirs", project=values["project"],
      spot=bool(values["spot"]), queued=bool(values["queued"]), source=source, repo_url=repo_url,
      keep=fv["keep"].value, dry_run=fv["dry_run"].value)


def _split_config_value(value: str) -> tuple[str, str]:
  """`path[:arg]` as ml_collections reads it, so the remote run gets the same `:arg`."""
  if os.path.isfile(value) or ":" not in value:
    return value, ""
  path, _, arg = value.partition(":")
  return path, arg


def config_overrides(argv: Sequence[str], fv: flags.FlagValues) -> list[str]:
  """The `--config.*` tokens of argv, verbatim, including a separate value token (`--config.a 3`)."""
  out, i = [], 0
  while i < len(argv):
    token = argv[i]
    if token == "--":
      break
    name = token.lstrip("-")
    if token.startswith("-") and name.startswith("config.") and name != token:
      out.append(token)
      takes_value = "=" not in name and name in fv and not fv[name].boolean
      if takes_value and i + 1 < len(argv):
        out.append(argv[i + 1])
        i += 1
    i += 1
  return out


def _gcloud(s: Settings, words: Sequence[str], *flags_: str) -> tuple[str, ...]:
  """`gcloud compute tpus WORDS --zone=Z [--project=P] FLAGS`: zone and project on every command."""
  project = (f"--project={s.project}",) if s.project else ()
  return ("gcloud", "compute", "tpus", *words, f"--zone={s.zone}", *project, *flags_)


def _ssh(s: Settings, worker: str, command: str) -> tuple[str, ...]:
  return _gcloud(s, ("tpu-vm", "ssh", s.tpu), f"--worker={worker}", "--command", command)


def _quote(token: str) -> str:
  """shlex.quote, but with double quotes where that is safe: they nest inside the outer single quotes
  of `--command '...'` without the unreadable '"'"' dance."""
  quoted = shlex.quote(token)
  if quoted == token or any(c in token for c in '"$`\\!'):
    return quoted
  return f'"{token}"'


def _join(argv: Sequence[str]) -> str:
  return " ".join(_quote(token) for token in argv)


def _join_shell(argv: Sequence[str]) -> str:
  """Like _join, but `&&` stays an operator."""
  return " ".join(token if token == "&&" else _quote(token) for token in argv)


def _wait_script(s: Settings) -> str:
  """POSIX sh loop that polls the queued resource until ACTIVE, failing fast on terminal states."""
  describe = _join(_gcloud(s, ("queued-resources", "describe", s.tpu),
                           "--format=value(state.state)"))
  cases = " ".join(f"{state}) exit {rc};;" for state, rc in _QR_DONE.items())
  return (f"while true; do state=$({describe}) || exit 1; echo \"queued resource {s.tpu}: $state\"; "
          f"case \"$state\" in {cases} esac; sleep 30; done")


def remote_config(s: Settings) -> tuple[str, bool]:
  """(path on the workers, whether it must be copied separately): in-tree configs ride along."""
  if s.source:
    rel = os.path.relpath(s.config_path, s.source)
    parts = rel.split(os.sep)
    excluded = any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in TAR_EXCLUDES)
    if parts[0] != os.pardir and not excluded:
      return f"{REMOTE_SRC}/{rel.replace(os.sep, '/')}", False
  return os.path.basename(s.config_path), True


def plan(s: Settings, staging: str = DRY_RUN_STAGING) -> tuple[list[Step], Step]:
  """(steps in order, teardown). Local packing comes first so that it cannot fail on a paid TPU.
  `staging`: the private folder (mkdtemp) the source tarball is packed in; removed after the upload."""
  spot = ("--spot",) if s.spot else ()
  steps = []
  config_remote, copy_config = remote_config(s)
  uploads = [s.config_path] if copy_config else []
  if s.source:
    tarball = os.path.join(staging, TARBALL)
    excludes = [f"--exclude={pattern}" for pattern in TAR_EXCLUDES]
    steps.append(Step("pack the source tree in a private temporary folder",
                      ("tar", "-czf", tarball, *excludes, "-C", s.source, ".")))
    uploads.insert(0, tarball)
    fetch_source = ("rm", "-rf", REMOTE_SRC, "&&", "mkdir", REMOTE_SRC, "&&", "tar", "-xzf",
                    TARBALL, "-C", REMOTE_SRC, "&&", "rm", "-f", TARBALL)
  else:  # `--`: the URL is never read as an option of git's
    fetch_source = ("rm", "-rf", REMOTE_SRC, "&&", "git", "clone", "--depth=1", "--", s.repo_url,
                    REMOTE_SRC)

  if s.queued:
    steps.append(Step("request the TPU as a queued resource", _gcloud(
        s, ("queued-resources", "create", s.tpu), f"--node-id={s.tpu}",
        f"--accelerator-type={s.accelerator_type}", f"--runtime-version={s.runtime_version}",
        *spot), allocates=True))
    steps.append(Step("wait until the queued resource is ACTIVE", ("sh", "-c", _wait_script(s))))
    teardown = Step("delete the queued resource and its TPU VM", _gcloud(
        s, ("queued-resources", "delete", s.tpu), "--force", "--quiet"))
  else:
    steps.append(Step("create the TPU VM", _gcloud(
        s, ("tpu-vm", "create", s.tpu), f"--accelerator-type={s.accelerator_type}",
        f"--version={s.runtime_version}", *spot), allocates=True))
    teardown = Step("delete the TPU VM", _gcloud(s, ("tpu-vm", "delete", s.tpu), "--quiet"))

  if uploads:
    steps.append(Step("copy to every worker", _gcloud(
        s, ("tpu-vm", "scp", *uploads, f"{s.tpu}:"), "--worker=all")))
  if s.source:
    steps.append(Step("remove the local source tarball", ("rm", "-rf", staging)))
  steps.append(Step("install oneshot and jax[tpu] on every worker",
                    _ssh(s, "all", _join_shell(fetch_source + ("&&",) + PIP_INSTALL))))

  config_value = config_remote + (f":{s.config_arg}" if s.config_arg else "")
  search = ("oneshot", "search", "--config", config_value, "--workdir", s.workdir, *s.overrides)
  steps.append(Step("run the search on every worker",
                    _ssh(s, "all", REMOTE_PATH + _join(search))))

  steps.append(Step("make the local results directory", ("mkdir", "-p", s.fetch_dir)))
  if s.workdir.startswith("gs://"):
    fetch = ("gcloud", "storage", "cp", "--recursive", s.workdir.rstrip("/"), s.fetch_dir,
             *((f"--project={s.project}",) if s.project else ()))
  else:
    fetch = _gcloud(s, ("tpu-vm", "scp", "--recurse", f"{s.tpu}:{s.workdir.rstrip('/')}",
                        s.fetch_dir), "--worker=0")
  where = "Cloud Storage" if s.workdir.startswith("gs://") else "worker 0"
  steps.append(Step(f"fetch the workdir from {where}", fetch))
  return steps, teardown


def render(steps: Sequence[Step], teardown: Step | None) -> str:
  """One `# n/N title` comment and one shell-quoted command per step: paste-able into bash or zsh."""
  every = list(steps) + ([teardown] if teardown else [])
  lines = []
  for i, step in enumerate(every, 1):
    lines += [f"# {i}/{len(every)} {step.title}", shlex.join(step.argv)]
  return "\n".join(lines)


def _require_tools(s: Settings) -> None:
  needed = ["gcloud"] + (["tar"] if s.source else [])
  for tool in needed:
    if shutil.which(tool) is None:
      if tool == "gcloud":
        raise UserError("gcloud not found on PATH: install the Google Cloud CLI "
                        "(https://cloud.google.com/sdk/docs/install) and run `gcloud auth login`, "
                        "or use --dry-run to print the commands")
      raise UserError(f"{tool} not found on PATH: install it, or use --dry-run to print the commands")


def execute(steps: Sequence[Step], teardown: Step | None) -> int:
  """Runs the steps in order; once the TPU exists, the teardown runs however the steps end."""
  allocated, total = False, len(steps) + (1 if teardown else 0)
  try:
    for i, step in enumerate(steps, 1):
      print(f"oneshot launch: [{i}/{total}] {step.title}: {shlex.join(step.argv)}", file=sys.stderr,
            flush=True)
      try:
        subprocess.run(list(step.argv), check=True)
      except subprocess.CalledProcessError as e:
        fate = "the TPU is being deleted" if allocated and teardown else (
            "the TPU is kept (--keep)" if allocated else "no TPU was created by this run")
        raise UserError(f"step {i}/{total} ({step.title}) failed with exit code {e.returncode}; "
                        f"{fate}; see its output above") from None
      allocated = allocated or step.allocates
  finally:
    if allocated and teardown:
      print(f"oneshot launch: [{total}/{total}] {teardown.title}: {shlex.join(teardown.argv)}",
            file=sys.stderr, flush=True)
      if subprocess.run(list(teardown.argv)).returncode != 0:
        raise UserError(f"could not delete the TPU; delete it by hand: {shlex.join(teardown.argv)}")
  return 0


def main(argv: list[str]) -> int:
  fv = configuration.parse_flags(argv, define=_define, command="launch")
  s = settings_from_flags(fv, argv)
  staging = tempfile.mkdtemp(prefix="oneshot-launch-") if s.source and not s.dry_run else None
  try:
    return _launch(s, *plan(s, staging or DRY_RUN_STAGING))
  finally:
    if staging is not None:  # also when a step before the upload's clean-up failed
      shutil.rmtree(staging, ignore_errors=True)


def _launch(s: Settings, steps: list[Step], teardown: Step) -> int:
  _, size = parse_accelerator(s.accelerator_type)
  if size > 8 and not s.workdir.startswith("gs://"):
    print(f"oneshot launch: note: {s.accelerator_type} has several hosts and each writes its own "
          f"local {s.workdir}; only worker 0's copy is fetched (use --workdir gs://... to share one)",
          file=sys.stderr)
  if s.dry_run:
    print(render(steps, None if s.keep else teardown))
    return 0
  _require_tools(s)
  execute(steps, None if s.keep else teardown)
  if s.keep:
    print(f"oneshot launch: TPU {s.tpu} kept; delete it with: {shlex.join(teardown.argv)}")
  return 0

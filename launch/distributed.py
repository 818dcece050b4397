"""Start jax's multi-process runtime when, and only when, this job has several processes.

Call `maybe_initialize(config)` first thing in a command, before any jax call that touches a backend
(`jax.devices()`, `jax.device_put`, any computation, even `jax.process_index()`): jax can only join a
distributed job before its backends exist, and raises RuntimeError otherwise. This module imports jax
lazily so that importing it is free.

Explicit settings override everything; first match wins for each value:
  1. explicit arguments to `maybe_initialize`;
  2. environment: ONESHOT_COORDINATOR_ADDRESS (host:port of process 0), ONESHOT_NUM_PROCESSES,
     ONESHOT_PROCESS_ID, optional ONESHOT_LOCAL_DEVICE_IDS (comma-separated);
  3. the config's optional `distributed` section (`coordinator_address`, `num_processes`,
     `process_id`, `local_device_ids`).
They go to `jax.distributed.initialize` as arguments, with jax's cluster detection switched off, so what
you set is exactly what runs. `ONESHOT_NUM_PROCESSES=1` runs a single process even inside a cluster.

Without explicit settings, a cluster that `jax.distributed.initialize()` auto-detects (Open MPI,
SLURM, a Cloud TPU VM or pod slice, GKE TPU or Kubernetes indexed Jobs) is left to that auto-detection:
`initialize()` is called with no arguments, which is how `oneshot launch` runs pods (the same command on
every worker, no per-host settings). Anything else, a laptop included, is a single process and a no-op.

Whether there is a cluster at all is decided first, from the environment variables jax's own detectors
read (`detect_cluster`), rather than by calling `initialize()` and catching its failure: off a cluster
jax raises a bare ValueError ('coordinator_address should be defined.'), whose wording is all that would
tell "no cluster" from a real error, and in a Kubernetes pod (CI runners) jax would query the Kubernetes
API. Where only jax can count the processes (a Cloud TPU VM: the VM's metadata server; a Kubernetes
indexed Job: the Kubernetes API) a ValueError from `initialize()` means jax found no cluster after all,
and the job runs as one process with a note; where the environment gives the count, it is one line
naming the cluster and the ONESHOT_* way out.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any, Mapping, NamedTuple, Sequence

from oneshot import configuration
from oneshot.errors import UserError

ENV = {
    "coordinator_address": "ONESHOT_COORDINATOR_ADDRESS",
    "num_processes": "ONESHOT_NUM_PROCESSES",
    "process_id": "ONESHOT_PROCESS_ID",
    "local_device_ids": "ONESHOT_LOCAL_DEVICE_IDS",
}
_ADDRESS = re.compile(r"^\S+:[0-9]{1,5}$")
# What jax's SLURM detector requires (jax 0.10): all are set inside an `srun` step.
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


class Settings(NamedTuple):
  """Resolved explicit settings; `sources` names where each value came from, for error messages."""
  coordinator_address: str | None
  num_processes: int
  process_id: int
  local_device_ids: tuple[int, ...] | None
  sources: Mapping[str, str]


def resolve(config: Any = None, environ: Mapping[str, str] | None = None,
            **explicit: Any) -> Settings | None:
  """Explicit settings (arguments > environment > config), validated; None when none are given.

  Pure (no jax), so that a bad setting is reported before any process waits on a coordinator.
  """
  environ = os.environ if environ is None else environ
  section = configuration.section(config, "distributed", ENV)
  values: dict[str, Any] = {}
  sources: dict[str, str] = {}
  for field, env_name in ENV.items():
    for source, value in ((f"{field}=", explicit.get(field)), (env_name, environ.get(env_name)),
                          (f"config.distributed.{field}", section.get(field))):
      if value is not None and value != "":
        values[field], sources[field] = value, source
        break
  if not values:
    return None

  def number(field: str, low: int) -> int | None:
    if field not in values:
      return None
    value = values[field]
    try:
      parsed = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
      parsed = None
    if parsed is None or parsed < low or (isinstance(value, float) and value != parsed):
      raise UserError(f"{_name(sources[field])}={value!r} is not an integer >= {low}; "
                      f"set it to e.g. {low + 1 if field == 'num_processes' else low}")
    return parsed

  num_processes = number("num_processes", 1)
  process_id = number("process_id", 0)
  if num_processes is None:
    raise UserError(f"{_name(sources[next(iter(values))])} is set but the number of processes is "
                    f"not: set {ENV['num_processes']} (or pass num_processes=)")
  if process_id is not None and process_id >= num_processes:
    raise UserError(f"{_name(sources['process_id'])}={process_id} is not below "
                    f"{_name(sources['num_processes'])}={num_processes}: process ids run 0.."
                    f"{num_processes - 1}; give each process its own rank")
  address = values.get("coordinator_address")
  if num_processes > 1:
    if process_id is None:
      raise UserError(f"{num_processes} processes but no process id: set {ENV['process_id']} to "
                      f"this process's rank (0..{num_processes - 1})")
    if address is None:
      raise UserError(f"{num_processes} processes but no coordinator: set "
                      f"{ENV['coordinator_address']}=HOST:PORT of process 0 on every process")
    if not isinstance(address, str) or not _ADDRESS.match(address):
      raise UserError(f"{_name(sources['coordinator_address'])}={address!r} is not HOST:PORT; "
                      "use e.g. 10.0.0.2:1234 (process 0's address, reachable from every process)")
  return Settings(address, num_processes, process_id or 0,
                  _device_ids(values.get("local_device_ids"), sources.get("local_device_ids")),
                  sources)


class Cluster(NamedTuple):
  """A cluster that jax.distributed auto-detects; `num_processes` is None where only jax can tell."""
  name: str
  num_processes: int | None


def detect_cluster(environ: Mapping[str, str] | None = None) -> Cluster | None:
  """The cluster `jax.distributed.initialize()` would detect here, or None off any cluster.

  Mirrors jax's detectors (jax/_src/clusters/*.py, jax 0.6-0.10), in jax's order, through the
  environment variables they read; no private jax module and no network.
  """
  environ = os.environ if environ is None else environ
  if "OMPI_MCA_orte_hnp_uri" in environ:  # set by mpirun / mpiexec only
    return Cluster("Open MPI (mpirun)", _count(environ.get("OMPI_COMM_WORLD_SIZE")))
  if all(name in environ for name in _SLURM):  # inside an srun step
    return Cluster("a SLURM job step", _count(environ.get("SLURM_NTASKS")))
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES")
  if hosts:  # GKE (JobSet) and pod launchers list every worker of the slice
    slices = _count(environ.get("MEGASCALE_NUM_SLICES")) or 1
    return Cluster("a TPU slice (TPU_WORKER_HOSTNAMES)",
                   len([h for h in hosts.split(",") if h.strip()]) * slices)
  if _tpu_runtime_installed(environ) and environ.get("TPU_SKIP_MDS_QUERY") is None:
    return Cluster("a Cloud TPU VM", None)  # jax reads the slice from the VM's metadata server
  if ("KUBERNETES_SERVICE_HOST" in environ and "JOB_COMPLETION_INDEX" in environ
      and importlib.util.find_spec("kubernetes") is not None):
    return Cluster("a Kubernetes indexed Job", None)  # jax reads the Job's parallelism from the API
  return None


def maybe_initialize(config_or_none: Any = None, *, coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None,
                     local_device_ids: Sequence[int] | str | None = None) -> None:
  """Calls `jax.distributed.initialize` for a multi-process job; a no-op otherwise or if already done.

  Must run before any other jax call that touches a backend (see the module docstring).
  """
  import jax  # pylint: disable=import-outside-toplevel

  if jax.distributed.is_initialized():
    return
  settings = resolve(config_or_none, coordinator_address=coordinator_address,
                     num_processes=num_processes, process_id=process_id,
                     local_device_ids=local_device_ids)
  if settings is not None:
    if settings.num_processes > 1:
      _enable_cpu_collectives(jax)
      jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                                 num_processes=settings.num_processes,
                                 process_id=settings.process_id,
                                 local_device_ids=(list(settings.local_device_ids)
                                                   if settings.local_device_ids is not None
                                                   else None),
                                 cluster_detection_method="deactivate")
    return
  cluster = detect_cluster()
  if cluster is None or cluster.num_processes == 1:
    return
  _enable_cpu_collectives(jax)
  try:
    jax.distributed.initialize()
  except ValueError as e:  # jax found no cluster (or could not read it)
    if cluster.num_processes is None:
      print(f"oneshot: note: this looks like {cluster.name}, but jax.distributed.initialize() found "
            f"no cluster to join ({e}); running as a single process", file=sys.stderr)
      return
    raise UserError(f"detected {cluster.name} with {cluster.num_processes} processes but "
                    f"jax.distributed.initialize() could not join it ({e}); set "
                    f"{ENV['coordinator_address']}, {ENV['num_processes']} and {ENV['process_id']}, "
                    f"or {ENV['num_processes']}=1 to run alone") from None


def _enable_cpu_collectives(jax: Any) -> None:
  """Cross-process collectives on the CPU backend (localhost tests, CPU clusters) need an
  implementation chosen before the backend starts; without one, the first cross-process `psum` fails.
  jax 0.10 defaults to gloo; where it is unset (other jax releases), pick gloo, since no implementation
  cannot run a multi-process job. A user's choice of mpi is kept. TPU/GPU backends ignore the option."""
  try:
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # a jax without the option: nothing to choose
    pass


def is_primary() -> bool:
  """True on process 0, the one process that writes result files (others would race on them)."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def _tpu_runtime_installed(environ: Mapping[str, str]) -> bool:
  """libtpu is where jax looks for TPUs (jax[tpu]); without it jax never treats a machine as a TPU VM."""
  path = environ.get("TPU_LIBRARY_PATH")
  return bool((path and os.path.isfile(path)) or "JAX_FORCE_TPU_INIT" in environ
              or importlib.util.find_spec("libtpu") is not None)


def _count(value: str | None) -> int | None:
  try:
    return int(value) if value else None
  except ValueError:
    return None


def _device_ids(value: Any, source: str | None) -> tuple[int, ...] | None:
  if value is None:
    return None
  items = value.split(",") if isinstance(value, str) else (
      [value] if isinstance(value, int) else list(value))
  try:
    ids = tuple(int(item) for item in items)
  except (TypeError, ValueError):
    ids = ()
  if not ids or any(i < 0 for i in ids):
    raise UserError(f"{_name(source)}={value!r} is not a list of device ids; use e.g. 0,1,2,3")
  return ids


def _name(source: str | None) -> str:
  return (source or "?").rstrip("=")

"""Start jax's multi-process runtime when, and only when, this job has several processes.

Call `maybe_initialize(config)` first thing in a command, before any jax call that touches a backend
(`jax.devices()`, `jax.device_put`, any computation, even `jax.process_index()`): jax can only join a
distributed job before its backends exist, and raises RuntimeError otherwise. This module imports jax
lazily so that importing it is free.

Where the settings come from, first match wins for each value:
  1. explicit arguments to `maybe_initialize`;
  2. environment: ONESHOT_COORDINATOR_ADDRESS (host:port of process 0), ONESHOT_NUM_PROCESSES,
     ONESHOT_PROCESS_ID, optional ONESHOT_LOCAL_DEVICE_IDS (comma-separated);
  3. the config's optional `distributed` section (`coordinator_address`, `num_processes`,
     `process_id`, `local_device_ids`).
If none of these says anything, a Cloud TPU pod slice (several TPU hosts) is detected and left to
jax.distributed's own auto-detection, which is how `oneshot launch` runs pods: the same command on
every worker, no per-host settings. A single process (including `ONESHOT_NUM_PROCESSES=1`, the way to
opt out on a pod) is a no-op.
"""

from __future__ import annotations

import os
import re
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


def maybe_initialize(config_or_none: Any = None, *, coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None,
                     local_device_ids: Sequence[int] | str | None = None) -> None:
  """Calls `jax.distributed.initialize` for a multi-process job; a no-op otherwise or if already done.

  Must run before any other jax call that touches a backend (see the module docstring).
  """
  import jax  # pylint: disable=import-outside-toplevel

  if _already_initialized(jax):
    return
  settings = resolve(config_or_none, coordinator_address=coordinator_address,
                     num_processes=num_processes, process_id=process_id,
                     local_device_ids=local_device_ids)
  if settings is None:
    if tpu_process_count() > 1:
      jax.distributed.initialize()  # jax reads the pod's workers from the TPU metadata
    return
  if settings.num_processes == 1:
    return
  _enable_cpu_collectives(jax)
  jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                             num_processes=settings.num_processes,
                             process_id=settings.process_id,
                             local_device_ids=(list(settings.local_device_ids)
                                               if settings.local_device_ids is not None else None))


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


def tpu_process_count(environ: Mapping[str, str] | None = None) -> int:
  """How many TPU hosts this job spans: 1 off Cloud TPU and on single-host slices.

  Reads the worker list that GKE and pod launchers export; on a plain Cloud TPU VM it asks the same
  metadata server jax.distributed would. If that cannot be read it answers 2, i.e. "let jax decide",
  since jax.distributed.initialize() also handles a single host correctly.
  """
  environ = os.environ if environ is None else environ
  slices = int(environ.get("MEGASCALE_NUM_SLICES") or 1)
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES")
  if hosts:
    return len([host for host in hosts.split(",") if host.strip()]) * slices
  if not _on_cloud_tpu_vm() or environ.get("TPU_SKIP_MDS_QUERY") is not None:
    return slices
  try:
    from jax._src.clusters import cloud_tpu_cluster  # pylint: disable=import-outside-toplevel
    cluster = cloud_tpu_cluster.GceTpuCluster
    return cluster.get_process_count() if cluster.is_env_present() else slices
  except Exception:  # pylint: disable=broad-except  # private jax API or metadata unreachable
    return 2


def _on_cloud_tpu_vm() -> bool:
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _already_initialized(jax: Any) -> bool:
  check = getattr(jax.distributed, "is_initialized", None)
  if check is not None:
    return bool(check())
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client is not None


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

"""Process-wide XLA settings: the persistent compilation cache, the number of CPU devices, and handing
memory the compiler freed back to the operating system. Imports jax only when called (the CLI calls it
before jax loads)."""

from __future__ import annotations

import ctypes
import os
import sys

from oneshot.errors import UserError

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_M_ARENA_MAX = -8  # glibc malloc.h
_trim_installed = False


def enable_compilation_cache(config) -> None:
  """Persist compiled steps across processes: a resumed or repeated search skips the compile (tens of
  seconds for the switch executor on CPU). Empty `compilation_cache_dir` turns it off."""
  import jax  # pylint: disable=import-outside-toplevel
  directory = config.get("compilation_cache_dir", "~/.cache/oneshot/jax")
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def use_cpu_devices(config) -> None:
  """`config.cpu_devices` N > 0: JAX's CPU backend as N devices (`jax_num_cpu_devices`), so that a CPU
  search runs its data-parallel step (a path per device, gradients averaged) with one device per core
  instead of one device spreading each op over XLA's thread pool, which keeps the cores busier on small
  images (`benchmarks/peer_nni.py --devices N`; see docs/results.md). It changes results (N paths per
  step, each on 1/N of the batch), so it is the config's choice, not a default.

  Must run before the backend starts. `--xla_force_host_platform_device_count` in XLA_FLAGS wins (the
  environment is the more specific choice: tests and launchers set it); once JAX has started, the
  device count cannot change, and a different one is said in one line on stderr."""
  wanted, cores = int(config.get("cpu_devices", 0) or 0), os.cpu_count() or 1
  if not 0 <= wanted <= 4 * cores:
    raise UserError(f"--config.cpu_devices={wanted} must be in 0..{4 * cores} (0: JAX's one CPU "
                    f"device; this machine has {cores} cores, and a device per core is the fastest)")
  if wanted == 0 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  import jax  # pylint: disable=import-outside-toplevel
  try:
    jax.config.update("jax_num_cpu_devices", wanted)
  except RuntimeError:  # the backend already started (an earlier search in this Python process)
    have = len(jax.devices("cpu"))
    if have != wanted:
      print(f"note: config.cpu_devices={wanted} not applied: JAX already started with {have} CPU "
            "devices in this process", file=sys.stderr)


def return_compile_memory() -> None:
  """Keep XLA's compiles from holding freed memory: at most one glibc malloc arena per core, and after
  every compile the heap pages it freed go back to the OS (`malloc_trim`).

  Written by hand because no library does it: XLA:CPU compiles on worker threads, each with its own
  glibc arena (up to 8 per core) that keeps what the compiler freed, and the next compile, on another
  thread, cannot reuse it, so without this RSS stays at the compiles' peak for the whole run. Trimming
  after each compile returns that memory; capping the arenas as well lowers the peak itself; results are
  the same bit for bit (peak RSS before and after, with `/usr/bin/time -v`: docs/results.md, "memory").
  jax reports each compile through
  `jax.monitoring`; a trim takes milliseconds. Arenas are capped only for threads started after the
  first call, so the CLI calls this before it imports jax (search, rank and train call it too, for
  Python callers). A no-op where the C library has no `malloc_trim` (macOS, musl). Idempotent."""
  global _trim_installed
  if _trim_installed:
    return
  try:
    libc = ctypes.CDLL(None)
    trim, mallopt = libc.malloc_trim, libc.mallopt
  except (OSError, AttributeError):
    return
  mallopt(_M_ARENA_MAX, max(2, os.cpu_count() or 2))
  import jax  # pylint: disable=import-outside-toplevel  (after the cap: jax may start threads)

  def after_compile(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _COMPILE_EVENT:
      trim(0)

  jax.monitoring.register_event_duration_secs_listener(after_compile)
  _trim_installed = True

"""oneshot.runtime: memory the XLA compiler freed goes back to the OS after every compile."""

import os

import jax
import jax.numpy as jnp
import pytest

from oneshot import runtime


class _FakeLibc:
  trims: list = []
  options: list = []

  def __init__(self, name):
    del name

  def malloc_trim(self, pad):
    self.trims.append(pad)

  def mallopt(self, param, value):
    self.options.append((param, value))


def test_every_compile_is_followed_by_one_trim_and_install_is_idempotent(monkeypatch):
  monkeypatch.setattr(runtime, "_trim_installed", False)
  monkeypatch.setattr(runtime.ctypes, "CDLL", _FakeLibc)
  _FakeLibc.trims, _FakeLibc.options = [], []
  from jax._src import monitoring  # pylint: disable=import-outside-toplevel
  listeners = list(monitoring.get_event_duration_listeners())
  try:
    runtime.return_compile_memory()
    runtime.return_compile_memory()  # a second call adds no second listener
    added = [l for l in monitoring.get_event_duration_listeners() if l not in listeners]
    assert len(added) == 1
    assert _FakeLibc.options == [(-8, max(2, os.cpu_count() or 2))]  # M_ARENA_MAX, set once
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(event) if "backend_compile" in event else None)
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
    assert compiles and _FakeLibc.trims == [0] * len(compiles)
    jax.monitoring.record_event_duration_secs("/jax/some/other_event", 1.0)
    assert _FakeLibc.trims == [0] * len(compiles)   # only compiles trim
  finally:
    for listener in monitoring.get_event_duration_listeners():
      if listener not in listeners:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_without_malloc_trim_it_is_a_no_op(monkeypatch):
  class NoTrim:
    def __init__(self, name):
      del name

  monkeypatch.setattr(runtime, "_trim_installed", False)
  monkeypatch.setattr(runtime.ctypes, "CDLL", NoTrim)
  from jax._src import monitoring  # pylint: disable=import-outside-toplevel
  listeners = list(monitoring.get_event_duration_listeners())
  runtime.return_compile_memory()
  assert list(monitoring.get_event_duration_listeners()) == listeners
  assert not runtime._trim_installed


_DEVICES_SCRIPT = """
import jax
from oneshot import session
from oneshot.configs.digits import get_config
config = get_config()
config.space.stages = ((8, 1, 1),)
config.cpu_devices = 2
sess = session.build(config)
session.build(config)  # a second session in the same process: same count, no note
print("devices", jax.device_count(), sess.num_devices)
config.cpu_devices = 1
session.build(config)  # too late to change: one note line
"""


@pytest.mark.slow
def test_cpu_devices_sets_the_cpu_device_count_unless_xla_flags_does(tmp_path):
  """`cpu_devices` reaches JAX before its backend starts (session.build); XLA_FLAGS' count wins.
  In a fresh process: this one's JAX already runs with conftest's 8 devices."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  for flags, count in (("", 2), ("--xla_force_host_platform_device_count=4", 4)):
    proc = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], cwd=tmp_path, capture_output=True,
                          env={**env, "XLA_FLAGS": flags}, text=True, timeout=300, check=True)
    assert f"devices {count} {count}" in proc.stdout
    notes = proc.stderr.count("config.cpu_devices=1 not applied")
    assert notes == (1 if count == 2 else 0)


def test_export_and_rank_apply_the_searchs_cpu_devices_before_orbax_starts_jax(tmp_path, monkeypatch):
  """orbax's CheckpointManager starts JAX's backend, so the workdir's `cpu_devices` must come first."""
  from oneshot import checkpoint, configuration, export, rank  # pylint: disable=import-outside-toplevel
  from oneshot.configs.digits import get_config  # pylint: disable=import-outside-toplevel
  config = get_config()
  config.cpu_devices = 2
  (tmp_path / "config.json").write_text(configuration.to_json(config))
  calls = []
  monkeypatch.setattr(runtime, "use_cpu_devices", lambda c: calls.append(("devices", c.cpu_devices)))

  def no_checkpoint(workdir):
    calls.append(("checkpoint", str(workdir)))
    raise export.UserError("stop here")
  monkeypatch.setattr(checkpoint, "require_checkpoint", no_checkpoint)
  for run in (lambda: export.export(str(tmp_path), str(tmp_path / "out")),
              lambda: rank.run(str(tmp_path), 4, str(tmp_path / "rank.json"))):
    calls.clear()
    try:
      run()
    except export.UserError:
      pass
    assert calls == [("devices", 2), ("checkpoint", str(tmp_path))]

"""oneshot.runtime: memory the XLA compiler freed goes back to the OS after every compile."""

import os

import jax
import jax.numpy as jnp

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

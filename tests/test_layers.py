"""The package's architecture, enforced on its import graph.

Every `import` statement counts, at module level or inside a function (a deferred import is still a
dependency, only a hidden one). Three rules:
  * layers: a module imports only from its own layer or the layers below it (`LAYERS`, top first);
  * commands are peers: no module imports a command's module except the entry points (`oneshot.cli`
    loads them by name; `oneshot.api` calls two of them), so what commands share lives in a layer
    below them;
  * no cycles, and no two modules with the same file name or the name of a standard-library module.
A new module must be placed in a layer here: the test fails for a module it does not know.

An edge goes to the module named: `from oneshot.spaces.core import Space` depends on `spaces.core`,
not on the `spaces` package's `__init__`, which Python also runs. One loop exists only through that
implicit run: `nas` imports `spaces.core`, and `spaces.build` (the package's `__init__`) builds the
space of your own Flax module with `nas`, deferred to the call.
"""

from __future__ import annotations

import ast
import collections
import os
import sys


from oneshot import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {"oneshot": "oneshot", "controllers": "oneshot.controllers", "spaces": "oneshot.spaces",
            "configs": "oneshot.configs", "launch": "oneshot.launch"}
ENTRY_POINTS = ("oneshot.cli", "oneshot.api")
COMMANDS = tuple(module for module, _ in cli.COMMANDS.values())
# Top first. A name covers the module and, for a package, everything in it.
LAYERS = (
    ("entry points", ENTRY_POINTS),
    ("commands", COMMANDS),
    ("workflows: what commands share", (
        "oneshot.search_loop", "oneshot.band_rank", "oneshot.bands", "oneshot.session",
        "oneshot.workdir", "oneshot.child", "oneshot.serving", "oneshot.plots", "oneshot.rank_stats",
        "oneshot.launch")),
    ("training: networks, data, controllers, steps", (
        "oneshot.supernet", "oneshot.models", "oneshot.nas", "oneshot.data", "oneshot.controllers",
        "oneshot.steps", "oneshot.checkpoint",
        "oneshot.spaces")),  # `spaces.build` builds the space of your own Flax module too: with flax
    ("configuration and hardware models (numpy only)", (
        "oneshot.configuration", "oneshot.configs", "oneshot.hardware", "oneshot.spaces.mobilenet",
        "oneshot.spaces.nasbench201", "oneshot.spaces.accelerator")),
    ("foundation", ("oneshot", "oneshot.errors", "oneshot.trust", "oneshot.storage", "oneshot.runtime",
                    "oneshot.hardware.schema", "oneshot.hardware.area", "oneshot.spaces.core")),
)


def modules() -> dict[str, str]:
  """Module name -> source file, for every module of the installed packages."""
  out = {}
  for folder, package in PACKAGES.items():
    for directory, _, files in os.walk(os.path.join(ROOT, folder)):
      for name in files:
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(directory, name), os.path.join(ROOT, folder))[:-3]
          parts = [p for p in rel.split(os.sep) if p != "__init__"]
          out[".".join([package, *parts])] = os.path.join(directory, name)
  return out


def import_graph(mods: dict[str, str]) -> dict[str, set[str]]:
  """Module -> the package modules it imports (`from a import b` counts as a.b when b is a module)."""

  def resolve(name: str) -> str | None:
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name or None

  graph = collections.defaultdict(set)
  for module, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" for a in node.names]
      else:
        continue
      for name in names:
        target = resolve(name)
        if target and target != module:
          graph[module].add(target)
  return graph


def layer_of(module: str) -> int:
  """Index in LAYERS of the most specific name that covers `module`."""
  best, best_len = None, -1
  for i, (_, names) in enumerate(LAYERS):
    for name in names:
      if (module == name or module.startswith(name + ".")) and len(name) > best_len:
        best, best_len = i, len(name)
  if best is None:
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py's LAYERS")
  return best


MODULES = modules()
GRAPH = import_graph(MODULES)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
          for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) < layer_of(a)]


def command_imports(graph: dict[str, set[str]]) -> list[str]:
  return [f"{a} imports the command {b}" for a in sorted(graph) for b in sorted(graph[a])
          if b in COMMANDS and a not in ENTRY_POINTS]


def test_every_module_is_in_a_layer_and_imports_only_downwards():
  assert not upward_imports(GRAPH), "\n".join(upward_imports(GRAPH))


def test_no_command_imports_a_command():
  assert set(COMMANDS) <= set(MODULES)
  assert not command_imports(GRAPH), "\n".join(command_imports(GRAPH))


def test_the_import_graph_has_no_cycle():
  state, stack, cycles = {}, [], []

  def visit(module):  # depth-first search; a grey node met again closes a cycle
    state[module] = "grey"
    stack.append(module)
    for target in sorted(GRAPH[module]):
      if state.get(target) == "grey":
        cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
      elif target not in state:
        visit(target)
    stack.pop()
    state[module] = "black"

  for module in sorted(MODULES):
    if module not in state:
      visit(module)
  assert not cycles, "\n".join(cycles)


def test_module_names_are_unique_and_do_not_shadow_the_standard_library():
  by_name = collections.defaultdict(list)
  for module in MODULES:
    if not MODULES[module].endswith("__init__.py"):
      by_name[module.rpartition(".")[2]].append(module)
  assert not {n: m for n, m in by_name.items() if len(m) > 1}
  assert not sorted(n for n in by_name if n in sys.stdlib_module_names)


def test_a_command_importing_a_command_fails_even_deferred(tmp_path):
  """The rules are not vacuous: `oneshot rank` with an import of `oneshot train` hidden in a function
  is reported, and so is a lower layer importing a higher one."""
  with open(MODULES["oneshot.rank"], encoding="utf-8") as f:
    source = f.read()
  changed = tmp_path / "rank.py"
  changed.write_text(source + "\n\ndef _hidden():\n  from oneshot import train  # noqa\n")
  graph = import_graph({**MODULES, "oneshot.rank": str(changed)})
  assert command_imports(graph) == ["oneshot.rank imports the command oneshot.train"]
  changed = tmp_path / "steps.py"
  with open(MODULES["oneshot.steps"], encoding="utf-8") as f:
    changed.write_text(f.read() + "\n\ndef _hidden():\n  from oneshot import session  # noqa\n")
  graph = import_graph({**MODULES, "oneshot.steps": str(changed)})
  assert upward_imports(graph) == [
      "oneshot.steps (training: networks, data, controllers, steps) imports oneshot.session "
      "(workflows: what commands share)"]

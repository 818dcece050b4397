"""`oneshot <command> ...`: one entry point, one module per command, one error line for bad input."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from oneshot import runtime, trust
from oneshot.errors import UserError

# command -> (module with `main(argv) -> int`, one-line description)
COMMANDS = {
    "search": ("oneshot.search", "train a supernet and search it (resumes an existing workdir)"),
    "export": ("oneshot.export", "write a searched subnet as a model + checkpoint + jax.export artifact"),
    "predict": ("oneshot.predict", "classify images (.npy or a folder of PNG/JPEG) with an export"),
    "train": ("oneshot.train", "train an exported subnet stand-alone"),
    "rank": ("oneshot.rank", "rank correlation of supernet scores vs stand-alone training"),
    "tabular": ("oneshot.tabular", "run controllers against a tabular benchmark"),
    "latency-table": ("oneshot.hardware.latency_table", "time every block choice on this device"),
    "cosearch": ("oneshot.cosearch", "hardware co-search over accelerator configurations"),
    "launch": ("oneshot.launch.tpu", "run a config on a Cloud TPU VM / pod"),
}


def _usage() -> str:
  lines = ["usage: oneshot <command> [args]", "", "commands:"]
  lines += [f"  {name:<14} {desc}" for name, (_, desc) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"oneshot: error: unknown command {command!r}; use one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2
  try:
    runtime.return_compile_memory()
    module = importlib.import_module(COMMANDS[command][0])
    with trust.scope():  # --trust-module and the config's own module hold for this command only
      return int(module.main(rest) or 0)
  except UserError as e:
    print(f"oneshot {command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"oneshot {command}: interrupted; run the same command again to resume", file=sys.stderr)
    return 130


def entry() -> None:
  sys.exit(main())


if __name__ == "__main__":
  entry()

"""`--config FILE` plus `--config.a.b=value` overrides, as big_vision and the flax examples do it.

Wraps ml_collections' config flags in a private FlagValues per call, so each subcommand parses its own
argv (tests call `main(argv)` many times in one process) and every parse error becomes one `UserError`.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from oneshot.errors import UserError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "digits.py")


def parse_flags(argv: Sequence[str], define: Callable[[flags.FlagValues], None] | None = None,
                *, command: str, config_required: bool = True) -> flags.FlagValues:
  """Parses `argv` (without the program name); `define` adds the subcommand's own flags."""
  argv = list(argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None if config_required else DEFAULT_CONFIG,
                                  "Python config file with get_config().", flag_values=fv,
                                  sys_argv=["oneshot"] + argv)
  if define is not None:
    define(fv)
  if "--help" in argv or "-h" in argv:
    print(f"usage: oneshot {command} [--config FILE] [--config.FIELD=VALUE ...] [flags]\n")
    print(fv.main_module_help() or fv.get_help())
    raise SystemExit(0)
  try:
    rest = fv(["oneshot"] + argv, known_only=True)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise UserError(_flag_message(e)) from None
  if rest[1:]:
    raise UserError(f"unknown argument {rest[1]!r}; see `oneshot {command} --help`")
  if config_required and fv["config"].value is None and not fv.is_parsed():
    raise UserError("--config is required, e.g. --config configs/digits.py")
  for name in fv:
    flag = fv[name]
    if getattr(flag, "required", False) and flag.value is None:
      raise UserError(f"--{name} is required")
  load(fv)
  return fv


def load(fv: flags.FlagValues) -> ml_collections.ConfigDict:
  """The parsed config, with loading and override errors turned into one line."""
  try:
    config = fv.config
  except (OSError, AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    raise UserError(f"cannot load config: {_flag_message(e)}; check --config and its "
                    "--config.* overrides (names and types must match the config file)") from None
  if config is None:
    raise UserError("--config is required, e.g. --config configs/digits.py")
  return config


def section(config, name: str, fields) -> dict:
  """`config.<name>` as a plain dict, or {} when absent; an unknown field is one UserError line."""
  value = config.get(name) if config is not None and hasattr(config, "get") else None
  if value is None:
    return {}
  if not hasattr(value, "keys"):
    raise UserError(f"config.{name} must be a ConfigDict of {', '.join(fields)}; "
                    f"got {type(value).__name__}")
  unknown = sorted(set(value.keys()) - set(fields))
  if unknown:
    raise UserError(f"config.{name} has unknown field {unknown[0]!r}; use one of "
                    f"{', '.join(fields)}")
  return {key: value[key] for key in value.keys()}


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def _flag_message(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  first = text[0] if text else type(e).__name__
  if isinstance(e, (AttributeError, KeyError)):
    return (f"the config has no field {first}; check the spelling of the --config.* override "
            "against the config file")
  if len(text) > 2 and "No such file" in " ".join(text):
    return f"config file not found ({text[2].strip()})"
  return first

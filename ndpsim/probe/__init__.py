"""``python -m ndpsim.probe SUBCOMMAND --flag=value ...``: questions without code.

Each subcommand prints one JSON object on stdout.  Bad arguments print one
line on stderr naming the flag and what to write instead, and exit with
status 2.

Each subcommand is one small module of this package (``ndpsim/probe/dram.py``,
``gpu.py``, ``link.py``, ``ndp.py``, ``model.py``, ``routing.py``) that declares its
arguments as ``PROBE_ARGS`` (``{flag: (type, default, help)}``; default
``REQUIRED`` means the flag must be given) and answers with
``probe(args: dict) -> dict``; this module reads those declarations to parse
flags and print help.  The physics modules (``ndpsim.hw.*``, ``ndpsim.workload.*``)
know nothing of the command line.  Raising ``ndpsim.base.ConfigError`` from
``probe`` reports a bad value the same way.
"""
from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from ndpsim.base import ConfigError

REQUIRED = object()

SUBCOMMANDS: dict[str, str] = {
    "dram": "ndpsim.probe.dram",
    "ndp": "ndpsim.probe.ndp",
    "gpu": "ndpsim.probe.gpu",
    "link": "ndpsim.probe.link",
    "model": "ndpsim.probe.model",
    "routing": "ndpsim.probe.routing",
}


class UsageError(Exception):
  pass


def _convert(flag: str, tp, raw: str) -> Any:
  if tp is bool:
    if raw.lower() in ("1", "true", "yes", ""):
      return True
    if raw.lower() in ("0", "false", "no"):
      return False
    raise UsageError(f"--{flag} must be true or false, got {raw!r}")
  if tp is int:
    try:
      f = float(raw)
    except ValueError:
      raise UsageError(f"--{flag} must be an integer, got {raw!r}") from None
    if not f.is_integer():
      raise UsageError(f"--{flag} must be an integer, got {raw!r}")
    return int(f)
  if tp is float:
    try:
      return float(raw)
    except ValueError:
      raise UsageError(f"--{flag} must be a number, got {raw!r}") from None
  return raw


def parse(argv: list[str]) -> tuple[str, dict[str, Any], Any]:
  """Parses ``[SUBCOMMAND, --flag=value, ...]``; raises UsageError."""
  if not argv or argv[0].startswith("-"):
    raise UsageError(f"give a subcommand first, one of {sorted(SUBCOMMANDS)}")
  sub = argv[0]
  if sub not in SUBCOMMANDS:
    raise UsageError(f"unknown subcommand {sub!r}; write one of {sorted(SUBCOMMANDS)}")
  module = importlib.import_module(SUBCOMMANDS[sub])
  spec: dict = module.PROBE_ARGS
  args: dict[str, Any] = {}
  for item in argv[1:]:
    if not item.startswith("--"):
      raise UsageError(f"unexpected argument {item!r}; write flags as --name=value")
    name, eq, raw = item[2:].partition("=")
    if name not in spec:
      raise UsageError(f"unknown flag --{name} for '{sub}'; flags are "
                       + ", ".join(f"--{k}" for k in spec))
    tp = spec[name][0]
    if not eq and tp is not bool:
      raise UsageError(f"--{name} needs a value: write --{name}=VALUE")
    args[name] = _convert(name, tp, raw)
  for name, (tp, default, _help) in spec.items():
    if name not in args:
      if default is REQUIRED:
        raise UsageError(f"missing --{name} for '{sub}' ({_help})")
      args[name] = default
  return sub, args, module


def _first_non_finite(obj, path: str = "") -> str | None:
  """Dotted path of the first inf/NaN number in a JSON-able result, or None."""
  import math  # pylint: disable=import-outside-toplevel
  if isinstance(obj, float):
    return None if math.isfinite(obj) else (path or "the result")
  if isinstance(obj, dict):
    items = obj.items()
  elif isinstance(obj, (list, tuple)):
    items = ((str(i), v) for i, v in enumerate(obj))
  else:
    return None
  for k, v in items:
    bad = _first_non_finite(v, f"{path}.{k}" if path else str(k))
    if bad is not None:
      return bad
  return None


_HELP = ("-h", "--help", "--helpfull")


def usage(sub: str | None = None) -> str:
  """Help text: the subcommands, or one subcommand's flags."""
  if sub is None:
    lines = ["usage: python -m ndpsim.probe SUBCOMMAND --flag=value ... "
             "[--allow_implausible]",
             "prints one JSON object; `python -m ndpsim.probe SUBCOMMAND --help` lists "
             "its flags; --allow_implausible accepts preset values outside their "
             "plausible range (never outside what float32 carries)", "subcommands:"]
    for name, mod in sorted(SUBCOMMANDS.items()):
      doc = (importlib.import_module(mod).probe.__doc__ or "").strip().splitlines()
      lines.append(f"  {name:8s} {doc[0] if doc else ''}")
    return "\n".join(lines)
  spec = importlib.import_module(SUBCOMMANDS[sub]).PROBE_ARGS
  lines = [f"usage: python -m ndpsim.probe {sub} --flag=value ...", "flags:"]
  for name, (tp, default, text) in spec.items():
    d = "required" if default is REQUIRED else f"default {default!r}"
    lines.append(f"  --{name} ({tp.__name__}, {d}): {text}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] in _HELP:
    print(usage())
    return 0
  if len(argv) > 1 and argv[0] in SUBCOMMANDS and any(a in _HELP for a in argv[1:]):
    print(usage(argv[0]))
    return 0
  allow = "--allow_implausible" in argv  # any subcommand: a preset outside the
  argv = [a for a in argv if a != "--allow_implausible"]  # plausible ranges
  try:
    _sub, args, module = parse(argv)
    import warnings  # pylint: disable=import-outside-toplevel
    from ndpsim import config  # pylint: disable=import-outside-toplevel
    with warnings.catch_warnings(), config.allowing_implausible(allow):
      warnings.simplefilter("ignore", RuntimeWarning)  # overflow: reported below
      out = module.probe(args)
    bad = _first_non_finite(out)
    if bad is not None:
      raise ConfigError(f"{bad} is not finite: an argument is beyond what the model can "
                        "carry (float32 ranges to about 3e38); give smaller values")
  except (UsageError, ConfigError) as e:
    print(f"ndpsim.probe: {e}", file=sys.stderr)
    return 2
  print(json.dumps(out, indent=None, sort_keys=True, allow_nan=False))
  return 0


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())

"""Every resolved hardware value of a run, with its unit, provenance and
whether an override set it: what results.json records and what a cell's
resume fingerprint hashes (so changing one ``--set`` changes exactly that
value and every fingerprint that depends on it).

A value's path is its dotted field path in the system's spec (static: shapes,
counts, the DRAM part's timing) or params (traced floats), e.g.
``link.bandwidth_gbps`` or ``ndp.dram.tck_ns``.  Units follow ndpsim's naming
rule (the unit is the name's suffix); :func:`unit_of` spells them out.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# Name suffix -> unit; the first match wins (longer suffixes first).
_UNITS = (("_per_cycle_per_sm", "per cycle per SM"), ("_per_cycle", "per cycle"),
          ("_gbps", "GB/s"), ("_mhz", "MHz"), ("_ghz", "GHz"), ("_ns", "ns"),
          ("_us", "us"), ("_ms", "ms"), ("_s", "s"), ("_bytes", "B"), ("_bits", "bit"),
          ("_cycles", "cycles"), ("_fraction", "1"), ("_efficiency", "1"))


def unit_of(path: str) -> str:
  """Unit of a field from its name's suffix ("" for counts and names)."""
  name = path.split(".")[-1].split("[")[0]
  for suffix, unit in _UNITS:
    if name.endswith(suffix):
      return unit
  return "1" if name.endswith("efficiency") else ""


def _json_value(v: Any) -> Any:
  if isinstance(v, (bool, str)) or v is None:
    return v
  if isinstance(v, (tuple, list)):
    return [_json_value(x) for x in v]
  a = np.asarray(v)
  if a.ndim:
    return a.tolist()
  return int(a) if np.issubdtype(a.dtype, np.integer) else float(a)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
  """{dotted path: JSON value} of every field of a (nested) dataclass."""
  out: dict[str, Any] = {}
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    if dataclasses.is_dataclass(v):
      out.update(flatten(v, f"{prefix}{f.name}."))
    else:
      out[f"{prefix}{f.name}"] = _json_value(v)
  return out


def _overridden_paths(overrides: dict) -> set[str]:
  """Dotted paths set by ``load_system`` overrides ({"gpu": {...}, "dram":
  {...}, "system": {...}})."""
  out = set()
  for group, fields in (overrides or {}).items():
    for field in fields:
      if group == "system":
        out.add(field)
      elif group == "dram":
        out.add(f"ndp.dram.{field}")
      else:
        out.add(f"{group}.{field}")
  return out


def dram_part(ndp_name: str) -> tuple[str | None, dict[str, str]]:
  """(DRAM part name, its provenance table) of an NDP preset; (None, {}) for
  an inline part with no file."""
  from ndpsim import config  # pylint: disable=import-outside-toplevel
  from ndpsim.base import ConfigError  # pylint: disable=import-outside-toplevel
  try:
    obj = config.read_json_object(config.load("ndp", ndp_name).path)
    ref = obj.get("spec", {}).get("dram")
    if not isinstance(ref, str):
      return None, {}
    return ref, config.load("dram", ref).provenance
  except (ConfigError, OSError, AttributeError):
    return None, {}


def _provenance(prov: dict, path: str) -> str:
  parts = path.split(".")
  if parts[:2] == ["ndp", "dram"] and len(parts) > 2:
    comp = "dram"
  else:
    comp = parts[0] if parts[0] in ("gpu", "ndp", "link") and len(parts) > 1 else "system"
  table = prov.get(comp, {})
  return table.get(parts[-1], table.get("default", "assumed"))


def hardware_values(preset) -> dict[str, dict[str, Any]]:
  """Every spec and params value of a loaded system (``load_system``'s
  SystemPreset): ``{path: {"value", "unit", "part": "spec"|"params",
  "provenance", "overridden"?}}``, sorted by path.  Provenance comes from the
  part's preset file (the DRAM part's own file for ``ndp.dram.*``; the DRAM
  part's name is ``ndp.dram_name``); an overridden value's provenance is
  ``override (--set)``."""
  over = _overridden_paths(preset.info.get("overrides", {}))
  dram_name, dram_prov = dram_part(preset.spec.ndp_name)
  prov = {**preset.info.get("provenance", {}), "dram": dram_prov}
  out: dict[str, dict[str, Any]] = {}
  if dram_name is not None:
    out["ndp.dram_name"] = {"value": dram_name, "unit": "", "part": "spec",
                            "provenance": "spec"}
  for part, obj in (("spec", preset.spec), ("params", preset.params)):
    for path, v in flatten(obj).items():
      entry = {"value": v, "unit": unit_of(path), "part": part,
               "provenance": _provenance(prov, path)}
      if path in over:
        entry.update(provenance="override (--set)", overridden=True)
      out[path] = entry
  return dict(sorted(out.items()))

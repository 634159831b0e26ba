"""System: one GPU, N identical NDP units, the link between them, capacities.

A system preset (``hw_configs/systems/<name>.json``) names its parts by
preset name::

    "spec":   {"gpu": "rtx5080", "ndp": "ddr5_rank_ndp_dimm", "link": "pcie5_x16",
               "num_ndp_units": 4, "min_ndp_units": 1, "max_ndp_units": 8},
    "params": {"gpu_reserved_bytes": 1.5e9}

Memory: the routed experts live in the NDP units (``ndp_total_capacity_bytes``);
GPU memory holds the runtime reservation (CUDA context, activations,
workspace: ``gpu_reserved_bytes``), the non-expert weights, the KV cache and a
budget of resident experts (``gpu_expert_budget_bytes``).  All NDP traffic
(activation broadcast, partial-sum return) and host->GPU expert copies share
the one link, each direction separately.

Not modelled here: NUMA / socket topology, several links, NDP units of
different kinds, host CPU compute, host-memory capacity outside the units.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ndpsim import base, config
from ndpsim.base import ConfigError
from ndpsim.hw import gpu as gpu_mod
from ndpsim.hw import link as link_mod
from ndpsim.hw import ndp as ndp_mod

PARTS = ("gpu", "ndp", "link")
OVERRIDE_GROUPS = ("gpu", "link", "ndp", "dram", "system")


@base.spec_dataclass
class SystemSpec:
  """Static system structure.

  gpu, ndp, link: the parts' specs.  num_ndp_units: NDP units (all alike).
  min_ndp_units, max_ndp_units: the range this platform accepts (slots).
  gpu_name, ndp_name, link_name: the part presets' names (for reports).
  """
  gpu: gpu_mod.GpuSpec
  ndp: ndp_mod.NdpSpec
  link: link_mod.LinkSpec
  num_ndp_units: int
  min_ndp_units: int = 1
  max_ndp_units: int = 16
  gpu_name: str = ""
  ndp_name: str = ""
  link_name: str = ""


@base.params_dataclass
class SystemParams:
  """Traced system parameters: the parts' params plus

  gpu_reserved_bytes: GPU memory held by the runtime, activations and
    workspace, unavailable to weights, KV cache and resident experts.
  """
  gpu: gpu_mod.GpuParams
  ndp: ndp_mod.NdpParams
  link: link_mod.LinkParams
  gpu_reserved_bytes: Any


# Ranges of the numeric fields (config.Range: unit, hard, plausible, unit slips).
# num_ndp_units is checked against min_ndp_units .. max_ndp_units instead.
RANGES = {
    "min_ndp_units": config.count_range((1, 64), hard=(1, 1024), unit="NDP units"),
    "max_ndp_units": config.count_range((1, 64), hard=(1, 1024), unit="NDP units"),
}
PARAMS_RANGES = {
    "gpu_reserved_bytes": config.bytes_range((1e6, 1e13)),
}
config.register_ranges(SystemSpec, RANGES)
config.register_ranges(SystemParams, PARAMS_RANGES)


class SystemPreset(NamedTuple):
  """A loaded system: spec, params and info (names, sources, provenance)."""
  name: str
  spec: SystemSpec
  params: SystemParams
  info: dict


def ndp_total_capacity_bytes(spec: SystemSpec) -> int:
  """DRAM capacity of all NDP units together, bytes (static int)."""
  return spec.num_ndp_units * ndp_mod.capacity_bytes(spec.ndp)


def gpu_usable_bytes(spec: SystemSpec, params: SystemParams):
  """GPU memory left after the runtime reservation, bytes (traced)."""
  del spec
  return gpu_mod.memory_capacity_bytes(params.gpu) - params.gpu_reserved_bytes


def gpu_expert_budget_bytes(spec: SystemSpec, params: SystemParams, non_expert_bytes,
                            kv_cache_bytes):
  """GPU bytes left for resident experts (may be negative: check it), traced."""
  return gpu_usable_bytes(spec, params) - non_expert_bytes - kv_cache_bytes


def ndp_aggregate_stream_bandwidth_gbps(spec: SystemSpec, params: SystemParams):
  """Sum of the units' weight-streaming bandwidths, 1e9 B/s."""
  return spec.num_ndp_units * ndp_mod.stream_bandwidth_gbps(spec.ndp, params.ndp)


# ---------------------------------------------------------------------------
# Loading.

def _load_part(kind: str, ref: Any, over: dict, where: str) -> config.Preset:
  if not isinstance(ref, (str, dict)):
    raise ConfigError(f"{where}: field spec.{kind} must name a {kind} preset, one of "
                      f"{config.available(kind)}")
  try:
    return config.load(kind, ref, overrides=over or None)
  except ConfigError as e:
    raise ConfigError(f"{where}: spec.{kind}: {e}") from None


def build(obj: dict, where: str) -> tuple[SystemSpec, SystemParams]:
  """Builds (spec, params) from a system preset dict; see ``config.py``.

  ``params.gpu`` / ``params.link`` / ``params.ndp`` may hold objects of field
  overrides for the named parts (``params.ndp.dram`` for its DRAM part).
  """
  # Unit counts are range-checked below (the message names the allowed range).
  s = config.take_fields(obj["spec"], SystemSpec, where, "spec", positive=False,
                         skip=PARTS + ("gpu_name", "ndp_name", "link_name"))
  for k in ("gpu_name", "ndp_name", "link_name"):
    config.require(k not in obj["spec"], where,
                   f"field spec.{k} is set from spec.{k[:-5]}; remove it")
  over = {}
  for part in PARTS:
    o = obj["params"].get(part, {}) or {}
    config.require(isinstance(o, dict), where,
                   f"field params.{part} must be an object of {part} field overrides")
    over[part] = o
  parts = {part: _load_part(part, obj["spec"].get(part), over[part], where)
           for part in PARTS}
  p = config.take_fields(obj["params"], SystemParams, where, "params", skip=PARTS,
                         allow_zero=("gpu_reserved_bytes",))
  config.require(s["min_ndp_units"] >= 1, where,
                 f"spec.min_ndp_units is {s['min_ndp_units']}; write an integer >= 1")
  config.require(s["min_ndp_units"] <= s["max_ndp_units"], where,
                 f"spec.min_ndp_units ({s['min_ndp_units']}) exceeds spec.max_ndp_units "
                 f"({s['max_ndp_units']}); write min <= max")
  n = s["num_ndp_units"]
  config.require(s["min_ndp_units"] <= n <= s["max_ndp_units"], where,
                 f"num_ndp_units is {n}; this system takes {s['min_ndp_units']} to "
                 f"{s['max_ndp_units']} NDP units; write a value in that range")
  cap = float(parts["gpu"].params.memory_capacity_bytes)
  config.require(p["gpu_reserved_bytes"] < cap, where,
                 f"params.gpu_reserved_bytes ({p['gpu_reserved_bytes']:.4g}) is not below "
                 f"the GPU's memory ({cap:.4g} B); write a smaller reservation")
  spec = SystemSpec(gpu=parts["gpu"].spec, ndp=parts["ndp"].spec, link=parts["link"].spec,
                    gpu_name=parts["gpu"].name, ndp_name=parts["ndp"].name,
                    link_name=parts["link"].name, **s)
  params = SystemParams(gpu=parts["gpu"].params, ndp=parts["ndp"].params,
                        link=parts["link"].params, **p)
  return spec, params


config.register_kind("system", SystemSpec, SystemParams, build)


def load_system(name_or_path: str | dict, num_ndp_units: int | None = None,
                overrides: dict[str, dict] | None = None, *,
                allow_implausible: bool | None = None) -> SystemPreset:
  """Loads a system preset by name, path or inline dict.

  num_ndp_units: replaces the preset's unit count (must lie in its range).
  overrides: {"gpu": {...}, "link": {...}, "ndp": {...}, "dram": {...},
    "system": {...}} of field values, as from ``--set gpu.memory_bandwidth_gbps=800``
    (see ``config.parse_set_overrides``).  Unknown groups or fields raise
    ConfigError.
  allow_implausible: accept values outside a field's plausible range (never
    outside its hard range; see ``config.Range``); None keeps the enclosing
    ``config.allowing_implausible``.
  Returns a SystemPreset(name, spec, params, info); info holds the source,
  path, part names and every part's provenance.
  """
  overrides = dict(overrides or {})
  sys_over = _system_overrides(overrides, num_ndp_units)
  pre = config.load("system", name_or_path, overrides=sys_over or None,
                    allow_implausible=allow_implausible)
  spec = pre.spec
  prov = {"system": pre.provenance}
  for part, name in (("gpu", spec.gpu_name), ("ndp", spec.ndp_name),
                     ("link", spec.link_name)):
    try:
      prov[part] = config.load(part, name).provenance
    except ConfigError:
      prov[part] = {}  # inline part: no file to cite
  info = {"source": pre.source, "path": pre.path,
          "parts": {"gpu": spec.gpu_name, "ndp": spec.ndp_name, "link": spec.link_name},
          "num_ndp_units": spec.num_ndp_units,
          "ndp_units_range": (spec.min_ndp_units, spec.max_ndp_units),
          "ndp_total_capacity_bytes": ndp_total_capacity_bytes(spec),
          "provenance": prov, "overrides": overrides}
  return SystemPreset(pre.name, spec, pre.params, info)


def _system_overrides(overrides: dict, num_ndp_units) -> dict[str, Any]:
  """The system preset's overrides from ``load_system``'s grouped ones: the
  ``system`` group's fields, the gpu/link/ndp groups (dram inside ndp) as
  nested part overrides, and ``num_ndp_units``; bad groups raise ConfigError."""
  bad = sorted(set(overrides) - set(OVERRIDE_GROUPS))
  if bad:
    raise ConfigError(f"override group {bad[0]!r} is unknown; write one of "
                      f"{list(OVERRIDE_GROUPS)} (e.g. gpu.memory_bandwidth_gbps=800)")
  for grp, fields in overrides.items():
    if not isinstance(fields, dict):
      raise ConfigError(f"overrides[{grp!r}] must map field names to values")
  sys_over: dict[str, Any] = dict(overrides.get("system", {}))
  for part in PARTS:
    if part in sys_over:
      raise ConfigError(f"system.{part} cannot be overridden field by field; write "
                        f"{part}.<field>=<value> instead")
  ndp_over = dict(overrides.get("ndp", {}))
  if overrides.get("dram"):
    ndp_over["dram"] = {**ndp_over.get("dram", {}), **overrides["dram"]}
  for part, o in (("gpu", overrides.get("gpu")), ("link", overrides.get("link")),
                  ("ndp", ndp_over)):
    if o:
      sys_over[part] = o
  if num_ndp_units is not None:
    if isinstance(num_ndp_units, bool) or not isinstance(num_ndp_units, int):
      raise ConfigError(f"num_ndp_units is {num_ndp_units!r}; write an integer")
    if sys_over.get("num_ndp_units", num_ndp_units) != num_ndp_units:
      raise ConfigError(f"num_ndp_units={num_ndp_units} and overrides system.num_ndp_units="
                        f"{sys_over['num_ndp_units']} disagree; give the unit count once "
                        "(num_ndp_units=...)")
    sys_over["num_ndp_units"] = num_ndp_units
  return sys_over

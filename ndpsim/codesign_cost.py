"""The cost and peak-power model of hardware co-design (``ndpsim.codesign``).

A point ``x`` [..., 6] of :data:`NAMES` (natural units) is priced by::

  cost_usd = gpu_usd + link_usd + N x unit_usd
  gpu_usd  = list_price - mem_usd_per_gb x (max_expert_gb - expert_gb)
  link_usd = usd_per_gbps x link_bandwidth_gbps
  unit_usd = capacity_gb x dram_usd_per_gb x (1 + premium x (dram_rate - 1))
             + module_board_usd + logic_base_usd
             + macs x mac_area_mm2 x overhead x logic_usd_per_mm2
  power_w  = gpu_board_w + link_w + N x unit_w
  link_w   = link_bandwidth_gbps x (8 x 2 x link_pj_per_bit x 1e-3 + link_static_w_per_gbps)
  unit_w   = dram_background_w + dram_stream_pj_per_bit x 8 x stream_gbps_0 x dram_rate x 1e-3
             + logic_static_w + macs x clock_ghz x mac_energy_pj x 1e-3

with ``mem_usd_per_gb = memory_spot_usd_per_gb x memory_retail_factor`` and
``expert_gb = resident_fraction x max_expert_gb``.  Power is a peak (every
lane busy), not an energy.

Two sources, one figure each: prices (and the GPU's board power, a peak the
energy model has no figure for) come from ``hw_configs/cost/<name>.json``
(every field ``{value, unit, provenance, source | reasoning}``); every
*energy* figure comes from the energy presets ``ndpsim.energy`` charges
(``hw_configs/energy/{ndp,dram,link}/<part>.json``), converted to the peak
power of a part at full rate exactly as ``energy.per_group_j`` charges it:

* ``dram_background_w`` = the unit's DRAM parts x the part's
  ``background_power_mw``;
* ``dram_stream_pj_per_bit`` = the part's ``read_pj_per_bit`` + the unit's
  ``pe_path_pj_per_bit`` + ``act_energy_pj`` / (8 x ``row_bytes``) (one
  ACT+PRE per row streamed);
* ``mac_energy_pj`` = ``mac_pj``; ``logic_static_w`` = ``logic_static_power_w``;
* ``link_pj_per_bit`` = the mean of the link's two directions' pJ/bit;
  ``link_static_w_per_gbps`` = its PHYs' ``static_power_w`` / the preset's
  bandwidth (a link of fewer lanes has fewer PHYs).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import jax.numpy as jnp

from ndpsim import base, config, costs
from ndpsim import energy as _energy  # noqa: F401  (registers the energy preset kinds)
from ndpsim.base import ConfigError
from ndpsim.hw import ndp as ndp_mod
from ndpsim.workload import models as M

NAMES = ("macs_per_cycle", "link_bandwidth_gbps", "dram_rate", "resident_fraction",
         "gpu_bias", "ndp_bias")
HW = NAMES[:4]          # the coordinates that cost money or power
BUDGET_KINDS = ("cost_usd", "power_w")
PROVENANCES = base.PROVENANCES


@base.params_dataclass
class CostParams:
  """Traced cost/power figures of one discrete choice (module docstring).

  From the cost file: gpu_list_price_usd, gpu_board_power_w,
  gpu_memory_usd_per_gb (retail); dram_usd_per_gb, module_board_usd,
  speed_premium_per_rate (the DIMM type); logic_base_usd, mac_area_mm2,
  mac_overhead_factor (area only), logic_usd_per_mm2; link_usd_per_gbps.
  From the energy presets: dram_background_w (W per unit),
  dram_stream_pj_per_bit, mac_energy_pj, logic_static_w (W per unit),
  link_pj_per_bit (per direction), link_static_w_per_gbps.
  """
  gpu_list_price_usd: Any
  gpu_board_power_w: Any
  gpu_memory_usd_per_gb: Any
  dram_usd_per_gb: Any
  module_board_usd: Any
  dram_background_w: Any
  dram_stream_pj_per_bit: Any
  speed_premium_per_rate: Any
  logic_base_usd: Any
  mac_area_mm2: Any
  mac_energy_pj: Any
  mac_overhead_factor: Any
  logic_usd_per_mm2: Any
  logic_static_w: Any
  link_usd_per_gbps: Any
  link_pj_per_bit: Any
  link_static_w_per_gbps: Any


class Machine(NamedTuple):
  """Concrete figures of a discrete choice the cost model reads (floats).

  num_units: NDP units.  unit_capacity_gb: DRAM per unit, 1e9 B.
  stream_gbps_0: one unit's internal stream bandwidth at dram_rate 1, 1e9 B/s.
  clock_ghz: NDP MAC clock.  max_expert_gb: GPU memory for resident experts
  at resident_fraction 1, 1e9 B.
  """
  num_units: float
  unit_capacity_gb: float
  stream_gbps_0: float
  clock_ghz: float
  max_expert_gb: float


def _field(entry: Any, where: str, unit: str) -> float:
  if not isinstance(entry, dict) or "value" not in entry:
    raise ConfigError(f"{where}: write an object {{\"value\": ..., \"unit\": \"{unit}\", "
                      "\"provenance\": ..., \"source\" or \"reasoning\": ...}")
  v = entry["value"]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
    raise ConfigError(f"{where}.value is {v!r}; write a number >= 0 (in {unit})")
  if entry.get("unit") != unit:
    raise ConfigError(f"{where}.unit is {entry.get('unit')!r}; write \"{unit}\"")
  prov = entry.get("provenance")
  if prov not in PROVENANCES:
    raise ConfigError(f"{where}.provenance is {prov!r}; write one of {list(PROVENANCES)}")
  if prov in ("spec", "measured") and not str(entry.get("source", "")).strip():
    raise ConfigError(f"{where}: a {prov} figure needs \"source\": where a reader finds it "
                      "and the figure taken from it")
  if prov in ("assumed", "derived") and not str(entry.get("reasoning", "")).strip():
    raise ConfigError(f"{where}: an {prov} figure needs \"reasoning\": why this value")
  return float(v)


def cost_path(name: str = "default") -> pathlib.Path:
  """Path of a shipped cost file (``hw_configs/cost/<name>.json``) or of a
  given ``.json`` path."""
  p = pathlib.Path(name)
  if p.suffix == ".json":
    return p
  return config.config_root() / "cost" / f"{name}.json"


def _energy_preset(kind: str, name: str, part: str):
  if name not in config.available(kind):
    raise ConfigError(f"the cost model takes the {part}'s power from its energy preset, "
                      f"and {part} preset {name!r} has none: add hw_configs/"
                      f"{config.folder_of(kind)}/{name}.json (shipped: "
                      f"{config.available(kind)}) or pick a part that has one")
  return config.load(kind, name).params


def power_figures(ndp: str, link: str) -> dict:
  """The energy-derived CostParams fields (module docstring) of an NDP and a
  link preset, from their energy presets; ConfigError naming a missing one."""
  ne = _energy_preset("ndp_energy", ndp, "NDP unit")
  le = _energy_preset("link_energy", link, "link")
  nspec = config.load("ndp", ndp).spec
  lpar = config.load("link", link).params
  d = ne.dram
  return {
      "dram_background_w": nspec.dram_parts * float(d.background_power_mw) * 1e-3,
      "dram_stream_pj_per_bit": (float(d.read_pj_per_bit) + float(ne.pe_path_pj_per_bit)
                                 + float(d.act_energy_pj) / (8.0 * nspec.dram.row_bytes)),
      "mac_energy_pj": float(ne.mac_pj),
      "logic_static_w": float(ne.logic_static_power_w),
      "link_pj_per_bit": 0.5 * (float(le.to_gpu_pj_per_bit) + float(le.to_ndp_pj_per_bit)),
      "link_static_w_per_gbps": float(le.static_power_w) / float(lpar.bandwidth_gbps)}


def load_cost(gpu: str, ndp: str, link: str, name: str = "default") -> CostParams:
  """CostParams for the named parts: prices from a cost file, power from the
  parts' energy presets; ConfigError naming the missing part or bad field."""
  p = cost_path(name)
  if not p.is_file():
    raise ConfigError(f"cost file {str(p)!r} does not exist; write a path to a cost "
                      "JSON or 'default'")
  d = json.loads(p.read_text())

  def part(group, key):
    have = d.get(group, {})
    if key not in have:
      raise ConfigError(f"{p}: {group}.{key} is missing: the cost model has no figures "
                        f"for the {group} preset {key!r} (it has {sorted(have)}); add "
                        f"an entry for it")
    return have[key]

  g, n, lo, li = part("gpu", gpu), part("ndp", ndp), d.get("ndp_logic", {}), part("link", link)

  def f(obj, grp, k, unit):
    if k not in obj:
      raise ConfigError(f"{p}: field {grp}.{k} is missing; add it ({unit})")
    return _field(obj[k], f"{p}: {grp}.{k}", unit)

  return CostParams(
      gpu_list_price_usd=f(g, f"gpu.{gpu}", "list_price_usd", "USD"),
      gpu_board_power_w=f(g, f"gpu.{gpu}", "board_power_w", "W"),
      gpu_memory_usd_per_gb=(f(g, f"gpu.{gpu}", "memory_spot_usd_per_gb", "USD/GB")
                             * f(g, f"gpu.{gpu}", "memory_retail_factor", "1")),
      dram_usd_per_gb=f(n, f"ndp.{ndp}", "dram_usd_per_gb", "USD/GB"),
      module_board_usd=f(n, f"ndp.{ndp}", "module_board_usd", "USD"),
      speed_premium_per_rate=f(n, f"ndp.{ndp}", "speed_premium_per_rate", "1"),
      logic_base_usd=f(lo, "ndp_logic", "base_usd", "USD"),
      mac_area_mm2=f(lo, "ndp_logic", "mac_area_um2", "um2") * 1e-6,
      mac_overhead_factor=f(lo, "ndp_logic", "mac_overhead_factor", "1"),
      logic_usd_per_mm2=f(lo, "ndp_logic", "logic_usd_per_mm2", "USD/mm2"),
      link_usd_per_gbps=f(li, f"link.{link}", "usd_per_gbps", "USD per GB/s"),
      **power_figures(ndp, link))


def breakdown(cp: CostParams, m: Machine, x) -> dict:
  """Cost (USD) and peak power (W) of point ``x`` [..., 6], by component.

  Returns arrays of x's batch shape: cost_usd, power_w, gpu_usd, link_usd,
  unit_usd (one NDP unit), gpu_w, link_w, unit_w.  Differentiable in x and cp.
  """
  x = jnp.asarray(x)
  macs, bw, rate, rf = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
  expert_gb = rf * m.max_expert_gb
  gpu_usd = cp.gpu_list_price_usd - cp.gpu_memory_usd_per_gb * (m.max_expert_gb - expert_gb)
  link_usd = cp.link_usd_per_gbps * bw
  mac_usd = macs * cp.mac_area_mm2 * cp.mac_overhead_factor * cp.logic_usd_per_mm2
  unit_usd = (m.unit_capacity_gb * cp.dram_usd_per_gb
              * (1.0 + cp.speed_premium_per_rate * (rate - 1.0))
              + cp.module_board_usd + cp.logic_base_usd + mac_usd)
  gpu_w = cp.gpu_board_power_w + 0.0 * rf
  link_w = bw * (2.0 * 8.0 * cp.link_pj_per_bit * 1e-3 + cp.link_static_w_per_gbps)
  unit_w = (cp.dram_background_w + cp.dram_stream_pj_per_bit * 8.0 * m.stream_gbps_0 * rate
            * 1e-3 + cp.logic_static_w + macs * m.clock_ghz * cp.mac_energy_pj * 1e-3)
  return {"cost_usd": gpu_usd + link_usd + m.num_units * unit_usd,
          "power_w": gpu_w + link_w + m.num_units * unit_w,
          "gpu_usd": gpu_usd, "link_usd": link_usd, "unit_usd": unit_usd,
          "gpu_w": gpu_w, "link_w": link_w, "unit_w": unit_w}


def spend(cp: CostParams, m: Machine, x, kind: str = "cost_usd"):
  """The budgeted quantity (``kind``: cost_usd or power_w) at ``x`` [..., 6]."""
  if kind not in BUDGET_KINDS:
    raise ConfigError(f"budget kind is {kind!r}; write one of {list(BUDGET_KINDS)}")
  return breakdown(cp, m, x)[kind]


def machine(system, model, context_len: int, batch: int = 1) -> Machine:
  """The concrete :class:`Machine` figures of a loaded system for a model."""
  ss, sp = system
  cap = float(costs.resident_capacity(ss, sp, model, context_len, batch))
  return Machine(num_units=float(ss.num_ndp_units),
                 unit_capacity_gb=ndp_mod.capacity_bytes(ss.ndp) / 1e9,
                 stream_gbps_0=float(ndp_mod.stream_bandwidth_gbps(ss.ndp, sp.ndp)),
                 clock_ghz=float(sp.ndp.clock_mhz) / 1e3,
                 max_expert_gb=cap * M.num_moe_layers(model) * float(M.expert_bytes(model))
                 / 1e9)


def expert_slots(system, model, context_len: int, batch: int = 1) -> float:
  """The GPU's resident expert slots per MoE layer at resident_fraction 1
  (``costs.resident_capacity``, a whole number)."""
  return float(costs.resident_capacity(system[0], system[1], model, context_len, batch))

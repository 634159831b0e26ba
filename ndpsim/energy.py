"""Energy per sequence and per output token, from a SimResult and public figures.

Entry point (pure, differentiable in every float of the result, the system
params and the energy params)::

    e = energy.per_token_j(result, (sys_spec, sys_params), model, eparams,
                           prompt_len=P, batch_size=B)    # EnergyBreakdown, [G] each
    e.total_j                                            # J per output token

``eparams = energy.for_system(system_preset)`` loads the energy figures of the
system's parts from ``hw_configs/energy/{gpu,link,ndp,dram}/<part preset>.json``
(same format and provenance rules as every preset, kinds ``gpu_energy``,
``link_energy``, ``ndp_energy``, ``dram_energy``).  :func:`per_group_j` gives
joules per sequence group, :func:`per_token_j` divides by the group's output
tokens (``batch_size x output_len``; prefill energy is included, amortised over
the output tokens).  :func:`row_fields` is what result rows carry.

Counted, per sequence group (components of :class:`EnergyBreakdown`):

* ``gpu_compute_j``: GPU FLOPs x ``compute_pj_per_flop``.  FLOPs: every matmul
  outside the routed experts (attention projections and scores over the real
  context, router, shared experts, dense layers, LM head once per step:
  ``models.flops_per_token`` / ``models.attention_flops``) for the prompt and
  every decode step, plus the routed-expert FLOPs run on the GPU.
* ``gpu_memory_j``: GPU DRAM bits x ``memory_pj_per_bit``: the non-routed
  weights read once per pass (prefill, then every decode step; one embedding
  row instead of the input table), KV cache read each step over the context so
  far and written once per token, routed-expert weights computed on the GPU
  (``expert_bytes_gpu``), and every byte the link writes into GPU memory.
* ``link_to_gpu_j`` / ``link_to_ndp_j``: link bits per direction x the
  direction's pJ/bit (``bytes_to_gpu + prefetched_bytes`` to the GPU,
  ``bytes_to_ndp`` to the NDP side).
* ``ndp_dram_j``: the NDP units' DRAM: one ACT+PRE (``act_energy_pj``) per
  ``row_bytes`` read, the array read (``read_pj_per_bit``) of every byte read,
  and I/O: bytes streamed into the PEs pay ``pe_path_pj_per_bit`` (the DRAM
  devices' pins to a buffer-chip PE; 0 for a PE beside the bank); bytes copied
  to the GPU pay it plus ``host_bus_pj_per_bit`` (the unit's bus to the host);
  the activations sent to the units (each unit gets them) pay
  ``host_bus_pj_per_bit``.  NDP weight streams never cross the host bus.
* ``ndp_mac_j``: routed-expert FLOPs on the NDP units / 2 x ``mac_pj``.
* ``static_gpu_j``, ``static_link_j``, ``static_ndp_j``: idle power x the group's
  end-to-end time (GPU board idle; link PHYs; per NDP unit its DRAM parts'
  background power plus its logic's idle power).

Approximations: the split of routed-expert FLOPs between GPU and NDP follows
the split of expert *bytes* of each phase (exact at batch 1 in decode, where
every activated expert serves one token; in prefill the GPU usually takes the
experts with more tokens, so its FLOP share is under-counted); partial sums
returned to the GPU are counted in ``bytes_to_gpu`` and are charged as if read
from DRAM (at most hidden x 2 B per unit, layer and token: < 0.1 % of one
expert copy); KV reads ignore sliding windows; the GPU's L2 is taken to hold
nothing across kernels.

Not counted: host CPU, host DRAM and motherboard, power-supply and voltage
regulator losses, cooling, GPU DRAM background beyond the board idle power,
SRAM/buffer accesses inside the NDP logic and the GPU beyond what pJ/FLOP
folds in, DRAM writes (the KV cache excepted; NDP units only read), DVFS and
throttling (power does not feed back into time).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp
import numpy as np

from ndpsim import base, config
from ndpsim.base import ConfigError
from ndpsim.workload import models as M

KINDS = ("gpu_energy", "link_energy", "ndp_energy", "dram_energy")
COMPONENTS = ("gpu_compute_j", "gpu_memory_j", "link_to_gpu_j", "link_to_ndp_j",
              "ndp_dram_j", "ndp_mac_j", "static_gpu_j", "static_link_j", "static_ndp_j")


@base.spec_dataclass
class EnergySpec:
  """Energy presets carry no static structure (kept for the loader's contract)."""


@base.params_dataclass
class GpuEnergyParams:
  """compute_pj_per_flop: dynamic energy per matmul FLOP (board level, pJ).
  memory_pj_per_bit: device-memory energy per bit read or written (array + I/O).
  static_power_w: board power when idle, drawn for the whole run, W."""
  compute_pj_per_flop: Any
  memory_pj_per_bit: Any
  static_power_w: Any


@base.params_dataclass
class LinkEnergyParams:
  """to_gpu_pj_per_bit, to_ndp_pj_per_bit: energy per payload bit in each
  direction (both ends).  static_power_w: the link's PHYs while up, W."""
  to_gpu_pj_per_bit: Any
  to_ndp_pj_per_bit: Any
  static_power_w: Any


@base.params_dataclass
class DramEnergyParams:
  """One DRAM part (as its dram preset defines it).

  act_energy_pj: one ACT + PRE of a rank-wide row (``row_bytes`` of the part).
  read_pj_per_bit: array and on-die datapath energy per bit read, no I/O.
  io_pj_per_bit: the part's external data interface, per bit.
  background_power_mw: standby (rows open) plus average refresh power of the
    whole part, mW."""
  act_energy_pj: Any
  read_pj_per_bit: Any
  io_pj_per_bit: Any
  background_power_mw: Any


@base.params_dataclass
class NdpEnergyParams:
  """One NDP unit.

  dram: its DRAM part's figures.  mac_pj: one multiply-accumulate in the
  unit's dtype.  pe_path_pj_per_bit: moving a bit from the DRAM devices to a
  PE (device pins to a buffer chip; 0 for a PE beside the bank).
  host_bus_pj_per_bit: a bit over the unit's bus to the host side.
  logic_static_power_w: the NDP logic's idle power, W."""
  dram: DramEnergyParams
  mac_pj: Any
  pe_path_pj_per_bit: Any
  host_bus_pj_per_bit: Any
  logic_static_power_w: Any


@base.params_dataclass
class EnergyParams:
  """The energy figures of one system: its GPU, link and NDP unit."""
  gpu: GpuEnergyParams
  link: LinkEnergyParams
  ndp: NdpEnergyParams


@base.params_dataclass
class EnergyBreakdown:
  """Joules per component (each [G] or scalar); ``total_j`` is their sum."""
  gpu_compute_j: Any
  gpu_memory_j: Any
  link_to_gpu_j: Any
  link_to_ndp_j: Any
  ndp_dram_j: Any
  ndp_mac_j: Any
  static_gpu_j: Any
  static_link_j: Any
  static_ndp_j: Any

  @property
  def total_j(self):
    return sum(getattr(self, c) for c in COMPONENTS)


# ---------------------------------------------------------------------------
# Loading.

_PJ = config.Range("pJ/bit", (0.0, 1e4), (0.01, 200.0))
_W = config.Range("W", (0.0, 1e5), (0.001, 2000.0), ((1e-3, "mW given as W"),))
config.register_ranges(GpuEnergyParams, {
    "compute_pj_per_flop": config.Range("pJ/FLOP", (1e-6, 1e4), (0.01, 100.0)),
    "memory_pj_per_bit": _PJ, "static_power_w": _W})
config.register_ranges(LinkEnergyParams, {
    "to_gpu_pj_per_bit": _PJ, "to_ndp_pj_per_bit": _PJ, "static_power_w": _W})
config.register_ranges(DramEnergyParams, {
    "act_energy_pj": config.Range("pJ", (0.0, 1e8), (10.0, 1e6)),
    "read_pj_per_bit": _PJ, "io_pj_per_bit": _PJ,
    "background_power_mw": config.Range("mW", (0.0, 1e7), (1.0, 1e5),
                                        ((1e3, "W given as mW"),))})
config.register_ranges(NdpEnergyParams, {
    "mac_pj": config.Range("pJ", (0.0, 1e4), (0.001, 100.0)),
    "pe_path_pj_per_bit": _PJ, "host_bus_pj_per_bit": _PJ, "logic_static_power_w": _W})

_ZERO_OK = {GpuEnergyParams: ("static_power_w",), LinkEnergyParams: ("static_power_w",),
            DramEnergyParams: (), NdpEnergyParams: ("pe_path_pj_per_bit",
                                                    "logic_static_power_w")}


def _builder(cls):
  def build(obj: dict, where: str):
    spec = config.take_fields(obj["spec"], EnergySpec, where, "spec")
    skip = ("dram",) if cls is NdpEnergyParams else ()
    p = config.take_fields(obj["params"], cls, where, "params", skip=skip,
                           allow_zero=_ZERO_OK[cls])
    if cls is NdpEnergyParams:
      ref = obj["params"].get("dram")
      config.require(isinstance(ref, str), where,
                     "field params.dram must name a dram energy preset (the NDP "
                     "unit's DRAM part, e.g. \"DDR5_16Gb_x8_4800\")")
      p["dram"] = config.load("dram_energy", ref).params
    return EnergySpec(**spec), cls(**p)
  return build


for _kind, _cls in (("gpu_energy", GpuEnergyParams), ("link_energy", LinkEnergyParams),
                    ("dram_energy", DramEnergyParams), ("ndp_energy", NdpEnergyParams)):
  config.register_kind(_kind, EnergySpec, _cls, _builder(_cls))


def _dram_name_of(ndp_name: str) -> str | None:
  """The DRAM part an NDP preset names (None for an inline part)."""
  path = config.config_root() / config.folder_of("ndp") / f"{ndp_name}.json"
  if not path.is_file():
    return None
  ref = config.read_json_object(path).get("spec", {}).get("dram")
  return ref if isinstance(ref, str) else None


class MissingFigures(ConfigError):
  """A part of the system has no energy preset (the message names the file)."""


def _load(kind: str, name: str, part: str) -> config.Preset:
  if not name or not (config.config_root() / config.folder_of(kind) /
                      f"{name}.json").is_file():
    raise MissingFigures(
        f"no energy figures for {part} preset {name!r}: add hw_configs/"
        f"{config.folder_of(kind)}/{name}.json (fields of {kind}, each with its "
        f"provenance; shipped: {config.available(kind)}) or pick a part that has them")
  return config.load(kind, name)


def load_presets(system) -> dict[str, config.Preset]:
  """The energy presets of a loaded ``system.SystemPreset``'s parts, by part
  (``gpu``, ``link``, ``ndp``; the NDP preset's ``params.dram`` names the DRAM
  one).  :class:`MissingFigures` naming the file to add if a part has none."""
  spec = system.spec
  out = {"gpu": _load("gpu_energy", spec.gpu_name, "gpu"),
         "link": _load("link_energy", spec.link_name, "link"),
         "ndp": _load("ndp_energy", spec.ndp_name, "ndp")}
  dram = _dram_name_of(spec.ndp_name)
  raw = config.read_json_object(out["ndp"].path)
  if dram is not None and raw["params"].get("dram") != dram:
    raise ConfigError(f"{out['ndp'].path}: params.dram is {raw['params'].get('dram')!r} "
                      f"but NDP preset {spec.ndp_name!r} uses DRAM part {dram!r}; write "
                      f"\"dram\": \"{dram}\"")
  return out


def for_system(system) -> EnergyParams:
  """EnergyParams of a loaded ``system.SystemPreset`` (see :func:`load_presets`)."""
  pre = load_presets(system)
  return EnergyParams(gpu=pre["gpu"].params, link=pre["link"].params,
                      ndp=pre["ndp"].params)


def has_figures(system) -> bool:
  """True if every part of ``system`` has an energy preset (a preset that exists
  but is wrong still raises its ConfigError)."""
  try:
    load_presets(system)
  except MissingFigures:
    return False
  return True


# ---------------------------------------------------------------------------
# Counters derived from the model and the token counts.

def _non_routed(model):
  """(FLOPs per token of router, shared experts and dense FFNs; LM-head FLOPs
  per token; non-routed weight bytes read per pass)."""
  f = M.flops_per_token(model, 1)
  per_tok = f["router"] + f["shared_experts"] + f["dense_ffn"]
  routed_b = M.num_moe_layers(model) * model.top_k * M.expert_bytes(model)
  return per_tok, f["lm_head"], float(M.active_bytes_per_token(model) - routed_b)


def _phase_split(gpu_b, ndp_b):
  """GPU share of the routed-expert work of one phase, by bytes (0 if none)."""
  tot = gpu_b + ndp_b
  return jnp.where(tot > 0, gpu_b / jnp.where(tot > 0, tot, 1.0), 0.0)


def counters(result, model, *, prompt_len: int, batch_size: int = 1) -> dict[str, Any]:
  """Activity counts per sequence group ([G] each) that energy is charged on:
  ``gpu_flops``, ``ndp_flops``, ``gpu_memory_bytes``, ``link_to_gpu_bytes``,
  ``link_to_ndp_bytes``, ``ndp_stream_bytes`` (weights into the PEs),
  ``ndp_copy_bytes`` (read for copies to the GPU), ``e2e_s``."""
  P, B = int(prompt_len), int(batch_size)
  if P < 1 or B < 1:
    raise ConfigError(f"prompt_len {prompt_len!r} and batch_size {batch_size!r} must be "
                      "positive integers (the run's prompt length and batch size)")
  T = int(np.shape(result.step_s)[-1])
  L = M.num_moe_layers(model)
  per_tok, lm_head, weights_b = _non_routed(model)
  ctx = P + 1.0 + jnp.arange(T, dtype=jnp.float32)
  attn = (M.attention_flops(model, P, P) * B
          + jnp.sum(M.attention_flops(model, 1, ctx)) * B)
  other = per_tok * (P + T) * B + lm_head * B * (1 + T)
  pairs_exp = M.expert_flops_per_token(model) * model.top_k * L * B
  g_pre = _phase_split(result.prefill_expert_bytes_gpu, result.prefill_expert_bytes_ndp)
  g_dec = _phase_split(result.expert_bytes_gpu - result.prefill_expert_bytes_gpu,
                       result.expert_bytes_ndp - result.prefill_expert_bytes_ndp)
  exp_gpu = pairs_exp * (P * g_pre + T * g_dec)
  exp_ndp = pairs_exp * (P * (1.0 - g_pre) + T * (1.0 - g_dec))
  kv = float(M.kv_bytes_per_token(model))
  to_gpu = result.bytes_to_gpu + result.prefetched_bytes
  gpu_mem = (weights_b * (1 + T) + kv * B * (jnp.sum(ctx - 1.0) + P + T)
             + result.expert_bytes_gpu + to_gpu)
  return {"gpu_flops": attn + other + exp_gpu, "ndp_flops": exp_ndp,
          "gpu_memory_bytes": gpu_mem, "link_to_gpu_bytes": to_gpu,
          "link_to_ndp_bytes": result.bytes_to_ndp,
          "ndp_stream_bytes": result.expert_bytes_ndp, "ndp_copy_bytes": to_gpu,
          "e2e_s": result.e2e_s}


# ---------------------------------------------------------------------------
# Energy.

def per_group_j(result, system, model, eparams: EnergyParams, *, prompt_len: int,
                batch_size: int = 1) -> EnergyBreakdown:
  """Energy of each sequence group, J, split by component ([G] each).

  result: engine.simulate's SimResult.  system: (SystemSpec, SystemParams).
  model: MoeModelSpec.  eparams: :class:`EnergyParams` (traced).
  prompt_len, batch_size: the run's (static ints).
  """
  ss, _ = system
  c = counters(result, model, prompt_len=prompt_len, batch_size=batch_size)
  g, ln, nd = eparams.gpu, eparams.link, eparams.ndp
  dr = nd.dram
  pj, bits = 1e-12, 8.0
  read_b = c["ndp_stream_bytes"] + c["ndp_copy_bytes"]
  acts = read_b / float(ss.ndp.dram.row_bytes)
  ndp_dram = pj * (acts * dr.act_energy_pj + bits * read_b * dr.read_pj_per_bit
                   + bits * read_b * nd.pe_path_pj_per_bit
                   + bits * c["ndp_copy_bytes"] * nd.host_bus_pj_per_bit
                   + bits * c["link_to_ndp_bytes"] * ss.num_ndp_units
                   * nd.host_bus_pj_per_bit)
  unit_static_w = (ss.ndp.dram_parts * dr.background_power_mw * 1e-3
                   + nd.logic_static_power_w)
  e2e = c["e2e_s"]
  return EnergyBreakdown(
      gpu_compute_j=pj * c["gpu_flops"] * g.compute_pj_per_flop,
      gpu_memory_j=pj * bits * c["gpu_memory_bytes"] * g.memory_pj_per_bit,
      link_to_gpu_j=pj * bits * c["link_to_gpu_bytes"] * ln.to_gpu_pj_per_bit,
      link_to_ndp_j=pj * bits * c["link_to_ndp_bytes"] * ln.to_ndp_pj_per_bit,
      ndp_dram_j=ndp_dram,
      ndp_mac_j=pj * 0.5 * c["ndp_flops"] * nd.mac_pj,
      static_gpu_j=g.static_power_w * e2e,
      static_link_j=ln.static_power_w * e2e,
      static_ndp_j=ss.num_ndp_units * unit_static_w * e2e)


def per_token_j(result, system, model, eparams: EnergyParams, *, prompt_len: int,
                batch_size: int = 1) -> EnergyBreakdown:
  """:func:`per_group_j` divided by the group's output tokens (batch x
  output_len), J per output token ([G] each).  A clean differentiable
  objective: ``jnp.mean(per_token_j(...).total_j)``."""
  e = per_group_j(result, system, model, eparams, prompt_len=prompt_len,
                  batch_size=batch_size)
  n = float(batch_size * np.shape(result.step_s)[-1])
  return EnergyBreakdown(**{k: getattr(e, k) / n for k in COMPONENTS})


def row_fields(result, system_preset, model, *, prompt_len: int,
               batch_size: int = 1) -> dict[str, float]:
  """Result-row fields: ``energy_per_token_j`` (mean over groups) and
  ``energy_<component>`` per output token (e.g. ``energy_ndp_dram_j``); {} if a
  part of the system has no energy preset (see :func:`has_figures`)."""
  if not has_figures(system_preset):
    return {}
  e = per_token_j(result, (system_preset.spec, system_preset.params), model,
                  for_system(system_preset), prompt_len=prompt_len,
                  batch_size=batch_size)
  out = {"energy_per_token_j": float(np.mean(np.asarray(e.total_j, np.float64)))}
  for k in COMPONENTS:
    out[f"energy_{k}"] = float(np.mean(np.asarray(getattr(e, k), np.float64)))
  return out


def describe_presets(system) -> dict[str, dict]:
  """{part: {field: (value, provenance, source)}} of a system's energy figures,
  for reports and docs."""
  out = {}
  pre = load_presets(system)
  dram = config.load("dram_energy",
                     config.read_json_object(pre["ndp"].path)["params"]["dram"])
  for part, p in {**pre, "dram": dram}.items():
    fields = {}
    for f in dataclasses.fields(p.params):
      v = getattr(p.params, f.name)
      if dataclasses.is_dataclass(v):
        continue
      fields[f.name] = (float(v), config.provenance_of(p.provenance, f.name),
                        p.sources.get(f.name, ""))
    out[part] = {"preset": p.name, "fields": fields}
  return out


def dumps(system) -> str:
  """JSON text of :func:`describe_presets`."""
  return json.dumps(describe_presets(system), indent=1)


def figures_table(system) -> str:
  """Markdown table of a system's energy figures: part, preset, field, value,
  provenance (``python -m ndpsim.energy SYSTEM`` prints it)."""
  lines = ["| part | preset | field | value | provenance |", "|---|---|---|---|---|"]
  for part, d in describe_presets(system).items():
    for f, (v, prov, _) in d["fields"].items():
      lines.append(f"| {part} | {d['preset']} | {f} | {v:g} | {prov} |")
  return "\n".join(lines)


if __name__ == "__main__":
  import sys  # pylint: disable=import-outside-toplevel

  from ndpsim.hw import system as _system  # pylint: disable=import-outside-toplevel
  for _name in sys.argv[1:] or config.available("system"):
    print(f"### {_name}\n\n{figures_table(_system.load_system(_name))}\n")

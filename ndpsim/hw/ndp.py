"""NDP unit model: one NDP-DIMM or one PIM device.

A unit holds ``dram_parts`` copies of a DRAM part (``hw_configs/dram``), each
with its own path to the processing elements (PEs), which sit at one level of
the DRAM hierarchy: ``bank`` (a PE beside every bank or pair of banks, as in
HBM-PIM / AiM / LPDDR5-PIM), ``bank_group``, ``rank`` or ``buffer`` (logic on
the DIMM buffer chip, as in the NDP-DIMMs of Hermes and the modelled paper).
The DRAM model (``ndpsim.hw.dram``) gives the time to stream bytes into PEs
at that level (bank parallelism, tFAW / tRRD, refresh, first access).

GEMV / small GEMM of a weight slice W [rows, cols] (rows = the reduction
dim, e.g. hidden for gate/up, ffn for down) with t tokens::

    pass time = max(DRAM stream of the slice, MAC time of the pass's tokens)
    time      = sum over passes (pass time + pipeline fill) + write-back

Each part streams rows * cols * weight_bytes / dram_parts bytes.  The
activation buffer holds ``floor(buffer_bytes / (rows * act_bytes))`` tokens
(at least one: a single token's input is streamed in K-chunks beside its
weights), so the weights are read once per step when the buffer holds the t
activations and re-streamed once per extra pass otherwise.  Write-back moves
t * cols * act_bytes results over the unit's host-side bus.

Not modelled: the input-activation broadcast (the link and engine charge
it), double-buffering of the next pass's activations, PE accumulator
capacity (outputs accumulate in PE registers), DRAM refresh interaction with
PE stalls beyond what the DRAM model includes, host accesses competing with
the PEs for the DRAM, power/thermal throttling, quantized-weight decode cost.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ndpsim import base, config
from ndpsim.base import ConfigError
from ndpsim.hw import dram
from ndpsim.hw.dram_spec import DramParams, DramSpec

LEVELS = ("bank", "bank_group", "rank", "buffer")
DTYPES = ("fp16", "bf16", "fp8", "int8")
BOUNDS = ("stream", "mac", "overhead")


@base.spec_dataclass
class NdpSpec:
  """Static NDP-unit structure.

  dram: organisation of one DRAM part.  dram_parts: parts per unit, each
    with its own path to the PEs (e.g. the ranks of an NDP-DIMM whose buffer
    chip reads all ranks in parallel, or the packages of a PIM device).
  pe_level: where the PEs sit: one of ``LEVELS``.
  num_pes: processing elements in the unit (informative; for bank /
    bank-group / rank levels it divides the number of such units).
  dtype: MAC dtype.
  """
  dram: DramSpec
  dram_parts: int
  pe_level: str
  num_pes: int
  dtype: str = "fp16"


@base.params_dataclass
class NdpParams:
  """Traced NDP-unit parameters.

  dram: timings of the DRAM part.  clock_mhz: PE clock.  macs_per_cycle: MAC
  lanes of the whole unit (all PEs) in ``spec.dtype``.  buffer_bytes:
  activation buffer.  host_bus_bandwidth_gbps: the unit's bus to the host
  side (a DIMM's channel), 1e9 B/s.  pipeline_fill_cycles: PE pipeline depth
  (DRAM-to-PE FIFO, multiplier, adder tree) paid once per pass.
  """
  dram: DramParams
  clock_mhz: Any
  macs_per_cycle: Any
  buffer_bytes: Any
  host_bus_bandwidth_gbps: Any
  pipeline_fill_cycles: Any


# Ranges of the numeric fields (config.Range: unit, hard, plausible, unit slips).
RANGES = {
    "dram_parts": config.count_range((1, 64), hard=(1, 2 ** 16), unit="parts"),
    "num_pes": config.count_range((1, 2 ** 20), hard=(1, 2 ** 24), unit="PEs"),
}
PARAMS_RANGES = {
    "clock_mhz": config.clock_range((10.0, 1e4)),
    "macs_per_cycle": config.count_range((1.0, 1e7), hard=(1e-3, 1e12),
                                         unit="MAC/cycle"),
    "buffer_bytes": config.bytes_range((64.0, 1e11), hard=(1.0, 1e15)),
    "host_bus_bandwidth_gbps": config.bandwidth_range((0.1, 1e4)),
    "pipeline_fill_cycles": config.count_range((1.0, 1e5), hard=(1e-3, 1e9),
                                               unit="cycles"),
}
config.register_ranges(NdpSpec, RANGES)
config.register_ranges(NdpParams, PARAMS_RANGES)


def level_units(spec: NdpSpec) -> int:
  """Number of DRAM units at ``spec.pe_level`` in the whole NDP unit (static)."""
  d = spec.dram
  per_part = {"bank": d.total_banks, "bank_group": d.channels * d.ranks * d.bank_groups,
              "rank": d.channels * d.ranks, "buffer": 1}[spec.pe_level]
  return per_part * (spec.dram_parts if spec.pe_level != "buffer" else 1)


def capacity_bytes(spec: NdpSpec) -> int:
  """DRAM capacity of one unit, bytes (static int)."""
  return spec.dram_parts * int(dram.capacity_bytes(spec.dram))


def stream_bandwidth_gbps(spec: NdpSpec, params: NdpParams):
  """Sustained weight-streaming bandwidth into the PEs of one unit, 1e9 B/s."""
  return spec.dram_parts * dram.internal_stream_bandwidth_gbps(spec.dram, params.dram,
                                                               spec.pe_level)


def peak_flops(spec: NdpSpec, params: NdpParams):
  """Peak FLOP/s of one unit (MAC = 2 FLOP)."""
  del spec
  return 2.0 * params.macs_per_cycle * params.clock_mhz * 1e6


def stream_time_s(spec: NdpSpec, params: NdpParams, num_bytes):
  """Time to stream ``num_bytes`` of weights, split over the parts, into the PEs, s."""
  b = jnp.asarray(num_bytes, jnp.result_type(float))
  t = dram.ndp_stream_time_ns(spec.dram, params.dram, b / spec.dram_parts,
                              spec.pe_level) * 1e-9
  return jnp.where(b > 0, t, 0.0)


def _f(x):
  return jnp.asarray(x, jnp.result_type(float))


def matmul_breakdown(spec: NdpSpec, params: NdpParams, rows, cols, tokens,
                     weight_dtype_bytes=2.0, act_dtype_bytes=2.0) -> dict:
  """Terms of a [rows, cols] weight slice times ``tokens`` tokens on one unit.

  rows, cols, tokens: ints or arrays (may be traced; broadcast together).
  Returns a dict of arrays: time_s, stream_s (one pass), mac_s (all tokens),
  core_s (sum over passes of max(stream, mac)), fill_s, writeback_s, passes,
  tokens_per_pass, bound (index into ``BOUNDS``).
  """
  rows, cols, t = _f(rows), _f(cols), _f(tokens)
  wb, ab = _f(weight_dtype_bytes), _f(act_dtype_bytes)
  stream_s = stream_time_s(spec, params, rows * cols * wb)
  mac_per_token_s = rows * cols / (params.macs_per_cycle * params.clock_mhz * 1e6)
  tpp = jnp.maximum(1.0, jnp.floor(params.buffer_bytes / jnp.maximum(rows * ab, 1.0)))
  full = jnp.floor(t / tpp)
  rem = t - full * tpp
  core_s = (full * jnp.maximum(stream_s, mac_per_token_s * tpp)
            + jnp.where(rem > 0, jnp.maximum(stream_s, mac_per_token_s * rem), 0.0))
  passes = full + (rem > 0)
  fill_s = passes * params.pipeline_fill_cycles / (params.clock_mhz * 1e6)
  writeback_s = t * cols * ab / (params.host_bus_bandwidth_gbps * 1e9)
  active = (t > 0) & (rows > 0) & (cols > 0)
  z = lambda x: jnp.where(active, x, 0.0)  # noqa: E731
  stream_all = passes * stream_s
  mac_all = t * mac_per_token_s
  terms = jnp.stack(jnp.broadcast_arrays(stream_all, mac_all, fill_s + writeback_s))
  return {"time_s": z(core_s + fill_s + writeback_s), "stream_s": z(stream_s),
          "mac_s": z(mac_all), "core_s": z(core_s), "fill_s": z(fill_s),
          "writeback_s": z(writeback_s), "passes": z(passes), "tokens_per_pass": tpp,
          "weight_bytes": rows * cols * wb, "bound": jnp.argmax(terms, axis=0)}


def matmul_time_s(spec: NdpSpec, params: NdpParams, rows, cols, tokens,
                  weight_dtype_bytes=2.0, act_dtype_bytes=2.0):
  """Time of a weight slice [rows, cols] times ``tokens`` tokens on one unit, s.

  0 when tokens, rows or cols is 0.  See the module docstring for the model.
  """
  return matmul_breakdown(spec, params, rows, cols, tokens, weight_dtype_bytes,
                          act_dtype_bytes)["time_s"]


# ---------------------------------------------------------------------------
# Preset loading.

def check(spec: NdpSpec, where: str) -> None:
  """Consistency of the unit's organisation; raises ConfigError."""
  config.require(spec.pe_level in LEVELS, where,
                 f"spec.pe_level is {spec.pe_level!r}; write one of {list(LEVELS)}")
  config.require(spec.dtype in DTYPES, where,
                 f"spec.dtype is {spec.dtype!r}; write one of {list(DTYPES)}")
  if spec.pe_level != "buffer":
    units = level_units(spec)
    config.require(units % spec.num_pes == 0, where,
                   f"spec.num_pes is {spec.num_pes} but the unit has {units} "
                   f"{spec.pe_level}s; write a divisor of {units} (e.g. {units})")


def build(obj: dict, where: str) -> tuple[NdpSpec, NdpParams]:
  """Builds (spec, params) from a preset dict; see ``config.py``.

  ``spec.dram`` names a DRAM preset (or is an inline DRAM preset object);
  the optional ``params.dram`` is an object of DRAM field overrides (spec or
  params fields of the DRAM kind) applied to that preset.
  """
  s = config.take_fields(obj["spec"], NdpSpec, where, "spec", skip=("dram",))
  dram_ref = obj["spec"].get("dram")
  config.require(isinstance(dram_ref, (str, dict)), where,
                 "field spec.dram must name a DRAM preset, e.g. \"DDR5_16Gb_x8_4800\" "
                 f"(one of {config.available('dram')})")
  dram_over = obj["params"].get("dram", {}) or {}
  config.require(isinstance(dram_over, dict), where,
                 "field params.dram must be an object of DRAM field overrides, "
                 "e.g. {\"t_rcd_cycles\": 40}")
  try:
    d = config.load("dram", dram_ref, overrides=dram_over)
  except ConfigError as e:
    raise ConfigError(f"{where}: spec.dram: {e}") from None
  p = config.take_fields(obj["params"], NdpParams, where, "params", skip=("dram",),
                         allow_zero=("pipeline_fill_cycles",))
  spec = NdpSpec(dram=d.spec, **s)
  check(spec, where)
  return spec, NdpParams(dram=d.params, **p)


config.register_kind("ndp", NdpSpec, NdpParams, build)

"""Host-side links: PCIe generation x lanes, CXL, or a custom link.

Modelled: the per-direction raw data rate after line encoding (derived from the
transfer rate x lanes x encoding efficiency of the named PCIe/CXL generation,
or given), a protocol efficiency (TLP/DLLP or flit headers, flow control) that
turns it into payload bandwidth, full or half duplex, a fixed cost per bulk
copy (DMA setup and driver work of one isolated pinned host->GPU copy: 11.6 us
with the latency on PCIe 5.0, measured; see hw_configs/link/pcie5_x16.json), a
smaller fixed cost per message (activation broadcast, partial-sum return) and a
one-way first-byte latency.

Time of one transfer of B bytes::

    t = overhead + latency + B / payload_bandwidth          (0 when B == 0)

and of n back-to-back transfers of B bytes each (the fixed costs are serial,
the flight latency is paid once because the copies stream)::

    t = n * (overhead + B / payload_bandwidth) + latency    (0 when n*B == 0)

Not modelled: link-layer retries and errors, credit starvation under many
outstanding requests, switch hops, contention with other devices on the same
root complex, IOMMU translation misses, payload-size dependence of the
protocol efficiency (one efficiency for all sizes), power states (L0s/L1),
the overlap of queued copies (copies queued back-to-back hide most of the
per-copy fixed cost: about 1.5 us each instead of 11.6 us on PCIe 5.0, so
``count > 1`` here is pessimistic), a lower per-direction rate when both
directions are busy (about 51 instead of 56 GB/s on PCIe 5.0 x16).
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ndpsim import base, config
from ndpsim.base import ConfigError

PROTOCOLS = ("pcie", "cxl", "custom")

# PCIe generation -> (transfer rate GT/s per lane, line-encoding efficiency).
# PCIe 1-2: 8b/10b; 3-5: 128b/130b; 6: PAM4 FLIT mode, 242 payload bytes of a
# 256-byte flit (FEC + CRC + DLP). Source: PCI-SIG base specifications.
PCIE_GENERATIONS: dict[int, tuple[float, float]] = {
    1: (2.5, 8 / 10),
    2: (5.0, 8 / 10),
    3: (8.0, 128 / 130),
    4: (16.0, 128 / 130),
    5: (32.0, 128 / 130),
    6: (64.0, 242 / 256),
}
# CXL generation -> PCIe PHY generation (CXL 1.1/2.0 on PCIe 5.0, 3.x on 6.0).
CXL_PHY: dict[int, int] = {1: 5, 2: 5, 3: 6}
LANE_COUNTS = (1, 2, 4, 8, 16)


@base.spec_dataclass
class LinkSpec:
  """Static description of a link.

  protocol: "pcie", "cxl" or "custom" (bandwidth given, no generation table).
  generation: PCIe 1-6 or CXL 1-3; 0 for "custom".
  lanes: lane count (1, 2, 4, 8, 16 for PCIe/CXL).
  full_duplex: both directions move data at full bandwidth at the same time.
  """
  protocol: str
  generation: int
  lanes: int
  full_duplex: bool = True


@base.params_dataclass
class LinkParams:
  """Traced link parameters.

  bandwidth_gbps: per-direction data rate after line encoding, 1e9 B/s
    (PCIe 5.0 x16: 32 GT/s x 16 x 128/130 / 8 = 63.0).
  protocol_efficiency: payload fraction of that rate, in (0, 1].
  per_transfer_overhead_us: fixed cost of one bulk copy (expert weights), us
    (with ``latency_ns``, the fixed cost of one isolated copy).
  message_overhead_us: fixed cost of one small message (activations), us.
  latency_ns: one-way first-byte latency, ns.
  """
  bandwidth_gbps: Any
  protocol_efficiency: Any
  per_transfer_overhead_us: Any
  message_overhead_us: Any
  latency_ns: Any


# Ranges of the numeric fields (config.Range: unit, hard, plausible, unit slips).
# generation is checked against PCIE_GENERATIONS / CXL_PHY instead.
RANGES = {
    "lanes": config.count_range((1, 64), hard=(1, 1024), unit="lanes"),
}
PARAMS_RANGES = {
    "bandwidth_gbps": config.bandwidth_range((0.01, 1e4)),
    "protocol_efficiency": config.fraction_range((0.1, 1.0)),
    "per_transfer_overhead_us": config.Range("us", (1e-6, 1e9), (1e-3, 1e5),
                                             config.US_SLIPS),
    "message_overhead_us": config.Range("us", (1e-6, 1e9), (1e-3, 1e5), config.US_SLIPS),
    "latency_ns": config.Range("ns", (1e-3, 1e12), (1.0, 1e8), config.NS_SLIPS),
}
config.register_ranges(LinkSpec, RANGES)
config.register_ranges(LinkParams, PARAMS_RANGES)


def line_rate_gbps(protocol: str, generation: int, lanes: int) -> float:
  """Per-direction data rate after line encoding of a PCIe/CXL link, 1e9 B/s.

  Raises ConfigError for an unknown protocol or generation.
  """
  if protocol == "pcie":
    gen = generation
    if gen not in PCIE_GENERATIONS:
      raise ConfigError(f"link: PCIe generation {generation} is unknown; write one "
                        f"of {sorted(PCIE_GENERATIONS)}")
  elif protocol == "cxl":
    if generation not in CXL_PHY:
      raise ConfigError(f"link: CXL generation {generation} is unknown; write one "
                        f"of {sorted(CXL_PHY)}")
    gen = CXL_PHY[generation]
  else:
    raise ConfigError(f"link: protocol {protocol!r} has no line-rate table; write "
                      "'pcie' or 'cxl', or give params.bandwidth_gbps")
  rate_gtps, enc = PCIE_GENERATIONS[gen]
  return rate_gtps * lanes * enc / 8.0


def bandwidth_gbps(spec: LinkSpec, params: LinkParams):
  """Payload bandwidth per direction, 1e9 B/s (scalar, traced)."""
  del spec
  return jnp.asarray(params.bandwidth_gbps) * params.protocol_efficiency


def _fixed_time(bw_gbps, overhead_s, latency_s, num_bytes, count):
  b = jnp.asarray(num_bytes, jnp.result_type(float))
  n = jnp.asarray(count, b.dtype)
  t = n * (overhead_s + b / (bw_gbps * 1e9)) + latency_s
  return jnp.where((b > 0) & (n > 0), t, 0.0)


def transfers_time_s(spec: LinkSpec, params: LinkParams, num_bytes_each, count):
  """Time of ``count`` back-to-back bulk copies of ``num_bytes_each`` bytes, s.

  = count * (per_transfer_overhead + bytes / payload_bandwidth) + latency, and
  0 when count or bytes is 0. Arguments broadcast; may be traced.
  """
  return _fixed_time(bandwidth_gbps(spec, params),
                     params.per_transfer_overhead_us * 1e-6,
                     params.latency_ns * 1e-9, num_bytes_each, count)


def transfer_time_s(spec: LinkSpec, params: LinkParams, num_bytes):
  """Time of one bulk copy of ``num_bytes`` bytes in one direction, s (0 for 0 B)."""
  return transfers_time_s(spec, params, num_bytes, 1)


def messages_time_s(spec: LinkSpec, params: LinkParams, num_bytes_each, count):
  """Like :func:`transfers_time_s` with the small-message fixed cost."""
  return _fixed_time(bandwidth_gbps(spec, params), params.message_overhead_us * 1e-6,
                     params.latency_ns * 1e-9, num_bytes_each, count)


def message_time_s(spec: LinkSpec, params: LinkParams, num_bytes):
  """Time of one small message (activation vector, partial sum), s (0 for 0 B)."""
  return messages_time_s(spec, params, num_bytes, 1)


def both_directions_time_s(spec: LinkSpec, params: LinkParams, up_time_s, down_time_s):
  """Time for traffic in both directions: max if full duplex, else the sum."""
  del params
  if spec.full_duplex:
    return jnp.maximum(up_time_s, down_time_s)
  return jnp.asarray(up_time_s) + down_time_s


# ---------------------------------------------------------------------------
# Preset loading.

def build(obj: dict, where: str) -> tuple[LinkSpec, LinkParams]:
  """Builds (spec, params) from a preset dict; see ``config.py``."""
  s = config.take_fields(obj["spec"], LinkSpec, where, "spec",
                         allow_zero=("generation",))
  spec = LinkSpec(**s)
  config.require(spec.protocol in PROTOCOLS, where,
                 f"spec.protocol is {spec.protocol!r}; write one of {PROTOCOLS}")
  line = None
  if spec.protocol == "custom":
    config.require(spec.generation == 0, where,
                   f"spec.generation is {spec.generation} for a custom link; write 0")
  else:
    config.require(spec.lanes in LANE_COUNTS, where,
                   f"spec.lanes is {spec.lanes}; write one of {LANE_COUNTS}")
    try:
      line = line_rate_gbps(spec.protocol, spec.generation, spec.lanes)
    except ConfigError as e:
      raise ConfigError(f"{where}: spec.generation: {str(e).split(': ', 1)[1]}") from None
  defaults = {} if line is None else {"bandwidth_gbps": line}
  p = config.take_fields(obj["params"], LinkParams, where, "params", defaults=defaults,
                         allow_zero=("per_transfer_overhead_us", "message_overhead_us",
                                     "latency_ns"))
  config.require(p["protocol_efficiency"] <= 1.0, where,
                 f"params.protocol_efficiency is {p['protocol_efficiency']}; write a "
                 "fraction in (0, 1]")
  if line is not None:
    config.require(p["bandwidth_gbps"] <= line * (1 + 1e-3), where,
                   f"params.bandwidth_gbps is {p['bandwidth_gbps']} but "
                   f"{spec.protocol} gen {spec.generation} x{spec.lanes} carries at most "
                   f"{line:.3f} GB/s per direction; write <= {line:.3f}, omit it to "
                   "derive it, or use spec.protocol \"custom\" with generation 0")
  return spec, LinkParams(**p)


config.register_kind("link", LinkSpec, LinkParams, build)

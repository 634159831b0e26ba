"""DRAM organisation, timings and address mapping: the data of the DRAM model.

``DramSpec`` (static) holds the organisation, the address mapping and the
controller's queue depths; ``DramParams`` (traced) holds tCK and every timing
in clock cycles.  ``build(obj, where)`` validates a ``hw_configs/dram/*.json``
preset; ``ndpsim.hw.dram`` registers it as the ``dram`` kind.

Mapping strings list two-letter fields from the most to the least significant
address bit, as in DRAMsim3: ``ro`` row, ``ch`` channel, ``ra`` rank, ``bg``
bank group, ``ba`` bank, ``co`` column (in transactions), e.g.
``rochrababgco``.  The byte offset inside one transaction sits below them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ndpsim import base, config

FIELDS = ("ro", "ch", "ra", "bg", "ba", "co")
REFRESH_MODES = ("all_rank", "staggered")


@base.spec_dataclass
class DramSpec:
  """Static organisation of one DRAM part as configured (whole part).

  channels: independent channels (or sub-channels / pseudo-channels), each
    with its own data bus and controller.
  ranks: ranks sharing one channel's data bus; each rank has its own
    tRRD_S / tFAW activation window (JESD79-4 / JESD79-5: the window counts
    a rank's ACTs; DRAMsim3 channel_state.cc keeps ``four_aw_`` per rank) and
    pays tRTRS when the bus switches to it.  HBM stack IDs (SIDs) are *not*
    ranks: tRRD_S and tFAW count the ACTs of all SIDs of a pseudo-channel
    (JESD238 array-access timings are counted per pseudo channel; Ramulator 2
    src/dram/impl/HBM3.cpp puts nRRDS / nFAW at the pseudochannel level and
    folds the SID into the bank groups), so an HBM preset writes ranks = 1 and
    bank_groups = SIDs x bank groups per SID.
  bank_groups, banks_per_group: per rank.
  rows_per_bank: rows in one bank.
  row_bytes: bytes of one row across the rank (page size x devices per rank).
  bus_bits: data-bus width of one channel, bits.
  device_bits: width of one device (x8, x16, ...); divides bus_bits.
  burst_length: beats per read burst (BL).
  transfers_per_clock: data beats per tCK (2 for DDR; 4 for HBM3; 8 for
    LPDDR5 / GDDR6 whose data clock runs at 4x CK).
  transaction_bytes: bytes one read moves = bus_bits * burst_length / 8.
  mapping: address mapping, fields from MSB to LSB (see module docstring).
  refresh_mode: "all_rank" (every rank of a channel refreshes at once) or
    "staggered" (ranks refresh in turn, tREFI / ranks apart).
  transaction_queue_depth: host controller's transaction queue (per channel).
  bank_queue_depth: host controller's per-bank command queue.
  dual_command_bus: separate row (ACT, PRE, REF) and column (RD) command
    buses, so one row and one column command may issue in the same clock
    (HBM: JESD235 / JESD238 row and column command interfaces; DRAMsim3
    ``hbm_dual_cmd``, on by default for HBM).  False: one command per clock.
  """
  channels: int
  ranks: int
  bank_groups: int
  banks_per_group: int
  rows_per_bank: int
  row_bytes: int
  bus_bits: int
  device_bits: int
  burst_length: int
  transfers_per_clock: int
  transaction_bytes: int
  mapping: str
  refresh_mode: str = "all_rank"
  transaction_queue_depth: int = 32
  bank_queue_depth: int = 8
  dual_command_bus: bool = False

  # -- derived static quantities ------------------------------------------
  @property
  def banks_per_rank(self) -> int:
    return self.bank_groups * self.banks_per_group

  @property
  def banks_per_channel(self) -> int:
    return self.ranks * self.banks_per_rank

  @property
  def total_banks(self) -> int:
    return self.channels * self.banks_per_channel

  @property
  def columns_per_row(self) -> int:
    """Transactions per row (the mapping's ``co`` field size)."""
    return self.row_bytes // self.transaction_bytes

  @property
  def burst_cycles(self) -> float:
    """tBurst: clock cycles one burst occupies the data bus."""
    return self.burst_length / self.transfers_per_clock

  @property
  def bytes_per_cycle(self) -> float:
    """Peak bytes per tCK over all channels."""
    return self.channels * self.bus_bits / 8 * self.transfers_per_clock

  def field_sizes(self) -> dict[str, int]:
    return {"ro": self.rows_per_bank, "ch": self.channels, "ra": self.ranks,
            "bg": self.bank_groups, "ba": self.banks_per_group,
            "co": self.columns_per_row}

  def mapping_fields(self) -> tuple[str, ...]:
    """Mapping fields from MSB to LSB, e.g. ('ro', 'ch', ..., 'co')."""
    return tuple(self.mapping[i:i + 2] for i in range(0, len(self.mapping), 2))


@base.params_dataclass
class DramParams:
  """Traced timings.  Every ``*_cycles`` field counts clock cycles of tCK.

  tck_ns: clock period, ns.  cl: read latency (RD to first data).  t_rcd:
  ACT to RD.  t_rp: PRE to ACT.  t_ras: ACT to PRE.  t_ccd_s / t_ccd_l: RD
  to RD in another / the same bank group.  t_rrd_s / t_rrd_l: ACT to ACT in
  another / the same bank group of a rank.  t_faw: window holding at most
  four ACTs per rank.  t_rtp: RD to PRE.  t_rfc: refresh cycle (rank busy).
  t_refi: refresh interval.  t_rtrs: extra data-bus turnaround between reads
  of different ranks (0 allowed).
  """
  tck_ns: Any
  cl_cycles: Any
  t_rcd_cycles: Any
  t_rp_cycles: Any
  t_ras_cycles: Any
  t_ccd_s_cycles: Any
  t_ccd_l_cycles: Any
  t_rrd_s_cycles: Any
  t_rrd_l_cycles: Any
  t_faw_cycles: Any
  t_rtp_cycles: Any
  t_rfc_cycles: Any
  t_refi_cycles: Any
  t_rtrs_cycles: Any


# Ranges of the numeric fields (config.Range: unit, hard, plausible, unit slips).
def _org(plausible, unit, hard_hi=2 ** 24):
  return config.count_range(plausible, hard=(1, hard_hi), unit=unit)


RANGES = {
    "channels": _org((1, 256), "channels"),
    "ranks": _org((1, 16), "ranks"),
    "bank_groups": _org((1, 64), "bank groups"),
    "banks_per_group": _org((1, 64), "banks"),
    "rows_per_bank": _org((64, 2 ** 22), "rows"),
    "row_bytes": _org((64, 2 ** 16), "bytes"),
    "bus_bits": _org((4, 2048), "bits"),
    "device_bits": _org((1, 1024), "bits"),
    "burst_length": _org((1, 64), "beats"),
    "transfers_per_clock": _org((1, 32), "beats per clock"),
    "transaction_bytes": _org((4, 4096), "bytes"),
    "transaction_queue_depth": _org((1, 4096), "entries"),
    "bank_queue_depth": _org((1, 4096), "entries"),
}
_CYCLES_NOTE = "count clock cycles of tCK, not ns"


def _cycles(plausible):
  return config.Range("cycles", (1e-3, 1e9), plausible, note=_CYCLES_NOTE)


PARAMS_RANGES = {
    "tck_ns": config.Range("ns", (1e-4, 1e6), (0.1, 20.0), config.NS_SLIPS),
    **{f: _cycles((1.0, 1e3)) for f in (
        "cl_cycles", "t_rcd_cycles", "t_rp_cycles", "t_ras_cycles", "t_ccd_s_cycles",
        "t_ccd_l_cycles", "t_rrd_s_cycles", "t_rrd_l_cycles", "t_faw_cycles",
        "t_rtp_cycles", "t_rtrs_cycles")},
    "t_rfc_cycles": _cycles((10.0, 1e5)),
    "t_refi_cycles": _cycles((100.0, 1e6)),
}
config.register_ranges(DramSpec, RANGES)
config.register_ranges(DramParams, PARAMS_RANGES)


def _is_pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def check_spec(spec: DramSpec, where: str) -> None:
  """Organisation consistency; raises ConfigError naming the field."""
  req = config.require
  toks = spec.mapping_fields()
  req(len(spec.mapping) == 12 and sorted(toks) == sorted(FIELDS), where,
      f"field spec.mapping is {spec.mapping!r}; write each of {list(FIELDS)} "
      "exactly once, MSB first, e.g. \"rochrababgco\"")
  req(spec.refresh_mode in REFRESH_MODES, where,
      f"field spec.refresh_mode is {spec.refresh_mode!r}; write one of "
      f"{list(REFRESH_MODES)}")
  req(spec.bus_bits % spec.device_bits == 0, where,
      f"field spec.bus_bits ({spec.bus_bits}) is not a multiple of "
      f"spec.device_bits ({spec.device_bits}); write a device width that "
      "divides the bus width")
  txn = spec.bus_bits * spec.burst_length // 8
  req(spec.bus_bits * spec.burst_length % 8 == 0 and spec.transaction_bytes == txn,
      where, f"field spec.transaction_bytes is {spec.transaction_bytes} but "
      f"bus_bits x burst_length / 8 = {spec.bus_bits} x {spec.burst_length} / 8; "
      f"write \"transaction_bytes\": {txn}")
  req(spec.row_bytes % spec.transaction_bytes == 0 and spec.row_bytes >=
      spec.transaction_bytes, where,
      f"field spec.row_bytes ({spec.row_bytes}) is not a multiple of "
      f"transaction_bytes ({spec.transaction_bytes}); write a whole number of "
      "transactions per row")
  devices = spec.bus_bits // spec.device_bits
  req(spec.row_bytes % devices == 0, where,
      f"field spec.row_bytes ({spec.row_bytes}) does not split over the "
      f"{devices} devices of a rank; write a multiple of {devices}")
  for name in ("channels", "ranks", "bank_groups", "banks_per_group",
               "rows_per_bank"):
    v = getattr(spec, name)
    req(_is_pow2(v), where, f"field spec.{name} is {v}; the mapping decodes "
        "address bits, so write a power of two")
  req(_is_pow2(spec.columns_per_row), where,
      f"field spec.row_bytes ({spec.row_bytes}) holds {spec.columns_per_row} "
      "transactions; write a row size that holds a power of two of them")
  req(_is_pow2(spec.transaction_bytes), where,
      f"field spec.transaction_bytes is {spec.transaction_bytes}; write a "
      "power of two")
  req(spec.burst_length % spec.transfers_per_clock == 0 or
      spec.transfers_per_clock % spec.burst_length == 0, where,
      f"field spec.burst_length ({spec.burst_length}) and "
      f"spec.transfers_per_clock ({spec.transfers_per_clock}) give a burst of "
      "a fraction of a clock; write values where one divides the other")


_ORDER_CHECKS = (
    ("t_ras_cycles", "t_rcd_cycles", "an ACT must stay open at least until RD"),
    ("t_ccd_l_cycles", "t_ccd_s_cycles", "same-group gaps are never shorter"),
    ("t_rrd_l_cycles", "t_rrd_s_cycles", "same-group gaps are never shorter"),
    ("t_faw_cycles", "t_rrd_s_cycles", "four ACTs cannot fit in less than one gap"),
    ("t_refi_cycles", "t_rfc_cycles", "the part would refresh all the time"),
)


def check_params(params: DramParams, where: str) -> None:
  """Orderings JEDEC guarantees; only for concrete (untraced) params."""
  for big, small, why in _ORDER_CHECKS:
    b, s = float(getattr(params, big)), float(getattr(params, small))
    config.require(b > s if big == "t_refi_cycles" else b >= s, where,
                   f"field params.{big} ({b:g}) is below params.{small} ({s:g}) "
                   f"({why}); write params.{big} >= {s:g}")


def refresh_loss_bound_cycles(spec: DramSpec, params: DramParams) -> float:
  """Upper bound on the cycles one refresh round takes from a read pattern
  (concrete params): tRFC, closing and re-opening rows (tRTP + tRP + tRCD) and
  an ACT wave over a rank's banks, for every rank in turn when refresh is
  staggered (``dram._refresh_stretch`` charges at most this per tREFI)."""
  p = {f.name: float(getattr(params, f.name)) for f in dataclasses.fields(params)}
  act = max(p["t_faw_cycles"] / 4.0, p["t_rrd_s_cycles"], p["t_rrd_l_cycles"])
  one = (p["t_rfc_cycles"] + p["t_rtp_cycles"] + p["t_rp_cycles"] + p["t_rcd_cycles"]
         + (spec.banks_per_rank - 1) * act)
  return one * (spec.ranks if spec.refresh_mode == "staggered" else 1)


def check_refresh(spec: DramSpec, params: DramParams, where: str) -> None:
  """Refresh must leave the part time to read (concrete params only)."""
  loss, refi = refresh_loss_bound_cycles(spec, params), float(params.t_refi_cycles)
  config.require(loss < refi, where,
                 f"refresh takes up to {loss:g} of every params.t_refi_cycles ({refi:g}) "
                 "cycles (tRFC + tRTP + tRP + tRCD + an ACT wave over the rank's banks"
                 f"{', per rank' if spec.refresh_mode == 'staggered' else ''}): the part "
                 "would only refresh; write a smaller t_rfc_cycles or a larger "
                 "t_refi_cycles")


def build(obj: dict, where: str) -> tuple[DramSpec, DramParams]:
  """Builds (spec, params) from a preset object; raises ConfigError."""
  sk = config.take_fields(obj["spec"], DramSpec, where, "spec")
  spec = DramSpec(**sk)
  check_spec(spec, where)
  pk = config.take_fields(obj["params"], DramParams, where, "params",
                          allow_zero=("t_rtrs_cycles",))
  params = DramParams(**pk)
  check_params(params, where)
  check_refresh(spec, params, where)
  return spec, params


def row_span_transactions(spec: DramSpec) -> int:
  """Transactions from the LSB up to and including the ``co`` field.

  A stride of this many transactions ("one row span") keeps the column and
  moves to another row or bank: the ``strided`` pattern's step.
  """
  sizes = spec.field_sizes()
  span = 1
  for f in reversed(spec.mapping_fields()):
    span *= sizes[f]
    if f == "co":
      break
  return span

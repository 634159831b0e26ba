"""Reference command-level DRAM simulator (plain Python), in the DRAMsim3 mould.

This is the yardstick the closed forms in ``ndpsim.hw.dram`` are validated
against.  It is written from the JEDEC command rules, independently of those
closed forms, and simulates every command of every read:

* per bank: open row, earliest legal ACT (tRP after PRE, tRFC after REF), RD
  (tRCD after ACT) and PRE (tRAS after ACT, tRTP after the last RD);
* per rank: tRRD_S / tRRD_L between ACTs (another / the same bank group) and a
  rolling tFAW window over the last four ACTs;
* per channel: RD-to-RD gaps tCCD_S / tCCD_L (another / the same bank group of
  a rank), data-bus occupancy (a burst holds the bus tBurst = BL / beats per
  clock) and a rank-to-rank turnaround tRTRS; one command per clock on the
  command bus, or with ``spec.dual_command_bus`` (HBM) one row command (ACT,
  PRE, REF) and one column command (RD) per clock; data returns CL + tBurst
  after RD;
* refresh: every tREFI each rank closes its banks (PRE when legal) and issues
  an all-bank REF that blocks it for tRFC; in ``staggered`` mode the ranks'
  refreshes are spread tREFI / ranks apart, in ``all_rank`` mode they coincide;
* controller (one per channel): a transaction queue (default 32) feeding
  per-bank command queues (default 8; a transaction moves to its bank's queue,
  first fit in age order, as soon as that queue has room), open-page policy,
  FR-FCFS: the oldest ready row hit first, else the oldest ready ACT or PRE; a
  row is not closed while its bank queue holds a hit to it;
* front end: requests enter in pattern order as fast as the queues accept them
  (per-channel in-order admission, no cross-channel head-of-line blocking).

The five access patterns (``stream``, ``banks``, ``onebank``, ``strided``,
``random``) are defined by :func:`pattern_coordinates`.  Reads only: writes,
write-to-read turnarounds, per-bank refresh, power-down, ECC and command/
address parity are not simulated.

It is event driven: time jumps to the next instant at which some command can
become legal, so ~64K requests take a few seconds.  This module holds the
patterns and the split over channels; one channel's command-level state
machine is ``ndpsim.hw.dram_channel`` (``simulate_channel``, re-exported).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ndpsim.base import ConfigError
from ndpsim.hw.dram_channel import simulate_channel
from ndpsim.hw.dram_spec import DramParams, DramSpec, row_span_transactions

__all__ = ["PATTERNS", "SimResult", "check_sizes", "decode", "pattern_coordinates",
           "simulate", "simulate_channel"]

PATTERNS = ("stream", "banks", "onebank", "strided", "random")


def _log2(n: int) -> int:
  return int(n).bit_length() - 1


def decode(spec: DramSpec, txn_addr: np.ndarray) -> dict[str, np.ndarray]:
  """Splits transaction addresses (address / transaction_bytes) by the mapping.

  Returns {field: int64 array}; fields wrap modulo their size (``ro`` wraps at
  rows_per_bank, so a region larger than the part aliases onto it).
  """
  sizes = spec.field_sizes()
  out = {}
  a = np.asarray(txn_addr, dtype=np.int64)
  for f in reversed(spec.mapping_fields()):  # LSB first
    bits = _log2(sizes[f])
    out[f] = a & ((1 << bits) - 1)
    a = a >> bits
  return out


def check_sizes(spec: DramSpec, region_bytes: int, request_bytes: int,
                where: str = "dram read") -> None:
  """Region and request sizes a pattern accepts; raises ConfigError."""
  txn = spec.transaction_bytes
  if request_bytes <= 0 or request_bytes % txn:
    raise ConfigError(f"{where}: request_bytes is {request_bytes}; write a positive "
                      f"multiple of the transaction size {txn}")
  if region_bytes <= 0 or region_bytes % request_bytes:
    raise ConfigError(f"{where}: region_bytes is {region_bytes}; write a positive "
                      f"multiple of request_bytes ({request_bytes})")


def pattern_coordinates(spec: DramSpec, pattern: str, region_bytes: int,
                        request_bytes: int | None = None,
                        seed: int = 0) -> dict[str, np.ndarray]:
  """Per-transaction coordinates of a pattern over a region, in issue order.

  All patterns read every transaction-sized block of the region once, in
  requests of ``request_bytes`` (consecutive transactions):

  * ``stream``: address order, decoded through the mapping;
  * ``banks``: request q goes to bank q mod (all banks), rotating channel
    fastest, then bank group, bank, rank; each bank walks its own rows;
  * ``onebank``: channel 0, rank 0, bank 0 of group 0, row after row;
  * ``strided``: addresses visited with a stride of one row span
    (:func:`row_span_transactions`), column offset by column offset;
  * ``random``: a random permutation (``seed``) of the requests.

  Returns {"ch", "ra", "bg", "ba", "ro", "co"} int64 arrays of length
  region_bytes / transaction_bytes.
  """
  txn = spec.transaction_bytes
  request_bytes = txn if request_bytes is None else int(request_bytes)
  check_sizes(spec, region_bytes, request_bytes)
  m = request_bytes // txn
  n = region_bytes // txn
  nreq = n // m
  ncol = spec.columns_per_row
  within = np.tile(np.arange(m, dtype=np.int64), nreq)
  if pattern == "stream":
    return decode(spec, np.arange(n, dtype=np.int64))
  if pattern == "random":
    perm = np.random.default_rng(seed).permutation(nreq).astype(np.int64)
    return decode(spec, np.repeat(perm * m, m) + within)
  if pattern == "strided":
    span = row_span_transactions(spec)
    if span % m:
      raise ConfigError(f"dram read: request_bytes {request_bytes} does not divide "
                        f"the row span {span * txn}; write a smaller request")
    nspan = -(-n // span)
    blk = np.arange(span // m, dtype=np.int64)[:, None] * m
    base = (blk + np.arange(nspan, dtype=np.int64)[None, :] * span).reshape(-1)
    addr = (base[:, None] + np.arange(m, dtype=np.int64)[None, :]).reshape(-1)
    return decode(spec, addr[addr < n])
  q = np.repeat(np.arange(nreq, dtype=np.int64), m)
  if pattern == "onebank":
    k = np.arange(n, dtype=np.int64)
    z = np.zeros(n, dtype=np.int64)
    return {"ch": z, "ra": z, "bg": z, "ba": z,
            "ro": (k // ncol) % spec.rows_per_bank, "co": k % ncol}
  if pattern == "banks":
    nb = spec.total_banks
    b = q % nb
    k = (q // nb) * m + within
    c, g = spec.channels, spec.bank_groups
    return {"ch": b % c, "bg": (b // c) % g,
            "ba": (b // (c * g)) % spec.banks_per_group,
            "ra": b // (c * g * spec.banks_per_group),
            "ro": (k // ncol) % spec.rows_per_bank, "co": k % ncol}
  raise ConfigError(f"dram read: unknown pattern {pattern!r}; write one of "
                    f"{list(PATTERNS)}")


@dataclasses.dataclass
class SimResult:
  """Outcome of one simulation.

  cycles: clock cycles from the first request until the last data beat of the
    slowest simulated channel.  transactions / activations / refreshes /
    row_misses: counts over the simulated channels (activations also count
    rows re-opened after a refresh closed them before any read).
    row_hit_rate = 1 - row_misses / transactions.
  """
  cycles: float
  transactions: int
  activations: int
  refreshes: int
  row_misses: int
  bytes: int
  channels_simulated: int

  @property
  def row_hit_rate(self) -> float:
    return 1.0 - self.row_misses / max(self.transactions, 1)


def simulate(spec: DramSpec, params: DramParams, pattern: str, region_bytes: int,
             request_bytes: int | None = None, seed: int = 0,
             channels: tuple[int, ...] | None = None,
             transaction_queue_depth: int | None = None,
             bank_queue_depth: int | None = None,
             refresh: bool = True) -> SimResult:
  """Simulates a pattern over a region; channels run independently.

  ``channels``: which channels to simulate (default all that receive
  requests); the result's cycles are the slowest simulated channel's, its
  counts cover the simulated channels only.
  """
  co = pattern_coordinates(spec, pattern, region_bytes, request_bytes, seed)
  chans = sorted(set(np.unique(co["ch"]).tolist()))
  if channels is not None:
    chans = [c for c in chans if c in set(channels)]
  cycles, acts, refs, txns, misses = 0.0, 0, 0, 0, 0
  for c in chans:
    sel = co["ch"] == c
    cyc, a, r, mi = simulate_channel(spec, params, co["ra"][sel], co["bg"][sel],
                                 co["ba"][sel], co["ro"][sel],
                                 transaction_queue_depth, bank_queue_depth, refresh)
    cycles = max(cycles, cyc)
    acts += a
    refs += r
    misses += mi
    txns += int(sel.sum())
  return SimResult(cycles=cycles, transactions=txns, activations=acts, refreshes=refs,
                   row_misses=misses,
                   bytes=txns * spec.transaction_bytes, channels_simulated=len(chans))

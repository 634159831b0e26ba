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
become legal, so ~64K requests take a few seconds.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from ndpsim.base import ConfigError
from ndpsim.hw.dram_spec import DramParams, DramSpec, row_span_transactions

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


def _timings(spec: DramSpec, p: DramParams) -> dict[str, float]:
  t = {f.name: float(getattr(p, f.name)) for f in dataclasses.fields(p)}
  t["tb"] = float(spec.burst_cycles)
  return t


def simulate_channel(spec: DramSpec, params: DramParams, rank: np.ndarray,
                     bg: np.ndarray, ba: np.ndarray, row: np.ndarray,
                     transaction_queue_depth: int | None = None,
                     bank_queue_depth: int | None = None,
                     refresh: bool = True) -> tuple[float, int, int, int]:
  """Simulates one channel's request stream (arrays in issue order).

  Returns (cycles until the last data beat, activations, refreshes, row
  misses = reads that were the first read after their row's ACT).
  """
  t = _timings(spec, params)
  cl, trcd, trp, tras = t["cl_cycles"], t["t_rcd_cycles"], t["t_rp_cycles"], t["t_ras_cycles"]
  tb = t["tb"]
  gs = max(t["t_ccd_s_cycles"], tb)
  gl = max(t["t_ccd_l_cycles"], tb)
  grank = tb + t["t_rtrs_cycles"]  # DRAMsim3 timing.cc read_to_read_o
  trrds, trrdl, tfaw = t["t_rrd_s_cycles"], t["t_rrd_l_cycles"], t["t_faw_cycles"]
  trtp, trfc, trefi = t["t_rtp_cycles"], t["t_rfc_cycles"], t["t_refi_cycles"]
  tqd = spec.transaction_queue_depth if transaction_queue_depth is None else transaction_queue_depth
  bqd = spec.bank_queue_depth if bank_queue_depth is None else bank_queue_depth
  nbg, nba, nra = spec.bank_groups, spec.banks_per_group, spec.ranks
  nbank = nra * nbg * nba
  bank_of = ((rank * nbg + bg) * nba + ba).astype(np.int64).tolist()
  rows = row.astype(np.int64).tolist()
  n = len(bank_of)
  b_rank = [b // (nbg * nba) for b in range(nbank)]
  b_rg = [b // nba for b in range(nbank)]  # (rank, bg) index

  open_row = [-1] * nbank
  act_ok = [0.0] * nbank
  rd_ok = [0.0] * nbank
  pre_ok = [0.0] * nbank
  bq = [collections.deque() for _ in range(nbank)]
  tq: list[int] = []
  nonempty: set[int] = set()
  neg = -1e30
  rd_last_rg = [neg] * (nra * nbg)
  rd_last_rank = [neg] * nra
  rd_last_any, rd_last_any_rank = neg, -1
  act_last_rg = [neg] * (nra * nbg)
  act_last_rank = [neg] * nra
  faw = [collections.deque([neg] * 4, maxlen=4) for _ in range(nra)]
  if spec.refresh_mode == "staggered":
    ref_due = [(r + 0.5) * trefi / nra for r in range(nra)]
  else:
    ref_due = [0.5 * trefi] * nra
  if not refresh:
    ref_due = [float("inf")] * nra
  ref_pending = [False] * nra
  nxt = 0
  now = 0.0
  done = 0
  last_data = 0.0
  acts = refs = misses = 0
  fresh = [False] * nbank  # row opened and not yet read
  # Command buses: HBM has separate row and column command interfaces (JESD235
  # / JESD238; DRAMsim3 controller.cc issues a second command of the other kind
  # in the same cycle when hbm_dual_cmd is on); other parts issue one command
  # per clock.
  dual = spec.dual_command_bus
  row_free = col_free = 0.0

  def admit():
    nonlocal nxt
    while nxt < n and len(tq) < tqd:
      b = bank_of[nxt]
      if len(bq[b]) < bqd and not any(bank_of[j] == b for j in tq):
        bq[b].append(nxt)
        nonempty.add(b)
      else:
        tq.append(nxt)
      nxt += 1

  admit()
  while done < n:
    best_rd = None  # (age, bank, req)
    best_other = None  # (age, kind, bank)
    wake = float("inf")
    for r in range(nra):
      if not ref_pending[r] and now >= ref_due[r]:
        ref_pending[r] = True
      if ref_pending[r]:
        lo = r * nbg * nba
        all_closed = True
        ready_at = 0.0
        for b in range(lo, lo + nbg * nba):
          if open_row[b] >= 0:
            all_closed = False
            if pre_ok[b] <= now and best_other is None:
              best_other = (-1, "PRE", b)
            wake = min(wake, pre_ok[b])
          ready_at = max(ready_at, act_ok[b])
        if all_closed:
          if ready_at <= now:
            if best_other is None or best_other[1] != "PRE":
              best_other = (-2, "REF", r)
          else:
            wake = min(wake, ready_at)
      else:
        wake = min(wake, ref_due[r])
    if best_other is None or best_other[1] not in ("REF",):
      for b in nonempty:
        r = b_rank[b]
        if ref_pending[r]:
          continue
        q = bq[b]
        orow = open_row[b]
        hit = -1
        if orow >= 0:
          for j in q:
            if rows[j] == orow:
              hit = j
              break
        if hit >= 0:
          rg = b_rg[b]
          tr = max(rd_ok[b], rd_last_rg[rg] + gl, rd_last_rank[r] + gs,
                   rd_last_any + (gs if rd_last_any_rank == r else grank))
          if tr <= now:
            if best_rd is None or hit < best_rd[0]:
              best_rd = (hit, b)
          else:
            wake = min(wake, tr)
        else:
          age = q[0]
          if orow >= 0:
            tr = pre_ok[b]
            kind = "PRE"
          else:
            rg = b_rg[b]
            # tRRD_L within a bank group, tRRD_S and the rolling tFAW window
            # per rank (JESD79-4; DRAMsim3 channel_state.cc four_aw_[rank]);
            # HBM presets have one rank per pseudo-channel with the SIDs as
            # bank groups (JESD238; Ramulator 2 HBM3.cpp pseudochannel level).
            tr = max(act_ok[b], act_last_rg[rg] + trrdl, act_last_rank[r] + trrds,
                     faw[r][0] + tfaw)
            kind = "ACT"
          if tr <= now:
            if best_other is None or (best_other[0] >= 0 and age < best_other[0]):
              best_other = (age, kind, b)
          else:
            wake = min(wake, tr)
    if now < min(row_free, col_free):
      now = min(row_free, col_free)
      continue
    row_ok, col_ok = row_free <= now, col_free <= now
    if best_other is not None and best_other[0] < 0 and row_ok:
      _, kind, x = best_other
      if kind == "REF":
        r = x
        lo = r * nbg * nba
        for b in range(lo, lo + nbg * nba):
          act_ok[b] = now + trfc
        ref_pending[r] = False
        ref_due[r] += trefi
        refs += 1
      else:
        open_row[x] = -1
        act_ok[x] = now + trp
      row_free = now + 1
      col_free = col_free if dual else row_free
      now += 1 if min(row_free, col_free) > now else 0
      continue
    if best_rd is not None and col_ok:
      j, b = best_rd
      r = b_rank[b]
      rg = b_rg[b]
      rd_last_rg[rg] = now
      rd_last_rank[r] = now
      rd_last_any, rd_last_any_rank = now, r
      pre_ok[b] = max(pre_ok[b], now + trtp)
      if fresh[b]:
        misses += 1
        fresh[b] = False
      last_data = max(last_data, now + cl + tb)
      bq[b].remove(j)
      done += 1
      # refill this bank's queue from the transaction queue (first fit)
      for i, k in enumerate(tq):
        if bank_of[k] == b:
          bq[b].append(tq.pop(i))
          break
      if not bq[b]:
        nonempty.discard(b)
      admit()
      col_free = now + 1
      row_free = row_free if dual else col_free
      now += 1 if min(row_free, col_free) > now else 0
      continue
    if best_other is not None and row_ok:
      _, kind, b = best_other
      if kind == "PRE":
        open_row[b] = -1
        act_ok[b] = max(act_ok[b], now + trp)
      else:
        r = b_rank[b]
        rg = b_rg[b]
        open_row[b] = rows[bq[b][0]]
        fresh[b] = True
        rd_ok[b] = now + trcd
        pre_ok[b] = now + tras
        act_last_rg[rg] = now
        act_last_rank[r] = now
        faw[r].append(now)
        acts += 1
      row_free = now + 1
      col_free = col_free if dual else row_free
      now += 1 if min(row_free, col_free) > now else 0
      continue
    if best_rd is not None:  # ready, but the column bus is taken this clock
      wake = min(wake, col_free)
    if best_other is not None:  # ready, but the row bus is taken this clock
      wake = min(wake, row_free)
    if wake == float("inf"):
      raise RuntimeError("dram_cyclesim: deadlock (no command can ever issue)")
    now = max(now + 1, wake) if wake <= now else wake
  return last_data, acts, refs, misses


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

"""One channel of the reference command-level DRAM simulator (plain Python).

:func:`simulate_channel` runs one channel's request stream through the
controller, bank and bus rules that ``ndpsim.hw.dram_cyclesim`` lists (JEDEC
timings, FR-FCFS with open pages, all-bank refresh, one or two command buses);
``dram_cyclesim.simulate`` splits a pattern over the channels and calls it.
One clock is three steps: refresh duties (:func:`_refresh_candidates`), the
scheduler's pick over the bank queues (:func:`_bank_candidates`) and the issue
of at most one command per free bus (:func:`_issue`), which updates the
timing state (:class:`_Channel`).  All times are clock cycles.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from ndpsim.hw.dram_spec import DramParams, DramSpec


@dataclasses.dataclass(frozen=True)
class _Clocks:
  """The command timings :func:`simulate_channel` applies, in clock cycles."""
  cl: float     # RD to first data beat
  trcd: float   # ACT to RD, same bank
  trp: float    # PRE to ACT, same bank
  tras: float   # ACT to PRE, same bank
  tb: float     # data-bus occupancy of one burst
  gs: float     # RD to RD, another bank group of the rank (>= tb)
  gl: float     # RD to RD, same bank group (>= tb)
  grank: float  # RD to RD, another rank (tb + tRTRS)
  trrds: float  # ACT to ACT, another bank group of the rank
  trrdl: float  # ACT to ACT, same bank group
  tfaw: float   # four-activation window, per rank
  trtp: float   # RD to PRE, same bank
  trfc: float   # REF to ACT, every bank of the rank
  trefi: float  # refresh interval, per rank


def _clocks(spec: DramSpec, params: DramParams) -> _Clocks:
  """The part's timings as floats, the RD-to-RD gaps at least one burst."""
  t = {f.name: float(getattr(params, f.name)) for f in dataclasses.fields(params)}
  tb = float(spec.burst_cycles)
  return _Clocks(cl=t["cl_cycles"], trcd=t["t_rcd_cycles"], trp=t["t_rp_cycles"],
                 tras=t["t_ras_cycles"], tb=tb, gs=max(t["t_ccd_s_cycles"], tb),
                 gl=max(t["t_ccd_l_cycles"], tb),
                 grank=tb + t["t_rtrs_cycles"],  # DRAMsim3 timing.cc read_to_read_o
                 trrds=t["t_rrd_s_cycles"], trrdl=t["t_rrd_l_cycles"],
                 tfaw=t["t_faw_cycles"], trtp=t["t_rtp_cycles"], trfc=t["t_rfc_cycles"],
                 trefi=t["t_refi_cycles"])


_NEG = -1e30  # "long ago": no earlier command constrains the next one


class _Channel:
  """Mutable state of one channel (controller queues, banks, ranks, buses).

  Banks are numbered (rank, bank group, bank); per bank: open row (-1 closed),
  earliest legal ACT / RD / PRE, cycles.  ``bank_of`` / ``rows``: each request's
  bank and row, in issue order.
  """

  def __init__(self, spec: DramSpec, bank_of: list, rows: list, tqd: int, bqd: int,
               ref_due: list):
    nbg, nba, nra = spec.bank_groups, spec.banks_per_group, spec.ranks
    nbank = nra * nbg * nba
    self.nra, self.per_rank = nra, nbg * nba
    self.bank_of, self.rows, self.n = bank_of, rows, len(bank_of)
    self.tqd, self.bqd = tqd, bqd
    self.b_rank = [b // (nbg * nba) for b in range(nbank)]
    self.b_rg = [b // nba for b in range(nbank)]  # (rank, bg) index
    self.open_row = [-1] * nbank
    self.act_ok = [0.0] * nbank
    self.rd_ok = [0.0] * nbank
    self.pre_ok = [0.0] * nbank
    self.fresh = [False] * nbank  # row opened and not yet read
    self.bq = [collections.deque() for _ in range(nbank)]
    self.tq: list[int] = []
    self.nonempty: set[int] = set()
    self.rd_last_rg = [_NEG] * (nra * nbg)
    self.rd_last_rank = [_NEG] * nra
    self.rd_last_any, self.rd_last_any_rank = _NEG, -1
    self.act_last_rg = [_NEG] * (nra * nbg)
    self.act_last_rank = [_NEG] * nra
    self.faw = [collections.deque([_NEG] * 4, maxlen=4) for _ in range(nra)]
    self.ref_due = ref_due
    self.ref_pending = [False] * nra
    self.nxt = self.done = 0
    self.now = self.last_data = 0.0
    self.acts = self.refs = self.misses = 0
    # Command buses: HBM has separate row and column command interfaces (JESD235
    # / JESD238; DRAMsim3 controller.cc issues a second command of the other kind
    # in the same cycle when hbm_dual_cmd is on); other parts issue one command
    # per clock.
    self.dual = spec.dual_command_bus
    self.row_free = self.col_free = 0.0

  def admit(self) -> None:
    """Front end: requests enter the transaction queue in order while it has
    room, each straight to its bank's queue when that has room and no older
    request of the bank waits."""
    bank_of, tq, bq = self.bank_of, self.tq, self.bq
    while self.nxt < self.n and len(tq) < self.tqd:
      b = bank_of[self.nxt]
      if len(bq[b]) < self.bqd and not any(bank_of[j] == b for j in tq):
        bq[b].append(self.nxt)
        self.nonempty.add(b)
      else:
        tq.append(self.nxt)
      self.nxt += 1


def _refresh_schedule(spec: DramSpec, trefi: float, refresh: bool) -> list:
  """First refresh due time of each rank, cycles (inf: refresh off)."""
  nra = spec.ranks
  if not refresh:
    return [float("inf")] * nra
  if spec.refresh_mode == "staggered":
    return [(r + 0.5) * trefi / nra for r in range(nra)]
  return [0.5 * trefi] * nra


def _refresh_candidates(ch: _Channel):
  """Refresh duties now: marks due ranks pending; returns (command, wake).

  command: (-1, "PRE", bank) closing a bank of a pending rank, else
  (-2, "REF", rank) once all its banks are closed and may activate, or None;
  wake: the earliest later time a refresh duty changes, cycles."""
  now, best, wake = ch.now, None, float("inf")
  open_row, pre_ok, act_ok = ch.open_row, ch.pre_ok, ch.act_ok
  for r in range(ch.nra):
    if not ch.ref_pending[r] and now >= ch.ref_due[r]:
      ch.ref_pending[r] = True
    if not ch.ref_pending[r]:
      wake = min(wake, ch.ref_due[r])
      continue
    lo = r * ch.per_rank
    all_closed = True
    ready_at = 0.0
    for b in range(lo, lo + ch.per_rank):
      if open_row[b] >= 0:
        all_closed = False
        if pre_ok[b] <= now and best is None:
          best = (-1, "PRE", b)
        wake = min(wake, pre_ok[b])
      ready_at = max(ready_at, act_ok[b])
    if all_closed:
      if ready_at <= now:
        if best is None or best[1] != "PRE":
          best = (-2, "REF", r)
      else:
        wake = min(wake, ready_at)
  return best, wake


def _bank_candidates(ch: _Channel, c: _Clocks, best_other, wake):
  """FR-FCFS over the banks with queued requests (ranks not refreshing).

  Returns (best_rd, best_other, wake): best_rd = (request, bank) of the oldest
  ready row hit or None; best_other = the refresh command given, else
  (age, "PRE" | "ACT", bank) of the oldest ready row command, or None; wake:
  the earliest later time a command becomes legal, cycles."""
  now, best_rd = ch.now, None
  open_row, rows, b_rank, b_rg, bq = ch.open_row, ch.rows, ch.b_rank, ch.b_rg, ch.bq
  rd_ok, rd_last_rg, rd_last_rank = ch.rd_ok, ch.rd_last_rg, ch.rd_last_rank
  rd_any, rd_any_rank, ref_pending = ch.rd_last_any, ch.rd_last_any_rank, ch.ref_pending
  pre_ok, act_ok = ch.pre_ok, ch.act_ok
  act_last_rg, act_last_rank = ch.act_last_rg, ch.act_last_rank
  gl, gs, grank, trrdl, trrds, tfaw = c.gl, c.gs, c.grank, c.trrdl, c.trrds, c.tfaw
  for b in ch.nonempty:
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
      tr = max(rd_ok[b], rd_last_rg[b_rg[b]] + gl, rd_last_rank[r] + gs,
               rd_any + (gs if rd_any_rank == r else grank))
      if tr <= now:
        if best_rd is None or hit < best_rd[0]:
          best_rd = (hit, b)
      else:
        wake = min(wake, tr)
      continue
    age = q[0]
    if orow >= 0:
      tr, kind = pre_ok[b], "PRE"
    else:
      # tRRD_L within a bank group, tRRD_S and the rolling tFAW window per
      # rank (JESD79-4; DRAMsim3 channel_state.cc four_aw_[rank]); HBM presets
      # have one rank per pseudo-channel with the SIDs as bank groups
      # (JESD238; Ramulator 2 HBM3.cpp pseudochannel level).
      tr = max(act_ok[b], act_last_rg[b_rg[b]] + trrdl, act_last_rank[r] + trrds,
               ch.faw[r][0] + tfaw)
      kind = "ACT"
    if tr <= now:
      if best_other is None or (best_other[0] >= 0 and age < best_other[0]):
        best_other = (age, kind, b)
    else:
      wake = min(wake, tr)
  return best_rd, best_other, wake


def _issue_refresh_command(ch: _Channel, c: _Clocks, kind: str, x: int) -> None:
  """REF of rank x (every bank blocked for tRFC) or a refresh's PRE of bank x."""
  now = ch.now
  if kind == "REF":
    lo = x * ch.per_rank
    for b in range(lo, lo + ch.per_rank):
      ch.act_ok[b] = now + c.trfc
    ch.ref_pending[x] = False
    ch.ref_due[x] += c.trefi
    ch.refs += 1
  else:
    ch.open_row[x] = -1
    ch.act_ok[x] = now + c.trp


def _issue_read(ch: _Channel, c: _Clocks, j: int, b: int) -> None:
  """RD of request j from bank b; its bank queue refills from the
  transaction queue (first fit) and the front end admits more."""
  now = ch.now
  r = ch.b_rank[b]
  ch.rd_last_rg[ch.b_rg[b]] = now
  ch.rd_last_rank[r] = now
  ch.rd_last_any, ch.rd_last_any_rank = now, r
  ch.pre_ok[b] = max(ch.pre_ok[b], now + c.trtp)
  if ch.fresh[b]:
    ch.misses += 1
    ch.fresh[b] = False
  ch.last_data = max(ch.last_data, now + c.cl + c.tb)
  ch.bq[b].remove(j)
  ch.done += 1
  for i, k in enumerate(ch.tq):
    if ch.bank_of[k] == b:
      ch.bq[b].append(ch.tq.pop(i))
      break
  if not ch.bq[b]:
    ch.nonempty.discard(b)
  ch.admit()


def _issue_row_command(ch: _Channel, c: _Clocks, kind: str, b: int) -> None:
  """PRE of bank b (a row miss closing its row) or ACT of its oldest request's row."""
  now = ch.now
  if kind == "PRE":
    ch.open_row[b] = -1
    ch.act_ok[b] = max(ch.act_ok[b], now + c.trp)
    return
  r = ch.b_rank[b]
  ch.open_row[b] = ch.rows[ch.bq[b][0]]
  ch.fresh[b] = True
  ch.rd_ok[b] = now + c.trcd
  ch.pre_ok[b] = now + c.tras
  ch.act_last_rg[ch.b_rg[b]] = now
  ch.act_last_rank[r] = now
  ch.faw[r].append(now)
  ch.acts += 1


def _issue(ch: _Channel, c: _Clocks, best_rd, best_other) -> bool:
  """Issues this clock's command if its bus is free (refresh first, then the
  ready row hit, then the oldest row command); True if one issued.  The
  command holds its bus (both buses unless ``dual``) for one clock."""
  now = ch.now
  row_ok, col_ok = ch.row_free <= now, ch.col_free <= now
  if best_other is not None and best_other[0] < 0 and row_ok:
    _issue_refresh_command(ch, c, best_other[1], best_other[2])
  elif best_rd is not None and col_ok:
    _issue_read(ch, c, best_rd[0], best_rd[1])
    ch.col_free = now + 1
    ch.row_free = ch.row_free if ch.dual else ch.col_free
    ch.now += 1 if min(ch.row_free, ch.col_free) > now else 0
    return True
  elif best_other is not None and row_ok:
    _issue_row_command(ch, c, best_other[1], best_other[2])
  else:
    return False
  ch.row_free = now + 1
  ch.col_free = ch.col_free if ch.dual else ch.row_free
  ch.now += 1 if min(ch.row_free, ch.col_free) > now else 0
  return True


def simulate_channel(spec: DramSpec, params: DramParams, rank: np.ndarray,
                     bg: np.ndarray, ba: np.ndarray, row: np.ndarray,
                     transaction_queue_depth: int | None = None,
                     bank_queue_depth: int | None = None,
                     refresh: bool = True) -> tuple[float, int, int, int]:
  """Simulates one channel's request stream (arrays in issue order).

  Each clock: refresh duties (:func:`_refresh_candidates`), then FR-FCFS over
  the bank queues (:func:`_bank_candidates`), then one command per free bus
  (:func:`_issue`); with none, time jumps to the next instant one may become
  legal.  Returns (cycles until the last data beat, activations, refreshes,
  row misses = reads that were the first read after their row's ACT).
  """
  c = _clocks(spec, params)
  tqd = spec.transaction_queue_depth if transaction_queue_depth is None else transaction_queue_depth
  bqd = spec.bank_queue_depth if bank_queue_depth is None else bank_queue_depth
  nbg, nba = spec.bank_groups, spec.banks_per_group
  bank_of = ((rank * nbg + bg) * nba + ba).astype(np.int64).tolist()
  ch = _Channel(spec, bank_of, row.astype(np.int64).tolist(), tqd, bqd,
                _refresh_schedule(spec, c.trefi, refresh))
  ch.admit()
  while ch.done < ch.n:
    best_other, wake = _refresh_candidates(ch)
    best_rd = None
    if best_other is None or best_other[1] != "REF":
      best_rd, best_other, wake = _bank_candidates(ch, c, best_other, wake)
    if ch.now < min(ch.row_free, ch.col_free):
      ch.now = min(ch.row_free, ch.col_free)
      continue
    if _issue(ch, c, best_rd, best_other):
      continue
    if best_rd is not None:  # ready, but the column bus is taken this clock
      wake = min(wake, ch.col_free)
    if best_other is not None:  # ready, but the row bus is taken this clock
      wake = min(wake, ch.row_free)
    if wake == float("inf"):
      raise RuntimeError("dram_cyclesim: deadlock (no command can ever issue)")
    ch.now = max(ch.now + 1, wake) if wake <= ch.now else wake
  return ch.last_data, ch.acts, ch.refs, ch.misses

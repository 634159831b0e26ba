"""Cycle-approximate DRAM model: closed forms over JEDEC timings.

What is modelled (reads only), per channel, in clock cycles of tCK:

* organisation and address mapping as data (``DramSpec``): channels, ranks,
  bank groups, banks, rows, row size, bus width, burst length, beats per
  clock, the mapping string, refresh mode and controller queue depths;
  timings as traced floats (``DramParams``), so every result is jit-, vmap-
  and grad-able w.r.t. them;
* column-to-column gaps: tCCD_S / tCCD_L and the burst (tBurst = BL / beats
  per clock) depending on whether consecutive reads of the pattern stay in one
  bank group under the mapping, and the rank-to-rank turnaround tRTRS;
* row opens and closes: tRCD, tRTP, tRAS, tRP per bank, and how they overlap
  across banks (a bank's row cycle runs while other banks use the bus);
* the activation window: tRRD_S / tRRD_L and tFAW (four ACTs per window per
  rank; on HBM per pseudo-channel, its stack IDs folded into bank groups),
  which binds when few banks or many row misses share a rank;
* the command bus: PRE + ACT + RD slots per read, one per clock, or on HBM's
  separate row and column command buses the busier of the two;
* refresh: tRFC every tREFI per rank, all ranks at once (``all_rank``) or in
  turn (``staggered``, where other ranks' queued reads hide part of it), plus
  closing and re-opening the rows around it;
* read latency: tRCD + CL + tBurst for the first access;
* the host controller's lookahead (transaction queue + per-bank queues): how
  far ahead it can open the next bank group's row and interleave it with the
  current one (``stream``), hide one rank's refresh behind another, and find
  row hits among random requests;
* the internal streaming rate seen by NDP logic at bank, bank-group, rank or
  buffer-chip level.

Patterns (defined exactly in ``dram_cyclesim.pattern_coordinates``):
``stream``, ``banks``, ``onebank``, ``strided``, ``random``.

Not modelled: writes and read/write turnarounds (tWR, tWTR), per-bank or
same-bank refresh, refresh postponing, power-down and self-refresh, ECC,
command/address parity and CRC, on-die termination, temperature-dependent
refresh rates, bank-conflict queueing beyond expectations (random is an
expected-value model), DRAM power limits beyond tFAW, cross-channel
head-of-line blocking in the front end, HBM3's two-clock ACT on the row bus
shared by a channel's two pseudo-channels (Ramulator 2 HBM3.cpp; it never
binds behind tFAW / 4 = 6 clocks per pseudo-channel), and any read-to-read
gap between HBM stack IDs beyond tCCD_S (none in Ramulator 2's HBM3 model).

Validated against ``ndpsim.hw.dram_cyclesim`` (an independent command-level
simulator) by ``tests/test_dram_fidelity.py`` and
``benchmarks/dram_fidelity.py``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ndpsim import config
from ndpsim.base import ConfigError
from ndpsim.hw import dram_structure as _st
from ndpsim.hw.dram_spec import (DramParams, DramSpec, FIELDS, REFRESH_MODES,  # noqa: F401
                                 build, check_params, check_spec)

PATTERNS = ("stream", "banks", "onebank", "strided", "random")
LEVELS = ("bank", "bank_group", "rank", "buffer", "pins")

config.register_kind("dram", DramSpec, DramParams, build)


class DramReadResult(NamedTuple):
  """Outcome of a read pattern (scalars or arrays, float).

  cycles: clock cycles until the last data beat; time_ns; bandwidth_gbps:
  useful bytes / time (1e9 B/s); row_hit_rate: fraction of reads that found
  their row open; activations: ACT commands (whole part).
  """
  cycles: Any
  time_ns: Any
  bandwidth_gbps: Any
  row_hit_rate: Any
  activations: Any


# ---------------------------------------------------------------------------
# Basic figures.

def capacity_bytes(spec: DramSpec) -> int:
  """Bytes of the whole part as configured (Python int)."""
  return spec.total_banks * spec.rows_per_bank * spec.row_bytes


def peak_bandwidth_gbps(spec: DramSpec, params: DramParams):
  """Pin bandwidth of all channels: bytes per clock / tCK (1e9 B/s)."""
  return spec.bytes_per_cycle / params.tck_ns


def _gaps(spec: DramSpec, p: DramParams):
  # RD to RD: another bank group of the rank max(tCCD_S, tBurst), the same
  # group max(tCCD_L, tBurst), another rank tBurst + tRTRS (no tCCD between
  # ranks): DRAMsim3 src/timing.cc read_to_read_s / _l / _o; JESD79-4 tCCD_S/L.
  tb = spec.burst_cycles
  gs = jnp.maximum(p.t_ccd_s_cycles, tb)
  gl = jnp.maximum(p.t_ccd_l_cycles, tb)
  gr = tb + p.t_rtrs_cycles
  return tb, gs, gl, gr


def unloaded_read_latency_ns(spec: DramSpec, params: DramParams):
  """An isolated read to a closed bank: ACT, tRCD, RD, CL, burst (ns)."""
  tb = spec.burst_cycles
  return (params.t_rcd_cycles + params.cl_cycles + tb) * params.tck_ns


def refresh_ceiling(spec: DramSpec, params: DramParams):
  """Fraction of time a rank is not refreshing: 1 - tRFC / tREFI."""
  return 1.0 - params.t_rfc_cycles / params.t_refi_cycles


def _act_spacing(p: DramParams, same_group: bool):
  """Clocks between ACTs of one rank: max(tFAW / 4, tRRD).  The window is per
  rank (JESD79-4 / -5; DRAMsim3 channel_state.cc four_aw_[rank]) and, on HBM,
  per pseudo-channel across its stack IDs (JESD238; Ramulator 2 HBM3.cpp
  nRRDS / nFAW at the pseudochannel level), which the HBM presets express by
  folding the SIDs into bank groups (one rank per pseudo-channel)."""
  rrd = p.t_rrd_l_cycles if same_group else p.t_rrd_s_cycles
  return jnp.maximum(p.t_faw_cycles / 4.0, rrd)


def _refresh_stretch(spec: DramSpec, p: DramParams, rot: _st.Rotation, gs):
  """Multiplier 1 / (1 - lost fraction) for refresh on a pattern's rotation.

  Each refresh of a rank the pattern is using costs tRFC, closing its rows
  (tRTP + tRP) and re-opening its banks (tRCD + an ACT wave at the tFAW/tRRD
  rate).  With staggered refresh and a rotation over several ranks, each
  rank's refresh is a separate event, partly hidden by the queued reads of
  the other ranks.
  """
  per_rank = rot.banks // rot.ranks
  _, gs_, _, _ = _gaps(spec, p)
  # Re-opening the rank's banks: the ACTs come every tFAW/4 (or tRRD), and
  # each opened bank supplies its queued reads, so only the part of the ACT
  # gap that those reads cannot cover stalls the bus.
  queued = min(spec.bank_queue_depth, rot.reads_per_visit)
  wave = (per_rank - 1) * jnp.maximum(0.0, _act_spacing(p, rot.act_same_group)
                                      - queued * gs_)
  loss = p.t_rfc_cycles + p.t_rtp_cycles + p.t_rp_cycles + p.t_rcd_cycles + wave
  if spec.refresh_mode == "staggered" and rot.ranks > 1:
    hidden = rot.window * (rot.ranks - 1) / rot.ranks * gs
    loss = rot.ranks * jnp.maximum(loss - hidden, wave)
  return 1.0 / (1.0 - loss / p.t_refi_cycles)


# ---------------------------------------------------------------------------
# Pattern closed forms (per channel, cycles).

def _rotation_time(rot: _st.Rotation, gs, gl, gr, rank_batch: float):
  """Cycles for one rotation (banks x reads_per_turn reads) on the bus."""
  gr_eff = gs + (gr - gs) * rank_batch
  gaps = rot.steps_rank * gr_eff + rot.steps_group * gs + rot.steps_same * gl
  per_group = rot.banks * rot.reads_per_turn / rot.rank_groups * gl
  return jnp.maximum(gaps, per_group)


def _visit_time(spec: DramSpec, p: DramParams, rot: _st.Rotation, next_gap):
  """Cycles per row visit (reads_per_visit reads in each of the P banks)."""
  tb, gs, gl, gr = _gaps(spec, p)
  reads = rot.reads_per_visit * rot.banks
  rank_batch = min(1.0, rot.banks * rot.reads_per_turn / rot.window)
  t_rot = _rotation_time(rot, gs, gl, gr, rank_batch)
  t_col = rot.reads_per_visit / rot.reads_per_turn * t_rot
  act = rot.banks / rot.ranks * _act_spacing(p, rot.act_same_group)
  if rot.same_banks:
    t_bank = jnp.maximum(p.t_ras_cycles, p.t_rcd_cycles + (rot.reads_per_visit - 1) * gl
                         + p.t_rtp_cycles) + p.t_rp_cycles
    return jnp.maximum(jnp.maximum(t_col, t_bank), act)
  # The next visits open other banks.  A visit is visible to the controller
  # once the reads ahead of it fit in its window; from then on its PRE/ACT run
  # under the current reads and its reads fill the column gaps of the visits
  # ahead (only visits in distinct (rank, bank group) pairs add column
  # bandwidth).  Steady state: visits start every u solo-read times, and the
  # window holds the remaining reads of the visits still running:
  #   W' = sum_{j>=1} max(0, R - j u)  ->  u = max_J (J R - W') / (J (J + 1) / 2).
  r = t_rot / (rot.banks * rot.reads_per_turn)  # cycles per read, alone
  d = p.t_rp_cycles + p.t_rcd_cycles + 2.0
  w_eff = jnp.maximum(rot.window - d / r, 0.0)
  js = jnp.arange(1, 65, dtype=jnp.result_type(float))
  u = jnp.max((js * reads - w_eff) / (js * (js + 1) / 2.0))
  u = jnp.clip(u, reads / next_gap[1], reads)
  exposed = jnp.maximum(0.0, d - rot.window * r)
  return jnp.maximum(jnp.maximum(reads * next_gap[0], u * r), act) + exposed


def _stream_next_gap(spec: DramSpec, p: DramParams):
  """(per-read gap with several visits interleaved, how many consecutive
  stream visits fall in distinct (rank, bank group) pairs)."""
  _, gs, _, _ = _gaps(spec, p)
  f = _st.channel_fields(spec)
  sizes = spec.field_sizes()
  above = [x for x in f[f.index("co") + 1:] if x == "ro" or sizes[x] > 1]
  distinct = 1
  for x in above:
    if x not in ("ra", "bg"):
      break
    distinct *= sizes[x]
  return gs, float(distinct)


def _phase_cycles(spec, p, pattern, n_ch, m):
  """Per-channel cycles, misses per read, activations for row-visit patterns."""
  rot = _st.pattern_rotation(spec, pattern, m)
  next_gap = _stream_next_gap(spec, p) if pattern == "stream" else None
  t_visit = _visit_time(spec, p, rot, next_gap)
  visits = n_ch / (rot.reads_per_visit * rot.banks)
  tb, gs, _, _ = _gaps(spec, p)
  busy = visits * t_visit
  stretch = _refresh_stretch(spec, p, rot, gs)
  first = p.t_rcd_cycles + p.cl_cycles + tb
  cycles = busy * stretch + first
  acts = jnp.ceil(visits) * rot.banks
  return cycles, acts, rot


def _miss_cycles(spec, p, pattern, n_ch, m, n_total):
  """Per-channel cycles and ACTs for strided / random (mostly row misses).

  Per read, the slowest of: the data bus (column gaps, rank switches), the
  ACT window of the ranks, the row cycle of the banks in use and the command
  bus (PRE + ACT + RD, one command per clock); each ACT serves the reads the
  controller finds queued for its row (window / revisit distance).
  """
  rot = _st.pattern_rotation(spec, pattern, m)
  tb, gs, gl, gr = _gaps(spec, p)
  ncol_req = spec.columns_per_row / m
  if pattern == "strided":
    t_rot = _rotation_time(rot, gs, gl, gr, min(1.0, rot.banks * m / rot.window))
    bus = t_rot / (rot.banks * m)
    span = _st.row_span_transactions(spec)
    per_ch = spec.channels if _st.channel_above_column(spec) else 1
    # A row comes back after `revisit` accesses of this channel, i.e. after
    # revisit / banks accesses of its own bank; the controller sees about
    # bank_queue_depth + transaction_queue_depth / banks of them per bank.
    revisit = jnp.maximum(n_total / span / per_ch / rot.banks, 1.0)
    seen = spec.bank_queue_depth + spec.transaction_queue_depth / rot.banks
    per_act = jnp.minimum(ncol_req, 1.0 + jnp.maximum(seen - revisit, 0.0) / revisit)
    banks_busy = rot.banks
    same_group = rot.act_same_group
  else:
    pairs = jnp.maximum(n_total * spec.transaction_bytes / spec.row_bytes, 1.0)
    rows = jnp.maximum(pairs / jnp.minimum(float(spec.total_banks), pairs), 1.0)
    q = 1.0 / rows
    k = spec.bank_queue_depth
    per_act = jnp.where(q < 1.0, (1.0 + (k - 1) * q) / jnp.maximum(1.0 - q, 1e-9), ncol_req)
    per_act = jnp.minimum(per_act, ncol_req)
    nr = spec.ranks
    nb = spec.banks_per_channel
    w = spec.transaction_queue_depth + spec.bank_queue_depth * nb
    bus = gs + (gr - gs) * (nr - 1) / nr * min(1.0, nb / w)
    banks_busy = nb * (1.0 - (1.0 - 1.0 / nb) ** min(w, 4 * nb))
    same_group = spec.bank_groups == 1
  mu = 1.0 / (m * per_act)  # ACTs per read
  reads_per_act = m * per_act
  act = mu * _act_spacing(p, same_group) / rot.ranks
  t_bank = jnp.maximum(p.t_ras_cycles, p.t_rcd_cycles + (reads_per_act - 1) * gl
                       + p.t_rtp_cycles) + p.t_rp_cycles
  bank = mu * t_bank / banks_busy
  # Command slots per read: RD + PRE + ACT per ACT, one per clock; HBM's row
  # and column command buses work in parallel (JESD235 / JESD238; DRAMsim3
  # hbm_dual_cmd), so there the busier of the two binds.
  cmd = jnp.maximum(1.0, 2.0 * mu) if spec.dual_command_bus else 1.0 + 2.0 * mu
  per_read = jnp.maximum(jnp.maximum(bus, act), jnp.maximum(bank, cmd))
  stretch = _refresh_stretch(spec, p, rot, gs)
  first = p.t_rcd_cycles + p.cl_cycles + tb
  cycles = n_ch * per_read * stretch + first
  return cycles, n_ch * mu, rot


def read(spec: DramSpec, params: DramParams, pattern: str, region_bytes,
         request_bytes: int | None = None) -> DramReadResult:
  """Reads ``region_bytes`` with a pattern in requests of ``request_bytes``.

  pattern: one of PATTERNS (static).  region_bytes: bytes read (number or
  traced scalar; a multiple of request_bytes).  request_bytes: static,
  a multiple of the transaction size (default one transaction).
  Returns a DramReadResult; differentiable w.r.t. params.
  """
  if pattern not in PATTERNS:
    raise ConfigError(f"dram read: unknown pattern {pattern!r}; write one of "
                      f"{list(PATTERNS)}")
  txn = spec.transaction_bytes
  req = txn if request_bytes is None else int(request_bytes)
  if req <= 0 or req % txn:
    raise ConfigError(f"dram read: request_bytes is {req}; write a positive multiple "
                      f"of the transaction size {txn}")
  m = req // txn
  if pattern in ("strided", "banks") and spec.columns_per_row % m:
    raise ConfigError(f"dram read: request_bytes {req} does not divide a row of "
                      f"{spec.row_bytes} bytes; write a smaller request")
  n = jnp.asarray(region_bytes, dtype=jnp.result_type(float)) / txn
  chans = 1 if pattern == "onebank" else spec.channels
  n_ch = n / chans
  if pattern in ("stream", "banks", "onebank"):
    cycles, acts_ch, _ = _phase_cycles(spec, params, pattern, n_ch, m)
  else:
    cycles, acts_ch, _ = _miss_cycles(spec, params, pattern, n_ch, m, n)
  acts = acts_ch * chans
  time_ns = cycles * params.tck_ns
  return DramReadResult(cycles=cycles, time_ns=time_ns,
                        bandwidth_gbps=n * txn / time_ns,
                        row_hit_rate=jnp.where(  # 0 bytes: no reads, rate 1 (double
                            n > 0,                # where: no 0/0 in value or gradient)
                            jnp.clip(1.0 - acts / jnp.where(n > 0, n, 1.0), 0.0, 1.0), 1.0),
                        activations=acts)


# ---------------------------------------------------------------------------
# NDP internal streaming.

def _bank_rate(spec: DramSpec, p: DramParams):
  """Bytes per cycle one bank streams its rows at (own column path, tCCD_L)."""
  _, _, gl, _ = _gaps(spec, p)
  ncol = spec.columns_per_row
  row = jnp.maximum(p.t_ras_cycles, p.t_rcd_cycles + (ncol - 1) * gl + p.t_rtp_cycles) \
      + p.t_rp_cycles
  return spec.row_bytes / row


def _act_rate_per_rank(spec: DramSpec, p: DramParams):
  """Row bytes per cycle the ACT window lets one rank open."""
  same = spec.bank_groups == 1
  return spec.row_bytes / _act_spacing(p, same)


def internal_stream_bandwidth_gbps(spec: DramSpec, params: DramParams, level: str):
  """Sustained rate NDP logic at ``level`` streams contiguous weights (1e9 B/s).

  level: "bank" (logic per bank, each bank at one column per tCCD_L),
  "bank_group" (per bank group, one column per tCCD_L shared by its banks),
  "rank" (per rank, the rank's own data path at the pin rate), "buffer" (a
  buffer chip per channel reading all its ranks in parallel: ranks x the
  rank rate), or "pins" (the host-visible rate: one rank at a time on the
  channel bus, the ``banks`` pattern).  Every level is capped by the per-bank
  row cycle and by the ACT window (tRRD / tFAW per rank), and reduced by
  refresh.
  """
  if level not in LEVELS:
    raise ConfigError(f"dram internal stream: unknown level {level!r}; write one of "
                      f"{list(LEVELS)}")
  p = params
  tb, gs, gl, _ = _gaps(spec, p)
  txn = spec.transaction_bytes
  bank = _bank_rate(spec, p)
  act_cap = _act_rate_per_rank(spec, p)
  per_bg_banks = spec.banks_per_group * bank
  if level == "bank":
    rank = spec.banks_per_rank * bank
  elif level == "bank_group":
    rank = spec.bank_groups * jnp.minimum(txn / gl, per_bg_banks)
  else:
    rank = jnp.minimum(jnp.minimum(txn / gs, spec.bank_groups * txn / gl),
                       spec.banks_per_rank * bank)
  rank = jnp.minimum(rank, act_cap) * refresh_ceiling(spec, p)
  if level == "pins":
    per_channel = jnp.minimum(rank * spec.ranks, txn / gs * refresh_ceiling(spec, p))
  else:
    per_channel = rank * spec.ranks
  return spec.channels * per_channel / p.tck_ns


def ndp_stream_time_ns(spec: DramSpec, params: DramParams, num_bytes, level: str):
  """Time (ns) for NDP logic at ``level`` to stream ``num_bytes`` (traced, any
  shape): first-access latency + bytes / internal_stream_bandwidth_gbps; 0
  bytes take 0 ns.  Differentiable."""
  bw = internal_stream_bandwidth_gbps(spec, params, level)
  nb = jnp.asarray(num_bytes, dtype=jnp.result_type(float))
  lat = unloaded_read_latency_ns(spec, params)
  return jnp.where(nb > 0, lat + nb / bw, 0.0)

"""The reference command-level simulator obeys the JEDEC rules it models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ndpsim import config
from ndpsim.base import ConfigError
from ndpsim.hw import dram_cyclesim as cs


def load(name="DDR4_8Gb_x8_3200", **params):
  pre = config.load("dram", name)
  return pre.spec, dataclasses.replace(pre.params, **params)


@pytest.mark.timing
def test_decode_is_a_bijection_and_follows_the_mapping():
  spec, _ = load()
  n = spec.columns_per_row * spec.total_banks * 4
  co = cs.decode(spec, np.arange(n))
  keys = set(zip(*(co[f].tolist() for f in ("ro", "ch", "ra", "bg", "ba", "co"))))
  assert len(keys) == n
  # rochrababgco: column lowest, then bank group
  assert co["co"][:3].tolist() == [0, 1, 2]
  assert co["bg"][spec.columns_per_row] == 1 and co["ba"][spec.columns_per_row] == 0


@pytest.mark.parametrize("pattern", cs.PATTERNS)
@pytest.mark.timing
def test_patterns_read_every_block_once(pattern):
  spec, _ = load("HBM2_8Gb_x128")
  region = 1 << 18
  co = cs.pattern_coordinates(spec, pattern, region, 128)
  assert len(co["ro"]) == region // spec.transaction_bytes
  if pattern not in ("banks", "onebank"):  # those two relocate blocks by design
    keys = set(zip(*(co[f].tolist() for f in ("ro", "ch", "ra", "bg", "ba", "co"))))
    assert len(keys) == len(co["ro"])


@pytest.mark.timing
def test_onebank_row_cycle_without_refresh():
  spec, params = load()
  rows = 32
  sim = cs.simulate(spec, params, "onebank", rows * spec.row_bytes, refresh=False)
  cpr = max(52, 22 + 127 * 8 + 12) + 22 + 1  # +1: the ACT's command slot after PRE
  # last row: no PRE; data of the last RD arrives CL + tBurst later
  want = rows * cpr - (12 + 22 + 1) + 22 + 4
  assert sim.cycles == pytest.approx(want, abs=rows * 2)
  assert sim.activations == rows and sim.refreshes == 0


@pytest.mark.timing
def test_banks_is_bus_bound_and_tccd_l_binds_in_one_group():
  spec, params = load("DDR5_16Gb_x8_4800")
  n = 8192
  sim = cs.simulate(spec, params, "banks", n * 64, channels=(0,), refresh=False)
  assert sim.cycles == pytest.approx(n / 2 * 8, rel=0.02)  # tBurst = 8 per read
  one = dataclasses.replace(spec, bank_groups=1, banks_per_group=32)
  sim1 = cs.simulate(one, params, "banks", n * 64, channels=(0,), refresh=False)
  assert sim1.cycles == pytest.approx(n / 2 * 12, rel=0.02)  # tCCD_L = 12


@pytest.mark.timing
def test_tfaw_binds_row_misses_on_few_banks():
  spec, params = load(t_faw_cycles=200.0)
  few = dataclasses.replace(spec, ranks=1, bank_groups=2, banks_per_group=2)
  n = 16384  # 128 row spans: a row returns after 32 accesses of its bank
  sim = cs.simulate(few, params, "strided", n * 64, refresh=False)
  assert sim.cycles == pytest.approx(n * 50, rel=0.03)
  assert sim.row_hit_rate == pytest.approx(0.0, abs=0.01)


def _all_miss(spec, n):
  """n reads round-robin over a channel's banks, each to a new row."""
  i = np.arange(n)
  b = i % spec.banks_per_channel
  nba, nbg = spec.banks_per_group, spec.bank_groups
  return dict(rank=b // (nbg * nba), bg=(b // nba) % nbg, ba=b % nba,
              row=i // spec.banks_per_channel)


@pytest.mark.timing
def test_hbm3_stack_ids_share_the_activation_window():
  """JESD238 / Ramulator 2 HBM3.cpp: tRRD_S and tFAW per pseudo-channel, the
  SIDs folded into bank groups: all-miss reads open one row per tFAW / 4 = 6
  clocks.  Reading the SIDs as ranks (own windows) would give 3."""
  spec, params = load("HBM3_8Gb_6400")
  n = 4096
  cyc, acts, _, _ = cs.simulate_channel(spec, params, refresh=False, **_all_miss(spec, n))
  assert acts == n and cyc == pytest.approx(6 * n, rel=0.01)
  ranks = dataclasses.replace(spec, ranks=2, bank_groups=4)
  cyc2, _, _, _ = cs.simulate_channel(ranks, dataclasses.replace(params, t_rtrs_cycles=1.0),
                                      refresh=False, **_all_miss(ranks, n))
  assert cyc2 == pytest.approx(3 * n, rel=0.02)


@pytest.mark.timing
def test_hbm_row_and_column_commands_issue_together():
  """HBM row and column command buses (JESD235; DRAMsim3 hbm_dual_cmd): with
  fast timings all-miss reads take PRE + ACT + RD = 3 clocks on one command
  bus and 2 (the BL4 burst) on two."""
  spec, params = load("HBM2_8Gb_x128", t_faw_cycles=4.0, t_rrd_s_cycles=1.0,
                      t_rrd_l_cycles=1.0, t_ras_cycles=14.0, t_rp_cycles=6.0,
                      t_rcd_cycles=6.0, t_rtp_cycles=2.0)
  n = 4096
  for dual, per_read in ((True, 2.0), (False, 3.0)):
    s = dataclasses.replace(spec, dual_command_bus=dual)
    cyc, _, _, _ = cs.simulate_channel(s, params, refresh=False, **_all_miss(s, n))
    assert cyc == pytest.approx(per_read * n, rel=0.01), dual


@pytest.mark.timing
def test_refresh_count_and_cost():
  spec, params = load()
  on = cs.simulate(spec, params, "onebank", 256 * spec.row_bytes)
  off = cs.simulate(spec, params, "onebank", 256 * spec.row_bytes, refresh=False)
  assert on.refreshes == pytest.approx(2 * on.cycles / 12480, abs=2)  # both ranks
  lost = on.cycles - off.cycles
  assert lost == pytest.approx(on.cycles / 12480 * (560 + 22 + 22 + 12), rel=0.1)


@pytest.mark.timing
def test_deeper_queue_helps_stream_not_onebank():
  spec, params = load()
  res = {}
  for q in (4, 64):
    s = dataclasses.replace(spec, transaction_queue_depth=q)
    res[q] = (cs.simulate(s, params, "stream", 1 << 19, refresh=False).cycles,
              cs.simulate(s, params, "onebank", 1 << 19, refresh=False).cycles)
  assert res[64][0] < 0.85 * res[4][0]
  assert res[64][1] == res[4][1]


@pytest.mark.inputs
def test_bad_sizes():
  spec, _ = load()
  with pytest.raises(ConfigError, match="request_bytes"):
    cs.pattern_coordinates(spec, "stream", 1 << 20, 96)
  with pytest.raises(ConfigError, match="region_bytes"):
    cs.pattern_coordinates(spec, "stream", 1000, 64)
  with pytest.raises(ConfigError, match="pattern"):
    cs.pattern_coordinates(spec, "zigzag", 1 << 20)

"""DRAM model: analytic figures, timing constraints, gradients, vmap, validation."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, config
from ndpsim.base import ConfigError
from ndpsim.hw import dram

PRESETS = config.available("dram")
TABLE_PEAK_GBPS = {  # reference/hardware.md, last-but-one column (LPDDR5X: 8533 x 2 B x 4)
    "DDR4_8Gb_x8_3200": 25.4, "DDR4_8Gb_x16_3200": 25.4, "LPDDR4_8Gb_x16_2400": 19.3,
    "HBM2_8Gb_x128": 256.0, "DDR5_16Gb_x8_4800": 38.5, "LPDDR5_8Gb_x16_6400": 51.2,
    "HBM3_8Gb_6400": 819.2, "GDDR6_8Gb_x16_14000": 56.1, "LPDDR5X_16Gb_x16_8533": 68.3,
}


def load(name="DDR4_8Gb_x8_3200"):
  p = config.load("dram", name)
  return p.spec, p.params


def with_params(params, **kw):
  return dataclasses.replace(params, **kw)


# --------------------------------------------------------------------------- analytic

@pytest.mark.inputs
def test_all_required_presets_ship():
  assert set(TABLE_PEAK_GBPS) <= set(PRESETS)


@pytest.mark.parametrize("name", sorted(TABLE_PEAK_GBPS))
@pytest.mark.analytic
def test_peak_matches_table(name):
  spec, params = load(name)
  assert float(dram.peak_bandwidth_gbps(spec, params)) == pytest.approx(
      TABLE_PEAK_GBPS[name], rel=0.01)


@pytest.mark.analytic
def test_unloaded_latency_and_capacity():
  spec, params = load()
  assert float(dram.unloaded_read_latency_ns(spec, params)) == pytest.approx(
      (22 + 22 + 4) * 0.63)
  assert dram.capacity_bytes(spec) == 16 * 2 ** 30  # 2 ranks x 8 devices x 8 Gb
  assert isinstance(dram.capacity_bytes(spec), int)


@pytest.mark.parametrize("name", sorted(TABLE_PEAK_GBPS))
@pytest.mark.analytic
@pytest.mark.timing
def test_onebank_is_the_row_cycle_formula(name):
  """hardware.md: cycles per row = max(tRAS, tRCD + (n_col-1) max(tBurst, tCCD_L)
  + tRTP) + tRP, stretched for refresh; without refresh it is exact."""
  spec, params = load(name)
  p = with_params(params, t_refi_cycles=1e12, t_rfc_cycles=1.0)
  rows = 256
  r = dram.read(spec, p, "onebank", rows * spec.row_bytes)
  g = max(float(params.t_ccd_l_cycles), spec.burst_cycles)
  cpr = max(float(params.t_ras_cycles), float(params.t_rcd_cycles) + (
      spec.columns_per_row - 1) * g + float(params.t_rtp_cycles)) + float(params.t_rp_cycles)
  assert float(r.cycles) == pytest.approx(rows * cpr, rel=2e-3)
  assert float(r.activations) == rows
  assert float(r.row_hit_rate) == pytest.approx(1 - 1 / spec.columns_per_row)


@pytest.mark.analytic
@pytest.mark.timing
def test_refresh_ceiling():
  spec, params = load()
  ceiling = float(dram.refresh_ceiling(spec, params))
  assert ceiling == pytest.approx(1 - 560 / 12480)
  peak = float(dram.peak_bandwidth_gbps(spec, params))
  for pat in dram.PATTERNS:
    bw = float(dram.read(spec, params, pat, 64 << 20).bandwidth_gbps)
    assert 0 < bw <= peak
  # onebank never escapes its rank's refresh: with refresh it is slower by at
  # least tRFC per tREFI, and by at most tRFC + closing/re-opening.
  off = with_params(params, t_refi_cycles=1e12, t_rfc_cycles=1.0)
  t_on = float(dram.read(spec, params, "onebank", 64 << 20).cycles)
  t_off = float(dram.read(spec, off, "onebank", 64 << 20).cycles)
  assert 560 / 12480 <= 1 - t_off / t_on <= (560 + 12 + 22 + 22) / 12480 + 1e-3


@pytest.mark.timing
def test_random_is_slower_than_banks_and_hits_fall_with_region():
  for name in PRESETS:
    spec, params = load(name)
    b = dram.read(spec, params, "banks", 64 << 20)
    r = dram.read(spec, params, "random", 64 << 20)
    assert float(r.bandwidth_gbps) <= float(b.bandwidth_gbps) * 1.001, name
    small = dram.read(spec, params, "random", spec.row_bytes * spec.total_banks)
    big = dram.read(spec, params, "random", 1 << 30)
    assert float(small.row_hit_rate) >= float(big.row_hit_rate), name


# --------------------------------------------------------------------------- timing

@pytest.mark.timing
def test_bank_groups_in_the_mapping_lift_tccd_l():
  spec, params = load()
  low = dataclasses.replace(spec, mapping="rochrabacobg")  # bg below the column
  s_hi = float(dram.read(spec, params, "stream", 16 << 20).bandwidth_gbps)
  s_lo = float(dram.read(low, params, "stream", 16 << 20).bandwidth_gbps)
  assert s_lo > 1.3 * s_hi
  # With one rank of one bank group every read pair is tCCD_L apart: banks
  # at tBurst / tCCD_L = 1/2 of the pins, less refresh (tRFC + tRTP + tRP + tRCD).
  one = dataclasses.replace(spec, ranks=1, bank_groups=1, banks_per_group=16)
  four = dataclasses.replace(spec, ranks=1)
  peak = float(dram.peak_bandwidth_gbps(spec, params))
  b1 = float(dram.read(one, params, "banks", 16 << 20).bandwidth_gbps)
  b4 = float(dram.read(four, params, "banks", 16 << 20).bandwidth_gbps)
  assert b1 == pytest.approx(peak * 4 / 8 * (1 - 616 / 12480), rel=0.01)
  assert b4 > 1.8 * b1


@pytest.mark.timing
def test_few_banks_make_tfaw_bind():
  spec, params = load()
  few = dataclasses.replace(spec, ranks=1, bank_groups=2, banks_per_group=2)
  g = jax.grad(lambda f: dram.read(few, with_params(params, t_faw_cycles=f),
                                   "strided", 8 << 20).cycles)(34.0)
  assert float(g) > 0
  g_many = jax.grad(lambda f: dram.read(spec, with_params(params, t_faw_cycles=f),
                                        "banks", 8 << 20).cycles)(34.0)
  assert float(g_many) == pytest.approx(0.0, abs=1e-6 * float(g))
  # tFAW-bound strided on few banks: one row per tFAW/4 (plus refresh)
  big = with_params(params, t_faw_cycles=200.0)
  n = (8 << 20) // 64
  c = float(dram.read(few, big, "strided", 8 << 20).cycles)
  assert c == pytest.approx(n * 50.0 / (1 - (560 + 12 + 22 + 22 + 3 * 50) / 12480), rel=0.03)


@pytest.mark.timing
def test_queue_depth_helps_stream_not_onebank():
  spec, params = load()
  t = {}
  for q in (4, 32, 128):
    s = dataclasses.replace(spec, transaction_queue_depth=q)
    t[q] = (float(dram.read(s, params, "stream", 16 << 20).cycles),
            float(dram.read(s, params, "onebank", 16 << 20).cycles))
  assert t[4][0] > t[32][0] > t[128][0]
  assert t[4][1] == t[32][1] == t[128][1]


@pytest.mark.timing
def test_staggered_refresh_hides_behind_other_rank():
  spec, params = load()
  allr = dataclasses.replace(spec, refresh_mode="all_rank")
  st = float(dram.read(spec, params, "banks", 64 << 20).cycles)
  al = float(dram.read(allr, params, "banks", 64 << 20).cycles)
  assert st < al


@pytest.mark.analytic
def test_internal_stream_levels():
  spec, params = load("DDR5_16Gb_x8_4800")
  bw = {lv: float(dram.internal_stream_bandwidth_gbps(spec, params, lv))
        for lv in dram.LEVELS}
  peak = float(dram.peak_bandwidth_gbps(spec, params))
  assert bw["bank"] >= bw["bank_group"] >= bw["rank"] > 0
  assert bw["buffer"] == pytest.approx(bw["rank"] * 1.0)  # per channel: ranks x rank rate
  assert bw["pins"] <= peak
  two = dataclasses.replace(spec, ranks=2)
  assert float(dram.internal_stream_bandwidth_gbps(two, params, "buffer")) == \
      pytest.approx(2 * bw["buffer"], rel=1e-6)
  assert float(dram.internal_stream_bandwidth_gbps(two, params, "pins")) <= peak
  # DDR5's 4 KB rows keep bank-level streaming row-cycle bound at the preset's
  # tFAW; a 10x longer window caps it (4 rows per tFAW per rank).
  bwf = lambda f: dram.internal_stream_bandwidth_gbps(
      spec, with_params(params, t_faw_cycles=f), "bank")
  assert float(jax.grad(bwf)(48.0)) == 0.0
  assert float(jax.grad(bwf)(480.0)) < 0
  assert float(bwf(480.0)) == pytest.approx(
      2 * 4 * 4096 / 480 * (1 - 710 / 9375) / 0.416, rel=1e-5)
  t = dram.ndp_stream_time_ns(spec, params, jnp.array([0.0, 1e6, 2e6]), "buffer")
  assert float(t[0]) == 0.0
  lat = float(dram.unloaded_read_latency_ns(spec, params))
  assert float(t[2] - lat) == pytest.approx(2 * float(t[1] - lat), rel=1e-6)


# --------------------------------------------------------------------------- corrected rules
# Issue 10 (external check against JEDEC-following cycle simulators): the rules
# below were read wrongly before; expected numbers are worked out by hand.

NO_REFRESH = dict(t_refi_cycles=1e12, t_rfc_cycles=1.0)


@pytest.mark.timing
def test_hbm3_random_one_activation_window_per_pseudo_channel():
  """HBM3: tRRD_S / tFAW count the ACTs of both stack IDs of a pseudo-channel
  (JESD238 per-pseudo-channel array timings; Ramulator 2 HBM3.cpp).  Random
  32 B reads over the whole 4 GB part miss their row, so each pseudo-channel
  opens one row per max(tFAW / 4, tRRD_S) = max(24 / 4, 4) = 6 clocks; the
  other limits are lower: bus tBurst = 8 / 4 = 2, tRC / 32 banks = (45 + 26)
  / 32 = 2.2, row + column command buses max(1, PRE + ACT = 2) = 2.
  Per pseudo-channel 32 B / (6 x 0.625 ns) = 8.533 GB/s; 32 of them 273.07."""
  spec, params = load("HBM3_8Gb_6400")
  assert (spec.ranks, spec.bank_groups, spec.dual_command_bus) == (1, 8, True)
  r = dram.read(spec, with_params(params, **NO_REFRESH), "random", 1 << 32)
  assert float(r.row_hit_rate) < 0.005
  assert float(r.bandwidth_gbps) == pytest.approx(32 * 32 / (6 * 0.625), rel=0.005)
  # The old reading (the 2 SIDs as ranks, each with its own window) doubles it.
  sids_as_ranks = dataclasses.replace(spec, ranks=2, bank_groups=4)
  r2 = dram.read(sids_as_ranks, with_params(params, t_rtrs_cycles=1.0, **NO_REFRESH),
                 "random", 1 << 32)
  assert float(r2.bandwidth_gbps) == pytest.approx(2 * 32 * 32 / (6 * 0.625), rel=0.01)


@pytest.mark.timing
def test_ddr4_random_one_activation_window_per_rank():
  """DDR4 ranks are separate devices: each has its own tFAW window (JESD79-4;
  DRAMsim3 channel_state.cc four_aw_[rank]).  Random 64 B reads over 16 GB
  miss: 2 ranks x 4 ACTs per tFAW -> one read per 34 / 8 = 4.25 clocks, above
  the bus (tBurst 4, rank switches tBurst + tRTRS = 5 only between batches):
  64 B / (4.25 x 0.63 ns) = 23.90 GB/s (x8); x16: tFAW 48 -> 6 clocks, 16.93."""
  for name, faw in (("DDR4_8Gb_x8_3200", 34), ("DDR4_8Gb_x16_3200", 48)):
    spec, params = load(name)
    assert float(params.t_rtrs_cycles) == 1  # DRAMsim3 DDR4_8Gb_x*_3200.ini
    r = dram.read(spec, with_params(params, **NO_REFRESH), "random", 1 << 34)
    assert float(r.bandwidth_gbps) == pytest.approx(64 / (faw / 8 * 0.63), rel=0.005), name


@pytest.mark.timing
def test_lpddr4_ranks_refresh_in_turn():
  """DRAMsim3's LPDDR4_8Gb_x16_2400.ini refreshes rank by rank
  (RANK_LEVEL_STAGGERED): the bank-interleaved stream keeps the bus busy with
  the other rank, at the BL16 burst rate 128 B / (8 x 0.83 ns) = 19.28 GB/s;
  refreshing both ranks at once would lose about (tRFC + closing and
  re-opening) / tREFI = (392 + 12 + 15 + 15) / 8660 = 5 %."""
  spec, params = load("LPDDR4_8Gb_x16_2400")
  assert spec.refresh_mode == "staggered"
  burst_rate = 128 / (8 * 0.83)
  st = float(dram.read(spec, params, "banks", 16 << 20).bandwidth_gbps)
  assert st == pytest.approx(burst_rate, rel=0.005)
  allr = dataclasses.replace(spec, refresh_mode="all_rank")
  al = float(dram.read(allr, params, "banks", 16 << 20).bandwidth_gbps)
  assert al == pytest.approx(burst_rate * (1 - (392 + 12 + 15 + 15) / 8660), rel=0.01)


@pytest.mark.timing
def test_hbm_row_and_column_command_buses():
  """HBM issues a row command and a column command in the same clock
  (JESD235 / JESD238; DRAMsim3 hbm_dual_cmd).  With timings so fast that only
  the command bus binds, every strided read misses and needs PRE + ACT + RD:
  3 clocks on one bus, max(1, 2) = 2 on two (= the BL4 burst)."""
  spec, params = load("HBM2_8Gb_x128")
  fast = with_params(params, t_faw_cycles=4.0, t_rrd_s_cycles=1.0, t_rrd_l_cycles=1.0,
                     t_ras_cycles=14.0, t_rp_cycles=6.0, t_rcd_cycles=6.0,
                     t_rtp_cycles=2.0, **NO_REFRESH)
  n_ch = 4096
  region = n_ch * 64 * spec.channels
  # strided reads that revisit no open row: per_act = 1 once the region is big
  big = region * 1024
  for dual, per_read in ((True, 2.0), (False, 3.0)):
    s = dataclasses.replace(spec, dual_command_bus=dual)
    c = float(dram.read(s, fast, "strided", big).cycles) / (big / 64 / spec.channels)
    assert c == pytest.approx(per_read, rel=0.01), dual


# --------------------------------------------------------------------------- gradients

def _off_kink(params):
  """The preset's timings nudged by distinct amounts, off ties of max()."""
  leaves = {f.name: float(getattr(params, f.name)) * (1 + 0.0137 * (i + 1))
            for i, f in enumerate(dataclasses.fields(params))}
  return type(params)(**leaves)


TIME_FUNCTIONS = {
    **{f"read_{p}": (lambda p_: lambda s, q: dram.read(s, q, p_, 1 << 22).time_ns)(p)
       for p in dram.PATTERNS},
    "latency": dram.unloaded_read_latency_ns,
    **{f"ndp_{lv}": (lambda lv_: lambda s, q: dram.ndp_stream_time_ns(s, q, 1 << 22, lv_))(lv)
       for lv in dram.LEVELS},
}


@pytest.mark.parametrize("name", ["DDR4_8Gb_x8_3200", "HBM3_8Gb_6400"])
@pytest.mark.parametrize("fn", sorted(TIME_FUNCTIONS))
@pytest.mark.gradient
def test_gradients_match_finite_differences(name, fn):
  f = TIME_FUNCTIONS[fn]
  with jax.enable_x64(True):
    spec, params = load(name)
    params = base.as_arrays(_off_kink(params), jnp.float64)
    grads = jax.grad(lambda q: f(spec, q))(params)
    for fld in dataclasses.fields(params):
      x = float(getattr(params, fld.name))
      h = 1e-5 * x
      up = float(f(spec, with_params(params, **{fld.name: jnp.float64(x + h)})))
      dn = float(f(spec, with_params(params, **{fld.name: jnp.float64(x - h)})))
      fd = (up - dn) / (2 * h)
      g = float(getattr(grads, fld.name))
      scale = abs(float(f(spec, params))) / x
      assert abs(g - fd) <= 1e-3 * abs(fd) + 1e-9 * scale, (fld.name, g, fd)


# --------------------------------------------------------------------------- vmap

@pytest.mark.analytic
def test_vmap_matches_loop():
  spec, params = load()
  rng = np.random.default_rng(0)
  n = 1000
  arr = base.as_arrays(params)
  batch = jax.tree_util.tree_map(
      lambda x: x * jnp.asarray(rng.uniform(0.8, 1.25, n), jnp.float32), arr)

  def f(q):
    return jnp.stack([dram.read(spec, q, p, 1 << 24).cycles for p in dram.PATTERNS]
                     + [dram.internal_stream_bandwidth_gbps(spec, q, "bank")])

  got = jax.vmap(f)(batch)
  jf = jax.jit(f)
  # All 1,000 vmapped; every 10th set also run on its own (one jitted call each).
  want = np.stack([np.asarray(jf(jax.tree_util.tree_map(lambda x: x[i], batch)))
                   for i in range(0, n, 10)])
  np.testing.assert_allclose(np.asarray(got)[::10], want, rtol=1e-5)


# --------------------------------------------------------------------------- validation

def _preset_obj(name="DDR4_8Gb_x8_3200"):
  return json.loads((config.config_root() / "dram" / f"{name}.json").read_text())


BAD = [
    ("unknown key", lambda o: o["spec"].update(bankgroups=4), "spec.bankgroups"),
    ("missing key", lambda o: o["params"].pop("t_faw_cycles"), "params.t_faw_cycles"),
    ("wrong type", lambda o: o["params"].update(cl_cycles="22"), "params.cl_cycles"),
    ("int type", lambda o: o["spec"].update(ranks=2.5), "spec.ranks"),
    ("zero rate", lambda o: o["params"].update(tck_ns=0), "params.tck_ns"),
    ("negative", lambda o: o["params"].update(t_rp_cycles=-1), "params.t_rp_cycles"),
    ("zero size", lambda o: o["spec"].update(row_bytes=0), "spec.row_bytes"),
    ("bus vs device", lambda o: o["spec"].update(device_bits=24), "spec.bus_bits"),
    ("burst vs txn", lambda o: o["spec"].update(transaction_bytes=32),
     "spec.transaction_bytes"),
    ("mapping", lambda o: o["spec"].update(mapping="rochrababgba"), "spec.mapping"),
    ("refresh mode", lambda o: o["spec"].update(refresh_mode="per_bank"),
     "spec.refresh_mode"),
    ("power of two", lambda o: o["spec"].update(banks_per_group=3), "spec.banks_per_group"),
    ("row split", lambda o: o["spec"].update(row_bytes=8192 + 64 * 8 + 4), "spec.row_bytes"),
    ("tras < trcd", lambda o: o["params"].update(t_ras_cycles=10), "params.t_ras_cycles"),
    ("ccd order", lambda o: o["params"].update(t_ccd_l_cycles=2), "params.t_ccd_l_cycles"),
    ("refi < rfc", lambda o: o["params"].update(t_refi_cycles=500), "params.t_refi_cycles"),
    ("queue", lambda o: o["spec"].update(transaction_queue_depth=0),
     "spec.transaction_queue_depth"),
]


@pytest.mark.parametrize("label,mutate,field", BAD, ids=[b[0] for b in BAD])
@pytest.mark.inputs
def test_bad_config_rejected(tmp_path, label, mutate, field):
  obj = _preset_obj()
  mutate(obj)
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(obj))
  with pytest.raises(ConfigError) as e:
    config.load("dram", str(path))
  msg = str(e.value)
  assert "\n" not in msg
  assert str(path) in msg and field in msg, msg
  assert any(w in msg for w in ("write", "add", "allowed", "must")), msg


@pytest.mark.inputs
def test_bad_read_arguments():
  spec, params = load()
  with pytest.raises(ConfigError, match="pattern"):
    dram.read(spec, params, "zigzag", 1 << 20)
  with pytest.raises(ConfigError, match="request_bytes"):
    dram.read(spec, params, "random", 1 << 20, 48)
  with pytest.raises(ConfigError, match="level"):
    dram.internal_stream_bandwidth_gbps(spec, params, "chip")


# --------------------------------------------------------------------------- probe

@pytest.mark.e2e
def test_probe_ok(capsys):
  from ndpsim import probe
  rc = probe.main(["dram", "--preset=DDR4_8Gb_x8_3200", "--pattern=banks",
                   "--bytes=67108864", "--request_bytes=64", "--level=buffer"])
  out = json.loads(capsys.readouterr().out)
  assert rc == 0
  for k in ("cycles", "time_ns", "bandwidth_gbps", "peak_gbps", "row_hit_rate",
            "activations", "internal_bandwidth_gbps"):
    assert k in out
  assert 0 < out["bandwidth_gbps"] <= out["peak_gbps"]
  rc = probe.main(["dram", "--preset=DDR4_8Gb_x8_3200", "--pattern=stream",
                   "--queue_depth=128"])
  deep = json.loads(capsys.readouterr().out)
  probe.main(["dram", "--preset=DDR4_8Gb_x8_3200", "--pattern=stream"])
  shallow = json.loads(capsys.readouterr().out)
  assert deep["bandwidth_gbps"] > shallow["bandwidth_gbps"]


@pytest.mark.parametrize("args,needle", [
    (["--pattern=banks"], "--preset"),
    (["--preset=DDR9"], "DDR9"),
    (["--preset=DDR4_8Gb_x8_3200", "--pattern=zigzag"], "--pattern"),
    (["--preset=DDR4_8Gb_x8_3200", "--bytes=0"], "--bytes"),
    (["--preset=DDR4_8Gb_x8_3200", "--bytes=lots"], "--bytes"),
    (["--preset=DDR4_8Gb_x8_3200", "--bytes=1000"], "--bytes"),
    (["--preset=DDR4_8Gb_x8_3200", "--request_bytes=48"], "--request_bytes"),
    (["--preset=DDR4_8Gb_x8_3200", "--queue_depth=-1"], "--queue_depth"),
    (["--preset=DDR4_8Gb_x8_3200", "--level=chip"], "--level"),
    (["--preset=DDR4_8Gb_x8_3200", "--colour=red"], "--colour"),
])
@pytest.mark.inputs
def test_probe_bad_arguments(capsys, args, needle):
  from ndpsim import probe
  rc = probe.main(["dram"] + args)
  err = capsys.readouterr().err.strip()
  assert rc == 2
  assert len(err.splitlines()) == 1 and needle in err, err

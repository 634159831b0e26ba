"""NDP unit model: GEMV/GEMM composition, re-streaming, gradients, vmap, configs, probe."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, config, probe
from ndpsim.hw import dram, ndp

NDPS = ("ddr5_rank_ndp_dimm", "lpddr5_bank_pim")


def _load(name="ddr5_rank_ndp_dimm"):
  pre = config.load("ndp", name)
  return pre.spec, pre.params


def _f(x):
  return float(np.asarray(x))


@pytest.mark.parametrize("name", NDPS)
@pytest.mark.inputs
def test_presets_load(name):
  pre = config.load("ndp", name)
  hash(pre.spec)
  assert ndp.capacity_bytes(pre.spec) == pre.spec.dram_parts * dram.capacity_bytes(pre.spec.dram)
  assert set(pre.provenance.values()) <= set(base.PROVENANCES)
  bw = _f(ndp.stream_bandwidth_gbps(pre.spec, pre.params))
  per_part = _f(dram.internal_stream_bandwidth_gbps(pre.spec.dram, pre.params.dram,
                                                    pre.spec.pe_level))
  assert bw == pytest.approx(pre.spec.dram_parts * per_part, rel=1e-6)


@pytest.mark.analytic
def test_paper_ndp_dimm_matches_the_stated_assumptions():
  spec, params = _load()
  assert ndp.capacity_bytes(spec) == 64 * 2 ** 30                       # 64 GB per DIMM
  assert _f(ndp.peak_flops(spec, params)) == pytest.approx(256e9)      # ~256 GFLOPS FP16
  pins = _f(dram.peak_bandwidth_gbps(spec.dram, params.dram))
  assert pins == pytest.approx(38.4, rel=0.01)
  # All ranks in parallel: close to ranks x pin bandwidth, never above.
  bw = _f(ndp.stream_bandwidth_gbps(spec, params))
  assert 0.85 * 4 * pins < bw <= 4 * pins
  assert config.load("ndp", "ddr5_rank_ndp_dimm").provenance["default"] == "assumed"


@pytest.mark.analytic
def test_bank_pim_has_more_internal_bandwidth_than_its_pins():
  spec, params = _load("lpddr5_bank_pim")
  pins = spec.dram_parts * _f(dram.peak_bandwidth_gbps(spec.dram, params.dram))
  assert pins == pytest.approx(102.4, rel=0.01)
  assert _f(ndp.stream_bandwidth_gbps(spec, params)) > 4 * pins


def _expected(spec, params, rows, cols, t, wb=2.0, ab=2.0):
  """max(stream, MAC) + fill + write-back, from the DRAM model and the params."""
  stream = _f(dram.ndp_stream_time_ns(spec.dram, params.dram, rows * cols * wb
                                      / spec.dram_parts, spec.pe_level)) * 1e-9
  clock = float(params.clock_mhz) * 1e6
  mac = rows * cols * t / (float(params.macs_per_cycle) * clock)
  fill = float(params.pipeline_fill_cycles) / clock
  wback = t * cols * ab / (float(params.host_bus_bandwidth_gbps) * 1e9)
  return stream, mac, max(stream, mac) + fill + wback


@pytest.mark.parametrize("name", NDPS)
@pytest.mark.parametrize("rows,cols,t", [(2048, 768, 1), (768, 2048, 1), (2048, 768, 3),
                                         (2048, 192, 2), (4096, 14336, 1)])
@pytest.mark.analytic
def test_gemv_is_max_of_stream_and_mac_plus_fill_and_writeback(name, rows, cols, t):
  spec, params = _load(name)
  params = base.replace(params, buffer_bytes=1e9)  # one pass
  stream, mac, expect = _expected(spec, params, rows, cols, t)
  r = ndp.matmul_breakdown(spec, params, rows, cols, t)
  assert _f(r["passes"]) == 1
  assert _f(r["time_s"]) == pytest.approx(expect, rel=1e-5)
  assert ndp.BOUNDS[int(r["bound"])] == ("stream" if stream >= mac else "mac")


@pytest.mark.analytic
def test_gemv_stream_bound_and_small_gemm_mac_bound():
  spec, params = _load()
  r1 = ndp.matmul_breakdown(spec, params, 2048, 768, 1)
  r8 = ndp.matmul_breakdown(spec, params, 2048, 768, 8)
  assert ndp.BOUNDS[int(r1["bound"])] == "stream"
  assert ndp.BOUNDS[int(r8["bound"])] == "mac"
  # Weights read once: 8 tokens cost far less than 8 GEMVs.
  assert _f(r8["time_s"]) < 8 * _f(r1["time_s"])
  # int8 weights halve the streamed bytes.
  s16 = _f(ndp.stream_time_s(spec, params, 2048 * 768 * 2.0))
  s8 = _f(ndp.matmul_breakdown(spec, params, 2048, 768, 1, weight_dtype_bytes=1.0)["stream_s"])
  lat = _f(dram.unloaded_read_latency_ns(spec.dram, params.dram)) * 1e-9
  assert s8 - lat == pytest.approx((s16 - lat) / 2, rel=1e-5)


@pytest.mark.analytic
def test_small_buffer_restreams_the_weights():
  spec, params = _load()
  rows, cols = 2048, 768
  fast = base.replace(params, macs_per_cycle=1e7)            # stream bound at any t
  big = base.replace(fast, buffer_bytes=1e9)
  small = base.replace(fast, buffer_bytes=2.5 * rows * 2)    # holds 2 tokens
  stream, _, _ = _expected(spec, big, rows, cols, 5)
  clock = float(params.clock_mhz) * 1e6
  fill = float(params.pipeline_fill_cycles) / clock
  wback = 5 * cols * 2 / (float(params.host_bus_bandwidth_gbps) * 1e9)
  rb = ndp.matmul_breakdown(spec, big, rows, cols, 5)
  rs = ndp.matmul_breakdown(spec, small, rows, cols, 5)
  assert _f(rb["passes"]) == 1 and _f(rs["passes"]) == 3 and _f(rs["tokens_per_pass"]) == 2
  assert _f(rb["time_s"]) == pytest.approx(stream + fill + wback, rel=1e-5)
  assert _f(rs["time_s"]) == pytest.approx(3 * (stream + fill) + wback, rel=1e-5)
  # A buffer smaller than one token still streams a GEMV once (K-chunked).
  tiny = base.replace(fast, buffer_bytes=64.0)
  assert _f(ndp.matmul_breakdown(spec, tiny, rows, cols, 1)["passes"]) == 1
  # MAC-bound passes: uneven last pass costs max(stream, its own MACs).
  slow = base.replace(params, buffer_bytes=2.5 * rows * 2)
  r = ndp.matmul_breakdown(spec, slow, rows, cols, 5)
  mac_tok = rows * cols / (float(params.macs_per_cycle) * clock)
  expect = 2 * max(stream, 2 * mac_tok) + max(stream, mac_tok) + 3 * fill + wback
  assert _f(r["time_s"]) == pytest.approx(expect, rel=1e-5)


@pytest.mark.analytic
def test_zero_tokens_or_rows_cost_nothing_traced():
  spec, params = _load()
  f = jax.jit(jax.vmap(lambda t, r: ndp.matmul_time_s(spec, params, r, 768, t)))
  out = np.asarray(f(jnp.array([0.0, 1.0, 2.0, 4.0]), jnp.array([2048.0, 0.0, 2048.0, 512.0])))
  assert out[0] == 0.0 and out[1] == 0.0 and out[2] > 0 and out[3] > 0
  assert _f(ndp.stream_time_s(spec, params, 0.0)) == 0.0
  for r, t in ((2048, 0), (0, 4)):
    g = jax.grad(lambda p, r=r, t=t: ndp.matmul_time_s(spec, p, r, 768, t))(
        base.as_arrays(params))
    assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree_util.tree_leaves(g))


def _fd_check(fn, params, rel=1e-3):
  leaves, tree = jax.tree_util.tree_flatten(params)
  grads = jax.tree_util.tree_leaves(jax.grad(fn)(params))
  assert len(grads) == len(leaves)
  nonzero = 0
  for i, (x, g) in enumerate(zip(leaves, grads)):
    h = 1e-6 * abs(float(x)) or 1e-6

    def at(v, i=i):
      ls = list(leaves)
      ls[i] = jnp.asarray(v, jnp.float64)
      return float(fn(jax.tree_util.tree_unflatten(tree, ls)))

    fd = (at(float(x) + h) - at(float(x) - h)) / (2 * h)
    assert abs(float(g) - fd) <= rel * max(abs(fd), abs(float(g))) + 1e-16, (i, float(g), fd)
    nonzero += float(g) != 0.0
  return nonzero


@pytest.mark.parametrize("name", NDPS)
@pytest.mark.parametrize("t", [1, 8])
@pytest.mark.gradient
def test_gradients_match_finite_differences(name, t):
  with jax.enable_x64(True):
    spec, params = _load(name)
    params = base.as_arrays(params, jnp.float64)
    # rows = 2000: the buffer holds a non-integer number of tokens (no floor step at x).
    n = _fd_check(lambda p: ndp.matmul_time_s(spec, p, 2000, 768, t), params)
    assert n >= 4  # clock, fill, host bus, and DRAM timings or MAC lanes


@pytest.mark.gradient
def test_writeback_gradient_is_analytic():
  with jax.enable_x64(True):
    spec, params = _load()
    params = base.as_arrays(params, jnp.float64)
    cols, t = 768, 4
    g = jax.grad(lambda p: ndp.matmul_time_s(spec, p, 2048, cols, t))(params)
    bw = float(params.host_bus_bandwidth_gbps)
    assert float(g.host_bus_bandwidth_gbps) == pytest.approx(-t * cols * 2.0 / (bw ** 2 * 1e9),
                                                             rel=1e-9)


@pytest.mark.analytic
def test_vmap_over_1000_parameter_sets_equals_loop():
  spec, params = _load()
  rng = np.random.default_rng(2)
  ps = [base.replace(params, clock_mhz=float(c), macs_per_cycle=float(m),
                     dram=base.replace(params.dram, tck_ns=float(tck)))
        for c, m, tck in zip(rng.uniform(200, 2000, 1000), rng.uniform(16, 512, 1000),
                             rng.uniform(0.3, 0.6, 1000))]
  stacked = base.stack([base.as_arrays(p) for p in ps])
  f = lambda p: ndp.matmul_time_s(spec, p, 2048, 768, 2)  # noqa: E731
  batched = np.asarray(jax.jit(jax.vmap(f))(stacked))
  jf = jax.jit(f)
  # All 1,000 vmapped; every 10th set also run on its own (one jitted call each).
  looped = np.array([float(jf(base.as_arrays(p))) for p in ps[::10]])
  np.testing.assert_allclose(batched[::10], looped, rtol=1e-6)
  assert batched.std() > 0


def _obj(name="ddr5_rank_ndp_dimm", **changes):
  obj = json.load(open(config.config_root() / "ndp" / f"{name}.json"))
  for key, val in changes.items():
    section, field = key.split("__")
    if val is None:
      del obj[section][field]
    else:
      obj[section][field] = val
  return obj


@pytest.mark.parametrize("name,changes,match", [
    ("ddr5_rank_ndp_dimm", {"spec__pe_level": "subarray"}, "spec.pe_level"),
    ("ddr5_rank_ndp_dimm", {"spec__dtype": "fp64"}, "spec.dtype"),
    ("ddr5_rank_ndp_dimm", {"spec__dram": "DDR5_16Gb_x8_480"}, "did you mean"),
    ("ddr5_rank_ndp_dimm", {"spec__dram": 5}, "spec.dram must name"),
    ("ddr5_rank_ndp_dimm", {"spec__dram_parts": 0}, "dram_parts is 0"),
    ("ddr5_rank_ndp_dimm", {"params__macs_per_cycle": 0}, "macs_per_cycle"),
    ("ddr5_rank_ndp_dimm", {"params__buffer_bytes": -4}, "buffer_bytes"),
    ("ddr5_rank_ndp_dimm", {"params__clock_mhz": None}, "missing field params.clock_mhz"),
    ("ddr5_rank_ndp_dimm", {"params__clock_ghz": 1.0}, "unknown field params.clock_ghz"),
    ("ddr5_rank_ndp_dimm", {"params__dram": {"t_rcd": 3}}, "t_rcd"),
    ("ddr5_rank_ndp_dimm", {"params__dram": {"t_rcd_cycles": -3}}, "t_rcd_cycles"),
    ("lpddr5_bank_pim", {"spec__num_pes": 3}, "num_pes is 3"),
])
@pytest.mark.inputs
def test_bad_ndp_configs(name, changes, match):
  with pytest.raises(base.ConfigError, match=match) as e:
    config.load("ndp", _obj(name, **changes))
  assert "\n" not in str(e.value)


@pytest.mark.inputs
def test_dram_overrides_reach_the_ndp_unit():
  slow = config.load("ndp", "ddr5_rank_ndp_dimm",
                     overrides={"dram": {"t_rcd_cycles": 60, "t_ras_cycles": 100}})
  base_pre = config.load("ndp", "ddr5_rank_ndp_dimm")
  assert float(slow.params.dram.t_rcd_cycles) == 60
  assert (_f(ndp.matmul_time_s(slow.spec, slow.params, 2048, 768, 1))
          > _f(ndp.matmul_time_s(base_pre.spec, base_pre.params, 2048, 768, 1)))


@pytest.mark.e2e
def test_probe_ndp(capsys):
  assert probe.main(["ndp", "--preset=ddr5_rank_ndp_dimm", "--rows=2048", "--cols=768",
                     "--tokens=1"]) == 0
  out = json.loads(capsys.readouterr().out)
  spec, params = _load()
  assert out["time_s"] == pytest.approx(_f(ndp.matmul_time_s(spec, params, 2048, 768, 1)),
                                        rel=1e-6)
  assert out["bound"] == "stream" and out["passes"] == 1
  assert probe.main(["ndp", "--preset=lpddr5_bank_pim", "--rows=2048", "--cols=768",
                     "--tokens=64"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["bound"] == "mac" and out["passes"] > 1


@pytest.mark.parametrize("argv", [
    ["ndp", "--rows=2048"], ["ndp", "--rows=-1", "--cols=768"],
    ["ndp", "--rows=2048", "--cols=768", "--tokens=-2"],
    ["ndp", "--rows=2048", "--cols=768", "--weight_bytes=0"],
    ["ndp", "--rows=2048", "--cols=768", "--preset=hbm9_pim"],
    ["ndp", "--rows=2048", "--cols=7.5"], ["ndp", "--rows=2048", "--cols=768", "--t=1"],
])
@pytest.mark.inputs
def test_probe_ndp_bad_arguments(argv, capsys):
  assert probe.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("ndpsim.probe:") and err.count("\n") == 1

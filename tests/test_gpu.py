"""GPU model: roofline corners, wave quantization, attention, gradients, vmap, probe."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, config, probe
from ndpsim.hw import gpu

GPUS = ("rtx5080", "rtx4090", "jetson_agx_orin_64gb", "jetson_agx_thor", "h200")


def _load(name="rtx5080"):
  pre = config.load("gpu", name)
  return pre.spec, pre.params


def _f(x):
  return float(np.asarray(x))


@pytest.mark.parametrize("name", GPUS)
@pytest.mark.inputs
def test_presets_load_frozen_hashable(name):
  pre = config.load("gpu", name)
  hash(pre.spec)
  with pytest.raises(Exception):
    pre.spec.num_sms = 1  # frozen
  assert "bf16" in pre.spec.tensor_dtypes
  assert len(pre.params.tensor_flops_per_cycle_per_sm) == len(pre.spec.tensor_dtypes)
  assert set(pre.provenance.values()) <= set(base.PROVENANCES)


@pytest.mark.parametrize("name,tflops,rel", [
    ("rtx5080", 225.0 / 2, 0.01),          # FP16-acc headline halved for FP32 acc
    ("rtx4090", 165.0, 0.01),
    ("jetson_agx_orin_64gb", 42.5, 0.01),
    ("h200", 989.0, 0.01),
])
@pytest.mark.analytic
def test_peak_flops_match_spec_sheets(name, tflops, rel):
  spec, params = _load(name)
  assert _f(gpu.peak_flops(spec, params, "bf16")) / 1e12 == pytest.approx(tflops, rel=rel)


@pytest.mark.analytic
def test_huge_square_gemm_is_compute_bound_at_achievable_rate():
  spec, params = _load()
  # 128 * 84 * 2 columns: the tile count is a multiple of the SM count, no wave tail.
  m, n, k = 16384, 128 * 84 * 2, 16384
  r = gpu.matmul_breakdown(spec, params, m, n, k)
  rate = _f(gpu.peak_flops(spec, params)) * float(params.achievable_compute_fraction)
  expect = 2.0 * m * n * k / rate + _f(gpu.launch_s(spec, params))
  assert gpu.BOUNDS[int(r["bound"])] == "compute"
  assert _f(r["time_s"]) == pytest.approx(expect, rel=1e-5)
  # Any huge square GEMM is within a wave tail of the ideal rate.
  t = _f(gpu.matmul_time_s(spec, params, 16384, 16384, 16384))
  ideal = 2.0 * 16384 ** 3 / rate
  assert ideal < t < ideal * (1 + 1.0 / 195) + 1e-5


@pytest.mark.analytic
def test_gemv_is_memory_bound_at_achievable_bandwidth():
  spec, params = _load()
  m, n, k = 1, 8192, 8192
  r = gpu.matmul_breakdown(spec, params, m, n, k)
  bytes_ = 2.0 * (k * n + m * k + m * n)
  bw = float(params.memory_bandwidth_gbps) * float(params.achievable_bandwidth_fraction) * 1e9
  assert gpu.BOUNDS[int(r["bound"])] == "memory"
  assert _f(r["dram_bytes"]) == pytest.approx(bytes_, rel=1e-6)
  assert _f(r["time_s"]) == pytest.approx(bytes_ / bw + _f(gpu.launch_s(spec, params)),
                                          rel=1e-5)


@pytest.mark.analytic
def test_tiny_op_is_launch_bound_only_when_launched_alone():
  spec, params = _load()
  alone = base.replace(spec, launch_hidden=False)
  r = gpu.matmul_breakdown(alone, params, 1, 16, 16)
  assert gpu.BOUNDS[int(r["bound"])] == "launch"
  assert _f(r["launch_s"]) == pytest.approx(float(params.kernel_launch_us) * 1e-6)
  assert _f(r["time_s"]) < 1.05 * float(params.kernel_launch_us) * 1e-6
  # Queued in a chain (the preset's default) its launch is hidden.
  assert spec.launch_hidden
  q = gpu.matmul_breakdown(spec, params, 1, 16, 16)
  assert _f(q["launch_s"]) == pytest.approx(float(params.queued_launch_us) * 1e-6)
  assert gpu.BOUNDS[int(q["bound"])] != "launch"
  assert _f(q["time_s"]) < 0.1 * float(params.kernel_launch_us) * 1e-6


@pytest.mark.analytic
def test_queued_chain_pays_one_launch():
  """A chain of queued kernels: one kernel_launch_us plus each kernel's own time
  (queued_launch_us ~ 0 each); launched alone, every kernel pays kernel_launch_us."""
  spec, params = _load()
  shapes = [(1, 4096, 2048), (1, 128, 2048), (1, 1536, 2048), (1, 2048, 768)]
  work = sum(max(_f(gpu.matmul_breakdown(spec, params, *s)["compute_s"]),
                 _f(gpu.matmul_breakdown(spec, params, *s)["memory_s"])) for s in shapes)
  kl, ql = float(params.kernel_launch_us) * 1e-6, float(params.queued_launch_us) * 1e-6
  queued = _f(gpu.chain_launch_s(spec, params)) + sum(
      _f(gpu.matmul_time_s(spec, params, *s)) for s in shapes)
  assert queued == pytest.approx(kl + len(shapes) * ql + work, rel=1e-6)
  alone = base.replace(spec, launch_hidden=False)
  assert _f(gpu.chain_launch_s(alone, params)) == 0.0
  serial = sum(_f(gpu.matmul_time_s(alone, params, *s)) for s in shapes)
  assert serial == pytest.approx(len(shapes) * kl + work, rel=1e-6)
  assert _f(gpu.elementwise_time_s(spec, params, 1e3)) < _f(
      gpu.elementwise_time_s(alone, params, 1e3))


@pytest.mark.parametrize("name", GPUS)
@pytest.mark.inputs
def test_launch_figures_are_labelled_and_sourced(name):
  """Launch figures (issue 10): 1.3 us alone / ~0 us queued, measured only for the
  Blackwell consumer class (sqliteai/warp issue 11), assumed elsewhere."""
  pre = config.load("gpu", name)
  p, prov = pre.params, pre.provenance
  assert pre.spec.launch_hidden
  assert float(p.queued_launch_us) == 0.0
  assert 1.0 <= float(p.kernel_launch_us) <= 3.0
  for f in ("kernel_launch_us", "queued_launch_us"):
    want = "measured" if name == "rtx5080" else "assumed"
    assert config.provenance_of(prov, f) == want, f
    if want == "measured":
      assert "github.com/sqliteai/warp/issues/11" in pre.sources[f]


@pytest.mark.analytic
def test_zero_tokens_cost_nothing_even_traced():
  spec, params = _load()
  f = jax.jit(jax.vmap(lambda m: gpu.matmul_time_s(spec, params, m, 768, 2048)))
  t = np.asarray(f(jnp.array([0.0, 1.0, 3.0, 0.0])))
  assert t[0] == 0.0 and t[3] == 0.0
  assert t[1] > _f(gpu.launch_s(spec, params)) and t[2] >= t[1]
  assert _f(gpu.matmul_time_s(spec, params, 5, 0, 2048)) == 0.0
  assert _f(gpu.elementwise_time_s(spec, params, 0.0)) == 0.0


@pytest.mark.analytic
def test_wave_quantization_steps_at_multiples_of_sm_count():
  spec, params = _load()
  s = spec.num_sms
  # k = min_k_per_split: no split-K; m = tile_m: one tile row; tiles = n / tile_n.
  tiles = np.arange(1, 3 * s + 2)
  r = gpu.matmul_breakdown(spec, params, spec.tile_m, tiles * spec.tile_n,
                           spec.min_k_per_split)
  c = np.asarray(r["compute_s"])
  np.testing.assert_array_equal(np.asarray(r["waves"]), np.ceil(tiles / s))
  np.testing.assert_allclose(c, np.ceil(tiles / s) * c[0], rtol=1e-6)
  jumps = np.nonzero(np.diff(c) > 0.5 * c[0])[0] + 1  # index where the step lands
  np.testing.assert_array_equal(tiles[jumps], [s + 1, 2 * s + 1, 3 * s + 1])


@pytest.mark.analytic
def test_split_k_fills_idle_sms_for_skinny_gemm():
  spec, params = _load()
  r = gpu.matmul_breakdown(spec, params, 1, 768, 2048)
  assert int(r["tiles"]) == 6 and int(r["split_k"]) > 1
  assert int(r["tiles"]) * int(r["split_k"]) <= spec.num_sms


@pytest.mark.analytic
def test_attended_pairs_match_brute_force():
  for q, ctx, w in [(1, 1, 0), (1, 1000, 0), (512, 512, 0), (7, 30, 0), (512, 512, 128),
                    (1, 4096, 128), (64, 100, 16), (3, 3, 10), (10, 40, 1)]:
    brute = sum(min(p + 1, w) if w else p + 1 for p in range(ctx - q, ctx))
    assert _f(gpu.attended_pairs(q, ctx, w)) == pytest.approx(brute), (q, ctx, w)


def _attn(spec, params, **kw):
  base_kw = dict(q_tokens=1, context_len=4096, num_q_heads=32, num_kv_heads=4,
                 qk_head_dim=128, v_head_dim=128, kv_bytes_per_token=2 * 4 * 128 * 2)
  base_kw.update(kw)
  return gpu.attention_breakdown(spec, params, **base_kw)


@pytest.mark.analytic
def test_decode_attention_reads_the_kv_cache():
  spec, params = _load("jetson_agx_orin_64gb")
  ctx, kvb = 4096, 2 * 4 * 128 * 2
  r = _attn(spec, params, context_len=ctx)
  expect_bytes = ctx * kvb + kvb + 32 * 256 * 2
  bw = float(params.memory_bandwidth_gbps) * float(params.achievable_bandwidth_fraction) * 1e9
  assert _f(r["dram_bytes"]) == pytest.approx(expect_bytes)
  assert gpu.BOUNDS[int(r["bound"])] == "memory"
  assert _f(r["time_s"]) == pytest.approx(expect_bytes / bw + _f(gpu.launch_s(spec, params)),
                                          rel=1e-5)
  # MHA (32 kv heads) reads 8x the KV of GQA with 4.
  mha = _attn(spec, params, context_len=ctx, num_kv_heads=32, kv_bytes_per_token=8 * kvb)
  assert _f(mha["memory_s"]) > 7.5 * _f(r["memory_s"])
  # A sliding window caps the KV read.
  sw = _attn(spec, params, context_len=ctx, sliding_window=128)
  assert _f(sw["dram_bytes"]) == pytest.approx(128 * kvb + kvb + 32 * 256 * 2)


@pytest.mark.analytic
def test_mla_absorbed_decode():
  spec, params = _load()
  # DeepSeek-V2-Lite absorbed MLA: 16 heads, latent 512 + rope 64, shared by all heads.
  ctx, kvb = 2048, (512 + 64) * 2
  r = gpu.attention_breakdown(spec, params, q_tokens=1, context_len=ctx, num_q_heads=16,
                              num_kv_heads=1, qk_head_dim=576, v_head_dim=512,
                              kv_bytes_per_token=kvb)
  assert _f(r["flops"]) == pytest.approx(16 * ctx * 2 * (576 + 512))
  assert _f(r["dram_bytes"]) == pytest.approx(ctx * kvb + kvb + 16 * (576 + 512) * 2)


@pytest.mark.analytic
def test_prefill_attention_is_causal_and_compute_bound():
  spec, params = _load()
  q = 4096
  r = _attn(spec, params, q_tokens=q, context_len=q)
  assert _f(r["flops"]) == pytest.approx(32 * q * (q + 1) / 2 * 2 * 256)
  assert gpu.BOUNDS[int(r["bound"])] == "compute"
  # Causal prefill does about half the work of scoring every pair.
  r2 = _attn(spec, params, q_tokens=q, context_len=2 * q)
  assert _f(r2["flops"]) / _f(r["flops"]) == pytest.approx((q * q + q * (q + 1) / 2)
                                                           / (q * (q + 1) / 2))
  assert _f(gpu.attention_time_s(spec, params, q_tokens=0, context_len=10, num_q_heads=32,
                                 num_kv_heads=4, qk_head_dim=128, v_head_dim=128,
                                 kv_bytes_per_token=2048)) == 0.0


@pytest.mark.gradient
def test_idle_calls_have_finite_zero_gradients():
  spec, params = _load()
  params = base.as_arrays(params)
  fns = [lambda p: gpu.matmul_time_s(spec, p, 0, 768, 2048),
         lambda p: gpu.attention_time_s(spec, p, q_tokens=0, context_len=0, num_q_heads=32,
                                        num_kv_heads=4, qk_head_dim=128, v_head_dim=128,
                                        kv_bytes_per_token=2048),
         lambda p: gpu.elementwise_time_s(spec, p, 0.0)]
  for fn in fns:
    for g in jax.tree_util.tree_leaves(jax.grad(fn)(params)):
      assert np.all(np.asarray(g) == 0.0)


@pytest.mark.inputs
def test_attention_head_mismatch_is_config_error():
  spec, params = _load()
  with pytest.raises(base.ConfigError, match="multiple of num_kv_heads"):
    _attn(spec, params, num_q_heads=32, num_kv_heads=5)


@pytest.mark.inputs
def test_unknown_dtype_is_config_error():
  spec, params = _load("jetson_agx_orin_64gb")
  with pytest.raises(base.ConfigError, match="fp8"):
    gpu.matmul_time_s(spec, params, 1, 16, 16, dtype="fp8")


# ---------------------------------------------------------------------------
# Gradients.

def _fd_check(fn, params, rel=1e-3):
  """Every leaf of ``params``: jax.grad vs central differences (x64)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  grads = jax.tree_util.tree_leaves(jax.grad(fn)(params))
  for i, (x, g) in enumerate(zip(leaves, grads)):
    h = 1e-6 * abs(float(x)) or 1e-6  # a leaf at 0 (queued_launch_us) steps by 1e-6

    def at(v, i=i):
      ls = list(leaves)
      ls[i] = jnp.asarray(v, jnp.float64)
      return float(fn(jax.tree_util.tree_unflatten(tree, ls)))

    fd = (at(float(x) + h) - at(float(x) - h)) / (2 * h)
    scale = max(abs(fd), abs(float(g)), 1e-30)
    assert abs(float(g) - fd) <= rel * scale + 1e-15, (i, float(g), fd)


@pytest.mark.parametrize("mnk", [(1, 8192, 8192), (4096, 4096, 4096), (1, 16, 16)])
@pytest.mark.gradient
def test_matmul_gradients_match_finite_differences(mnk):
  with jax.enable_x64(True):
    spec, params = _load()
    params = base.as_arrays(params, jnp.float64)
    _fd_check(lambda p: gpu.matmul_time_s(spec, p, *mnk), params)


@pytest.mark.gradient
def test_attention_and_elementwise_gradients_match_finite_differences():
  with jax.enable_x64(True):
    spec, params = _load("jetson_agx_orin_64gb")
    params = base.as_arrays(params, jnp.float64)
    for q, ctx in [(1, 4096), (2048, 2048)]:
      _fd_check(lambda p, q=q, ctx=ctx: gpu.attention_time_s(
          spec, p, q_tokens=q, context_len=ctx, num_q_heads=32, num_kv_heads=4,
          qk_head_dim=128, v_head_dim=128, kv_bytes_per_token=2048), params)
    _fd_check(lambda p: gpu.elementwise_time_s(spec, p, 1e8), params)


@pytest.mark.gradient
def test_memory_bound_gradient_is_analytic():
  with jax.enable_x64(True):
    spec, params = _load()
    params = base.as_arrays(params, jnp.float64)
    m, n, k = 1, 8192, 8192
    b = 2.0 * (k * n + m * k + m * n)
    g = jax.grad(lambda p: gpu.matmul_time_s(spec, p, m, n, k))(params)
    bw, frac = float(params.memory_bandwidth_gbps), float(params.achievable_bandwidth_fraction)
    assert float(g.memory_bandwidth_gbps) == pytest.approx(-b / (frac * bw ** 2 * 1e9),
                                                           rel=1e-9)
    assert float(g.clock_mhz) == 0.0  # not compute bound


@pytest.mark.analytic
def test_vmap_over_1000_parameter_sets_equals_loop():
  spec, params = _load()
  rng = np.random.default_rng(0)
  bws = rng.uniform(200.0, 2000.0, 1000)
  clocks = rng.uniform(1000.0, 3000.0, 1000)
  ps = [base.replace(params, memory_bandwidth_gbps=b, clock_mhz=c) for b, c in zip(bws, clocks)]
  stacked = base.stack([base.as_arrays(p) for p in ps])

  def f(p):
    return (gpu.matmul_time_s(spec, p, 64, 768, 2048)
            + gpu.attention_time_s(spec, p, q_tokens=1, context_len=1000, num_q_heads=32,
                                   num_kv_heads=4, qk_head_dim=128, v_head_dim=128,
                                   kv_bytes_per_token=2048))

  batched = np.asarray(jax.jit(jax.vmap(f))(stacked))
  jf = jax.jit(f)
  # All 1,000 vmapped; every 10th set also run on its own (one jitted call each).
  looped = np.array([float(jf(base.as_arrays(p))) for p in ps[::10]])
  np.testing.assert_allclose(batched[::10], looped, rtol=1e-6)
  assert batched.std() > 0


# ---------------------------------------------------------------------------
# Probe.

@pytest.mark.e2e
def test_probe_gpu_matmul(capsys):
  assert probe.main(["gpu", "--preset=rtx5080", "--m=1", "--n=768", "--k=2048"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["bound"] in gpu.BOUNDS and out["time_s"] > 0
  assert out["time_s"] == pytest.approx(out["launch_s"] + max(out["compute_s"], out["memory_s"]),
                                        rel=1e-6)
  assert out["launch_hidden"] and out["launch_s"] == 0.0
  assert out["chain_launch_s"] == pytest.approx(1.3e-6)
  assert probe.main(["gpu", "--preset=rtx5080", "--m=1", "--n=768", "--k=2048",
                     "--launch=alone"]) == 0
  alone = json.loads(capsys.readouterr().out)
  assert alone["launch_s"] == pytest.approx(1.3e-6) and alone["chain_launch_s"] == 0.0
  assert alone["time_s"] == pytest.approx(out["time_s"] + 1.3e-6, rel=1e-6)
  assert probe.main(["gpu", "--preset=h200", "--m=8192", "--n=8192", "--k=8192",
                     "--dtype=fp8"]) == 0
  assert json.loads(capsys.readouterr().out)["bound"] == "compute"


@pytest.mark.e2e
def test_probe_gpu_attention(capsys):
  assert probe.main(["gpu", "--op=attention", "--q_tokens=1", "--context_len=2048"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["pairs"] == 2048 and out["time_s"] > 0


@pytest.mark.parametrize("argv", [
    ["gpu", "--m=1", "--n=768"],                                  # k missing
    ["gpu", "--m=x", "--n=768", "--k=2048"],                      # not an integer
    ["gpu", "--m=-3", "--n=768", "--k=2048"],                     # negative
    ["gpu", "--m=1", "--n=768", "--k=2048", "--dtype=fp64"],      # unknown dtype
    ["gpu", "--m=1", "--n=768", "--k=2048", "--preset=rtx9090"],  # unknown preset
    ["gpu", "--m=1", "--n=768", "--k=2048", "--bogus=1"],         # unknown flag
    ["gpu", "--op=conv"],
    ["gpu", "--m=1", "--n=768", "--k=2048", "--launch=later"],
    ["gpu", "--m=1", "--n=768", "--k=2048", "--act_bytes=0"],
    ["gpu", "--op=attention", "--q_tokens=8", "--context_len=4"],
    ["gpu", "--op=attention", "--q_heads=32", "--kv_heads=5"],
])
@pytest.mark.inputs
def test_probe_gpu_bad_arguments(argv, capsys):
  assert probe.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("ndpsim.probe:") and err.count("\n") == 1

"""GPU model: roofline kernels with tile and wave quantization.

Modelled, per kernel:

* launch: kernels of an inference step are queued back-to-back on one stream
  (``spec.launch_hidden``, the default): the host issues the next launch while
  the GPU runs the current kernel, so each kernel adds only
  ``queued_launch_us`` (measured about 0 on a Blackwell consumer GPU) and a
  chain of queued kernels pays one ``kernel_launch_us`` at its start, after a
  host synchronisation (:func:`chain_launch_s`; ``costs.py`` charges it once
  per MoE layer, where the host reads the routing).  With ``launch_hidden``
  false every kernel is launched on an idle GPU and pays ``kernel_launch_us``
  itself (and :func:`chain_launch_s` is 0).
* matmul [m, k] x [k, n] (m = tokens): ``launch + max(compute, memory)``.
  Compute: the output is cut into tiles of ``tile_n`` columns and a height
  that follows skinny M (``min(tile_m, ceil(m / mma_m) * mma_m)``, as a GEMM
  library picks a narrow tile for few tokens); when the tiles do not fill
  the SMs, K is split (split-K, chunks of at least ``min_k_per_split``); work
  units are scheduled in waves over ``num_sms`` SMs, each SM running at the
  achievable fraction of its dense tensor rate for the compute dtype.  Memory:
  DRAM bytes = max(compulsory traffic (A + B + C once, plus split-K partial
  sums beyond what L2 holds), L2-blocked traffic 2 m n k e / sqrt(L2 / e)) at the achievable
  fraction of peak bandwidth (e = element bytes; the second term is the
  Hong-Kung order of traffic with square tiles held in L2).
* attention (one fused FlashAttention-style kernel) for prefill (causal over
  ``q_tokens`` new tokens after ``context_len - q_tokens`` cached ones) and
  decode (``q_tokens = 1``), with MHA / GQA shapes, MLA in its absorbed form
  (one shared latent "kv head"), and sliding windows: tensor FLOPs of QK^T and
  PV over the attended (query, key) pairs, softmax on the vector units, KV-cache
  reads (re-read per query block when the KV of the call exceeds L2), Q read,
  O and new-KV writes.
* element-wise / reduction kernels: bytes over achievable bandwidth.

Not modelled: clock throttling under power limits, L2 hits across kernels,
bank conflicts and shared-memory limits on occupancy, tail effects inside a
wave (causal attention CTAs of unequal length), stream concurrency between
kernels, a queued chain of kernels shorter than the host's issue time per
launch (the GPU then waits for the host: about ``kernel_launch_us`` per kernel,
not ``queued_launch_us``), the host round trip of a synchronisation beyond one
launch, PCIe traffic.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ndpsim import base, config
from ndpsim.base import ConfigError

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4")
_SOFTMAX_VECTOR_FLOPS_PER_SCORE = 8.0  # max, subtract, exp, sum, rescale


@base.spec_dataclass
class GpuSpec:
  """Static GPU structure and kernel-model choices.

  num_sms: streaming multiprocessors.
  tensor_dtypes: dtypes with a tensor-core path, in the order of
    ``GpuParams.tensor_flops_per_cycle_per_sm``.
  tile_m, tile_n: largest output tile of a GEMM kernel (rows = tokens, cols).
  mma_m: smallest M granularity of a tensor-core instruction (tile height
    for few tokens is rounded up to it).
  min_k_per_split: smallest K chunk when K is split over SMs.
  attention_block_q: query rows per attention CTA.
  launch_hidden: kernels are queued back-to-back on a stream (true, how an
    inference step issues its kernels): each pays ``queued_launch_us`` and a
    chain pays ``kernel_launch_us`` once (:func:`chain_launch_s`); false:
    every kernel pays ``kernel_launch_us`` (launched and synchronised alone).
  """
  num_sms: int
  tensor_dtypes: tuple[str, ...]
  tile_m: int = 128
  tile_n: int = 128
  mma_m: int = 16
  min_k_per_split: int = 256
  attention_block_q: int = 128
  launch_hidden: bool = True


@base.params_dataclass
class GpuParams:
  """Traced GPU parameters.

  clock_mhz: sustained SM clock.
  tensor_flops_per_cycle_per_sm: dense tensor FLOP per cycle per SM, one per
    entry of ``spec.tensor_dtypes`` (with FP32 accumulation, as inference
    kernels run); a tuple of floats.
  vector_flops_per_cycle_per_sm: CUDA-core FP32 FLOP per cycle per SM (FMA = 2).
  memory_bandwidth_gbps: peak DRAM bandwidth, 1e9 B/s.
  memory_capacity_bytes: device memory.
  achievable_compute_fraction: sustained fraction of peak FLOP rate, (0, 1].
  achievable_bandwidth_fraction: sustained fraction of peak bandwidth, (0, 1].
  l2_bytes: last-level cache.
  kernel_launch_us: launch cost of a kernel that is not queued behind another
    one (the first of a chain after a host synchronisation), us.
  queued_launch_us: launch cost added by a kernel queued behind another on
    the same stream, us (about 0: the launch overlaps the previous kernel).
  """
  clock_mhz: Any
  tensor_flops_per_cycle_per_sm: Any
  vector_flops_per_cycle_per_sm: Any
  memory_bandwidth_gbps: Any
  memory_capacity_bytes: Any
  achievable_compute_fraction: Any
  achievable_bandwidth_fraction: Any
  l2_bytes: Any
  kernel_launch_us: Any
  queued_launch_us: Any


# Ranges of the numeric fields (config.Range: unit, hard, plausible, unit slips).
_SIZE = config.count_range((1, 4096), hard=(1, 2 ** 20))
RANGES = {
    "num_sms": config.count_range((1, 1024), hard=(1, 2 ** 20), unit="SMs"),
    "tile_m": _SIZE, "tile_n": _SIZE, "mma_m": _SIZE, "min_k_per_split": _SIZE,
    "attention_block_q": _SIZE,
}
PARAMS_RANGES = {
    "clock_mhz": config.clock_range((100.0, 1e4)),
    "tensor_flops_per_cycle_per_sm": config.count_range(
        (1.0, 1e6), hard=(1e-3, 1e12), unit="FLOP/cycle/SM"),
    "vector_flops_per_cycle_per_sm": config.count_range(
        (1.0, 1e5), hard=(1e-3, 1e12), unit="FLOP/cycle/SM"),
    "memory_bandwidth_gbps": config.bandwidth_range((1.0, 1e5)),
    "memory_capacity_bytes": config.bytes_range((1e8, 1e14)),
    "achievable_compute_fraction": config.fraction_range((0.05, 1.0)),
    "achievable_bandwidth_fraction": config.fraction_range((0.05, 1.0)),
    "l2_bytes": config.bytes_range((1e4, 1e10)),
    "kernel_launch_us": config.Range("us", (1e-6, 1e9), (1e-3, 1e5), config.US_SLIPS),
    "queued_launch_us": config.Range("us", (1e-6, 1e9), (1e-3, 1e5), config.US_SLIPS),
}
config.register_ranges(GpuSpec, RANGES)
config.register_ranges(GpuParams, PARAMS_RANGES)


def memory_capacity_bytes(params: GpuParams):
  """Device memory, bytes (traced scalar)."""
  return params.memory_capacity_bytes


def tensor_flops_per_cycle_per_sm(spec: GpuSpec, params: GpuParams, dtype: str):
  """Dense tensor FLOP/cycle/SM for ``dtype``; ConfigError if it has no path."""
  if dtype not in spec.tensor_dtypes:
    raise ConfigError(f"gpu: dtype {dtype!r} has no tensor-core rate in this preset; "
                      f"write one of {list(spec.tensor_dtypes)}")
  return jnp.asarray(params.tensor_flops_per_cycle_per_sm[spec.tensor_dtypes.index(dtype)])


def peak_flops(spec: GpuSpec, params: GpuParams, dtype: str = "bf16"):
  """Peak dense tensor FLOP/s of the whole GPU (not derated)."""
  return (tensor_flops_per_cycle_per_sm(spec, params, dtype) * spec.num_sms
          * params.clock_mhz * 1e6)


def achievable_bandwidth_gbps(spec: GpuSpec, params: GpuParams):
  """Sustained DRAM bandwidth, 1e9 B/s."""
  del spec
  return params.memory_bandwidth_gbps * params.achievable_bandwidth_fraction


def _f(x):
  return jnp.asarray(x, jnp.result_type(float))


def launch_s(spec: GpuSpec, params: GpuParams):
  """Launch cost each kernel pays, s: ``queued_launch_us`` when launches are
  hidden behind a queued chain (``spec.launch_hidden``), else ``kernel_launch_us``."""
  us = params.queued_launch_us if spec.launch_hidden else params.kernel_launch_us
  return jnp.asarray(us) * 1e-6


def chain_launch_s(spec: GpuSpec, params: GpuParams):
  """Launch cost a chain of queued kernels pays once at its start, s.

  ``kernel_launch_us`` when ``spec.launch_hidden`` (the first kernel after a
  host synchronisation is not hidden), else 0 (every kernel already paid it).
  A chain of n kernels thus costs ``chain_launch_s + sum(kernel times)``.
  """
  t = jnp.asarray(params.kernel_launch_us) * 1e-6
  return t if spec.launch_hidden else jnp.zeros_like(t)


def _bound(compute_s, memory_s, launch_s):
  """0 = compute, 1 = memory, 2 = launch: the largest term."""
  terms = jnp.stack(jnp.broadcast_arrays(compute_s, memory_s, launch_s))
  return jnp.argmax(terms, axis=0)


BOUNDS = ("compute", "memory", "launch")


def matmul_breakdown(spec: GpuSpec, params: GpuParams, m, n, k,
                     act_dtype_bytes=2.0, weight_dtype_bytes=2.0,
                     dtype: str = "bf16") -> dict:
  """Terms of one GEMM [m, k] x [k, n] (see module docstring).

  m, n, k: sizes (ints or arrays, may be traced; broadcast together).
  Returns a dict of arrays: time_s, compute_s, memory_s, launch_s, flops,
  dram_bytes, tiles, split_k, waves, bound (index into ``BOUNDS``).
  """
  m, n, k = _f(m), _f(n), _f(k)
  rate_sm = (tensor_flops_per_cycle_per_sm(spec, params, dtype) * params.clock_mhz * 1e6
             * params.achievable_compute_fraction)
  height = jnp.minimum(spec.tile_m, jnp.ceil(m / spec.mma_m) * spec.mma_m)
  tiles = jnp.ceil(m / spec.tile_m) * jnp.ceil(n / spec.tile_n)
  max_split = jnp.maximum(1.0, jnp.floor(k / spec.min_k_per_split))
  split = jnp.clip(jnp.floor(spec.num_sms / jnp.maximum(tiles, 1.0)), 1.0, max_split)
  waves = jnp.ceil(tiles * split / spec.num_sms)
  unit_flops = 2.0 * height * spec.tile_n * jnp.ceil(k / split)
  compute_s = waves * unit_flops / rate_sm
  a_b, w_b = _f(act_dtype_bytes), _f(weight_dtype_bytes)
  # split-K partial sums (fp32, written and read back) reach DRAM only beyond L2
  partials = jnp.maximum(0.0, (split - 1.0) * m * n * 4.0 - params.l2_bytes) * 2.0
  compulsory = m * k * a_b + k * n * w_b + m * n * a_b + partials
  elem = jnp.maximum(a_b, w_b)
  blocked = 2.0 * m * n * k * elem / jnp.sqrt(params.l2_bytes / elem)
  dram_bytes = jnp.maximum(compulsory, blocked)
  memory_s = dram_bytes / (achievable_bandwidth_gbps(spec, params) * 1e9)
  launch = launch_s(spec, params)
  active = (m > 0) & (n > 0) & (k > 0)
  time_s = jnp.where(active, launch + jnp.maximum(compute_s, memory_s), 0.0)
  return {"time_s": time_s, "compute_s": jnp.where(active, compute_s, 0.0),
          "memory_s": jnp.where(active, memory_s, 0.0),
          "launch_s": jnp.where(active, launch, 0.0), "flops": 2.0 * m * n * k,
          "dram_bytes": jnp.where(active, dram_bytes, 0.0), "tiles": tiles,
          "split_k": split, "waves": waves, "bound": _bound(compute_s, memory_s, launch)}


def matmul_time_s(spec: GpuSpec, params: GpuParams, m, n, k, act_dtype_bytes=2.0,
                  weight_dtype_bytes=2.0, dtype: str = "bf16"):
  """Time of one GEMM [m, k] x [k, n], s; 0 when m, n or k is 0.

  m is the token count and may be traced (tokens routed to an expert).
  """
  return matmul_breakdown(spec, params, m, n, k, act_dtype_bytes, weight_dtype_bytes,
                          dtype)["time_s"]


def attended_pairs(q_tokens, context_len, sliding_window=0):
  """Number of (query, key) pairs a causal attention call scores.

  Queries are the last ``q_tokens`` of ``context_len`` positions; query at
  position p sees keys max(0, p - w + 1) .. p (all keys 0 .. p when w == 0).
  """
  q, ctx, w = _f(q_tokens), _f(context_len), _f(sliding_window)
  p0 = ctx - q
  full = q * p0 + q * (q + 1.0) / 2.0
  a, b = p0 + 1.0, ctx
  c = jnp.clip(w, a - 1.0, b)
  windowed = (c * (c + 1.0) - (a - 1.0) * a) / 2.0 + (b - c) * w
  return jnp.where(w > 0, windowed, full)


def attention_breakdown(spec: GpuSpec, params: GpuParams, *, q_tokens, context_len,
                        num_q_heads: int, num_kv_heads: int, qk_head_dim: int,
                        v_head_dim: int, kv_bytes_per_token, sliding_window=0, batch=1,
                        act_dtype_bytes=2.0, dtype: str = "bf16") -> dict:
  """Terms of one fused attention call (see module docstring).

  q_tokens: new tokens per sequence (prompt length in prefill, 1 in decode).
  context_len: positions visible to the last query, including the new ones.
  kv_bytes_per_token: K and V bytes of one token of this layer (all kv heads;
    for MLA the compressed latent + rope key).
  sliding_window: window in tokens, 0 = full causal.  batch: sequences.
  Returns a dict of arrays like :func:`matmul_breakdown` (bound 0 = compute
  incl. softmax, 1 = memory, 2 = launch).
  """
  if isinstance(num_q_heads, int) and isinstance(num_kv_heads, int):
    if num_kv_heads <= 0 or num_q_heads <= 0 or num_q_heads % num_kv_heads:
      raise ConfigError(f"gpu attention: num_q_heads={num_q_heads} must be a positive "
                        f"multiple of num_kv_heads={num_kv_heads}")
  q, ctx, bsz = _f(q_tokens), _f(context_len), _f(batch)
  w = _f(sliding_window)
  pairs = attended_pairs(q, ctx, w)
  flops = bsz * num_q_heads * pairs * 2.0 * (qk_head_dim + v_head_dim)
  eff_clock_hz = params.clock_mhz * 1e6 * params.achievable_compute_fraction
  # CTAs: (sequence, q head, query block); idle SMs split the KV (flash-decoding).
  ctas = jnp.maximum(bsz * num_q_heads * jnp.ceil(q / spec.attention_block_q), 1.0)
  units = ctas * jnp.maximum(1.0, jnp.floor(spec.num_sms / ctas))
  util = units / (jnp.ceil(units / spec.num_sms) * spec.num_sms)
  tensor_rate = (tensor_flops_per_cycle_per_sm(spec, params, dtype) * eff_clock_hz
                 * spec.num_sms)
  vector_rate = params.vector_flops_per_cycle_per_sm * eff_clock_hz * spec.num_sms
  tensor_s = flops / (tensor_rate * util)
  vector_s = bsz * num_q_heads * pairs * _SOFTMAX_VECTOR_FLOPS_PER_SCORE / (vector_rate * util)
  compute_s = jnp.maximum(tensor_s, vector_s)
  kv_tokens = jnp.where(w > 0, jnp.minimum(ctx, q + w - 1.0), ctx)
  kv_bytes = bsz * kv_tokens * _f(kv_bytes_per_token)
  rereads = jnp.where(kv_bytes <= params.l2_bytes, 1.0,
                      jnp.maximum(1.0, jnp.ceil(q / spec.attention_block_q)))
  a_b = _f(act_dtype_bytes)
  dram_bytes = (kv_bytes * rereads + bsz * q * _f(kv_bytes_per_token)
                + bsz * q * num_q_heads * (qk_head_dim + v_head_dim) * a_b)
  memory_s = dram_bytes / (achievable_bandwidth_gbps(spec, params) * 1e9)
  launch = launch_s(spec, params)
  active = (q > 0) & (bsz > 0)
  time_s = jnp.where(active, launch + jnp.maximum(compute_s, memory_s), 0.0)
  return {"time_s": time_s, "compute_s": jnp.where(active, compute_s, 0.0),
          "memory_s": jnp.where(active, memory_s, 0.0),
          "launch_s": jnp.where(active, launch, 0.0), "flops": flops, "pairs": pairs,
          "dram_bytes": jnp.where(active, dram_bytes, 0.0), "sm_utilization": util,
          "bound": _bound(compute_s, memory_s, launch)}


def attention_time_s(spec: GpuSpec, params: GpuParams, *, q_tokens, context_len,
                     num_q_heads: int, num_kv_heads: int, qk_head_dim: int,
                     v_head_dim: int, kv_bytes_per_token, sliding_window=0, batch=1,
                     act_dtype_bytes=2.0, dtype: str = "bf16"):
  """Time of one attention call, s (0 when q_tokens or batch is 0).

  Prefill: q_tokens = prompt length, context_len = q_tokens (+ cached prefix).
  Decode: q_tokens = 1, context_len = tokens so far (may be traced).
  MLA: pass the absorbed form (num_kv_heads=1, qk_head_dim = kv_lora_rank +
  rope dim, v_head_dim = kv_lora_rank, kv_bytes_per_token of the latent cache).
  """
  return attention_breakdown(
      spec, params, q_tokens=q_tokens, context_len=context_len, num_q_heads=num_q_heads,
      num_kv_heads=num_kv_heads, qk_head_dim=qk_head_dim, v_head_dim=v_head_dim,
      kv_bytes_per_token=kv_bytes_per_token, sliding_window=sliding_window, batch=batch,
      act_dtype_bytes=act_dtype_bytes, dtype=dtype)["time_s"]


def elementwise_time_s(spec: GpuSpec, params: GpuParams, num_bytes, flops=0.0):
  """Time of one element-wise / reduction kernel moving ``num_bytes``, s.

  = launch + max(bytes / achievable bandwidth, flops / achievable vector
  rate); 0 when both bytes and flops are 0.
  """
  b, fl = _f(num_bytes), _f(flops)
  memory_s = b / (achievable_bandwidth_gbps(spec, params) * 1e9)
  vector_s = fl / (params.vector_flops_per_cycle_per_sm * spec.num_sms * params.clock_mhz
                   * 1e6 * params.achievable_compute_fraction)
  t = launch_s(spec, params) + jnp.maximum(memory_s, vector_s)
  return jnp.where((b > 0) | (fl > 0), t, 0.0)


# ---------------------------------------------------------------------------
# Preset loading.

def build(obj: dict, where: str) -> tuple[GpuSpec, GpuParams]:
  """Builds (spec, params) from a preset dict; see ``config.py``.

  ``params.tensor_flops_per_cycle_per_sm`` is a JSON object {dtype: rate};
  its keys become ``spec.tensor_dtypes``.
  """
  s = config.take_fields(obj["spec"], GpuSpec, where, "spec", skip=("tensor_dtypes",))
  rates = obj["params"].get("tensor_flops_per_cycle_per_sm")
  config.require(rates is not None, where,
                 "missing field params.tensor_flops_per_cycle_per_sm; add "
                 "\"tensor_flops_per_cycle_per_sm\": {\"bf16\": <dense FLOP/cycle/SM>, ...}")
  config.require(isinstance(rates, dict) and len(rates) > 0, where,
                 "field params.tensor_flops_per_cycle_per_sm must be a JSON object "
                 "{dtype: dense FLOP per cycle per SM}, e.g. {\"bf16\": 512}")
  for dt, v in rates.items():
    config.require(dt in DTYPES, where,
                   f"params.tensor_flops_per_cycle_per_sm has unknown dtype {dt!r}; "
                   f"write dtypes from {DTYPES}")
    config.require(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                   and v != float("inf"),
                   where, f"params.tensor_flops_per_cycle_per_sm.{dt} is {v!r}; write "
                   "a number > 0")
    config.check_range(float(v), PARAMS_RANGES["tensor_flops_per_cycle_per_sm"], where,
                       f"params.tensor_flops_per_cycle_per_sm.{dt}")
  p = config.take_fields(obj["params"], GpuParams, where, "params",
                         skip=("tensor_flops_per_cycle_per_sm",),
                         allow_zero=("kernel_launch_us", "queued_launch_us"))
  for frac in ("achievable_compute_fraction", "achievable_bandwidth_fraction"):
    config.require(p[frac] <= 1.0, where,
                   f"params.{frac} is {p[frac]}; write a fraction in (0, 1]")
  config.require(s["tile_m"] % s["mma_m"] == 0, where,
                 f"spec.tile_m ({s['tile_m']}) must be a multiple of spec.mma_m "
                 f"({s['mma_m']}); write e.g. tile_m {s['mma_m'] * 8}")
  spec = GpuSpec(tensor_dtypes=tuple(rates), **s)
  params = GpuParams(tensor_flops_per_cycle_per_sm=tuple(float(v) for v in rates.values()),
                     **p)
  return spec, params


config.register_kind("gpu", GpuSpec, GpuParams, build)

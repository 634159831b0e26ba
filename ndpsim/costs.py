"""Per-operation costs of one MoE model on one system, from the hardware models.

Every function is pure in ``(system spec, system params, model, sizes)``:
the engine calls them inside its scans, so gradients flow from end-to-end
latency back to every traced hardware parameter.  Times are seconds.

Where each piece of work runs:

* GPU: attention (projections + the attention kernel), router, shared experts,
  leading dense layers, LM head, the reduction of NDP partial sums, and
  routed experts placed on the GPU (gate+up fused GEMM, then down GEMM).
* NDP units: routed experts, either tensor-parallel (each unit holds a
  1/N slice: gate and up by column, down by row) or expert-parallel (whole
  experts on one unit).
* Link: expert weight loads to the GPU (T_w), activation broadcast to the NDP
  side, partial-sum returns to the GPU.  The host side forwards activations to
  and from the units over each unit's own host bus, in parallel.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ndpsim.hw import gpu, link, ndp
from ndpsim.workload import models as M


def _w(model) -> float:
  return M.dtype_bytes(model.expert_dtype)


def _a(model) -> float:
  return M.dtype_bytes(model.activation_dtype)


def _positive(tokens):
  return jnp.asarray(tokens, jnp.float32) > 0


def gpu_expert_s(ss, sp, model, tokens):
  """GPU time of one routed expert for ``tokens`` (array) tokens; 0 tokens -> 0."""
  h, f = model.hidden_size, model.expert_ffn_size
  w, a = _w(model), _a(model)
  t = (gpu.matmul_time_s(ss.gpu, sp.gpu, tokens, 2 * f, h, act_dtype_bytes=a,
                         weight_dtype_bytes=w)
       + gpu.matmul_time_s(ss.gpu, sp.gpu, tokens, h, f, act_dtype_bytes=a,
                           weight_dtype_bytes=w))
  return jnp.where(_positive(tokens), t, 0.0)


def ndp_expert_s(ss, sp, model, tokens, num_slices: int):
  """Time on one NDP unit of a 1/``num_slices`` slice of one expert.

  ``num_slices`` = N for tensor parallelism, 1 for a whole expert (EP).
  Gate and up [hidden, 2 ffn / N] by column, down [ffn / N, hidden] by row.
  """
  h, f = model.hidden_size, model.expert_ffn_size
  w, a = _w(model), _a(model)
  fs = f / num_slices
  t = (ndp.matmul_time_s(ss.ndp, sp.ndp, h, 2 * fs, tokens, weight_dtype_bytes=w,
                         act_dtype_bytes=a)
       + ndp.matmul_time_s(ss.ndp, sp.ndp, fs, h, tokens, weight_dtype_bytes=w,
                           act_dtype_bytes=a))
  return jnp.where(_positive(tokens), t, 0.0)


def fetch_s(ss, sp, model, ndp_mode: str = "tp"):
  """T_w: time to copy one routed expert's weights from the NDP units to the GPU.

  The copy streams at the slower of the link's payload bandwidth and the
  source: an expert stored whole on one unit (``ndp_mode="ep"``) is read
  through that unit's host bus alone; a tensor-parallel expert
  (``ndp_mode="tp"``) is sliced over all N units, whose buses stream in
  parallel.  ``t = overhead + latency + B / min(link, sources x host bus)``.
  """
  b = float(M.expert_bytes(model))
  sources = ss.num_ndp_units if ndp_mode == "tp" else 1
  src_bw = sources * sp.ndp.host_bus_bandwidth_gbps * 1e9
  link_bw = link.bandwidth_gbps(ss.link, sp.link) * 1e9
  slower_source_s = jnp.maximum(b / src_bw - b / link_bw, 0.0)
  return link.transfer_time_s(ss.link, sp.link, b) + slower_source_s


def link_share(ss, sp):
  """BW_link / (BW_ndp + BW_link): the link's share of the bandwidth that can
  feed expert work (MoNDE's Eq. 6 ratio), with BW_ndp the NDP units'
  aggregate weight-streaming bandwidth and BW_link the link's payload
  bandwidth.  Dimensionless, traced."""
  bl = link.bandwidth_gbps(ss.link, sp.link)
  bn = ss.num_ndp_units * ndp.stream_bandwidth_gbps(ss.ndp, sp.ndp)
  return bl / (bn + bl)


def act_bytes(model, tokens):
  return jnp.asarray(tokens, jnp.float32) * model.hidden_size * _a(model)


def _host_bus_s(ss, sp, num_bytes):
  return num_bytes / (sp.ndp.host_bus_bandwidth_gbps * 1e9)


def broadcast_s(ss, sp, model, tokens):
  """Activations of ``tokens`` tokens to every NDP unit: one link message, then
  each unit's host bus in parallel."""
  b = act_bytes(model, tokens)
  t = link.message_time_s(ss.link, sp.link, b) + _host_bus_s(ss, sp, b)
  return jnp.where(_positive(tokens), t, 0.0)


def return_s(ss, sp, model, tokens, num_partials):
  """``num_partials`` partial outputs of ``tokens`` tokens back to the GPU (one
  gathered message after each unit's host bus)."""
  b = act_bytes(model, tokens)
  t = (_host_bus_s(ss, sp, b)
       + link.message_time_s(ss.link, sp.link, b * num_partials))
  return jnp.where(_positive(tokens) & (num_partials > 0), t, 0.0)


def reduce_s(ss, sp, model, tokens, num_partials):
  """GPU kernel summing ``num_partials`` partials into the layer output."""
  b = act_bytes(model, tokens) * (num_partials + 1.0)
  t = gpu.elementwise_time_s(ss.gpu, sp.gpu, b)
  return jnp.where(_positive(tokens) & (num_partials > 0), t, 0.0)


def _matmul(ss, sp, tokens, n, k, wbytes, abytes):
  return gpu.matmul_time_s(ss.gpu, sp.gpu, tokens, n, k, act_dtype_bytes=abytes,
                           weight_dtype_bytes=wbytes)


def _attention_block_s(ss, sp, model, layer: int, q_tokens, context_len, batch):
  """Projections + attention kernel of one layer (absolute index)."""
  h = model.hidden_size
  wb = M.dtype_bytes(model.attention_dtype)
  proj_cols = M.attention_bytes_per_layer(model) / (h * wb)
  kw = M.attention_kwargs(model, layer)
  t = _matmul(ss, sp, q_tokens * batch, proj_cols, h, wb, _a(model))
  t = t + gpu.attention_time_s(ss.gpu, sp.gpu, q_tokens=q_tokens,
                               context_len=context_len, batch=batch, **kw)
  return t


def _ffn_s(ss, sp, model, tokens, ffn: int, dtype: str):
  h = model.hidden_size
  wb, ab = M.dtype_bytes(dtype), _a(model)
  return (_matmul(ss, sp, tokens, 2 * ffn, h, wb, ab)
          + _matmul(ss, sp, tokens, h, ffn, wb, ab))


def moe_layer_gpu_s(ss, sp, model, q_tokens, context_len, batch):
  """[L_moe] GPU time before the routed experts of each MoE layer: attention
  block and router (``router``), and shared experts (``shared``)."""
  idx = M.moe_layer_indices(model)
  tokens = q_tokens * batch
  router = _matmul(ss, sp, tokens, model.num_experts, model.hidden_size,
                   M.dtype_bytes(model.dense_dtype), _a(model))
  # Queued kernels hide their launches; the layer's chain pays one launch, as
  # it restarts after the host reads the routing (0 if launches are not hidden).
  router = router + gpu.chain_launch_s(ss.gpu, sp.gpu)
  attn = jnp.stack([_attention_block_s(ss, sp, model, l, q_tokens, context_len, batch)
                    for l in _unique_attention_layers(model, idx)])
  attn = attn[np.asarray(_attention_layer_map(model, idx))]
  shared = 0.0
  if model.num_shared_experts:
    shared = model.num_shared_experts * _ffn_s(
        ss, sp, model, tokens, model.shared_expert_ffn_size, model.dense_dtype)
  return attn + router, jnp.broadcast_to(jnp.asarray(shared, jnp.float32), attn.shape)


def _attention_signature(model, layer: int):
  kw = M.attention_kwargs(model, layer)
  return tuple(sorted(kw.items()))


def _unique_attention_layers(model, idx):
  seen, out = set(), []
  for l in idx:
    s = _attention_signature(model, l)
    if s not in seen:
      seen.add(s)
      out.append(l)
  return out


def _attention_layer_map(model, idx):
  uniq = [_attention_signature(model, l) for l in _unique_attention_layers(model, idx)]
  return [uniq.index(_attention_signature(model, l)) for l in idx]


def step_overhead_s(ss, sp, model, q_tokens, context_len, batch, lm_head_tokens):
  """GPU time outside the MoE layers: dense layers (leading and interleaved,
  each with its own attention window) and the LM head."""
  t = jnp.zeros(())
  for l in M.dense_layer_indices(model):
    t = t + _attention_block_s(ss, sp, model, l, q_tokens, context_len, batch)
    t = t + _ffn_s(ss, sp, model, q_tokens * batch, model.dense_ffn_size,
                   model.dense_dtype)
  t = t + _matmul(ss, sp, lm_head_tokens, model.vocab_size, model.hidden_size,
                  M.dtype_bytes(model.embedding_dtype), _a(model))
  return t


def gpu_fixed_bytes(model, context_len, batch) -> float:
  """GPU memory that is not routed experts: non-expert weights + KV cache."""
  return float(M.non_expert_bytes(model)) + float(
      M.kv_bytes_per_token(model)) * context_len * batch


def decode_staging_experts(model, batch) -> int:
  """Experts one decode layer may need on the GPU at once: its activated
  experts, ``min(E, batch x top_k)`` (static)."""
  return min(model.num_experts, batch * model.top_k)


def expert_slots(ss, sp, model, context_len, batch):
  """Routed experts the GPU can hold at once (resident + staged + in flight):
  ``floor((capacity - reserve - non-expert weights - KV cache) / expert
  bytes)``, >= 0 (traced)."""
  free = (gpu.memory_capacity_bytes(sp.gpu) - sp.gpu_reserved_bytes
          - gpu_fixed_bytes(model, context_len, batch))
  return jnp.floor(jnp.maximum(free, 0.0) / float(M.expert_bytes(model)))


def resident_capacity(ss, sp, model, context_len, batch):
  """Routed experts per MoE layer that may stay resident (traced).

  The GPU's expert slots (:func:`expert_slots`) less the staging room of one
  decode layer (:func:`decode_staging_experts`, so a decode layer can always
  load all its activated experts), split evenly over the MoE layers.
  """
  room = expert_slots(ss, sp, model, context_len, batch) - decode_staging_experts(
      model, batch)
  cap = jnp.floor(jnp.maximum(room, 0.0) / M.num_moe_layers(model))
  return jnp.minimum(cap, float(model.num_experts))

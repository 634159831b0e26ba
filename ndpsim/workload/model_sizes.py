"""Quantities derived from a :class:`~ndpsim.workload.model_spec.MoeModelSpec`:
layer structure, parameter counts (elements) and bytes per tensor group,
KV-cache bytes, attention shapes and FLOPs (2 per multiply-accumulate).

Plain functions of the frozen, hashable spec, so a spec can be a static
argument of ``jax.jit``; ``context_len`` arguments may be traced.  Byte counts
use the dtype of each tensor group (:data:`~ndpsim.workload.model_spec.DTYPE_BITS`;
block-scaled formats include their scales).  Re-exported by
:mod:`ndpsim.workload.models`.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ndpsim.base import ConfigError, replace
from ndpsim.workload.model_spec import MoeModelSpec, canonical_dtype, dtype_bytes

# ---------------------------------------------------------------------------
# Layer structure.

def num_dense_layers(spec: MoeModelSpec) -> int:
  """Number of dense-FFN layers (leading plus interleaved)."""
  return spec.first_dense_layers + len(spec.interleaved_dense_layers)


def num_moe_layers(spec: MoeModelSpec) -> int:
  """Number of MoE layers (every layer that is not dense)."""
  return spec.num_layers - num_dense_layers(spec)


def dense_layer_indices(spec: MoeModelSpec) -> tuple[int, ...]:
  """Global layer index of each dense layer, increasing."""
  return tuple(range(spec.first_dense_layers)) + tuple(spec.interleaved_dense_layers)


def moe_layer_indices(spec: MoeModelSpec) -> tuple[int, ...]:
  """Global layer index of each MoE layer; routing axis L follows this order."""
  dense = set(spec.interleaved_dense_layers)
  return tuple(i for i in range(spec.first_dense_layers, spec.num_layers)
               if i not in dense)


def _check_layer(spec: MoeModelSpec, layer: int) -> None:
  if not 0 <= layer < spec.num_layers:
    raise ConfigError(f"model {spec.name!r}: layer {layer} out of range; "
                      f"layers are 0..{spec.num_layers - 1}")


def layer_sliding_window(spec: MoeModelSpec, layer: int) -> int:
  """Window in tokens of ``layer``'s attention, 0 = full attention."""
  _check_layer(spec, layer)
  return spec.sliding_window if layer in spec.sliding_window_layers else 0


# ---------------------------------------------------------------------------
# Parameter counts (elements) and bytes, by tensor group.

def expert_matrix_shapes(spec: MoeModelSpec):
  """Shapes of one routed expert: gate ``(hidden, ffn)``, up ``(hidden, ffn)``,
  down ``(ffn, hidden)`` (input dim first, as the GEMV ``x @ W`` reads them)."""
  h, f = spec.hidden_size, spec.expert_ffn_size
  return ((h, f), (h, f), (f, h))


def _expert_bias_params(spec: MoeModelSpec) -> int:
  return 2 * spec.expert_ffn_size + spec.hidden_size if spec.expert_bias else 0


def expert_params(spec: MoeModelSpec) -> int:
  """Elements of one routed expert (three matrices plus biases if any)."""
  return 3 * spec.hidden_size * spec.expert_ffn_size + _expert_bias_params(spec)


def expert_bytes(spec: MoeModelSpec) -> float:
  """Bytes of one routed expert (gate + up + down, biases at vector_dtype)."""
  return (3 * spec.hidden_size * spec.expert_ffn_size * dtype_bytes(spec.expert_dtype)
          + _expert_bias_params(spec) * dtype_bytes(spec.vector_dtype))


def layer_expert_bytes(spec: MoeModelSpec) -> float:
  """Bytes of all routed experts of one MoE layer."""
  return spec.num_experts * expert_bytes(spec)


def expert_bytes_total(spec: MoeModelSpec) -> float:
  """Bytes of all routed experts of the model (what the NDP units hold)."""
  return num_moe_layers(spec) * layer_expert_bytes(spec)


def _shared_parts(spec):
  mat = spec.num_shared_experts * 3 * spec.hidden_size * spec.shared_expert_ffn_size
  gate = spec.hidden_size if spec.shared_expert_gate else 0
  return [(mat + gate, spec.dense_dtype)]


def _router_parts(spec):
  return [(spec.hidden_size * spec.num_experts, spec.dense_dtype),
          (spec.num_experts if spec.router_bias else 0, spec.vector_dtype)]


def _attention_parts(spec, vectors: bool = True):
  """[(elements, dtype)] of one layer's attention (matrices, biases, norms);
  with ``vectors=False`` the vector entries carry dtype None."""
  h, a = spec.hidden_size, spec.attention_dtype
  v = spec.vector_dtype if vectors else None
  nq, nkv = spec.num_q_heads, spec.num_kv_heads
  if spec.attention_kind == "mla":
    qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
    if spec.q_lora_rank:
      q = [(h * spec.q_lora_rank + spec.q_lora_rank * nq * qk, a),
           (spec.q_lora_rank, v)]  # q_a_proj, q_b_proj; q_a_layernorm
    else:
      q = [(h * nq * qk, a)]
    r = spec.kv_lora_rank
    return q + [
        (h * (r + spec.qk_rope_head_dim), a),                   # kv_a_proj_with_mqa
        (r, v),                                                 # kv_a_layernorm
        (r * nq * (spec.qk_nope_head_dim + spec.v_head_dim), a),  # kv_b_proj
        (nq * spec.v_head_dim * h, a)]                          # o_proj
  d = spec.head_dim
  qdim, kvdim = nq * d, nkv * d
  norms = {"none": 0, "per_head": 2 * d, "full": qdim + kvdim}[spec.qk_norm]
  return [(h * qdim + 2 * h * kvdim + qdim * h, a),
          ((qdim + 2 * kvdim) if spec.qkv_bias else 0, v),
          (h if spec.o_bias else 0, v),
          (norms, v),
          (nq if spec.attention_sinks else 0, v)]


def _attention_matrix_params(spec) -> int:
  """Elements of one layer's attention projection matrices (no vectors)."""
  return sum(n for n, dt in _attention_parts(spec, vectors=False) if dt is not None)


def _norm_parts(spec):
  """The two per-layer norms (pre-attention, pre-FFN)."""
  return [(2 * spec.hidden_size * (2 if spec.norm_bias else 1), spec.vector_dtype)]


def _dense_ffn_parts(spec):
  return [(3 * spec.hidden_size * spec.dense_ffn_size, spec.dense_dtype)]


def _embedding_parts(spec, input_table: bool = True):
  table = spec.vocab_size * spec.hidden_size
  parts = [(table if input_table else 0, spec.embedding_dtype),
           (spec.hidden_size * (2 if spec.norm_bias else 1), spec.vector_dtype)]
  if not spec.tie_embeddings:
    parts.append((table, spec.embedding_dtype))
  parts.append((spec.vocab_size if spec.lm_head_bias else 0, spec.vector_dtype))
  return parts


def _count(parts) -> int:
  return sum(n for n, _ in parts)


def _nbytes(parts) -> float:
  return sum(n * dtype_bytes(dt) for n, dt in parts)


def _non_expert_parts(spec, input_table: bool = True):
  n_moe, n_dense = num_moe_layers(spec), num_dense_layers(spec)
  per_layer = _attention_parts(spec) + _norm_parts(spec)
  parts = list(_embedding_parts(spec, input_table))
  parts += [(n * spec.num_layers, dt) for n, dt in per_layer]
  parts += [(n * n_moe, dt) for n, dt in _router_parts(spec) + _shared_parts(spec)]
  parts += [(n * n_dense, dt) for n, dt in _dense_ffn_parts(spec)]
  return parts


def attention_bytes_per_layer(spec: MoeModelSpec) -> float:
  """Bytes of one layer's attention: projections, biases, q/k norms, sinks."""
  return _nbytes(_attention_parts(spec))


def router_bytes_per_layer(spec: MoeModelSpec) -> float:
  """Bytes of one MoE layer's router (``[hidden, experts]`` plus bias)."""
  return _nbytes(_router_parts(spec))


def shared_expert_bytes(spec: MoeModelSpec) -> float:
  """Bytes of one MoE layer's shared experts (all of them, plus their gate)."""
  return _nbytes(_shared_parts(spec))


def dense_ffn_bytes_per_layer(spec: MoeModelSpec) -> float:
  """Bytes of one dense layer's FFN (0 if there is none)."""
  return _nbytes(_dense_ffn_parts(spec))


def non_expert_bytes(spec: MoeModelSpec) -> float:
  """Bytes of everything but routed experts: embeddings, LM head, attention,
  norms, routers, shared experts, dense FFNs (what the GPU must hold)."""
  return _nbytes(_non_expert_parts(spec))


def total_bytes(spec: MoeModelSpec) -> float:
  """Bytes of all weights."""
  return non_expert_bytes(spec) + expert_bytes_total(spec)


def total_params(spec: MoeModelSpec) -> int:
  """All parameters (embedding and LM head included once each unless tied)."""
  return _count(_non_expert_parts(spec)) + num_moe_layers(spec) * spec.num_experts * \
      expert_params(spec)


def moe_layer_params(spec: MoeModelSpec) -> int:
  """Elements of one MoE decoder layer: attention, its two norms, router,
  shared experts and all routed experts (what a DeepSeek-style
  multi-token-prediction module repeats, less its small projection)."""
  parts = (_attention_parts(spec) + _norm_parts(spec) + _router_parts(spec)
           + _shared_parts(spec))
  return _count(parts) + spec.num_experts * expert_params(spec)


def active_params(spec: MoeModelSpec, *, count_input_embedding: bool = True) -> int:
  """Parameters used per token: all non-routed ones plus ``top_k`` experts per
  MoE layer.  ``count_input_embedding=False`` drops the input embedding table
  (only one row of it is read per token), as the GPT-OSS model card counts."""
  tied = spec.tie_embeddings
  non_exp = _count(_non_expert_parts(spec, input_table=count_input_embedding or tied))
  return non_exp + num_moe_layers(spec) * spec.top_k * expert_params(spec)


def active_bytes_per_token(spec: MoeModelSpec) -> float:
  """Weight bytes read to compute one token (batch 1): non-expert weights with
  one embedding row instead of the table, plus ``top_k`` experts per layer."""
  row = spec.hidden_size * dtype_bytes(spec.embedding_dtype)
  non_exp = _nbytes(_non_expert_parts(spec, input_table=spec.tie_embeddings))
  return non_exp + (0.0 if spec.tie_embeddings else row) + \
      num_moe_layers(spec) * spec.top_k * expert_bytes(spec)


def with_dtype(spec: MoeModelSpec, expert_dtype: str | None = None,
               other_dtype: str | None = None, *, kv_dtype: str | None = None,
               vector_dtype: str | None = None) -> MoeModelSpec:
  """Copy of ``spec`` with new storage dtypes.  ``other_dtype`` sets the
  attention, dense (router, shared, dense FFN) and embedding groups; norms and
  biases keep ``vector_dtype`` unless it is given."""
  ch: dict[str, str] = {}
  if expert_dtype:
    ch["expert_dtype"] = canonical_dtype(expert_dtype, "with_dtype expert_dtype")
  if other_dtype:
    o = canonical_dtype(other_dtype, "with_dtype other_dtype")
    ch.update(attention_dtype=o, dense_dtype=o, embedding_dtype=o)
  if kv_dtype:
    ch["kv_dtype"] = canonical_dtype(kv_dtype, "with_dtype kv_dtype")
  if vector_dtype:
    ch["vector_dtype"] = canonical_dtype(vector_dtype, "with_dtype vector_dtype")
  return replace(spec, **ch)


# ---------------------------------------------------------------------------
# KV cache and attention shapes.

def kv_bytes_per_token_per_layer(spec: MoeModelSpec, layer: int) -> float:
  """KV-cache bytes one token adds to ``layer`` (MLA: the compressed latent
  ``kv_lora_rank + qk_rope_head_dim``; else K and V of every KV head)."""
  _check_layer(spec, layer)
  b = dtype_bytes(spec.kv_dtype)
  if spec.attention_kind == "mla":
    return (spec.kv_lora_rank + spec.qk_rope_head_dim) * b
  return 2 * spec.num_kv_heads * spec.head_dim * b


def kv_bytes_per_token(spec: MoeModelSpec) -> float:
  """KV-cache bytes one token adds over all layers (before any window cap)."""
  return sum(kv_bytes_per_token_per_layer(spec, i) for i in range(spec.num_layers))


def kv_cache_bytes(spec: MoeModelSpec, context_len):
  """KV-cache bytes for a context of ``context_len`` tokens (int or traced);
  sliding-window layers hold at most ``sliding_window`` tokens."""
  total = 0.0
  for i in range(spec.num_layers):
    w = layer_sliding_window(spec, i)
    n = jnp.minimum(context_len, w) if w else context_len
    total = total + kv_bytes_per_token_per_layer(spec, i) * n
  return total


def attention_kwargs(spec: MoeModelSpec, layer: int) -> dict[str, Any]:
  """Keyword arguments of ``gpu.attention_time_s`` for ``layer``.  MLA is given
  in its absorbed decode form: one shared latent "KV head" of width
  ``kv_lora_rank + qk_rope_head_dim`` for scores and ``kv_lora_rank`` for values."""
  _check_layer(spec, layer)
  if spec.attention_kind == "mla":
    nkv, qk = 1, spec.kv_lora_rank + spec.qk_rope_head_dim
    v = spec.kv_lora_rank
  else:
    nkv, qk, v = spec.num_kv_heads, spec.head_dim, spec.head_dim
  return dict(num_q_heads=spec.num_q_heads, num_kv_heads=nkv, qk_head_dim=qk,
              v_head_dim=v, kv_bytes_per_token=kv_bytes_per_token_per_layer(spec, layer),
              sliding_window=layer_sliding_window(spec, layer))


# ---------------------------------------------------------------------------
# FLOPs (2 per multiply-accumulate; element-wise work is not counted).

def expert_flops_per_token(spec: MoeModelSpec) -> float:
  """Matmul FLOPs of one routed expert for one token."""
  return 2.0 * 3 * spec.hidden_size * spec.expert_ffn_size


def _attended_keys(q_tokens, context_len, window: int):
  """Sum over the last ``q_tokens`` of a causal context of ``context_len``
  tokens of the keys each attends to (capped at ``window`` if > 0)."""
  first = context_len - q_tokens + 1  # keys seen by the first query token
  if not window:
    return q_tokens * first + q_tokens * (q_tokens - 1) / 2
  n = jnp.clip(window - first + 1, 0, q_tokens)  # query tokens below the cap
  return n * first + n * (n - 1) / 2 + (q_tokens - n) * window


def attention_flops(spec: MoeModelSpec, q_tokens, context_len, layer: int | None = None,
                    form: str = "absorbed"):
  """Attention FLOPs of ``q_tokens`` new tokens that end a causal context of
  ``context_len`` tokens (``context_len >= q_tokens``; ints or traced).

  Projections plus scores (QK) and values (PV), for ``layer`` or, if None,
  summed over all layers.  For MLA ``form`` picks the "absorbed" core (latent
  width ``kv_lora_rank + rope`` per head, as decode kernels run it) or the
  "naive" one (``qk_nope + rope`` and ``v_head_dim`` per head).
  """
  if form not in ("absorbed", "naive"):
    raise ConfigError(f"attention_flops: form {form!r}; write 'absorbed' or 'naive'")
  layers = range(spec.num_layers) if layer is None else [layer]
  proj = 2.0 * _attention_matrix_params(spec)
  if spec.attention_kind == "mla" and form == "absorbed":
    qk, v = spec.kv_lora_rank + spec.qk_rope_head_dim, spec.kv_lora_rank
  elif spec.attention_kind == "mla":
    qk, v = spec.qk_nope_head_dim + spec.qk_rope_head_dim, spec.v_head_dim
  else:
    qk = v = spec.head_dim
  total = 0.0
  for i in layers:
    keys = _attended_keys(q_tokens, context_len, layer_sliding_window(spec, i))
    total = total + proj * q_tokens + 2.0 * spec.num_q_heads * (qk + v) * keys
  return total


def flops_per_token(spec: MoeModelSpec, context_len=1) -> dict[str, Any]:
  """Matmul FLOPs of one decode token at position ``context_len - 1``, per block
  type summed over layers: attention, router, routed_experts (top_k),
  shared_experts, dense_ffn, lm_head, and total."""
  n_moe = num_moe_layers(spec)
  out = {
      "attention": attention_flops(spec, 1, context_len),
      "router": 2.0 * n_moe * spec.hidden_size * spec.num_experts,
      "routed_experts": n_moe * spec.top_k * expert_flops_per_token(spec),
      "shared_experts": 2.0 * n_moe * spec.num_shared_experts * 3 * spec.hidden_size
                        * spec.shared_expert_ffn_size,
      "dense_ffn": 2.0 * num_dense_layers(spec) * 3 * spec.hidden_size
                   * spec.dense_ffn_size,
      "lm_head": 2.0 * spec.vocab_size * spec.hidden_size,
  }
  out["total"] = sum(out.values())
  return out


def activation_bytes_per_token(spec: MoeModelSpec) -> float:
  """Bytes of one token's hidden vector (what is broadcast to NDP units)."""
  return spec.hidden_size * dtype_bytes(spec.activation_dtype)


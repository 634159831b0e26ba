"""MoE model zoo: static shapes of public Mixture-of-Experts LLMs, no weights.

What is modelled: every weight tensor of a decoder-only MoE transformer, by
shape and storage dtype, grouped the way an offloading system places them:

* routed experts (SwiGLU: gate and up ``[hidden, ffn]``, down ``[ffn, hidden]``,
  optional biases) -- the tensors that live in the NDP units;
* attention (MHA, GQA or DeepSeek MLA; optional q/k norms, biases, sinks,
  sliding window on a subset of layers);
* router, shared experts (with Qwen's optional sigmoid gate), leading dense
  FFN layers, norms, embedding table and LM head.

Derived quantities (bytes, parameter counts, KV-cache bytes, FLOPs) are plain
functions of the frozen, hashable :class:`MoeModelSpec`, so a spec can be a
static argument of ``jax.jit``.  Byte counts use the dtype of each tensor
group (:data:`DTYPE_BITS`; block-scaled formats include their scales).

What is not modelled: rotary tables and other non-persistent buffers, the
multi-token-prediction heads some checkpoints ship (standard decoding does not
run them; the HuggingFace loader reports them), per-layer mixed precision,
non-gated (two-matrix) expert FFNs and state-space (Mamba) layers.  A layer is
either dense (the first ``first_dense_layers`` plus any listed in
``interleaved_dense_layers``) or MoE.

Parameter-count conventions of the published figures differ: most model
cards count the input embedding table in "active" parameters, OpenAI's
GPT-OSS card does not.  :func:`active_params` takes that as a keyword.

Models load from the registry (:data:`MODELS`), from a JSON file with the
fields of :class:`MoeModelSpec` (:func:`load_model_json`) or from a local
HuggingFace ``config.json`` (:func:`load_hf_config`).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import jax.numpy as jnp

from ndpsim.base import ConfigError, replace, spec_dataclass

# Storage bits per element, scales of block formats included:
# mxfp4 = FP4 E2M1 + one E8M0 scale per 32 elements (OCP MX spec);
# nvfp4 = FP4 + one FP8 scale per 16; int4_g128 = int4 + one fp16 scale per 128.
DTYPE_BITS: dict[str, float] = {
    "fp32": 32.0, "bf16": 16.0, "fp16": 16.0, "fp8": 8.0, "int8": 8.0,
    "int4": 4.0, "int4_g128": 4.125, "mxfp4": 4.25, "nvfp4": 4.5,
}
DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16",
    "half": "fp16", "float8_e4m3fn": "fp8", "fp8_e4m3": "fp8", "e4m3": "fp8",
}
ATTENTION_KINDS = ("mha", "gqa", "mla")
QK_NORMS = ("none", "per_head", "full")
_DTYPE_FIELDS = ("expert_dtype", "attention_dtype", "dense_dtype",
                 "embedding_dtype", "vector_dtype", "kv_dtype", "activation_dtype")


@spec_dataclass
class MoeModelSpec:
  """Static shape of one MoE LLM.  All sizes are element counts.

  Layers ``0 .. first_dense_layers-1`` and the layers listed in
  ``interleaved_dense_layers`` (indices > ``first_dense_layers``, e.g. every
  other layer of Llama-4 Maverick or Qwen's ``mlp_only_layers``) have a dense
  SwiGLU FFN of width ``dense_ffn_size``; the rest are MoE layers with
  ``num_experts`` routed experts (``top_k`` per token) plus
  ``num_shared_experts`` always-on experts.  How dense layers are costed:
  every dense layer (leading or interleaved) runs on the GPU in the per-step
  overhead (:func:`ndpsim.costs.step_overhead_s`: its attention, with its own
  window, and its FFN), serially with the MoE-layer scan; its position in the
  stack only selects its attention window, and the link does not prefetch
  during it.
  Attention: ``mha``/``gqa`` use ``num_q_heads``, ``num_kv_heads`` and
  ``head_dim``; ``mla`` uses the ``*_lora_rank`` and ``*_head_dim`` fields
  (``head_dim`` = 0).  ``sliding_window`` (tokens, 0 = none) applies to the
  layers listed in ``sliding_window_layers``.

  Dtype groups: ``expert_dtype`` routed-expert matrices; ``attention_dtype``
  attention matrices; ``dense_dtype`` router, shared experts, dense FFNs;
  ``embedding_dtype`` embedding table and LM head; ``vector_dtype`` norms,
  biases and sinks; ``kv_dtype`` the KV cache; ``activation_dtype`` the hidden
  activations moved between devices.
  """
  name: str
  num_layers: int
  hidden_size: int
  vocab_size: int
  num_experts: int
  top_k: int
  expert_ffn_size: int
  attention_kind: str
  num_q_heads: int
  num_kv_heads: int
  head_dim: int = 0
  kv_lora_rank: int = 0
  q_lora_rank: int = 0
  qk_nope_head_dim: int = 0
  qk_rope_head_dim: int = 0
  v_head_dim: int = 0
  qk_norm: str = "none"
  qkv_bias: bool = False
  o_bias: bool = False
  attention_sinks: bool = False
  sliding_window: int = 0
  sliding_window_layers: tuple[int, ...] = ()
  num_shared_experts: int = 0
  shared_expert_ffn_size: int = 0
  shared_expert_gate: bool = False
  first_dense_layers: int = 0
  dense_ffn_size: int = 0
  interleaved_dense_layers: tuple[int, ...] = ()
  expert_bias: bool = False
  router_bias: bool = False
  norm_bias: bool = False
  tie_embeddings: bool = False
  lm_head_bias: bool = False
  max_context_tokens: int = 0
  expert_dtype: str = "bf16"
  attention_dtype: str = "bf16"
  dense_dtype: str = "bf16"
  embedding_dtype: str = "bf16"
  vector_dtype: str = "bf16"
  kv_dtype: str = "bf16"
  activation_dtype: str = "bf16"

  def __post_init__(self):
    validate_fields(dataclasses.asdict(self), f"MoeModelSpec {self.name!r}")


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(MoeModelSpec))
_REQUIRED = tuple(f.name for f in dataclasses.fields(MoeModelSpec)
                  if f.default is dataclasses.MISSING)


def canonical_dtype(dtype: str, where: str = "dtype") -> str:
  """Canonical dtype name (``bfloat16`` -> ``bf16``); ConfigError if unknown."""
  d = DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
  if d not in DTYPE_BITS:
    raise ConfigError(f"{where}: unknown dtype {dtype!r}; write one of "
                      f"{sorted(DTYPE_BITS)}")
  return d


def dtype_bytes(dtype: str) -> float:
  """Bytes per element of ``dtype`` (block scales included, e.g. mxfp4 0.53125)."""
  return DTYPE_BITS[canonical_dtype(dtype)] / 8.0


def validate_fields(d: dict[str, Any], where: str) -> None:
  """Checks a dict of spec fields for consistency; ConfigError names ``where``."""
  def bad(field, msg):
    raise ConfigError(f"{where}: field {field} {msg}")
  for name in ("num_layers", "hidden_size", "vocab_size", "num_experts", "top_k",
               "expert_ffn_size", "num_q_heads", "num_kv_heads"):
    if d[name] <= 0:
      bad(name, f"is {d[name]}; it must be a positive integer")
  for f in dataclasses.fields(MoeModelSpec):
    if f.type == "int" and d[f.name] < 0:
      bad(f.name, f"is {d[f.name]}; it must be >= 0")
  if d["top_k"] > d["num_experts"]:
    bad("top_k", f"is {d['top_k']} but num_experts is {d['num_experts']}; "
        "top_k must be <= num_experts")
  first, inter = d["first_dense_layers"], tuple(d.get("interleaved_dense_layers", ()))
  if first >= d["num_layers"]:
    bad("first_dense_layers", f"is {first}; it must be < "
        f"num_layers ({d['num_layers']}) so that at least one layer is MoE")
  if list(inter) != sorted(set(inter)):
    bad("interleaved_dense_layers", "must be strictly increasing layer indices")
  if inter and not first < inter[0] <= inter[-1] < d["num_layers"]:
    bad("interleaved_dense_layers", f"is {list(inter)}; its layers must lie in "
        f"{first + 1}..{d['num_layers'] - 1} (after layer first_dense_layers = "
        f"{first}, which must stay MoE: a dense run from layer 0 is "
        "first_dense_layers)")
  if first + len(inter) >= d["num_layers"]:
    bad("interleaved_dense_layers", f"makes every one of the {d['num_layers']} "
        "layers dense; at least one layer must be MoE")
  if (first + len(inter) > 0) != (d["dense_ffn_size"] > 0):
    bad("dense_ffn_size", f"is {d['dense_ffn_size']} with first_dense_layers = "
        f"{first} and {len(inter)} interleaved dense layers; give both > 0 or both 0")
  if (d["num_shared_experts"] > 0) != (d["shared_expert_ffn_size"] > 0):
    bad("shared_expert_ffn_size", f"is {d['shared_expert_ffn_size']} with "
        f"num_shared_experts = {d['num_shared_experts']}; give both > 0 or both 0")
  if d["shared_expert_gate"] and not d["num_shared_experts"]:
    bad("shared_expert_gate", "is true but num_shared_experts is 0")
  kind = d["attention_kind"]
  if kind not in ATTENTION_KINDS:
    bad("attention_kind", f"is {kind!r}; write one of {list(ATTENTION_KINDS)}")
  if d["qk_norm"] not in QK_NORMS:
    bad("qk_norm", f"is {d['qk_norm']!r}; write one of {list(QK_NORMS)}")
  if d["num_q_heads"] % d["num_kv_heads"]:
    bad("num_kv_heads", f"is {d['num_kv_heads']}; it must divide num_q_heads "
        f"({d['num_q_heads']})")
  mla = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
  if kind == "mla":
    for name in mla:
      if d[name] <= 0:
        bad(name, f"is {d[name]}; attention_kind 'mla' needs it > 0")
    if d["head_dim"]:
      bad("head_dim", "must be 0 for attention_kind 'mla' (MLA uses "
          "qk_nope_head_dim, qk_rope_head_dim and v_head_dim)")
  else:
    if d["head_dim"] <= 0:
      bad("head_dim", f"is {d['head_dim']}; attention_kind {kind!r} needs it > 0")
    for name in mla + ("q_lora_rank",):
      if d[name]:
        bad(name, f"is {d[name]}; it is an MLA field, write 0 for {kind!r}")
    want = "mha" if d["num_kv_heads"] == d["num_q_heads"] else "gqa"
    if kind != want:
      bad("attention_kind", f"is {kind!r} but num_q_heads={d['num_q_heads']}, "
          f"num_kv_heads={d['num_kv_heads']}; write {want!r}")
  layers = tuple(d["sliding_window_layers"])
  if d["sliding_window"] and not layers:
    bad("sliding_window_layers", "is empty while sliding_window > 0; list the "
        "layer indices that use the window")
  if layers and not d["sliding_window"]:
    bad("sliding_window_layers", "is not empty while sliding_window is 0")
  for i in layers:
    if not 0 <= i < d["num_layers"]:
      bad("sliding_window_layers", f"holds layer {i}; layers are 0.."
          f"{d['num_layers'] - 1}")
  if list(layers) != sorted(set(layers)):
    bad("sliding_window_layers", "must be strictly increasing layer indices")
  for name in _DTYPE_FIELDS:
    canonical_dtype(d[name], f"{where}: field {name}")
    if d[name] != canonical_dtype(d[name]):
      bad(name, f"is {d[name]!r}; write {canonical_dtype(d[name])!r}")


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


# ---------------------------------------------------------------------------
# The zoo.  Shapes from each model's public config.json (HuggingFace repo in
# MODEL_SOURCES); dtypes are the usual inference dtypes (GPT-OSS ships its
# experts in MXFP4, everything else in bf16).

def _zoo() -> dict[str, MoeModelSpec]:
  m = MoeModelSpec
  zoo = [
      m(name="qwen3-30b-a3b", num_layers=48, hidden_size=2048, vocab_size=151936,
        num_experts=128, top_k=8, expert_ffn_size=768, attention_kind="gqa",
        num_q_heads=32, num_kv_heads=4, head_dim=128, qk_norm="per_head",
        max_context_tokens=40960),
      m(name="mixtral-8x7b", num_layers=32, hidden_size=4096, vocab_size=32000,
        num_experts=8, top_k=2, expert_ffn_size=14336, attention_kind="gqa",
        num_q_heads=32, num_kv_heads=8, head_dim=128, max_context_tokens=32768),
      m(name="deepseek-v2-lite", num_layers=27, hidden_size=2048, vocab_size=102400,
        num_experts=64, top_k=6, expert_ffn_size=1408, attention_kind="mla",
        num_q_heads=16, num_kv_heads=16, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, num_shared_experts=2,
        shared_expert_ffn_size=1408, first_dense_layers=1, dense_ffn_size=10944,
        max_context_tokens=163840),
      m(name="olmoe-1b-7b", num_layers=16, hidden_size=2048, vocab_size=50304,
        num_experts=64, top_k=8, expert_ffn_size=1024, attention_kind="mha",
        num_q_heads=16, num_kv_heads=16, head_dim=128, qk_norm="full",
        max_context_tokens=4096),
      m(name="phi-3.5-moe", num_layers=32, hidden_size=4096, vocab_size=32064,
        num_experts=16, top_k=2, expert_ffn_size=6400, attention_kind="gqa",
        num_q_heads=32, num_kv_heads=8, head_dim=128, qkv_bias=True, o_bias=True,
        norm_bias=True, lm_head_bias=True, max_context_tokens=131072),
      m(name="qwen1.5-moe-a2.7b", num_layers=24, hidden_size=2048, vocab_size=151936,
        num_experts=60, top_k=4, expert_ffn_size=1408, attention_kind="mha",
        num_q_heads=16, num_kv_heads=16, head_dim=128, qkv_bias=True,
        num_shared_experts=1, shared_expert_ffn_size=5632, shared_expert_gate=True,
        max_context_tokens=8192),
      m(name="gpt-oss-20b", num_layers=24, hidden_size=2880, vocab_size=201088,
        num_experts=32, top_k=4, expert_ffn_size=2880, attention_kind="gqa",
        num_q_heads=64, num_kv_heads=8, head_dim=64, qkv_bias=True, o_bias=True,
        attention_sinks=True, sliding_window=128,
        sliding_window_layers=tuple(range(0, 24, 2)), expert_bias=True,
        router_bias=True, max_context_tokens=131072, expert_dtype="mxfp4"),
  ]
  return {s.name: s for s in zoo}


MODELS: dict[str, MoeModelSpec] = _zoo()
MODEL_SOURCES: dict[str, str] = {
    "qwen3-30b-a3b": "huggingface.co/Qwen/Qwen3-30B-A3B config.json",
    "mixtral-8x7b": "huggingface.co/mistralai/Mixtral-8x7B-v0.1 config.json",
    "deepseek-v2-lite": "huggingface.co/deepseek-ai/DeepSeek-V2-Lite config.json",
    "olmoe-1b-7b": "huggingface.co/allenai/OLMoE-1B-7B-0924 config.json",
    "phi-3.5-moe": "huggingface.co/microsoft/Phi-3.5-MoE-instruct config.json",
    "qwen1.5-moe-a2.7b": "huggingface.co/Qwen/Qwen1.5-MoE-A2.7B config.json",
    "gpt-oss-20b": "huggingface.co/openai/gpt-oss-20b config.json (experts MXFP4)",
}


def get_model(name: str) -> MoeModelSpec:
  """Zoo entry by registry name (case-insensitive), or -- as the error message
  offers -- a model from a path (model .json, HuggingFace config.json or its
  folder; :func:`ndpsim.workload.model_io.model_from_any`)."""
  key = str(name).lower()
  if key in MODELS:
    return MODELS[key]
  import os  # pylint: disable=import-outside-toplevel
  if str(name).endswith(".json") or os.sep in str(name) or os.path.exists(str(name)):
    from ndpsim.workload import model_io  # pylint: disable=import-outside-toplevel
    return model_io.model_from_any(name)
  close = difflib.get_close_matches(key, list(MODELS), n=1, cutoff=0.4)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  raise ConfigError(f"unknown model {name!r}{hint}; write one of {sorted(MODELS)} "
                    "or a path to a model .json file or a HuggingFace config.json")


# Loaders live in model_io; re-exported lazily here for convenience (PEP 562).
_IO_NAMES = ("load_hf_config", "load_model_json", "model_from_any", "model_to_json",
             "save_model_json")


def __getattr__(name: str):
  if name in _IO_NAMES:
    from ndpsim.workload import model_io  # pylint: disable=import-outside-toplevel
    return getattr(model_io, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

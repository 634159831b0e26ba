"""The static shape of one MoE LLM (:class:`MoeModelSpec`), its storage dtypes
and the consistency checks every loader applies (:func:`validate_fields`).

Sizes are element counts; byte counts, parameter counts, KV-cache bytes and
FLOPs derived from a spec are in :mod:`ndpsim.workload.model_sizes`; the zoo
of built-in models is :mod:`ndpsim.workload.models` (data in
``ndpsim/workload/zoo/``).  Everything here is re-exported by
:mod:`ndpsim.workload.models`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ndpsim.base import ConfigError, spec_dataclass

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


def _bad(where: str, field: str, msg: str) -> ConfigError:
  return ConfigError(f"{where}: field {field} {msg}")


def _check_counts(d: dict[str, Any], where: str) -> None:
  """Positive sizes, non-negative ints, top_k <= num_experts."""
  for name in ("num_layers", "hidden_size", "vocab_size", "num_experts", "top_k",
               "expert_ffn_size", "num_q_heads", "num_kv_heads"):
    if d[name] <= 0:
      raise _bad(where, name, f"is {d[name]}; it must be a positive integer")
  for f in dataclasses.fields(MoeModelSpec):
    if f.type == "int" and d[f.name] < 0:
      raise _bad(where, f.name, f"is {d[f.name]}; it must be >= 0")
  if d["top_k"] > d["num_experts"]:
    raise _bad(where, "top_k", f"is {d['top_k']} but num_experts is {d['num_experts']}; "
               "top_k must be <= num_experts")


def _check_layers(d: dict[str, Any], where: str) -> None:
  """Dense layers (leading and interleaved) and shared experts."""
  first, inter = d["first_dense_layers"], tuple(d.get("interleaved_dense_layers", ()))
  if first >= d["num_layers"]:
    raise _bad(where, "first_dense_layers", f"is {first}; it must be < "
               f"num_layers ({d['num_layers']}) so that at least one layer is MoE")
  if list(inter) != sorted(set(inter)):
    raise _bad(where, "interleaved_dense_layers",
               "must be strictly increasing layer indices")
  if inter and not first < inter[0] <= inter[-1] < d["num_layers"]:
    raise _bad(where, "interleaved_dense_layers", f"is {list(inter)}; its layers must lie "
               f"in {first + 1}..{d['num_layers'] - 1} (after layer first_dense_layers = "
               f"{first}, which must stay MoE: a dense run from layer 0 is "
               "first_dense_layers)")
  if first + len(inter) >= d["num_layers"]:
    raise _bad(where, "interleaved_dense_layers", f"makes every one of the "
               f"{d['num_layers']} layers dense; at least one layer must be MoE")
  if (first + len(inter) > 0) != (d["dense_ffn_size"] > 0):
    raise _bad(where, "dense_ffn_size", f"is {d['dense_ffn_size']} with "
               f"first_dense_layers = {first} and {len(inter)} interleaved dense layers; "
               "give both > 0 or both 0")
  if (d["num_shared_experts"] > 0) != (d["shared_expert_ffn_size"] > 0):
    raise _bad(where, "shared_expert_ffn_size", f"is {d['shared_expert_ffn_size']} with "
               f"num_shared_experts = {d['num_shared_experts']}; give both > 0 or both 0")
  if d["shared_expert_gate"] and not d["num_shared_experts"]:
    raise _bad(where, "shared_expert_gate", "is true but num_shared_experts is 0")


def _check_attention(d: dict[str, Any], where: str) -> None:
  """Attention kind, q/k norm, heads and the MLA fields."""
  kind = d["attention_kind"]
  if kind not in ATTENTION_KINDS:
    raise _bad(where, "attention_kind", f"is {kind!r}; write one of "
               f"{list(ATTENTION_KINDS)}")
  if d["qk_norm"] not in QK_NORMS:
    raise _bad(where, "qk_norm", f"is {d['qk_norm']!r}; write one of {list(QK_NORMS)}")
  if d["num_q_heads"] % d["num_kv_heads"]:
    raise _bad(where, "num_kv_heads", f"is {d['num_kv_heads']}; it must divide "
               f"num_q_heads ({d['num_q_heads']})")
  mla = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
  if kind == "mla":
    for name in mla:
      if d[name] <= 0:
        raise _bad(where, name, f"is {d[name]}; attention_kind 'mla' needs it > 0")
    if d["head_dim"]:
      raise _bad(where, "head_dim", "must be 0 for attention_kind 'mla' (MLA uses "
                 "qk_nope_head_dim, qk_rope_head_dim and v_head_dim)")
    return
  if d["head_dim"] <= 0:
    raise _bad(where, "head_dim", f"is {d['head_dim']}; attention_kind {kind!r} needs "
               "it > 0")
  for name in mla + ("q_lora_rank",):
    if d[name]:
      raise _bad(where, name, f"is {d[name]}; it is an MLA field, write 0 for {kind!r}")
  want = "mha" if d["num_kv_heads"] == d["num_q_heads"] else "gqa"
  if kind != want:
    raise _bad(where, "attention_kind", f"is {kind!r} but num_q_heads="
               f"{d['num_q_heads']}, num_kv_heads={d['num_kv_heads']}; write {want!r}")


def _check_windows_and_dtypes(d: dict[str, Any], where: str) -> None:
  """Sliding-window layers and canonical dtype names."""
  layers = tuple(d["sliding_window_layers"])
  if d["sliding_window"] and not layers:
    raise _bad(where, "sliding_window_layers", "is empty while sliding_window > 0; list "
               "the layer indices that use the window")
  if layers and not d["sliding_window"]:
    raise _bad(where, "sliding_window_layers", "is not empty while sliding_window is 0")
  for i in layers:
    if not 0 <= i < d["num_layers"]:
      raise _bad(where, "sliding_window_layers", f"holds layer {i}; layers are 0.."
                 f"{d['num_layers'] - 1}")
  if list(layers) != sorted(set(layers)):
    raise _bad(where, "sliding_window_layers",
               "must be strictly increasing layer indices")
  for name in _DTYPE_FIELDS:
    canonical_dtype(d[name], f"{where}: field {name}")
    if d[name] != canonical_dtype(d[name]):
      raise _bad(where, name, f"is {d[name]!r}; write {canonical_dtype(d[name])!r}")


def validate_fields(d: dict[str, Any], where: str) -> None:
  """Checks a dict of spec fields for consistency; ConfigError names ``where``
  and the field (the checks run in the order counts, layers, attention,
  windows and dtypes; the first failure is reported)."""
  _check_counts(d, where)
  _check_layers(d, where)
  _check_attention(d, where)
  _check_windows_and_dtypes(d, where)

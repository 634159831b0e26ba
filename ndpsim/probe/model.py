"""``python -m ndpsim.probe model ...``: sizes, parameter counts, KV bytes and FLOPs of one model.

The flags are :data:`PROBE_ARGS` (``{flag: (type, default, help)}``, read by
:mod:`ndpsim.probe`); :func:`probe` answers with one JSON-able dict.
"""
from __future__ import annotations

from ndpsim.base import ConfigError
from ndpsim.probe import REQUIRED
from ndpsim.workload import models as M
from ndpsim.workload.model_spec import _DTYPE_FIELDS, DTYPE_BITS, canonical_dtype


PROBE_ARGS = {
    "model": (str, REQUIRED, "registry name, model .json or HF config.json"),
    "dtype": (str, "", "weight dtype of every tensor group (bf16, fp8, int4, "
              "mxfp4, ...; norms and biases too if >= 16 bits); empty keeps the "
              "model's own"),
    "expert_dtype": (str, "", "routed-expert dtype, applied after --dtype"),
    "kv_dtype": (str, "", "KV-cache dtype; empty keeps the model's own"),
    "context_len": (int, 1024, "context length for KV-cache bytes and FLOPs"),
}


def probe(args: dict) -> dict:
  """Sizes, parameter counts, KV bytes and FLOPs of one model, JSON-able."""
  spec = M.model_from_any(args["model"])
  if args["dtype"]:
    d = canonical_dtype(args["dtype"], "--dtype")
    spec = M.with_dtype(spec, d, d, vector_dtype=d if DTYPE_BITS[d] >= 16 else None)
  if args["expert_dtype"]:
    spec = M.with_dtype(spec, canonical_dtype(args["expert_dtype"], "--expert_dtype"))
  if args["kv_dtype"]:
    spec = M.with_dtype(spec, kv_dtype=canonical_dtype(args["kv_dtype"], "--kv_dtype"))
  ctx = args["context_len"]
  if ctx < 1:
    raise ConfigError(f"--context_len is {ctx}; write a positive integer")
  return {
      "model": spec.name,
      "dtypes": {k: getattr(spec, k) for k in _DTYPE_FIELDS},
      "num_layers": spec.num_layers, "num_moe_layers": M.num_moe_layers(spec),
      "dense_layers": list(M.dense_layer_indices(spec)),
      "num_experts": spec.num_experts, "top_k": spec.top_k,
      "attention_kind": spec.attention_kind,
      "total_params": M.total_params(spec), "active_params": M.active_params(spec),
      "active_params_without_input_embedding":
          M.active_params(spec, count_input_embedding=False),
      "expert_bytes": M.expert_bytes(spec),
      "expert_matrix_shapes": [list(s) for s in M.expert_matrix_shapes(spec)],
      "layer_expert_bytes": M.layer_expert_bytes(spec),
      "expert_bytes_total": M.expert_bytes_total(spec),
      "shared_expert_bytes_per_layer": M.shared_expert_bytes(spec),
      "attention_bytes_per_layer": M.attention_bytes_per_layer(spec),
      "router_bytes_per_layer": M.router_bytes_per_layer(spec),
      "non_expert_bytes": M.non_expert_bytes(spec), "total_bytes": M.total_bytes(spec),
      "active_bytes_per_token": M.active_bytes_per_token(spec),
      "kv_bytes_per_token": M.kv_bytes_per_token(spec),
      "context_len": ctx, "kv_cache_bytes": float(M.kv_cache_bytes(spec, ctx)),
      "flops_per_token": {k: float(v) for k, v in M.flops_per_token(spec, ctx).items()},
  }

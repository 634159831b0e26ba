"""Loading MoE model specs from files: ndpsim's JSON format and HuggingFace
``config.json`` files (Qwen2/3-MoE, Mixtral, DeepSeek-V2/V3, OLMoE, PhiMoE,
GPT-OSS field names), so users add a model without writing code.

A file missing a needed field gets a ConfigError naming the file and field.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from ndpsim import config, probe as probe_mod
from ndpsim.base import ConfigError
from ndpsim.workload import models as M
from ndpsim.workload.models import (_DTYPE_FIELDS, DTYPE_BITS, MODELS, MoeModelSpec,
                                    canonical_dtype, get_model, validate_fields)

# ---------------------------------------------------------------------------
# Loading: model JSON files and HuggingFace config.json.

_JSON_EXTRA_KEYS = ("source", "notes")


def _read_json(path: str | pathlib.Path) -> tuple[dict, str]:
  p = pathlib.Path(path)
  where = str(p)
  if not p.is_file():
    raise ConfigError(f"model file {where!r} does not exist; give an existing .json "
                      f"path or one of {sorted(MODELS)}")
  return config.read_json_object(p, "a JSON object of model fields"), where


def load_model_json(path: str | pathlib.Path) -> MoeModelSpec:
  """Loads a model file: one JSON object with the fields of :class:`MoeModelSpec`
  (defaults as there) plus optional ``source`` and ``notes`` strings.
  Unknown or missing fields and inconsistent values raise ConfigError."""
  from ndpsim import config  # pylint: disable=import-outside-toplevel
  obj, where = _read_json(path)
  fields = {k: v for k, v in obj.items() if k not in _JSON_EXTRA_KEYS}
  kw = config.take_fields(fields, MoeModelSpec, where, "model", positive=False)
  for name in _DTYPE_FIELDS:
    kw[name] = canonical_dtype(kw[name], f"{where}: field model.{name}")
  validate_fields(kw, where)
  return MoeModelSpec(**kw)


def model_to_json(spec: MoeModelSpec, source: str = "") -> dict[str, Any]:
  """JSON-able dict that :func:`load_model_json` reads back to ``spec``."""
  d = dataclasses.asdict(spec)
  d["sliding_window_layers"] = list(spec.sliding_window_layers)
  if source:
    d["source"] = source
  return d


def save_model_json(path: str | pathlib.Path, spec: MoeModelSpec, source: str = "") -> None:
  """Writes ``spec`` as a model JSON file (a starting point for a new model)."""
  pathlib.Path(path).write_text(json.dumps(model_to_json(spec, source), indent=2) + "\n")


# model_type values whose HF config classes default tie_word_embeddings to False.
_UNTIED_TYPES = ("qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3",
                 "olmoe", "phimoe", "gpt_oss")


def load_hf_config(path: str | pathlib.Path, name: str | None = None, *,
                   expert_dtype: str | None = None,
                   other_dtype: str | None = None) -> MoeModelSpec:
  """Builds a spec from a local HuggingFace ``config.json`` (or its folder).

  Accepted field names: ``num_hidden_layers``, ``hidden_size``, ``vocab_size``;
  experts ``num_experts`` | ``num_local_experts`` | ``n_routed_experts``; top-k
  ``num_experts_per_tok`` | ``experts_per_token``; expert width
  ``moe_intermediate_size`` else ``intermediate_size``; attention
  ``num_attention_heads``, ``num_key_value_heads`` (default: MHA), ``head_dim``
  (default hidden / heads); MLA ``kv_lora_rank``, ``q_lora_rank``,
  ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``; shared experts
  ``n_shared_experts`` (width ``moe_intermediate_size``) or
  ``shared_expert_intermediate_size`` (one sigmoid-gated shared expert, Qwen2-MoE);
  ``first_k_dense_replace`` with ``intermediate_size``; ``sliding_window``
  with ``layer_types`` or ``use_sliding_window``/``max_window_layers`` (a window
  >= ``max_position_embeddings`` is no window); ``tie_word_embeddings``,
  ``attention_bias``, ``lm_head_bias``, ``torch_dtype`` (or ``dtype``, default
  bf16) and ``quantization_config.quant_method`` (mxfp4, fp8).  Features with no
  config field (q/k norms, sinks, expert biases, LayerNorm biases) follow
  ``model_type``.  A missing needed field raises ConfigError naming it.
  """
  p = pathlib.Path(path)
  if p.is_dir():
    p = p / "config.json"
  cfg, where = _read_json(p)
  mt = str(cfg.get("model_type", ""))

  def need(*keys: str):
    for k in keys:
      if cfg.get(k) is not None:
        return cfg[k]
    alt = f" (or {', '.join(repr(k) for k in keys[1:])})" if len(keys) > 1 else ""
    raise ConfigError(f"{where}: missing field {keys[0]!r}{alt}, needed for a MoE "
                      f"model; add \"{keys[0]}\": <value>")

  def integer(key: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
      raise ConfigError(f"{where}: field {key!r} must be an integer, not {v!r}")
    return int(v)

  def get_int(*keys: str, default=None) -> int:
    if default is not None and all(cfg.get(k) is None for k in keys):
      return default
    return integer(keys[0], need(*keys))

  for key, ok in (("moe_layer_freq", 1), ("decoder_sparse_step", 1)):
    if cfg.get(key, ok) not in (ok, None):
      raise ConfigError(f"{where}: field {key!r} is {cfg[key]!r}; only MoE in every "
                        f"layer after the dense ones is modelled, write {ok}")
  if cfg.get("mlp_only_layers"):
    raise ConfigError(f"{where}: field 'mlp_only_layers' is {cfg['mlp_only_layers']}; "
                      "interleaved dense layers are not modelled, write []")
  num_layers = get_int("num_hidden_layers")
  hidden = get_int("hidden_size")
  heads = get_int("num_attention_heads")
  kw: dict[str, Any] = dict(
      num_layers=num_layers, hidden_size=hidden, vocab_size=get_int("vocab_size"),
      num_experts=get_int("num_experts", "num_local_experts", "n_routed_experts"),
      top_k=get_int("num_experts_per_tok", "experts_per_token"),
      expert_ffn_size=get_int("moe_intermediate_size", "intermediate_size"),
      num_q_heads=heads, max_context_tokens=get_int("max_position_embeddings", default=0))
  if cfg.get("kv_lora_rank"):
    kw.update(attention_kind="mla", num_kv_heads=heads, head_dim=0,
              kv_lora_rank=get_int("kv_lora_rank"),
              q_lora_rank=get_int("q_lora_rank", default=0),
              qk_nope_head_dim=get_int("qk_nope_head_dim"),
              qk_rope_head_dim=get_int("qk_rope_head_dim"),
              v_head_dim=get_int("v_head_dim"))
  else:
    kv = get_int("num_key_value_heads", default=heads)
    if cfg.get("head_dim") is None and hidden % heads:
      raise ConfigError(f"{where}: missing field 'head_dim' and hidden_size {hidden} "
                        f"is not a multiple of num_attention_heads {heads}; add it")
    kw.update(attention_kind="mha" if kv == heads else "gqa", num_kv_heads=kv,
              head_dim=get_int("head_dim", default=hidden // heads))
  if get_int("n_shared_experts", default=0):
    kw.update(num_shared_experts=get_int("n_shared_experts"),
              shared_expert_ffn_size=get_int("moe_intermediate_size"))
  elif get_int("shared_expert_intermediate_size", default=0):
    kw.update(num_shared_experts=1, shared_expert_gate=True,
              shared_expert_ffn_size=get_int("shared_expert_intermediate_size"))
  dense = get_int("first_k_dense_replace", default=0)
  if dense:
    kw.update(first_dense_layers=dense, dense_ffn_size=get_int("intermediate_size"))
  kw.update(_hf_window(cfg, where, num_layers, kw["max_context_tokens"], get_int))
  bias = bool(cfg.get("attention_bias", False))
  kw.update(qkv_bias=bias or mt == "qwen2_moe", o_bias=bias and mt != "qwen2_moe",
            qk_norm={"qwen3_moe": "per_head", "olmoe": "full"}.get(mt, "none"),
            attention_sinks=mt == "gpt_oss", expert_bias=mt == "gpt_oss",
            router_bias=mt == "gpt_oss", norm_bias=mt == "phimoe",
            lm_head_bias=bool(cfg.get("lm_head_bias", False)))
  if "tie_word_embeddings" in cfg:
    kw["tie_embeddings"] = bool(cfg["tie_word_embeddings"])
  elif mt in _UNTIED_TYPES:
    kw["tie_embeddings"] = False
  else:
    need("tie_word_embeddings")
  kw.update(_hf_dtypes(cfg, where, expert_dtype, other_dtype))
  if name is None:
    src = cfg.get("_name_or_path") or (p.parent.name if p.name == "config.json"
                                       else p.stem)
    name = pathlib.PurePosixPath(str(src)).name or p.stem
  kw["name"] = name
  validate_fields({**{f.name: f.default for f in dataclasses.fields(MoeModelSpec)
                      if f.default is not dataclasses.MISSING}, **kw}, where)
  return MoeModelSpec(**kw)


def _hf_window(cfg: dict, where: str, num_layers: int, max_ctx: int, get_int) -> dict:
  window = get_int("sliding_window", default=0)
  if "layer_types" in cfg:
    types = cfg["layer_types"]
    if not isinstance(types, list) or len(types) != num_layers:
      raise ConfigError(f"{where}: field 'layer_types' must list {num_layers} entries "
                        "('sliding_attention' or 'full_attention')")
    layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
  elif window and cfg.get("use_sliding_window", True):
    first = get_int("max_window_layers", default=0)
    layers = tuple(range(first, num_layers))
  else:
    layers = ()
  if layers:
    window = get_int("sliding_window")
  if not layers or (max_ctx and window >= max_ctx):
    return dict(sliding_window=0, sliding_window_layers=())
  return dict(sliding_window=window, sliding_window_layers=layers)


def _hf_dtypes(cfg: dict, where: str, expert_dtype, other_dtype) -> dict:
  raw = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
  base = canonical_dtype(raw, f"{where}: field 'torch_dtype'")
  out = {k: base for k in _DTYPE_FIELDS}
  q = cfg.get("quantization_config")
  if expert_dtype is None and isinstance(q, dict):
    method = str(q.get("quant_method", ""))
    if method == "mxfp4":
      out["expert_dtype"] = "mxfp4"
    elif method == "fp8":
      out.update(expert_dtype="fp8", attention_dtype="fp8", dense_dtype="fp8")
    else:
      raise ConfigError(f"{where}: quantization_config.quant_method {method!r} is not "
                        "modelled; load with expert_dtype= (and other_dtype=) one of "
                        f"{sorted(DTYPE_BITS)}")
  if expert_dtype:
    out["expert_dtype"] = canonical_dtype(expert_dtype, "load_hf_config expert_dtype")
  if other_dtype:
    o = canonical_dtype(other_dtype, "load_hf_config other_dtype")
    out.update(attention_dtype=o, dense_dtype=o, embedding_dtype=o)
  return out


def model_from_any(name_or_path: str | pathlib.Path | MoeModelSpec) -> MoeModelSpec:
  """A spec from a registry name, a model JSON file, a HuggingFace config.json
  (or the folder holding it), or a spec (returned as is)."""
  if isinstance(name_or_path, MoeModelSpec):
    return name_or_path
  s = str(name_or_path)
  if s.lower() in MODELS:
    return MODELS[s.lower()]
  p = pathlib.Path(s)
  if p.is_dir():
    return load_hf_config(p)
  if p.suffix == ".json":
    obj, _ = _read_json(p)
    if "model_type" in obj or "num_hidden_layers" in obj:
      return load_hf_config(p)
    return load_model_json(p)
  return get_model(s)


# ---------------------------------------------------------------------------
# Probe: python -m ndpsim.probe model --model=qwen3-30b-a3b [--dtype=bf16]

PROBE_ARGS = {
    "model": (str, probe_mod.REQUIRED, "registry name, model .json or HF config.json"),
    "dtype": (str, "", "weight dtype of every tensor group (bf16, fp8, int4, "
              "mxfp4, ...; norms and biases too if >= 16 bits); empty keeps the "
              "model's own"),
    "expert_dtype": (str, "", "routed-expert dtype, applied after --dtype"),
    "kv_dtype": (str, "", "KV-cache dtype; empty keeps the model's own"),
    "context_len": (int, 1024, "context length for KV-cache bytes and FLOPs"),
}


def probe(args: dict) -> dict:
  """Sizes, parameter counts, KV bytes and FLOPs of one model, JSON-able."""
  spec = model_from_any(args["model"])
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

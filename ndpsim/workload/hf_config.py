"""Reading a local HuggingFace ``config.json`` into a
:class:`~ndpsim.workload.model_spec.MoeModelSpec` (:func:`load_hf_config`,
:func:`inspect_hf_config`) for the model_types of
:data:`~ndpsim.workload.hf_families.HF_FAMILIES` (Qwen2/3-MoE, Mixtral, PhiMoE,
OLMoE, GPT-OSS, DeepSeek-V2/V3, GLM-4.5, MiniMax-M2, Granite MoE, ERNIE-4.5,
Hunyuan, Llama-4, DBRX), so users add a model without writing code.

A config missing a needed key, or holding a key that is not modelled, gets a
one-line ConfigError naming the file, the key and the model_type.  Re-exported
by :mod:`ndpsim.workload.model_io`.
"""
from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Any

from ndpsim.base import ConfigError
from ndpsim.workload import model_sizes as M
from ndpsim.workload.hf_families import (_DBRX_NESTED, _HF_REPORTED_KEYS, _KV_TYPES,
                                         _PRETRAINED_FIELDS, HF_FAMILIES, HF_IGNORED_KEYS,
                                         HF_COMMON_KEYS, HF_SSM_KEYS, HF_TEXT_CONFIG_TYPES,
                                         HfFamily)
from ndpsim.workload.hf_reader import _HfReader
from ndpsim.workload.model_json import read_json as _read_json
from ndpsim.workload.model_spec import (_DTYPE_FIELDS, DTYPE_BITS, MoeModelSpec,
                                        canonical_dtype, validate_fields)


class HfConfigWarning(UserWarning):
  """A HuggingFace config loaded with parts reported rather than simulated."""


@dataclasses.dataclass(frozen=True)
class HfConfigReport:
  """What :func:`inspect_hf_config` made of a config.json: the spec, one-line
  notes on what is reported rather than simulated, and the multi-token-
  prediction layers left out of the stack (count and approximate elements)."""
  spec: MoeModelSpec
  notes: tuple[str, ...]
  mtp_layers: int
  mtp_params: int


def _flatten_text_config(cfg: dict, where: str) -> tuple[dict, str, list[str]]:
  """(language-model config, its model_type, notes): a multimodal config's
  ``text_config`` with the outer tie/dtype/quantization keys it inherits."""
  outer = str(cfg.get("model_type", ""))
  text = cfg.get("text_config")
  if not isinstance(text, dict):
    return cfg, outer, []
  notes = [f"{k}: the {_HF_REPORTED_KEYS[k]} is not modelled (text decoding only)"
           for k in cfg if k in _HF_REPORTED_KEYS]
  known = set(HF_IGNORED_KEYS) | set(_HF_REPORTED_KEYS) | {
      "model_type", "text_config", "tie_word_embeddings", "torch_dtype", "dtype",
      "quantization_config"}
  for k in cfg:
    if k not in known:
      raise ConfigError(f"{where}: key {k!r} (model_type {outer!r}, outside "
                        "text_config) is not modelled and may change the structure; "
                        "remove it if it does not change the language model's weights")
  inner = dict(text)
  for k in ("tie_word_embeddings", "torch_dtype", "dtype", "quantization_config"):
    if k in cfg and k not in inner:
      inner[k] = cfg[k]
  mt = str(inner.get("model_type") or HF_TEXT_CONFIG_TYPES.get(outer, outer))
  return inner, mt, notes


def _flatten_dbrx(cfg: dict, where: str) -> dict:
  """DBRX's names (``n_layers``, ``d_model``, nested ``attn_config`` and
  ``ffn_config``) as the common ones; unknown nested keys are refused."""
  out = dict(cfg)
  for sect, allowed in _DBRX_NESTED.items():
    sub = cfg.get(sect) or {}
    if not isinstance(sub, dict):
      raise ConfigError(f"{where}: key {sect!r} (model_type 'dbrx') must be an object")
    for k in sub:
      if k not in allowed and k not in _PRETRAINED_FIELDS:
        raise ConfigError(f"{where}: key '{sect}.{k}' (model_type 'dbrx') is not "
                          "modelled and may change the structure; remove it if it "
                          "does not change weight shapes")
  attn, ffn = cfg.get("attn_config") or {}, cfg.get("ffn_config") or {}
  for new, old, src in (
      ("num_hidden_layers", "n_layers", cfg), ("hidden_size", "d_model", cfg),
      ("num_attention_heads", "n_heads", cfg),
      ("max_position_embeddings", "max_seq_len", cfg),
      ("num_key_value_heads", "kv_n_heads", attn),
      ("num_local_experts", "moe_num_experts", ffn),
      ("num_experts_per_tok", "moe_top_k", ffn),
      ("intermediate_size", "ffn_hidden_size", ffn)):
    if src.get(old) is not None:
      out[new] = src[old]
  return out


def _hf_layout(r: _HfReader, num_layers: int) -> tuple[int, ...]:
  """Indices of the dense-FFN layers, from the family's layout keys."""
  n, lay = num_layers, r.family.layout
  if lay == "qwen":
    step = r.integer("decoder_sparse_step")
    only = r.get("mlp_only_layers") or []
    if step < 1:
      raise r.err("decoder_sparse_step", f"is {step}; write an integer >= 1")
    bad = [i for i in only if not isinstance(i, int) or not 0 <= i < n]
    if not isinstance(only, list) or bad:
      raise r.err("mlp_only_layers", f"must list layer indices 0..{n - 1}")
    return tuple(i for i in range(n) if i in only or (i + 1) % step)
  if lay == "deepseek":
    k = r.integer("first_k_dense_replace")
    freq = r.get("moe_layer_freq", 1)
    if isinstance(freq, list):
      if len(freq) != n or any(f not in (0, 1) for f in freq):
        raise r.err("moe_layer_freq", f"is a list; it must hold {n} entries of 0 "
                    "(dense) or 1 (MoE)")
      return tuple(i for i in range(n) if i < k or not freq[i])
    freq = r.integer("moe_layer_freq", freq)
    if freq < 1:
      raise r.err("moe_layer_freq", f"is {freq}; write an integer >= 1")
    return tuple(i for i in range(n) if i < k or i % freq)
  if lay == "ernie":
    start, end = r.integer("moe_layer_start_index"), r.integer("moe_layer_end_index")
    step = r.integer("moe_layer_interval")
    end = n - 1 if end == -1 else end
    if step < 1:
      raise r.err("moe_layer_interval", f"is {step}; write an integer >= 1")
    return tuple(i for i in range(n) if not (start <= i <= end and (i + 1) % step == 0))
  if lay == "llama4":
    moe = r.cfg.get("moe_layers")
    if moe is None:
      step = r.integer("interleave_moe_layer_step")
      moe = list(range(step - 1, n, step))
    if not isinstance(moe, list) or any(not isinstance(i, int) or not 0 <= i < n
                                        for i in moe):
      raise r.err("moe_layers", f"must list layer indices 0..{n - 1}")
    return tuple(i for i in range(n) if i not in moe)
  return ()


def _hf_shared(r: _HfReader, layers: int) -> dict:
  """Shared-expert fields of the family (count, width in elements, gate)."""
  kind = r.family.shared
  if kind == "deepseek":
    n, width = r.integer("n_shared_experts", r.get("n_shared_experts", 0)), "moe_intermediate_size"
  elif kind == "ernie":
    n, width = r.integer("moe_num_shared_experts", r.get("moe_num_shared_experts", 0)), \
        "moe_intermediate_size"
  elif kind == "qwen2":
    f = r.integer("shared_expert_intermediate_size",
                  r.get("shared_expert_intermediate_size", 0))
    return dict(num_shared_experts=1, shared_expert_ffn_size=f,
                shared_expert_gate=True) if f else {}
  elif kind == "hunyuan":
    if not r.flag("use_mixed_mlp_moe"):
      return {}
    n = r.integer("num_shared_expert", r.get("num_shared_expert", 1), layers=layers)
    width = "intermediate_size"
  elif kind == "llama4":
    n, width = 1, "intermediate_size"
  else:
    return {}
  return dict(num_shared_experts=n, shared_expert_ffn_size=r.integer(width)) if n else {}


def _hf_windows(r: _HfReader, num_layers: int, max_ctx: int) -> tuple[dict, list[str]]:
  """Sliding-window / chunked-attention fields and notes.  A window of
  ``max_position_embeddings`` tokens or more is no window.  Llama-4 chunked
  attention (``attention_chunk_size`` on its RoPE layers) is modelled as a
  sliding window of the chunk size: the KV it keeps is at most one chunk, the
  keys a token attends to are at most the chunk (an upper bound: inside a
  chunk a token sees 1..chunk keys)."""
  notes: list[str] = []
  sizes: dict[int, str] = {}
  if r.has("layer_types"):
    types = r.cfg["layer_types"]
    if not isinstance(types, list) or len(types) != num_layers:
      raise r.err("layer_types", f"must list {num_layers} entries "
                  f"({', '.join(map(repr, _KV_TYPES))})")
    for i, t in enumerate(types):
      if t not in _KV_TYPES:
        raise r.err("layer_types", f"holds {t!r} (layer {i}); only "
                    f"{sorted(_KV_TYPES)} are modelled")
      if _KV_TYPES[t]:
        sizes[i] = _KV_TYPES[t]
  elif r.mt == "llama4_text":
    chunk = r.get("attention_chunk_size")
    if chunk:
      rope = r.cfg.get("no_rope_layers")
      if rope is None:
        every = r.integer("no_rope_layer_interval")
        rope = [int((i + 1) % every != 0) for i in range(num_layers)]
      if not isinstance(rope, list) or len(rope) != num_layers:
        raise r.err("no_rope_layers", f"must list {num_layers} entries of 0 or 1")
      sizes = {i: "attention_chunk_size" for i in range(num_layers) if rope[i]}
  elif r.get("sliding_window") and r.get("use_sliding_window", True):
    first = r.integer("max_window_layers", r.get("max_window_layers", 0))
    sizes = {i: "sliding_window" for i in range(first, num_layers)}
  if not sizes:
    return dict(sliding_window=0, sliding_window_layers=()), notes
  keys = sorted(set(sizes.values()))
  windows = {k: r.integer(k) for k in keys}
  if len(set(windows.values())) > 1:
    raise r.err(keys[-1], f"gives a second window size ({windows}); one window size "
                "per model is modelled")
  window = windows[keys[0]]
  if max_ctx and window >= max_ctx:
    return dict(sliding_window=0, sliding_window_layers=()), notes
  if "attention_chunk_size" in keys:
    notes.append(f"attention_chunk_size: chunked attention on {len(sizes)} of "
                 f"{num_layers} layers is modelled as a {window}-token sliding window "
                 "(its KV bound; attended keys are an upper bound)")
  return dict(sliding_window=window, sliding_window_layers=tuple(sorted(sizes))), notes


def _hf_mtp(r: _HfReader) -> tuple[int, str]:
  """(multi-token-prediction layers, the key that says so)."""
  if r.mt == "minimax_m2":
    if not r.flag("use_mtp", False):
      return 0, ""
    mods = r.integer("num_mtp_modules", r.get("num_mtp_modules", 0))
    return mods * r.integer("mtp_transformer_layers", r.get("mtp_transformer_layers", 1)), \
        "num_mtp_modules"
  if "num_nextn_predict_layers" in r.family.keys:
    return r.integer("num_nextn_predict_layers",
                     r.get("num_nextn_predict_layers", 0)), "num_nextn_predict_layers"
  return 0, ""


def _hf_attention(r: _HfReader, hidden: int, heads: int) -> dict:
  """Attention fields: MLA from ``kv_lora_rank`` (DeepSeek), else MHA/GQA."""
  if r.family.layout == "deepseek" and r.mt != "glm4_moe":
    return dict(attention_kind="mla", num_kv_heads=heads, head_dim=0,
                kv_lora_rank=r.integer("kv_lora_rank"),
                q_lora_rank=r.integer("q_lora_rank", r.cfg.get("q_lora_rank") or 0),
                qk_nope_head_dim=r.integer("qk_nope_head_dim"),
                qk_rope_head_dim=r.integer("qk_rope_head_dim"),
                v_head_dim=r.integer("v_head_dim"))
  kv = r.integer("num_key_value_heads", r.get("num_key_value_heads", heads))
  key = "attention_head_dim" if r.has("attention_head_dim") else "head_dim"
  hd = r.get(key)
  if hd is None:
    if heads <= 0:
      raise r.err("num_attention_heads", f"is {heads}; write a positive integer")
    if hidden % heads:
      raise r.err("head_dim", f"is missing and hidden_size {hidden} is not a multiple "
                  f"of num_attention_heads {heads}; add \"head_dim\": <value>")
    hd = hidden // heads
  return dict(attention_kind="mha" if kv == heads else "gqa", num_kv_heads=kv,
              head_dim=r.integer(key, hd))


def _hf_refusals(r: _HfReader) -> None:
  """Known keys whose value selects a structure ndpsim does not model."""
  c, mt = r.cfg, r.mt
  r.refuse_unless("use_cla", not c.get("use_cla"), "cross-layer KV sharing", "false")
  r.refuse_unless("use_mla", not c.get("use_mla"), "Hunyuan MLA", "false")
  if mt == "hunyuan_v1_moe":
    r.refuse_unless("kv_lora_rank", not c.get("kv_lora_rank"), "Hunyuan MLA", "null")
  r.refuse_unless("mlp_bias", not c.get("mlp_bias"), "bias in the FFN matrices", "false")
  r.refuse_unless("use_bias", not c.get("use_bias"), "bias in the linear layers", "false")
  r.refuse_unless("moe_layer_num_skipped", not c.get("moe_layer_num_skipped"),
                  "skipped (dense) MoE layers in Hunyuan", "0")
  r.refuse_unless("norm_type", c.get("norm_type", "rms") == "rms", "a non-RMS norm",
                  "\"rms\"")
  r.refuse_unless("use_rmsnorm", c.get("use_rmsnorm", True), "LayerNorm", "true")
  r.refuse_unless("shared_intermediate_size", not c.get("shared_intermediate_size"),
                  "MiniMax's shared expert", "0")
  types = c.get("attn_type_list")
  r.refuse_unless("attn_type_list", types is None or all(t == 1 for t in types),
                  "lightning (linear) attention layers (entries 0)", "1 for every layer")
  r.refuse_unless("qk_norm_type", c.get("qk_norm_type", "per_layer") in
            ("per_layer", "per_head"), "this q/k norm", "\"per_layer\" or \"per_head\"")


def _hf_audit(cfg: dict, where: str, mt: str, family: HfFamily) -> None:
  """Refuses the first key that is neither read, ignored nor reported."""
  known = set(HF_COMMON_KEYS) | set(family.keys) | HF_IGNORED_KEYS | set(_HF_REPORTED_KEYS)
  for k in cfg:
    if k not in known:
      raise ConfigError(
          f"{where}: key {k!r} (model_type {mt!r}) is not modelled and may change the "
          "layer structure; remove it if it changes neither weight shapes nor KV size, "
          "else describe the model in a model JSON (model_io.save_model_json)")


def _hf_flags(r: _HfReader) -> dict:
  """Features with no size key of their own, by model_type: biases, q/k norms
  (per head: weight of head_dim; full: of all heads), sinks, router biases
  (DeepSeek-V3/GLM/ERNIE/MiniMax expert-score correction bias)."""
  mt = r.mt
  bias = bool(r.get("attention_bias", False))
  qkv = {"qwen2_moe": bool(r.get("qkv_bias", True))}.get(mt, bias)
  o_bias = bias and mt not in ("qwen2_moe", "glm4_moe")
  qk = {"qwen3_moe": "per_head", "olmoe": "full"}.get(mt, "none")
  if mt in ("glm4_moe", "hunyuan_v1_moe") and r.flag("use_qk_norm"):
    qk = "per_head"
  if mt == "minimax_m2" and r.flag("use_qk_norm", True):
    qk = {"per_layer": "full", "per_head": "per_head"}[r.cfg.get("qk_norm_type", "per_layer")]
  router_bias = (mt == "gpt_oss" or r.cfg.get("topk_method") == "noaux_tc"
                 or mt == "glm4_moe" or bool(r.cfg.get("moe_use_aux_free"))
                 or (mt == "minimax_m2" and bool(r.cfg.get("use_routing_bias", True))))
  return dict(qkv_bias=qkv, o_bias=o_bias, qk_norm=qk, attention_sinks=mt == "gpt_oss",
              expert_bias=mt == "gpt_oss", router_bias=router_bias,
              norm_bias=mt == "phimoe", lm_head_bias=bool(r.get("lm_head_bias", False)))


def _read_config(path) -> tuple[dict, dict, str, list[str], str, pathlib.Path]:
  """(raw config, language-model config, model_type, notes, where, path) of a
  config.json or its folder; refuses state-space and unknown model_types."""
  p = pathlib.Path(path)
  if p.is_dir():
    p = p / "config.json"
  raw, where = _read_json(p)
  cfg, mt, notes = _flatten_text_config(raw, where)
  for k in HF_SSM_KEYS:
    if k in cfg:
      raise ConfigError(f"{where}: key {k!r} (model_type {mt!r}) describes a hybrid "
                        "state-space (Mamba) model; only attention+MoE decoders are "
                        "modelled, so this config is refused")
  if not mt:
    raise ConfigError(f"{where}: key 'model_type' is missing; add \"model_type\": one "
                      f"of {', '.join(sorted(HF_FAMILIES))} (as in the model's repo)")
  if mt not in HF_FAMILIES:
    raise ConfigError(f"{where}: model_type {mt!r} is not supported (supported: "
                      f"{', '.join(sorted(HF_FAMILIES))}); describe the model in a "
                      "model JSON (model_io.save_model_json) or, if its layers are "
                      "those of a supported type, write that model_type")
  return raw, cfg, mt, notes, where, p


def _spec_fields(r: _HfReader) -> tuple[dict[str, Any], list[str]]:
  """Spec fields (all but dtypes and name) read from the config, and the
  notes on windows reported rather than simulated."""
  family = r.family
  num_layers = r.integer("num_hidden_layers")
  hidden, heads = r.integer("hidden_size"), r.integer("num_attention_heads")
  top_key = "experts_per_token" if r.has("experts_per_token") else family.top_k
  kw: dict[str, Any] = dict(
      num_layers=num_layers, hidden_size=hidden, vocab_size=r.integer("vocab_size"),
      num_experts=r.integer(family.experts, layers=num_layers),
      top_k=r.integer(top_key, layers=num_layers),
      expert_ffn_size=r.integer(
          family.expert_ffn, r.get(family.expert_ffn) or r.get("intermediate_size"),
          layers=num_layers),
      num_q_heads=heads,
      max_context_tokens=r.integer("max_position_embeddings",
                                   r.get("max_position_embeddings", 0)))
  kw.update(_hf_attention(r, hidden, heads))
  kw.update(_hf_shared(r, num_layers))
  dense = _hf_layout(r, num_layers)
  lead = next((i for i in range(num_layers) if i not in dense), num_layers)
  if dense:
    kw.update(first_dense_layers=lead, interleaved_dense_layers=dense[lead:],
              dense_ffn_size=r.integer(family.dense_ffn))
  windows, wnotes = _hf_windows(r, num_layers, kw["max_context_tokens"])
  kw.update(windows)
  kw.update(_hf_flags(r))
  tie = r.get("tie_word_embeddings")
  if tie is None:
    raise r.err("tie_word_embeddings", "is missing; add \"tie_word_embeddings\": "
                "true or false")
  kw["tie_embeddings"] = bool(tie)
  return kw, wnotes


def inspect_hf_config(path: str | pathlib.Path, name: str | None = None, *,
                      expert_dtype: str | None = None,
                      other_dtype: str | None = None) -> HfConfigReport:
  """Like :func:`load_hf_config`, returning the spec with its notes (what is
  reported, not simulated) and the MTP layers left out, warning nothing."""
  raw, cfg, mt, notes, where, p = _read_config(path)
  family = HF_FAMILIES[mt]
  _hf_audit(cfg, where, mt, family)
  if mt == "dbrx":
    cfg = _flatten_dbrx(cfg, where)
  r = _HfReader(cfg, where, mt, family)
  _hf_refusals(r)
  kw, wnotes = _spec_fields(r)
  kw.update(_hf_dtypes(cfg, where, expert_dtype, other_dtype))
  kw["name"] = name or _hf_name(raw, p)
  validate_fields({**{f.name: f.default for f in dataclasses.fields(MoeModelSpec)
                      if f.default is not dataclasses.MISSING}, **kw}, where)
  spec = MoeModelSpec(**kw)
  mtp, mtp_key = _hf_mtp(r)
  hidden = spec.hidden_size
  mtp_params = mtp * (M.moe_layer_params(spec) + 2 * hidden * hidden + 3 * hidden)
  if mtp:
    notes.append(f"{mtp_key}: {mtp} multi-token-prediction layer(s) (~"
                 f"{mtp_params / 1e9:.2f} B parameters) are not in the simulated stack "
                 "or its counts; standard decoding does not run them")
  notes += wnotes
  if r.defaulted:
    notes.append("absent keys take transformers' defaults: " + ", ".join(
        f"{k}={v!r}" for k, v in sorted(r.defaulted.items())))
  return HfConfigReport(spec, tuple(notes), mtp, mtp_params)


def _hf_name(cfg: dict, p: pathlib.Path) -> str:
  src = cfg.get("_name_or_path") or (p.parent.name if p.name == "config.json" else p.stem)
  return pathlib.PurePosixPath(str(src)).name or p.stem


def load_hf_config(path: str | pathlib.Path, name: str | None = None, *,
                   expert_dtype: str | None = None,
                   other_dtype: str | None = None) -> MoeModelSpec:
  """Builds a spec from a local HuggingFace ``config.json`` (or its folder).

  Supported ``model_type`` values and the structural keys each reads are
  :data:`HF_FAMILIES` (table in README.md, "Models from HuggingFace
  config.json"); a multimodal config's ``text_config`` is read (Llama-4), a
  DBRX config's ``n_layers``/``d_model``/``attn_config``/``ffn_config`` too.
  Sizes are element counts, windows and context in tokens.  Absent keys take
  transformers' class defaults; per-layer lists (Hunyuan) must hold one value.
  Every other key is ignored only if it changes neither weight shapes, KV size
  nor FLOPs (:data:`HF_IGNORED_KEYS`); anything else -- an unknown key, an
  unsupported model_type, a hybrid state-space model (Jamba: ``attn_layer_period``,
  ``mamba_*``) -- is a one-line ConfigError naming the file, the key and the
  model_type.  What is loaded but not simulated (MTP layers, a vision tower,
  chunked attention as a window, defaults used) is said in one
  :class:`HfConfigWarning`; :func:`inspect_hf_config` returns it instead.
  Dtypes: ``torch_dtype`` (default bf16), ``quantization_config.quant_method``
  mxfp4 or fp8; ``expert_dtype``/``other_dtype`` override them.
  """
  report = inspect_hf_config(path, name, expert_dtype=expert_dtype,
                             other_dtype=other_dtype)
  if report.notes:
    warnings.warn(f"{path}: " + "; ".join(report.notes), HfConfigWarning, stacklevel=2)
  return report.spec


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

"""Loading MoE model specs from files: ndpsim's JSON format and HuggingFace
``config.json`` files (the model_types of :data:`HF_FAMILIES`: Qwen2/3-MoE,
Mixtral, PhiMoE, OLMoE, GPT-OSS, DeepSeek-V2/V3, GLM-4.5, MiniMax-M2, Granite
MoE, ERNIE-4.5, Hunyuan, Llama-4, DBRX), so users add a model without writing
code.

A file missing a needed field, or holding a key that is not modelled, gets a
one-line ConfigError naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
from typing import Any

from ndpsim import config
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
  d["interleaved_dense_layers"] = list(spec.interleaved_dense_layers)
  if source:
    d["source"] = source
  return d


def save_model_json(path: str | pathlib.Path, spec: MoeModelSpec, source: str = "") -> None:
  """Writes ``spec`` as a model JSON file (a starting point for a new model)."""
  pathlib.Path(path).write_text(json.dumps(model_to_json(spec, source), indent=2) + "\n")


# ---------------------------------------------------------------------------
# HuggingFace config.json.
#
# Every key of a config is in one of four classes: read (modelled, listed per
# model_type in HF_FAMILIES), ignored (no effect on weight shapes, KV size or
# FLOPs: token ids, dropout, initialisation, RoPE and routing numerics),
# reported (part of the checkpoint or of the attention that ndpsim does not
# simulate exactly: MTP layers, vision towers, chunked attention -- one
# HfConfigWarning per load says what and how much), or refused (ConfigError,
# one line naming the file, the key and the model_type).  A key in none of
# these classes is refused too: it might change the layer structure.


class HfConfigWarning(UserWarning):
  """A HuggingFace config loaded with parts reported rather than simulated."""


@dataclasses.dataclass(frozen=True)
class HfFamily:
  """How ndpsim reads one HuggingFace ``model_type``.

  ``experts``, ``top_k``, ``expert_ffn``: the keys of the routed-expert count,
  experts per token and expert FFN width (elements); ``layout``: which keys
  place MoE and dense layers (``all``: every layer MoE; ``qwen``:
  ``decoder_sparse_step``, ``mlp_only_layers``; ``deepseek``:
  ``first_k_dense_replace``, ``moe_layer_freq``; ``ernie``:
  ``moe_layer_start_index``/``end_index``/``interval``; ``llama4``:
  ``moe_layers`` or ``interleave_moe_layer_step``); ``shared``: how shared
  experts are named; ``dense_ffn``: the key of the dense-layer FFN width;
  ``keys``: the family's structural keys besides :data:`HF_COMMON_KEYS`;
  ``defaults``: transformers' class defaults for absent keys
  (``transformers/models/<type>/configuration_<type>.py``, v5.24).
  """
  experts: str
  top_k: str
  expert_ffn: str
  layout: str = "all"
  shared: str = "none"
  dense_ffn: str = "intermediate_size"
  keys: tuple[str, ...] = ()
  defaults: tuple[tuple[str, Any], ...] = ()


HF_COMMON_KEYS = (
    "model_type", "num_hidden_layers", "hidden_size", "vocab_size",
    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
    "tie_word_embeddings", "attention_bias", "num_experts_per_tok", "torch_dtype",
    "dtype", "quantization_config")

_WINDOW_KEYS = ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types")
_DS_KEYS = ("n_routed_experts", "n_shared_experts", "moe_intermediate_size",
            "intermediate_size", "first_k_dense_replace", "moe_layer_freq",
            "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
            "v_head_dim", "topk_method")
_DS_DEFAULTS = (("first_k_dense_replace", 0), ("moe_layer_freq", 1),
                ("tie_word_embeddings", False), ("attention_bias", False),
                ("kv_lora_rank", 512), ("q_lora_rank", 1536), ("qk_nope_head_dim", 128),
                ("qk_rope_head_dim", 64), ("v_head_dim", 128), ("topk_method", "greedy"))



def _core(layers: int, hidden: int, vocab: int, heads: int, max_pos: int):
  """transformers' defaults of the five keys every family reads."""
  return (("num_hidden_layers", layers), ("hidden_size", hidden), ("vocab_size", vocab),
          ("num_attention_heads", heads), ("max_position_embeddings", max_pos))


HF_FAMILIES: dict[str, HfFamily] = {
    "qwen3_moe": HfFamily(
        "num_experts", "num_experts_per_tok", "moe_intermediate_size", layout="qwen",
        keys=("num_experts", "moe_intermediate_size", "intermediate_size",
              "decoder_sparse_step", "mlp_only_layers") + _WINDOW_KEYS,
        defaults=_core(24, 2048, 151936, 32, 32768) + (
            ("num_experts", 128), ("num_experts_per_tok", 8),
            ("moe_intermediate_size", 768), ("intermediate_size", 6144),
            ("num_key_value_heads", 4), ("decoder_sparse_step", 1),
            ("mlp_only_layers", []), ("tie_word_embeddings", False),
            ("attention_bias", False), ("use_sliding_window", False))),
    "qwen2_moe": HfFamily(
        "num_experts", "num_experts_per_tok", "moe_intermediate_size", layout="qwen",
        shared="qwen2",
        keys=("num_experts", "moe_intermediate_size", "intermediate_size",
              "decoder_sparse_step", "mlp_only_layers", "shared_expert_intermediate_size",
              "qkv_bias") + _WINDOW_KEYS,
        defaults=_core(24, 2048, 151936, 16, 32768) + (
            ("num_experts", 60), ("num_experts_per_tok", 4),
            ("moe_intermediate_size", 1408), ("intermediate_size", 5632),
            ("shared_expert_intermediate_size", 5632), ("num_key_value_heads", 16),
            ("decoder_sparse_step", 1), ("mlp_only_layers", []),
            ("tie_word_embeddings", False), ("qkv_bias", True),
            ("use_sliding_window", False), ("max_window_layers", 28))),
    "mixtral": HfFamily(
        "num_local_experts", "num_experts_per_tok", "intermediate_size",
        keys=("num_local_experts", "intermediate_size") + _WINDOW_KEYS,
        defaults=_core(32, 4096, 32000, 32, 131072) + (
            ("num_local_experts", 8), ("num_experts_per_tok", 2),
            ("intermediate_size", 14336), ("num_key_value_heads", 8),
            ("tie_word_embeddings", False))),
    "phimoe": HfFamily(
        "num_local_experts", "num_experts_per_tok", "intermediate_size",
        keys=("num_local_experts", "intermediate_size", "lm_head_bias") + _WINDOW_KEYS,
        defaults=_core(32, 4096, 32064, 32, 131072) + (
            ("num_local_experts", 16), ("num_experts_per_tok", 2),
            ("intermediate_size", 6400), ("num_key_value_heads", 8),
            ("tie_word_embeddings", False), ("attention_bias", False),
            ("lm_head_bias", False))),
    "olmoe": HfFamily(
        "num_experts", "num_experts_per_tok", "intermediate_size",
        keys=("num_experts", "intermediate_size"),
        defaults=_core(16, 2048, 50304, 16, 4096) + (
            ("num_experts", 64), ("num_experts_per_tok", 8),
            ("intermediate_size", 2048), ("tie_word_embeddings", False),
            ("attention_bias", False))),
    "gpt_oss": HfFamily(
        "num_local_experts", "num_experts_per_tok", "intermediate_size",
        keys=("num_local_experts", "experts_per_token", "intermediate_size") + _WINDOW_KEYS,
        defaults=_core(36, 2880, 201088, 64, 131072) + (
            ("num_local_experts", 128), ("num_experts_per_tok", 4),
            ("intermediate_size", 2880), ("head_dim", 64), ("num_key_value_heads", 8),
            ("sliding_window", 128), ("tie_word_embeddings", False),
            ("attention_bias", True))),
    "deepseek_v2": HfFamily(
        "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
        layout="deepseek", shared="deepseek", keys=_DS_KEYS,
        defaults=_core(32, 4096, 102400, 32, 2048) + _DS_DEFAULTS + (
            ("n_routed_experts", 64), ("n_shared_experts", 2),
            ("moe_intermediate_size", 1407),
            ("intermediate_size", 11008))),
    "deepseek_v3": HfFamily(
        "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
        layout="deepseek", shared="deepseek",
        keys=_DS_KEYS + ("num_nextn_predict_layers",),
        defaults=_core(61, 7168, 129280, 128, 4096) + _DS_DEFAULTS[1:] + (
            ("first_k_dense_replace", 3), ("n_routed_experts", 256),
            ("n_shared_experts", 1), ("num_experts_per_tok", 8),
            ("moe_intermediate_size", 2048), ("intermediate_size", 18432),
            ("num_key_value_heads", 128), ("num_nextn_predict_layers", 1))),
    "glm4_moe": HfFamily(
        "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
        layout="deepseek", shared="deepseek",
        keys=("n_routed_experts", "n_shared_experts", "moe_intermediate_size",
              "intermediate_size", "first_k_dense_replace", "use_qk_norm",
              "num_nextn_predict_layers"),
        defaults=_core(46, 4096, 151552, 96, 131072) + (
            ("n_routed_experts", 128), ("n_shared_experts", 1),
            ("num_experts_per_tok", 8), ("moe_intermediate_size", 1408),
            ("intermediate_size", 10944), ("num_key_value_heads", 8),
            ("first_k_dense_replace", 1), ("use_qk_norm", False),
            ("num_nextn_predict_layers", 1), ("tie_word_embeddings", False),
            ("attention_bias", False))),
    "minimax_m2": HfFamily(
        "num_local_experts", "num_experts_per_tok", "intermediate_size",
        keys=("num_local_experts", "intermediate_size", "attn_type_list", "use_qk_norm",
              "qk_norm_type", "use_routing_bias", "shared_intermediate_size",
              "num_mtp_modules", "mtp_transformer_layers", "use_mtp") + _WINDOW_KEYS,
        defaults=_core(62, 3072, 200064, 48, 196608) + (
            ("num_local_experts", 256), ("num_experts_per_tok", 8),
            ("intermediate_size", 1536), ("num_key_value_heads", 8),
            ("head_dim", 128), ("tie_word_embeddings", False))),
    "granitemoe": HfFamily(
        "num_local_experts", "num_experts_per_tok", "intermediate_size",
        keys=("num_local_experts", "intermediate_size"),
        defaults=_core(32, 4096, 32000, 32, 2048) + (
            ("num_local_experts", 8), ("num_experts_per_tok", 2),
            ("intermediate_size", 11008), ("tie_word_embeddings", False),
            ("attention_bias", False))),
    "ernie4_5_moe": HfFamily(
        "moe_num_experts", "moe_k", "moe_intermediate_size", layout="ernie",
        shared="ernie",
        keys=("moe_num_experts", "moe_k", "moe_intermediate_size", "intermediate_size",
              "moe_num_shared_experts", "moe_layer_start_index", "moe_layer_end_index",
              "moe_layer_interval", "use_bias", "moe_use_aux_free", "use_rmsnorm",
              "num_nextn_predict_layers"),
        defaults=_core(28, 2560, 103424, 20, 131072) + (
            ("moe_num_experts", 64), ("moe_k", 6), ("moe_intermediate_size", 1536),
            ("intermediate_size", 12288), ("moe_num_shared_experts", 2),
            ("num_key_value_heads", 4), ("moe_layer_start_index", 1),
            ("moe_layer_end_index", -1), ("moe_layer_interval", 1),
            ("use_bias", False), ("tie_word_embeddings", True))),
    "hunyuan_v1_moe": HfFamily(
        "num_experts", "moe_topk", "moe_intermediate_size", shared="hunyuan",
        keys=("num_experts", "moe_topk", "moe_intermediate_size", "intermediate_size",
              "num_shared_expert", "use_mixed_mlp_moe", "attention_head_dim",
              "use_qk_norm", "use_cla", "cla_share_factor", "use_mla", "kv_lora_rank",
              "mlp_bias", "norm_type", "moe_layer_num_skipped"),
        defaults=_core(32, 4096, 290943, 32, 2048) + (
            ("num_experts", 1), ("moe_topk", 1), ("intermediate_size", 11008),
            ("tie_word_embeddings", False), ("attention_bias", False))),
    "llama4_text": HfFamily(
        "num_local_experts", "num_experts_per_tok", "intermediate_size",
        layout="llama4", shared="llama4", dense_ffn="intermediate_size_mlp",
        keys=("num_local_experts", "intermediate_size", "intermediate_size_mlp",
              "interleave_moe_layer_step", "moe_layers", "attention_chunk_size",
              "no_rope_layers", "no_rope_layer_interval", "use_qk_norm", "layer_types"),
        defaults=_core(48, 5120, 202048, 40, 131072) + (
            ("num_local_experts", 16), ("num_experts_per_tok", 1),
            ("intermediate_size", 8192), ("intermediate_size_mlp", 16384),
            ("num_key_value_heads", 8), ("head_dim", 128),
            ("interleave_moe_layer_step", 1), ("no_rope_layer_interval", 4),
            ("attention_chunk_size", 8192), ("tie_word_embeddings", False),
            ("attention_bias", False))),
    "dbrx": HfFamily(
        "num_local_experts", "num_experts_per_tok", "intermediate_size",
        keys=("n_layers", "d_model", "n_heads", "max_seq_len", "attn_config",
              "ffn_config"),
        # DbrxConfig, DbrxAttentionConfig (kv_n_heads), DbrxFFNConfig defaults.
        defaults=_core(24, 2048, 32000, 16, 2048) + (
            ("num_key_value_heads", 1), ("num_local_experts", 4),
            ("num_experts_per_tok", 1), ("intermediate_size", 3584),
            ("tie_word_embeddings", False))),
}
# Outer (multimodal) model_types whose language model sits in text_config.
HF_TEXT_CONFIG_TYPES = {"llama4": "llama4_text"}

# Keys with no effect on weight shapes, KV-cache size or FLOPs.
HF_IGNORED_KEYS = frozenset("""
    _name_or_path architectures auto_map transformers_version _commit_hash
    _attn_implementation_autoset bos_token_id eos_token_id pad_token_id eod_token_id
    sep_token_id pad_id mask_init_id im_start_id im_end_id text_start_id text_end_id
    image_token_id image_token_index boi_token_index eoi_token_index
    initializer_range initializer_factor rms_norm_eps layer_norm_eps norm_eps
    norm_epsilon use_cache tokenizer_class hidden_act hidden_dropout attention_dropout
    attention_probs_dropout_prob dropout resid_pdrop emb_pdrop embd_pdrop
    output_router_logits router_aux_loss_coef router_z_loss_coef aux_loss_alpha seq_aux
    router_jitter_noise input_jitter_noise ep_size pretraining_tp rope_theta
    rope_scaling rope_parameters rope_interleave partial_rotary_factor rotary_dim
    rotary_emb_base use_rotary_pos_emb original_max_position_embeddings
    initial_context_length norm_topk_prob routed_scaling_factor scoring_func n_group
    topk_group moe_norm_min moe_gate moe_capacity moe_drop_tokens
    moe_random_routing_dropped_token group_limited_greedy shared_moe_mode
    attention_multiplier embedding_multiplier logits_scaling residual_multiplier
    clip_qkv attn_temperature_tuning floor_scale attn_scale swiglu_alpha swiglu_limit
    for_llm_compressor use_flash_attention use_fused_rms_norm use_fused_rope
    use_fused_swiglu freq_allocation enable_moe_fp32_combine cla_share_factor
    layernorm_full_attention_beta layernorm_linear_attention_beta layernorm_mlp_beta
    """.split())
# Keys of a DBRX attn_config / ffn_config (and the PretrainedConfig fields an
# old transformers wrote into them) that do not change shapes.
_DBRX_NESTED = {
    "attn_config": ("kv_n_heads",),
    "ffn_config": ("ffn_hidden_size", "moe_num_experts", "moe_top_k", "ffn_act_fn",
                   "moe_jitter_eps", "moe_loss_weight", "moe_normalize_expert_weights",
                   "uniform_expert_assignment", "hidden_size"),
}
_PRETRAINED_FIELDS = frozenset("""
    model_type attn_pdrop clip_qkv rope_theta return_dict output_hidden_states
    output_attentions torchscript torch_dtype use_bfloat16 tf_legacy_loss pruned_heads
    tie_word_embeddings chunk_size_feed_forward is_encoder_decoder is_decoder
    cross_attention_hidden_size add_cross_attention tie_encoder_decoder max_length
    min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty
    no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences
    output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id
    remove_invalid_values exponential_decay_length_penalty suppress_tokens
    begin_suppress_tokens architectures finetuning_task id2label label2id
    tokenizer_class prefix bos_token_id pad_token_id eos_token_id sep_token_id
    decoder_start_token_id task_specific_params problem_type _name_or_path
    transformers_version
    """.split())
# Parts reported, not simulated: key -> what the note says.
_HF_REPORTED_KEYS = {"vision_config": "vision encoder", "audio_config": "audio encoder",
                     "vision_tower": "vision encoder"}
# Hybrid state-space models: any of these keys is refused by name.
HF_SSM_KEYS = ("attn_layer_period", "attn_layer_offset", "expert_layer_period",
               "expert_layer_offset", "mamba_d_state", "mamba_d_conv", "mamba_expand",
               "mamba_dt_rank", "ssm_state_size", "mamba_n_heads", "layers_block_type",
               "hybrid_override_pattern", "linear_num_value_heads", "full_attention_interval")
_KV_TYPES = {"sliding_attention": "sliding_window", "chunked_attention": "attention_chunk_size",
             "full_attention": None}


@dataclasses.dataclass(frozen=True)
class HfConfigReport:
  """What :func:`inspect_hf_config` made of a config.json: the spec, one-line
  notes on what is reported rather than simulated, and the multi-token-
  prediction layers left out of the stack (count and approximate elements)."""
  spec: MoeModelSpec
  notes: tuple[str, ...]
  mtp_layers: int
  mtp_params: int


class _HfReader:
  """Reads one config dict of a known family: every value by key, with
  transformers' default when absent (recorded), integer and per-layer-list
  checks, and one-line errors naming the file, the key and the model_type."""

  def __init__(self, cfg: dict, where: str, mt: str, family: HfFamily):
    self.cfg, self.where, self.mt, self.family = cfg, where, mt, family
    self.defaults = dict(family.defaults)
    self.defaulted: dict[str, Any] = {}

  def err(self, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{self.where}: key {key!r} (model_type {self.mt!r}) {msg}")

  def has(self, key: str) -> bool:
    return self.cfg.get(key) is not None

  def get(self, key: str, fallback: Any = None) -> Any:
    """The value, else transformers' default (noted), else ``fallback``."""
    if self.cfg.get(key) is not None:
      return self.cfg[key]
    if key in self.defaults:
      v = self.defaults[key]
      if key == "tie_word_embeddings" or (type(v) is int and v > 1):  # sizes
        self.defaulted[key] = v
      return v
    return fallback

  def need(self, key: str) -> Any:
    v = self.get(key)
    if v is None:
      raise self.err(key, "is missing and transformers has no default for it; add "
                     f"\"{key}\": <value> (a whole config.json from the model's repo "
                     "has it)")
    return v

  def integer(self, key: str, v: Any = None, *, layers: int = 0) -> int:
    """``v`` (default: the key's value) as an integer; a per-layer list of
    ``layers`` equal values is that value, unequal ones are refused."""
    v = self.need(key) if v is None else v
    if isinstance(v, list):
      if not v or (layers and len(v) != layers):
        raise self.err(key, f"is a list of {len(v)} values; a per-layer list needs "
                       f"{layers} (one per layer)")
      if len(set(map(str, v))) != 1:
        raise self.err(key, f"differs between layers ({_short(v)}); per-layer values "
                       "are not modelled -- write one value for every layer")
      v = v[0]
    if (isinstance(v, bool) or not isinstance(v, (int, float))
        or (isinstance(v, float) and not v.is_integer())):  # also NaN, Infinity
      raise self.err(key, f"must be an integer, not {v!r}")
    return int(v)

  def flag(self, key: str, default: bool = False) -> bool:
    v = self.get(key, default)
    if not isinstance(v, bool):
      raise self.err(key, f"must be true or false, not {v!r}")
    return v

  def refuse_unless(self, key: str, ok: bool, what: str, write: str) -> None:
    if not ok:
      raise self.err(key, f"is {self.cfg.get(key)!r}: {what} is not modelled; "
                     f"write {write} or describe the model in a model JSON "
                     "(model_io.save_model_json)")


def _short(v: list) -> str:
  return str(v) if len(v) <= 6 else f"[{', '.join(map(str, v[:6]))}, ...]"


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


def inspect_hf_config(path: str | pathlib.Path, name: str | None = None, *,
                      expert_dtype: str | None = None,
                      other_dtype: str | None = None) -> HfConfigReport:
  """Like :func:`load_hf_config`, returning the spec with its notes (what is
  reported, not simulated) and the MTP layers left out, warning nothing."""
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
  family = HF_FAMILIES[mt]
  _hf_audit(cfg, where, mt, family)
  if mt == "dbrx":
    cfg = _flatten_dbrx(cfg, where)
  r = _HfReader(cfg, where, mt, family)
  _hf_refusals(r)
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
  kw.update(_hf_dtypes(cfg, where, expert_dtype, other_dtype))
  kw["name"] = name or _hf_name(raw, p)
  validate_fields({**{f.name: f.default for f in dataclasses.fields(MoeModelSpec)
                      if f.default is not dataclasses.MISSING}, **kw}, where)
  spec = MoeModelSpec(**kw)
  mtp, mtp_key = _hf_mtp(r)
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
    if any(k in obj for k in ("model_type", "num_hidden_layers", "text_config")):
      return load_hf_config(p)
    return load_model_json(p)
  return get_model(s)

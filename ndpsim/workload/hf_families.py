"""The HuggingFace ``config.json`` families ndpsim reads: per ``model_type``
which keys give the expert count, top-k, FFN widths and layer layout
(:data:`HF_FAMILIES`, with transformers' class defaults for absent keys), and
the tables that classify every other key.

Every key of a config is in one of four classes: read (modelled, listed per
model_type in HF_FAMILIES), ignored (no effect on weight shapes, KV size or
FLOPs: token ids, dropout, initialisation, RoPE and routing numerics:
:data:`HF_IGNORED_KEYS`), reported (part of the checkpoint or of the attention
that ndpsim does not simulate exactly: MTP layers, vision towers, chunked
attention -- one HfConfigWarning per load says what and how much), or refused
(ConfigError, one line naming the file, the key and the model_type).  A key in
none of these classes is refused too: it might change the layer structure.
The reader is :mod:`ndpsim.workload.hf_config`; data only here.
"""
from __future__ import annotations

import dataclasses
from typing import Any


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

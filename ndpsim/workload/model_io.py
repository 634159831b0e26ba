"""Loading MoE model specs from files: ndpsim's JSON format
(:mod:`ndpsim.workload.model_json`) and HuggingFace ``config.json`` files
(:mod:`ndpsim.workload.hf_config`; the model_types of :data:`HF_FAMILIES`:
Qwen2/3-MoE, Mixtral, PhiMoE, OLMoE, GPT-OSS, DeepSeek-V2/V3, GLM-4.5,
MiniMax-M2, Granite MoE, ERNIE-4.5, Hunyuan, Llama-4, DBRX), so users add a
model without writing code; :func:`model_from_any` takes any of them or a
registry name.

This module re-exports those loaders under their historical import path.
A file missing a needed field, or holding a key that is not modelled, gets a
one-line ConfigError naming the file and the key.
"""
from __future__ import annotations

from ndpsim.workload.hf_config import (HfConfigReport, HfConfigWarning,  # noqa: F401
                                       inspect_hf_config, load_hf_config)
from ndpsim.workload.hf_families import (HF_COMMON_KEYS, HF_FAMILIES,  # noqa: F401
                                         HF_IGNORED_KEYS, HF_SSM_KEYS,
                                         HF_TEXT_CONFIG_TYPES, HfFamily)
from ndpsim.workload.model_json import (JSON_EXTRA_KEYS, load_model_json,  # noqa: F401
                                        model_to_json, save_model_json)
from ndpsim.workload.models import model_from_any  # noqa: F401

__all__ = ["HF_COMMON_KEYS", "HF_FAMILIES", "HF_IGNORED_KEYS", "HF_SSM_KEYS",
           "HF_TEXT_CONFIG_TYPES", "HfConfigReport", "HfConfigWarning", "HfFamily",
           "JSON_EXTRA_KEYS", "inspect_hf_config", "load_hf_config", "load_model_json",
           "model_from_any", "model_to_json", "save_model_json"]

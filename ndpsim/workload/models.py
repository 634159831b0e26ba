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

Models load from the registry (:data:`MODELS`: the data files
``ndpsim/workload/zoo/<name>.json``, each with the HuggingFace config it was
taken from), from a JSON file with the fields of :class:`MoeModelSpec`
(:func:`load_model_json`) or from a local HuggingFace ``config.json``
(:func:`load_hf_config`).

This module is the public face of the workload's model code; the parts live
in :mod:`~ndpsim.workload.model_spec` (the spec and its checks),
:mod:`~ndpsim.workload.model_sizes` (derived quantities),
:mod:`~ndpsim.workload.model_json` (model files),
:mod:`~ndpsim.workload.hf_config` (HuggingFace configs) and
:mod:`~ndpsim.workload.zoo` (where the zoo's files are).
"""
from __future__ import annotations

import difflib
import os
import pathlib

from ndpsim.base import ConfigError, replace  # noqa: F401  (replace: re-exported)
from ndpsim.workload import model_json, zoo
from ndpsim.workload.hf_config import inspect_hf_config, load_hf_config  # noqa: F401
from ndpsim.workload.model_json import (load_model_json, model_to_json,  # noqa: F401
                                        save_model_json)
from ndpsim.workload.model_sizes import (  # noqa: F401  (re-exported)
    active_bytes_per_token, active_params, activation_bytes_per_token, attention_bytes_per_layer,
    attention_flops, attention_kwargs, dense_ffn_bytes_per_layer, dense_layer_indices,
    expert_bytes, expert_bytes_total, expert_flops_per_token, expert_matrix_shapes,
    expert_params, flops_per_token, kv_bytes_per_token, kv_bytes_per_token_per_layer,
    kv_cache_bytes, layer_expert_bytes, layer_sliding_window, moe_layer_indices,
    moe_layer_params, non_expert_bytes, num_dense_layers, num_moe_layers,
    router_bytes_per_layer, shared_expert_bytes, total_bytes, total_params, with_dtype)
from ndpsim.workload.model_spec import (  # noqa: F401  (re-exported)
    _DTYPE_FIELDS, _REQUIRED, ATTENTION_KINDS, DTYPE_ALIASES, DTYPE_BITS, QK_NORMS,
    SPEC_FIELDS, MoeModelSpec, canonical_dtype, dtype_bytes, validate_fields)


def _load_zoo() -> tuple[dict[str, MoeModelSpec], dict[str, str]]:
  """(registry name -> spec, registry name -> source) from the zoo's files."""
  specs: dict[str, MoeModelSpec] = {}
  sources: dict[str, str] = {}
  for name in zoo.names():
    obj, where = model_json.read_json(zoo.path(name))
    spec = model_json.spec_from_object(obj, where)
    if spec.name != name:
      raise ConfigError(f"{where}: field name is {spec.name!r}; write {name!r} (the "
                        "file's name is the registry name)")
    if not isinstance(obj.get("source"), str) or not obj["source"]:
      raise ConfigError(f"{where}: key 'source' is missing; add the config the shapes "
                        "were taken from (a zoo model carries its provenance)")
    specs[name], sources[name] = spec, obj["source"]
  return specs, sources


MODELS: dict[str, MoeModelSpec]
MODEL_SOURCES: dict[str, str]
MODELS, MODEL_SOURCES = _load_zoo()


def get_model(name: str) -> MoeModelSpec:
  """Zoo entry by registry name (case-insensitive), or -- as the error message
  offers -- a model from a path (model .json, HuggingFace config.json or its
  folder; :func:`model_from_any`)."""
  key = str(name).lower()
  if key in MODELS:
    return MODELS[key]
  if str(name).endswith(".json") or os.sep in str(name) or os.path.exists(str(name)):
    return model_from_any(name)
  close = difflib.get_close_matches(key, list(MODELS), n=1, cutoff=0.4)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  raise ConfigError(f"unknown model {name!r}{hint}; write one of {sorted(MODELS)} "
                    "or a path to a model .json file or a HuggingFace config.json")


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
    obj, _ = model_json.read_json(p)
    if any(k in obj for k in ("model_type", "num_hidden_layers", "text_config")):
      return load_hf_config(p)
    return load_model_json(p)
  return get_model(s)

"""ndpsim: cycle-approximate, differentiable simulator of MoE inference on GPU + NDP.

The public API, imported lazily (``import ndpsim`` stays cheap; the first
use of a name imports its module)::

    import ndpsim
    s = ndpsim.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=4)
    model = ndpsim.model_from_any("qwen3-30b-a3b")       # a name or a file
    spec = ndpsim.RoutingSpec(num_seqs=8, prompt_len=512, output_len=512,
                              num_layers=ndpsim.num_moe_layers(model),
                              num_experts=model.num_experts, top_k=model.top_k)
    r = ndpsim.generate_routing(jax.random.PRNGKey(0), spec,
                                ndpsim.routing_preset("mixtral_8x7b", model.num_experts,
                                                      model.top_k))
    res = ndpsim.simulate((s.spec, s.params), model, r, "tp_lb_prefetch")
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute); None = the module itself.
_EXPORTS = {
    # simulation
    "simulate": ("ndpsim.engine", "simulate"),
    "validate": ("ndpsim.engine", "validate"),
    "SimResult": ("ndpsim.results", "SimResult"),
    "summarize": ("ndpsim.results", "summarize"),
    # hardware
    "load_system": ("ndpsim.hw.system", "load_system"),
    "SystemSpec": ("ndpsim.hw.system", "SystemSpec"),
    "SystemParams": ("ndpsim.hw.system", "SystemParams"),
    "hardware_values": ("ndpsim.resolved", "hardware_values"),
    # workloads
    "get_model": ("ndpsim.workload.models", "get_model"),
    "model_from_any": ("ndpsim.workload.model_io", "model_from_any"),
    "load_hf_config": ("ndpsim.workload.model_io", "load_hf_config"),
    "num_moe_layers": ("ndpsim.workload.models", "num_moe_layers"),
    "MoeModelSpec": ("ndpsim.workload.models", "MoeModelSpec"),
    "RoutingSpec": ("ndpsim.workload.routing", "RoutingSpec"),
    "Routing": ("ndpsim.workload.routing", "Routing"),
    "generate_routing": ("ndpsim.workload.routing", "generate"),
    "routing_preset": ("ndpsim.workload.routing", "preset"),
    # policies
    "Policy": ("ndpsim.policies.base", "Policy"),
    "PolicyParams": ("ndpsim.policies.base", "PolicyParams"),
    "make_params": ("ndpsim.policies.base", "make_params"),
    "get_policy": ("ndpsim.policies", "get"),
    "policy_names": ("ndpsim.policies", "names"),
    "load_policy_module": ("ndpsim.policies", "load_module"),
    "check_policy": ("ndpsim.policy_checks", "check_policy"),
    # energy and timelines
    "energy_per_token": ("ndpsim.energy", "per_token_j"),
    "energy_figures": ("ndpsim.energy", "for_system"),
    "timeline": ("ndpsim.trace", "timeline"),
    "write_trace": ("ndpsim.trace", "write"),
    # errors
    "ConfigError": ("ndpsim.base", "ConfigError"),
    # modules
    "engine": ("ndpsim.engine", None),
    "policies": ("ndpsim.policies", None),
    "studies": ("ndpsim.studies", None),
    "tune": ("ndpsim.tune", None),
    "sensitivity": ("ndpsim.sensitivity", None),
    "tune_layers": ("ndpsim.tune_layers", None),
    "codesign": ("ndpsim.codesign", None),
    "energy": ("ndpsim.energy", None),
    "trace": ("ndpsim.trace", None),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'ndpsim' has no attribute {name!r}")
  mod_name, attr = _EXPORTS[name]
  mod = importlib.import_module(mod_name)
  value = mod if attr is None else getattr(mod, attr)
  globals()[name] = value
  return value


def __dir__():
  return __all__

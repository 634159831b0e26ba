"""Shared helpers for the engine and policy tests (small, fast configurations)."""
from __future__ import annotations

import functools

import jax
import numpy as np

from ndpsim import engine
from ndpsim.hw import system as system_mod
from ndpsim.workload import models as M
from ndpsim.workload import routing as R


@functools.lru_cache(maxsize=None)
def load(name: str = "paper_rtx5080_ndp_dimm", units: int = 4):
  s = system_mod.load_system(name, num_ndp_units=units)
  return s.spec, s.params


@functools.lru_cache(maxsize=None)
def routing(model_name: str, preset: str = "mixtral_8x7b", num_seqs: int = 2,
            prompt_len: int = 16, output_len: int = 8, seed: int = 0):
  model = M.get_model(model_name)
  spec = R.RoutingSpec(num_seqs=num_seqs, prompt_len=prompt_len, output_len=output_len,
                       num_layers=M.num_moe_layers(model), num_experts=model.num_experts,
                       top_k=model.top_k)
  r = R.generate(jax.random.PRNGKey(seed), spec, R.preset(preset, model.num_experts,
                                                            model.top_k))
  return jax.tree_util.tree_map(np.asarray, r)


def run(model_name, policy, system=None, params=None, **kw):
  model = M.get_model(model_name)
  system = system or load()
  r = kw.pop("routing", None) or routing(model_name)
  return engine.simulate(system, model, r, policy, params, **kw)


def e2e(res) -> np.ndarray:
  return np.asarray(res.e2e_s, np.float64)

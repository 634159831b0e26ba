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


def numpy_routing(model_name, num_seqs: int, prompt_len: int, output_len: int,
                  seed: int = 0):
  """Skewed routing with prompt locality, in NumPy (the calibrated generator
  costs a compile per model): per sequence and layer a Zipf(1.2) popularity
  over a random ranking of the experts, each token's top-k drawn without
  replacement (Gumbel top-k), prompt and output alike -- so the prompt's
  counts predict the output's experts, what prefetch relies on.
  ``model_name``: a zoo name or a ``MoeModelSpec``."""
  model = M.get_model(model_name) if isinstance(model_name, str) else model_name
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  rng = np.random.default_rng(seed)
  log_pop = -1.2 * np.log(np.arange(1, E + 1))
  rank = np.argsort(rng.random((num_seqs, 1, L, E)), axis=-1)
  logits = log_pop[rank] + rng.gumbel(size=(num_seqs, prompt_len + output_len, L, E))
  ids = np.argsort(-logits, axis=-1)[..., :k].astype(np.int32)
  gates = np.full(ids.shape, 1.0 / k, np.float32)
  P = prompt_len
  return R.Routing(prefill_ids=ids[:, :P], prefill_gates=gates[:, :P],
                   decode_ids=ids[:, P:], decode_gates=gates[:, P:])


def hf_variant(tmp_path, source, drop=(), **changes):
  """A copy of the HF config.json ``source`` without the keys ``drop`` and
  with ``changes``, written to ``tmp_path/config.json``; returns its path."""
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  cfg = json.loads(pathlib.Path(source).read_text())
  for k in drop:
    del cfg[k]
  cfg.update(changes)
  p = pathlib.Path(tmp_path) / "config.json"
  p.write_text(json.dumps(cfg))
  return p

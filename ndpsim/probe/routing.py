"""``python -m ndpsim.probe routing ...``: routing statistics of a generated workload.

The flags are :data:`PROBE_ARGS` (``{flag: (type, default, help)}``, read by
:mod:`ndpsim.probe`); :func:`probe` answers with one JSON-able dict.
"""
from __future__ import annotations

import jax

from ndpsim.base import ConfigError
from ndpsim.probe import REQUIRED
from ndpsim.workload import models, routing_stats
from ndpsim.workload.routing import _RANGES, PRESETS, RoutingSpec, generate, preset


PROBE_ARGS = {
    "model": (str, REQUIRED, "model zoo name, e.g. qwen3-30b-a3b (see the 'model' probe)"),
    "routing": (str, "balanced_corpus", f"routing preset, one of {list(PRESETS)}"),
    "num_seqs": (int, 8, "sequences to generate (>= 2 for successor statistics)"),
    "prompt_len": (int, 512, "prefill tokens per sequence"),
    "output_len": (int, 512, "decode tokens per sequence"),
    "seed": (int, 0, "PRNG seed of the sequences (prompts)"),
    "model_seed": (int, 0, "seed of the synthetic model (expert ranking, successors)"),
    "resident_fraction": (float, 0.25,
                          "resident-set size as a fraction of E (prefill top-M)"),
}


def probe(args: dict) -> dict:
  """Generates routing for a zoo model and preset; returns its statistics."""
  m = models.get_model(args["model"])
  E, k, L = int(m.num_experts), int(m.top_k), int(models.num_moe_layers(m))
  params = preset(args["routing"], E, k)
  for flag in ("num_seqs", "prompt_len", "output_len"):
    lo = 0 if flag == "output_len" else 1
    if args[flag] < lo:
      raise ConfigError(f"--{flag}={args[flag]}: write an integer >= {lo}")
  if not 0.0 < args["resident_fraction"] <= 1.0:
    raise ConfigError(f"--resident_fraction={args['resident_fraction']}: write a "
                      "number in (0, 1]")
  spec = RoutingSpec(num_seqs=args["num_seqs"], prompt_len=args["prompt_len"],
                     output_len=args["output_len"], num_layers=L, num_experts=E,
                     top_k=k, model_seed=args["model_seed"])
  r = generate(jax.random.key(args["seed"]), spec, params)
  stats = routing_stats.summary(r, E, resident_fraction=args["resident_fraction"])
  return {"model": m.name, "routing": args["routing"],
          "num_shared_experts": int(getattr(m, "num_shared_experts", 0)),
          "params": {f: float(getattr(params, f)) for f in _RANGES},
          "stats": stats}

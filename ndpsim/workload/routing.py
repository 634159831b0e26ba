"""Synthetic MoE routing: expert ids and gate weights for prefill and decode tokens.

What is modelled (per layer ``l``, sequence ``s``, token ``t``):

* Global popularity: a Zipf law over a random ranking of the experts of each
  layer, ``p_l(e) ~ (rank_l(e) + 1) ** -zipf_exponent``.  Expert ids carry no
  meaning across layers.
* Prompt concentration: every sequence draws its own popularity around the
  global one, ``q_s,l ~ Dirichlet(E p_l / prompt_concentration)``.  The knob is
  the squared coefficient of variation of a prompt's per-expert popularity
  around the global one (0: every prompt routes like the corpus).
* Prefill -> decode: prefill tokens draw from ``q``; decode tokens from
  ``coupling * q + (1 - coupling) * q'`` with ``q'`` a fresh draw around the
  same global popularity, so prefill counts predict decode with a controllable
  strength.
* Temporal locality: with probability ``reuse_prob`` (per token and layer) a
  token repeats its predecessor's expert set and gates exactly (the first
  decode token may repeat the last prompt token); otherwise it draws fresh.
  Together with ``q`` this gives an overlap that is high at lag 1 and decays to
  the per-sequence level.
* Cross-layer correlation: a fixed random permutation ``succ_l`` maps each
  expert of layer ``l`` to a successor at layer ``l + 1``; a fresh draw at
  ``l + 1`` multiplies the weight of ``succ_l(top-1 expert at l)`` by
  ``exp(successor_strength)``.
* Optional always-on expert (layers in ``RoutingSpec.always_on_layers``): the
  layer's most popular expert is selected by a share ``always_on_share`` of the
  tokens (first slot) and by no other token.

Selection: ``top_k`` distinct experts per token, without replacement, from the
token's weights (Plackett-Luce, i.e. the law of Gumbel-top-k): candidates are
drawn i.i.d. from per-(sequence, layer) alias tables and the first ``top_k``
distinct ones are kept in order (O(k) work per token instead of O(E)).  A
token short of k distinct experts after ``draws_per_token`` candidates is
completed exactly by Gumbel-top-k over its unchosen experts, for up to
max(1024, S N / 64) tokens per layer; beyond that (extreme concentration only)
the rest take the most popular unchosen experts (approximate).  Alias
acceptance and slot draws use 16-bit resolution (per-expert probability error
below 2^-16 / E).  Gates are the softmax over the selected
experts of the router logits ``log w + Gumbel`` implied by that order (exact
exponential-race arrival times), tempered by ``gate_temperature``; ids are
sorted by gate, so slot 0 is the top-1 expert.

Not modelled: shared experts (always active; they are not in the ids, the
simulator adds them), token dropping / capacity limits, drift of a sequence's
popularity during decode beyond the prefill/decode split, batch effects.

Model versus prompts: the *model* -- each layer's global popularity (the
expert ranking), the successor maps and the always-on experts -- is drawn from
``RoutingSpec.model_seed`` (a static int, default 0); everything per sequence
(its popularity ``q``, prefill/decode draws, reuse, gates) from the JAX key.
So ``generate(key_a, spec, p)`` and ``generate(key_b, spec, p)`` are two sets
of prompts to the *same* synthetic model: counts profiled on one (e.g. MoNDE's
offline hot set) predict the other, as a real model's router does.  Another
``model_seed`` is another model (same statistics, other expert ids).

Randomness: a counter-based hash generator seeded from the JAX key and the
model seed (the threefry generator is ~10x slower on CPU for this volume); the
same (model seed, key) gives the same routing on a given backend.  The model
is drawn from ``jax.random.key(model_seed)`` exactly as the sequences are from
their key, so ``key = jax.random.key(model_seed)`` reproduces the routing of
the generator before model and prompts were separated (one key for both).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndpsim import base
from ndpsim.base import ConfigError
from ndpsim.workload.routing_draws import (_alias_table, _global_popularity, _layer, _mix,
                                           _seed, _sequence_popularity, _uniform_array)

ID_DTYPES = ("int32", "int16", "uint8")
GATE_DTYPES = ("float32", "bfloat16", "float16")


@base.spec_dataclass
class RoutingSpec:
  """Static shape of a routing workload.

  num_seqs: sequences S.  prompt_len: prefill tokens P per sequence (>= 1).
  output_len: decode tokens T per sequence (>= 0).  num_layers: MoE layers L.
  num_experts: routed experts E per layer.  top_k: routed experts per token.
  always_on_layers: MoE-layer indices that have an always-on expert.
  id_dtype: dtype of the ids ('int32', 'int16' or 'uint8' when E <= 256).
  gate_dtype: dtype of the gates ('float32', 'bfloat16', 'float16').
  draws_per_token: candidates drawn per token and layer (0: automatic,
    1 for top_k = 1, else top_k + top_k // 2 + 2).
  model_seed: identity of the synthetic model, an int in [0, 2**31): seeds
    each layer's expert ranking, successor map and always-on expert.  Routings
    generated with one model seed and different keys are different prompts to
    the same model; keep it fixed when a profile (or training set) from one
    key must describe the routing of another.
  """
  num_seqs: int
  prompt_len: int
  output_len: int
  num_layers: int
  num_experts: int
  top_k: int
  always_on_layers: tuple[int, ...] = ()
  id_dtype: str = "int32"
  gate_dtype: str = "float32"
  draws_per_token: int = 0
  model_seed: int = 0

  def __post_init__(self):
    for name, lo in (("num_seqs", 1), ("prompt_len", 1), ("output_len", 0),
                     ("num_layers", 1), ("num_experts", 1), ("top_k", 1),
                     ("draws_per_token", 0), ("model_seed", 0)):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"RoutingSpec.{name}={v!r}: write an integer >= {lo}")
    if self.model_seed >= 2**31:
      raise ConfigError(f"RoutingSpec.model_seed={self.model_seed}: write an integer "
                        "below 2**31")
    if self.top_k > self.num_experts:
      raise ConfigError(f"RoutingSpec.top_k={self.top_k} exceeds num_experts="
                        f"{self.num_experts}: write top_k <= num_experts")
    if self.num_experts > 65536:
      raise ConfigError(f"RoutingSpec.num_experts={self.num_experts}: write at most 65536")
    if self.draws_per_token and self.draws_per_token < self.top_k:
      raise ConfigError(f"RoutingSpec.draws_per_token={self.draws_per_token} < top_k="
                        f"{self.top_k}: write 0 (automatic) or >= top_k")
    if not isinstance(self.always_on_layers, tuple):
      raise ConfigError("RoutingSpec.always_on_layers must be a tuple of layer "
                        f"indices, got {self.always_on_layers!r}: write e.g. (22,)")
    for l in self.always_on_layers:
      if not isinstance(l, (int, np.integer)) or not 0 <= l < self.num_layers:
        raise ConfigError(f"RoutingSpec.always_on_layers has {l!r}: write indices in "
                          f"[0, {self.num_layers - 1}]")
    if len(set(self.always_on_layers)) != len(self.always_on_layers):
      raise ConfigError(f"RoutingSpec.always_on_layers={self.always_on_layers} repeats "
                        "a layer: list each layer once")
    if self.id_dtype not in ID_DTYPES:
      raise ConfigError(f"RoutingSpec.id_dtype={self.id_dtype!r}: write one of {ID_DTYPES}")
    if self.num_experts - 1 > np.iinfo(self.id_dtype).max:
      raise ConfigError(f"RoutingSpec.id_dtype={self.id_dtype!r} cannot hold expert id "
                        f"{self.num_experts - 1}: write 'int16' or 'int32'")
    if self.gate_dtype not in GATE_DTYPES:
      raise ConfigError(f"RoutingSpec.gate_dtype={self.gate_dtype!r}: write one of "
                        f"{GATE_DTYPES}")
    if (self.prompt_len + self.output_len) * (self.draws_per_token or 64) >= 2**31:
      raise ConfigError("RoutingSpec.prompt_len + output_len is too long for the "
                        "counter-based generator: write fewer than 2**25 tokens")

  @property
  def num_tokens(self) -> int:
    """P + T tokens per sequence."""
    return self.prompt_len + self.output_len

  @property
  def draws(self) -> int:
    """Candidates drawn per token and layer."""
    if self.draws_per_token:
      return self.draws_per_token
    return 1 if self.top_k == 1 else self.top_k + self.top_k // 2 + 2


@base.params_dataclass
class RoutingParams:
  """Traced routing knobs (all dimensionless, so a preset carries across E, k).

  zipf_exponent: skew of the global popularity over expert ranks (>= 0).
  prompt_concentration: squared coefficient of variation of a sequence's
    per-expert popularity around the global one (>= 0; 0 = none).
  reuse_prob: chance a token repeats its predecessor's experts, per layer [0, 1].
  successor_strength: log of the weight boost of the successor of the previous
    layer's top-1 expert (>= 0 nats).
  prefill_decode_coupling: share of the prompt's popularity that the decode
    tokens keep [0, 1] (1: decode routes like prefill).
  always_on_share: share of tokens selecting the always-on expert in the
    layers of ``RoutingSpec.always_on_layers`` [0, 1].
  gate_temperature: temperature of the gate softmax (> 0; 1: Gumbel logits).
  """
  zipf_exponent: Any = 0.0
  prompt_concentration: Any = 0.0
  reuse_prob: Any = 0.0
  successor_strength: Any = 0.0
  prefill_decode_coupling: Any = 1.0
  always_on_share: Any = 0.0
  gate_temperature: Any = 1.0


_RANGES = {
    "zipf_exponent": (0.0, None), "prompt_concentration": (0.0, None),
    "reuse_prob": (0.0, 1.0), "successor_strength": (0.0, None),
    "prefill_decode_coupling": (0.0, 1.0), "always_on_share": (0.0, 1.0),
    "gate_temperature": (1e-6, None),
}


def validate_params(params: RoutingParams) -> RoutingParams:
  """Raises ConfigError for a concrete knob out of range (traced ones pass)."""
  for name, (lo, hi) in _RANGES.items():
    v = getattr(params, name)
    if isinstance(v, jax.core.Tracer):
      continue
    a = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < lo) or (hi is not None and np.any(a > hi)):
      span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
      raise ConfigError(f"RoutingParams.{name}={v!r}: write a number in {span}")
  return params


class Routing(NamedTuple):
  """Routed experts, sorted by gate (slot 0 = top-1).  Shared experts excluded.

  prefill_ids: [S, P, L, k] expert ids (``spec.id_dtype``).
  prefill_gates: [S, P, L, k] gate weights, summing to 1 over k.
  decode_ids: [S, T, L, k].  decode_gates: [S, T, L, k].
  """
  prefill_ids: jax.Array
  prefill_gates: jax.Array
  decode_ids: jax.Array
  decode_gates: jax.Array


# Presets.  The calibrated ones were fitted by benchmarks/routing_calibrate.py
# (two rounds of coordinate bisection in NumPy over the generator, model seed 0
# and key 0, one knob per statistic) to shared/reference/routing_stats.md at
# each trace's E, k, MoE layers and token counts (routing_stats.TRACE_SHAPES),
# averaged over replicate groups; tests/test_routing_calibration.py checks them
# at another model seed and key.  Separating the model seed from the key left
# every fitted statistic unchanged (key 0 = model seed 0 reproduces the old
# one-key generator), so they were not refitted.  Mixtral's prefill predicts
# its decode no better than its global popularity, hence coupling 0; Llama-4's
# successor hit rate is explained by its prompt concentration alone, hence
# strength 0.
_PRESETS: dict[str, dict[str, float]] = {
    "uniform": dict(),
    "balanced_corpus": dict(prompt_concentration=1.5, reuse_prob=0.15,
                            successor_strength=1.5, prefill_decode_coupling=0.8),
    "skewed": dict(zipf_exponent=1.2, prompt_concentration=0.5, reuse_prob=0.15,
                   successor_strength=1.5, prefill_decode_coupling=0.8),
    "flame_moe_290m": dict(zipf_exponent=0.221, prompt_concentration=0.071,
                           reuse_prob=0.003, successor_strength=2.22,
                           prefill_decode_coupling=0.70),
    "mixtral_8x7b": dict(zipf_exponent=0.259, prompt_concentration=0.24,
                         reuse_prob=0.115, successor_strength=0.99,
                         prefill_decode_coupling=0.0),
    "llama4_maverick": dict(zipf_exponent=1.059, prompt_concentration=5.24,
                            reuse_prob=0.24, successor_strength=0.0,
                            prefill_decode_coupling=0.40, always_on_share=0.999),
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)


def preset(name: str, num_experts: int, top_k: int) -> RoutingParams:
  """Named routing knobs for a model with ``num_experts`` and ``top_k``.

  The knobs are dimensionless (Zipf exponent over ranks, squared coefficient of
  variation, per-token probabilities, a log boost), so a preset applies to any
  E and k as is; E and k are validated.  ``llama4_maverick`` sets
  ``always_on_share`` for layers listed in ``RoutingSpec.always_on_layers``
  (Maverick's MoE layer 45 is MoE-layer index 22); it has no effect otherwise.
  """
  if name not in _PRESETS:
    raise ConfigError(f"unknown routing preset {name!r}: write one of {list(PRESETS)}")
  if not isinstance(num_experts, (int, np.integer)) or num_experts < 1:
    raise ConfigError(f"num_experts={num_experts!r}: write an integer >= 1")
  if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= num_experts:
    raise ConfigError(f"top_k={top_k!r}: write an integer in [1, num_experts={num_experts}]")
  return RoutingParams(**{k: float(v) for k, v in _PRESETS[name].items()})


def _num_seeds(spec: RoutingSpec) -> int:
  return 7 + spec.draws + (spec.draws + 1) // 2 + spec.top_k


def _generate(key, spec: RoutingSpec, params: RoutingParams, model_seed=None) -> Routing:
  """generate() without validation.  model_seed: an int32 scalar (may be
  traced, e.g. vmapped) that replaces ``spec.model_seed``."""
  S, L, E, k, P = (spec.num_seqs, spec.num_layers, spec.num_experts, spec.top_k,
                   spec.prompt_len)
  f32 = jnp.float32
  if model_seed is None:
    model_seed = spec.model_seed
  root = jax.random.bits(key, (2,), jnp.uint32)                      # the prompts
  model = jax.random.bits(jax.random.key(model_seed), (2,), jnp.uint32)  # the model
  glob, top = _global_popularity(_seed(model, 1), spec, params)       # [L, E]
  conc = jnp.asarray(params.prompt_concentration, f32)
  q_pre = _sequence_popularity(_seed(root, 2), glob, conc, S)                  # [S, L, E]
  q_new = _sequence_popularity(_seed(root, 3), glob, conc, S)
  rho = jnp.asarray(params.prefill_decode_coupling, f32)
  q_dec = rho * q_pre + (1.0 - rho) * q_new
  q = jnp.stack([q_pre, q_dec]).transpose(2, 0, 1, 3)                  # [L, 2, S, E]
  acc, ali = jax.vmap(_alias_table)(q.reshape(-1, E))
  acc16 = jnp.minimum(jnp.round(acc * 65536.0), 65535.0).astype(jnp.uint32)
  packed = (acc16 << 16) | ali.astype(jnp.uint32)
  F = min(E, 2 * k + 1)
  fill = lax.top_k(q, F)[1].astype(jnp.int32)                          # [L, 2, S, F]
  succ = jnp.argsort(_uniform_array(_seed(model, 4), (L, E)), axis=1).astype(jnp.int32)
  ns = _num_seeds(spec)
  seeds = _mix(_mix(lax.iota(jnp.uint32, L * ns) ^ _seed(root, 5)[0])
               ^ _seed(root, 5)[1]).reshape(L, ns)
  on = np.zeros(L, bool)
  on[list(spec.always_on_layers)] = True
  xs = dict(packed=packed.reshape(L, -1), q=q.reshape(L, -1),
            fill=fill.reshape(L, -1), seeds=seeds, succ=succ, on=jnp.asarray(on),
            top=top)
  id_dtype, gate_dtype = jnp.dtype(spec.id_dtype), jnp.dtype(spec.gate_dtype)

  def body(succ_in, tab):
    ids, gates, succ_out = _layer(spec, params, tab, succ_in)
    return succ_out, (ids.astype(id_dtype), gates.astype(gate_dtype))

  init = jnp.full((S, spec.num_tokens), -1, jnp.int32)
  _, (ids, gates) = lax.scan(body, init, xs)                          # [L, S, N, k]
  ids = ids.transpose(1, 2, 0, 3)
  gates = gates.transpose(1, 2, 0, 3)
  return Routing(ids[:, :P], gates[:, :P], ids[:, P:], gates[:, P:])


_generate_jit = jax.jit(_generate, static_argnums=1)


def generate(key: jax.Array, spec: RoutingSpec, params: RoutingParams) -> Routing:
  """Routing of ``spec.num_seqs`` sequences: a pure, jit-compiled function of key.

  key: a JAX PRNG key for the sequences (prompts).  spec: static shapes and
  ``model_seed`` (the model's expert ranking, successor maps, always-on
  experts: fixed across keys).  params: traced knobs (vmap-able).
  Returns Routing with ids [S, P|T, L, k] in ``spec.id_dtype`` (sorted by
  gate) and gates in ``spec.gate_dtype``.  Shared experts are not included.
  Memory: the ids and gates plus about 2 S N k (id + gate) words per layer.
  """
  if not isinstance(spec, RoutingSpec):
    raise ConfigError(f"spec must be a RoutingSpec, got {type(spec).__name__}")
  validate_params(params)
  # The model seed goes in traced, so one compilation serves every model.
  return _generate_jit(key, dataclasses.replace(spec, model_seed=0), params,
                       np.int32(spec.model_seed))

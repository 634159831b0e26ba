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


# ----------------------------------------------------------------------------
# Counter-based uniforms.

def _mix(x: jax.Array) -> jax.Array:
  """A bijective 32-bit avalanche hash (lowbias32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _uniform(h: jax.Array, seed: jax.Array) -> jax.Array:
  """Uniform in (0, 1), float32 with 23 random bits, from a token hash and seed."""
  b = _mix(h ^ seed)
  return ((b >> 9).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-23)


def _uniform_array(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniforms in (0, 1) of ``shape`` from a uint32 seed [2] (counter-based)."""
  n = int(np.prod(shape)) if shape else 1
  ctr = lax.iota(jnp.uint32, n)
  return _uniform(_mix(ctr ^ seed[0]), seed[1]).reshape(shape)


def _normal_array(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard normals (Box-Muller) of ``shape`` from a uint32 seed [2]."""
  u = _uniform_array(seed, (2,) + tuple(shape))
  return jnp.sqrt(-2.0 * jnp.log(u[0])) * jnp.cos(2.0 * np.pi * u[1])


def _seed(root: jax.Array, *tags: int) -> jax.Array:
  """A uint32 seed pair derived from the root seed and integer tags."""
  h = root[0]
  for t in tags:
    h = _mix(h ^ jnp.uint32(t * 0x9E3779B9 % 2**32))
  return jnp.stack([h, _mix(h ^ root[1])])


# ----------------------------------------------------------------------------
# Popularity.

def _global_popularity(root, spec: RoutingSpec, params: RoutingParams):
  """Global popularity [L, E] (float32, rows sum to 1) and top expert [L].

  In always-on layers the top expert is removed from the popularity (it is
  selected through ``always_on_share`` instead).
  """
  L, E = spec.num_layers, spec.num_experts
  ranks = jnp.argsort(_uniform_array(_seed(root, 1), (L, E)), axis=1)
  logp = -jnp.asarray(params.zipf_exponent, jnp.float32) * jnp.log1p(
      ranks.astype(jnp.float32))
  top = jnp.argmin(ranks, axis=1).astype(jnp.int32)
  on = np.zeros((L, 1), bool)
  on[list(spec.always_on_layers), 0] = True
  if E > 1:
    logp = jnp.where(on & (ranks == 0), -jnp.inf, logp)
  return jax.nn.softmax(logp, axis=1), top


def _log_gamma_sample(root, alpha: jax.Array, tries: int = 4) -> jax.Array:
  """log of Gamma(alpha, 1) samples, alpha > 0 (any shape).

  Marsaglia-Tsang for shape alpha + 1 with a fixed number of vectorized tries
  (acceptance >= 95% each; a token left after all tries keeps its last
  proposal, probability < 1e-5), then Gamma(a) = Gamma(a + 1) U^(1/a) in logs.
  Compiles without loops, unlike jax.random.loggamma.
  """
  d = alpha + 1.0 - 1.0 / 3.0
  c = 1.0 / jnp.sqrt(9.0 * d)
  z = _normal_array(_seed(root, 1), (tries,) + alpha.shape)
  u = _uniform_array(_seed(root, 2), (tries,) + alpha.shape)
  v = (1.0 + c * z) ** 3
  ok = (v > 0) & (jnp.log(u) < 0.5 * z * z + d - d * v + d * jnp.log(jnp.maximum(v, 1e-30)))
  first = jnp.argmax(jnp.concatenate([ok, jnp.ones((1,) + alpha.shape, bool)]), axis=0)
  first = jnp.minimum(first, tries - 1)
  v = jnp.take_along_axis(v, first[None], axis=0)[0]
  log_g1 = jnp.log(d) + jnp.log(jnp.maximum(v, 1e-30))
  ub = _uniform_array(_seed(root, 3), alpha.shape)
  return log_g1 + jnp.log(ub) / alpha


def _sequence_popularity(root, glob, conc, S: int):
  """Dirichlet(E glob / conc) per sequence: [S, L, E]; conc == 0 gives glob."""
  E = glob.shape[-1]
  safe = jnp.where(conc > 0, conc, 1.0)
  alpha = jnp.where(glob > 0, E * glob / safe, 1.0)
  lg = _log_gamma_sample(root, jnp.broadcast_to(alpha, (S,) + glob.shape))
  lg = jnp.where(glob > 0, lg, -jnp.inf)
  q = jax.nn.softmax(lg, axis=-1)
  return jnp.where(conc > 0, q, glob[None])


def _alias_table(w: jax.Array):
  """Walker/Vose alias table of one distribution w [E] (sums to 1).

  Returns (accept [E] float32, alias [E] int32): draw slot i uniformly; keep i
  with probability accept[i], else take alias[i].  Built from the sorted
  masses with two pointers (one pass of E steps).
  """
  E = w.shape[0]
  order = jnp.argsort(w).astype(jnp.int32)
  a = w[order] * E
  def step(_, st):
    a, acc, ali, i, j, carry = st
    has_carry = carry >= 0
    small_i = (i <= j) & (a[jnp.clip(i, 0, E - 1)] < 1.0)
    s = jnp.where(has_carry, carry, i)
    have_small = has_carry | small_i
    have_large = j >= i + jnp.where(has_carry, 0, 1)
    pair = have_small & have_large
    s_c = jnp.clip(s, 0, E - 1)
    j_c = jnp.clip(j, 0, E - 1)
    acc = acc.at[s_c].set(jnp.where(pair, a[s_c], acc[s_c]))
    ali = ali.at[s_c].set(jnp.where(pair, order[j_c], ali[s_c]))
    new_large = a[j_c] - (1.0 - a[s_c])
    a = a.at[j_c].set(jnp.where(pair, new_large, a[j_c]))
    # Consumed the small: advance the left pointer if it was not the carry.
    i = jnp.where(have_small & ~has_carry, i + 1, i)
    carry = jnp.where(have_small, -1, carry)
    becomes_small = pair & (new_large < 1.0)
    carry = jnp.where(becomes_small, j, carry)
    # Finalize the large (accept 1) when no small is left, or it became small.
    j = jnp.where(becomes_small | ~have_small, j - 1, j)
    return a, acc, ali, i, j, carry

  init = (a, jnp.ones(E, jnp.float32), order, jnp.int32(0), jnp.int32(E - 1),
          jnp.int32(-1))
  _, acc, ali, *_ = lax.fori_loop(0, E, step, init)
  accept = jnp.zeros(E, jnp.float32).at[order].set(acc)
  alias = jnp.zeros(E, jnp.int32).at[order].set(ali)
  return accept, alias


# ----------------------------------------------------------------------------
# One layer for all tokens.

def _layer(spec: RoutingSpec, params: RoutingParams, tab: dict, succ_in: jax.Array):
  """Expert ids and gates of every token at one layer.

  tab: this layer's tables, flat over (phase, sequence, expert): 'packed'
  uint32 [2 S E] (16-bit alias acceptance << 16 | alias id), 'q' float32
  [2 S E] (popularity); 'fill' [2 S F] (experts by falling popularity);
  'seeds' uint32 [n]; 'succ' [E] successor map to the next layer; 'on' bool;
  'top' int32 (always-on expert).  succ_in: [S, N] int32 boosted expert per
  token (-1: none).  Returns ids [S, N, k] int32, gates [S, N, k] float32,
  succ_out [S, N] int32 (successor of each token's top-1 for the next layer).
  Candidate arrays are [R, S, N] (tokens minor, for vectorization).
  """
  S, N, E, k, P, R = (spec.num_seqs, spec.num_tokens, spec.num_experts, spec.top_k,
                      spec.prompt_len, spec.draws)
  F = tab["fill"].shape[0] // (2 * S)
  seeds = tab["seeds"]
  f32, u32 = jnp.float32, jnp.uint32
  take = lambda name, idx: tab[name].at[idx].get(mode="promise_in_bounds")
  s_idx = lax.broadcasted_iota(jnp.int32, (S, N), 0)
  t_idx = lax.broadcasted_iota(jnp.int32, (S, N), 1)
  table = jnp.where(t_idx >= P, S, 0) + s_idx                # [S, N] table row
  base = table * E
  ht = _mix(_mix(s_idx.astype(u32) ^ seeds[0]) ^ t_idx.astype(u32))
  u = lambda j: _uniform(ht, seeds[1 + j])

  boost = jnp.exp(jnp.asarray(params.successor_strength, f32)) - 1.0
  has_succ = succ_in >= 0
  succ = jnp.maximum(succ_in, 0)
  q_succ = jnp.where(has_succ, take("q", base + succ), 0.0)
  beta = boost * q_succ / (1.0 + boost * q_succ)
  beta16 = jnp.round(beta * 65536.0).astype(u32)              # P(boost) in 1/2^16

  # Candidates i.i.d. from the boosted categorical: one word gives the alias
  # slot (high 16 bits) and the acceptance draw (low 16); a second word gives
  # the boost draws of two candidates.
  w1 = _mix(ht[None] ^ seeds[1:1 + R, None, None])                  # [R, S, N]
  w2 = _mix(ht[None] ^ seeds[1 + R:1 + R + (R + 1) // 2, None, None])
  ub = jnp.concatenate([w2 >> 16, w2 & 0xFFFF])[:R]
  slot = ((w1 >> 16) * u32(E)) >> 16
  packed = take("packed", base[None] + slot.astype(jnp.int32))
  c = jnp.where((w1 & 0xFFFF) < (packed >> 16), slot, packed & 0xFFFF)
  cands = jnp.where(ub < beta16[None], succ[None].astype(u32), c).astype(jnp.int32)
  count = jnp.zeros((S, N), jnp.int32)
  chosen = [jnp.zeros((S, N), jnp.int32) for _ in range(k)]
  for r in range(R):
    new = jnp.ones((S, N), bool)
    for rp in range(r):
      new = new & (cands[r] != cands[rp])
    for j in range(min(k, r + 1)):
      chosen[j] = jnp.where(new & (count == j), cands[r], chosen[j])
    count = count + new
  count = jnp.minimum(count, k)

  # Always-on expert in slot 0 for a share of the tokens.
  n0 = 1 + R + (R + 1) // 2
  share = jnp.asarray(params.always_on_share, f32)
  forced = tab["on"] & (u(n0) < share)
  top = jnp.broadcast_to(tab["top"], (S, N))

  def complete(args):
    """Exact Plackett-Luce completion of up to B tokens short of k experts:
    Gumbel-top-k over their unchosen experts (the law of the missing draws)."""
    chosen, count = args
    ch = jnp.stack(chosen).reshape(k, S * N)
    cnt = count.reshape(-1)
    fail = cnt < k
    idx = jnp.nonzero(fail, size=B, fill_value=0)[0]
    valid = jnp.arange(B) < jnp.sum(fail)
    row = table.reshape(-1)[idx]
    qrow = tab["q"].reshape(2 * S, E)[row]                          # [B, E]
    cb, nb = ch[:, idx].T, cnt[idx]                                 # [B, k], [B]
    sb, hb, fb = succ.reshape(-1)[idx], has_succ.reshape(-1)[idx], forced.reshape(-1)[idx]
    eio = jnp.arange(E, dtype=jnp.int32)
    logw = jnp.where(qrow > 0, jnp.log(jnp.maximum(qrow, 1e-38)), -1e30)
    logw = logw + jnp.where(hb[:, None] & (eio == sb[:, None]), jnp.log1p(boost), 0.0)
    slot = jnp.arange(k, dtype=jnp.int32)
    taken = jnp.any((cb[:, :, None] == eio) & (slot[None, :, None] < nb[:, None, None]), 1)
    taken = taken | (fb[:, None] & (eio == tab["top"]))
    hb_ = _mix(ht.reshape(-1)[idx] ^ seeds[n0 + 2])[:, None] ^ (
        eio.astype(u32) * u32(0x9E3779B9))
    gum = -jnp.log(-jnp.log(_uniform(hb_, seeds[n0 + 3])))
    order = lax.top_k(jnp.where(taken, -3e38, logw + gum), k)[1]
    src = jnp.clip(slot[None] - nb[:, None], 0, k - 1)
    filled = jnp.where(slot[None] >= nb[:, None], jnp.take_along_axis(order, src, 1), cb)
    tgt = jnp.where(valid, idx, S * N)
    ch = ch.at[:, tgt].set(filled.T, mode="drop")
    cnt = cnt.at[tgt].set(k, mode="drop")
    return tuple(ch.reshape(k, S, N)), cnt.reshape(S, N)

  def fill(args):
    """Beyond B short tokens: the most popular unchosen experts (approximate)."""
    chosen, count = args
    ch = jnp.stack(chosen)                                          # [k, S, N]
    slot = jnp.arange(k, dtype=jnp.int32)[:, None, None]

    def one(f, st):
      ch, count = st
      o = take("fill", table * F + f)
      new = (count < k) & ~(forced & (o == top))
      new = new & ~jnp.any((o[None] == ch) & (slot < count[None]), axis=0)
      ch = jnp.where(new[None] & (slot == count[None]), o[None], ch)
      return ch, count + new

    ch, count = lax.fori_loop(0, F, one, (ch, count))
    return tuple(ch), count

  if k > 1:
    B = min(S * N, max(1024, (S * N) // 64))
    state = (tuple(chosen), count)
    state = lax.cond(jnp.any(count < k), complete, lambda a: a, state)
    state = lax.cond(jnp.any(state[1] < k), fill, lambda a: a, state)
    chosen = list(state[0])

  ids = [jnp.where(forced, top, chosen[0])]
  ids += [jnp.where(forced, chosen[j - 1], chosen[j]) for j in range(1, k)]

  # Gates: exponential-race arrival times in selection order.
  norm = 1.0 + boost * q_succ
  t0 = -jnp.log(u(n0 + 3)) * jnp.maximum(1.0 - share, 1e-6)
  ch = jnp.stack(chosen)                                              # [k, S, N]
  w = take("q", base[None] + ch) * jnp.where(has_succ[None] & (ch == succ[None]),
                                             1.0 + boost, 1.0) / norm
  left = 1.0 - jnp.cumsum(w, axis=0) + w                  # mass before each draw
  ue = _uniform(ht[None], seeds[n0 + 6:n0 + 6 + k, None, None])
  t = jnp.where(forced, t0, 0.0)[None] + jnp.cumsum(
      -jnp.log(ue) / jnp.maximum(left, 1e-30), axis=0)
  times = [jnp.where(forced, t0, t[0])] + [
      jnp.where(forced, t[j - 1], t[j]) for j in range(1, k)]
  logits = -jnp.log(jnp.stack(times, -1)) / jnp.asarray(params.gate_temperature, f32)
  gates = jax.nn.softmax(logits, axis=-1)
  ids = jnp.stack(ids, -1)

  # Temporal reuse: a token repeats its predecessor with probability reuse_prob.
  fresh = (t_idx == 0) | (u(n0 + 4) >= jnp.asarray(params.reuse_prob, f32))
  src = lax.cummax(jnp.where(fresh, t_idx, 0), axis=1)
  flat_src = (s_idx * N + src).reshape(-1)
  ids = ids.reshape(S * N, k).at[flat_src].get(mode="promise_in_bounds")
  gates = gates.reshape(S * N, k).at[flat_src].get(mode="promise_in_bounds")
  ids, gates = ids.reshape(S, N, k), gates.reshape(S, N, k)
  succ_out = tab["succ"].at[ids[..., 0]].get(mode="promise_in_bounds")
  return ids, gates, succ_out


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

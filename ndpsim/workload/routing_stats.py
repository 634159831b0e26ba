"""Statistics of MoE routing, with the definitions of shared/reference/routing_stats.md.

Inputs are expert ids [S, N, L, k] (sequences, tokens, layers, top-k; any
integer dtype; shared experts excluded), or a ``routing.Routing``.  All
functions are pure jnp (jit- and vmap-able with static sizes); rates are
float32 scalars in [0, 1].

Modelled: global load and its Gini, expert-parallel (EP) imbalance over N units,
temporal overlap, per-sequence concentration, the held-out next-layer successor
predictor, and resident-set hit / any-miss rates (e.g. of the prefill top-M
set).  Not modelled: gate-weighted statistics (all selections count 1), LRU
caches (the policies own those).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ndpsim.base import ConfigError


def _as_seq(ids: jax.Array) -> jax.Array:
  """ids as [S, N, L, k] int32 (a [N, L, k] input is one sequence)."""
  ids = jnp.asarray(ids)
  if ids.ndim == 3:
    ids = ids[None]
  if ids.ndim != 4:
    raise ConfigError(f"expert ids have shape {ids.shape}: pass [seqs, tokens, layers, k]")
  return ids.astype(jnp.int32)


def expert_load(ids: jax.Array, num_experts: int) -> jax.Array:
  """Selections per (layer, expert) over all tokens: [L, E] float32."""
  ids = jnp.asarray(ids).astype(jnp.int32)
  L = ids.shape[-2]
  flat = ids.reshape(-1, L, ids.shape[-1])
  cell = jnp.arange(L, dtype=jnp.int32)[None, :, None] * num_experts + flat
  return jnp.zeros(L * num_experts, jnp.float32).at[cell.reshape(-1)].add(1.0).reshape(
      L, num_experts)


def sequence_load(ids: jax.Array, num_experts: int) -> jax.Array:
  """Selections per (sequence, layer, expert): [S, L, E] float32."""
  ids = _as_seq(ids)
  return jax.vmap(lambda x: expert_load(x, num_experts))(ids)


def gini(load: jax.Array) -> jax.Array:
  """Gini coefficient over the last axis (0 = equal, -> 1 = one expert): [...]."""
  x = jnp.sort(jnp.asarray(load, jnp.float32), axis=-1)
  n = x.shape[-1]
  i = jnp.arange(1, n + 1, dtype=jnp.float32)
  tot = jnp.sum(x, axis=-1)
  g = 2.0 * jnp.sum(i * x, axis=-1) / (n * jnp.maximum(tot, 1e-30)) - (n + 1.0) / n
  return jnp.where(tot > 0, g, 0.0)


def top_share(load: jax.Array, fraction: float = 0.1) -> jax.Array:
  """Share of the selections on the top ``fraction`` of experts, per row: [...]."""
  m = max(1, int(round(fraction * load.shape[-1])))
  top = lax.top_k(jnp.asarray(load, jnp.float32), m)[0]
  return jnp.sum(top, -1) / jnp.maximum(jnp.sum(load, -1), 1e-30)


def ep_imbalance(ids: jax.Array, num_experts: int, num_units: int,
                 mapping: jax.Array | None = None, batch: int = 1) -> jax.Array:
  """Most-loaded unit over the mean, per (batch, token, layer): [S/batch, N, L].

  mapping: [E] or [L, E] unit of each expert (default round-robin e % N).
  batch: sequences at the same token step whose selections add up (decode
  batch B); must divide S.
  """
  ids = _as_seq(ids)
  S, N, L, k = ids.shape
  if num_units < 1:
    raise ConfigError(f"num_units={num_units}: write an integer >= 1")
  if batch < 1 or S % batch:
    raise ConfigError(f"batch={batch} must divide the {S} sequences: pick a divisor")
  if mapping is None:
    mapping = jnp.arange(num_experts, dtype=jnp.int32) % num_units
  mapping = jnp.broadcast_to(jnp.asarray(mapping, jnp.int32), (L, num_experts))
  units = jnp.take_along_axis(mapping[None, None], ids, axis=-1)          # [S,N,L,k]
  per_unit = jnp.sum(jax.nn.one_hot(units, num_units, dtype=jnp.float32), axis=-2)
  per_unit = per_unit.reshape(S // batch, batch, N, L, num_units).sum(1)
  return jnp.max(per_unit, -1) / (batch * k / num_units)


def hits(ids: jax.Array, resident_mask: jax.Array) -> jax.Array:
  """Whether each selection is resident: bool [S, N, L, k].

  resident_mask: bool [L, E] (one set for all sequences) or [S, L, E].
  """
  ids = _as_seq(ids)
  mask = jnp.asarray(resident_mask, bool)
  if mask.ndim == 2:
    mask = mask[None]
  mask = jnp.broadcast_to(mask, (ids.shape[0],) + mask.shape[1:])
  return jnp.take_along_axis(mask[:, None], ids, axis=-1)


def resident_hit_rate(ids: jax.Array, resident_mask: jax.Array) -> jax.Array:
  """Fraction of selections whose expert is resident (scalar)."""
  return jnp.mean(hits(ids, resident_mask).astype(jnp.float32))


def any_miss_rate(ids: jax.Array, resident_mask: jax.Array) -> jax.Array:
  """Fraction of (token, layer) with at least one selection not resident."""
  return jnp.mean(jnp.any(~hits(ids, resident_mask), axis=-1).astype(jnp.float32))


def top_m_mask(counts: jax.Array, m: int, prior: jax.Array | None = None) -> jax.Array:
  """Top-m experts of counts [..., E] as a bool mask [..., E].

  Ties break by ``prior`` (e.g. global load [L, E], broadcast) when given,
  else by the lower expert id.
  """
  E = counts.shape[-1]
  if not 1 <= m <= E:
    raise ConfigError(f"M={m}: write a resident-set size in [1, {E}]")
  score = jnp.asarray(counts, jnp.float32)
  if prior is not None:
    p = jnp.asarray(prior, jnp.float32)
    p = p / jnp.maximum(jnp.max(p, -1, keepdims=True), 1e-30)
    score = score + 0.5 * p
  score = score - 1e-3 * jnp.arange(E, dtype=jnp.float32) / E
  idx = lax.top_k(score, m)[1]
  return jnp.any(jax.nn.one_hot(idx, E, dtype=bool), axis=-2)


def prefill_top_m_mask(routing, m: int, num_experts: int, prior=None) -> jax.Array:
  """Each sequence's top-m experts per layer by its prefill counts: [S, L, E]."""
  return top_m_mask(sequence_load(routing.prefill_ids, num_experts), m, prior)


def prefill_decode_overlap(routing, m: int, num_experts: int | None = None,
                           prior: jax.Array | None = None) -> jax.Array:
  """Fraction of decode selections inside the sequence's prefill top-m set.

  This is the 'prefill top-M' column of the prefetch table (the paper's
  dataset-free rule); ``prior`` [L, E] breaks ties ('ties by popularity').
  """
  if num_experts is None:
    # Experts above the largest id never occur, and rank last among ties, so
    # E = max id + 1 (with M clipped to it) gives the same hit rate.  Needs
    # concrete ids: pass num_experts under jit.
    num_experts = 1 + int(max(jnp.max(routing.prefill_ids), jnp.max(routing.decode_ids)))
    m = min(m, num_experts)
  mask = prefill_top_m_mask(routing, m, num_experts, prior)
  return resident_hit_rate(routing.decode_ids, mask)


def overlap_at_lag(ids: jax.Array, lag: int = 1) -> jax.Array:
  """Mean |S_t & S_{t-lag}| / k over tokens of a sequence and layers (scalar)."""
  ids = _as_seq(ids)
  if not 1 <= lag < ids.shape[1]:
    raise ConfigError(f"lag={lag}: write 1 <= lag < tokens ({ids.shape[1]})")
  a, b = ids[:, lag:], ids[:, :-lag]
  same = jnp.any(a[..., :, None] == b[..., None, :], axis=-1)
  return jnp.mean(same.astype(jnp.float32))


def consecutive_overlap(ids: jax.Array) -> jax.Array:
  """Consecutive-token overlap of expert sets, as a fraction of k (scalar)."""
  return overlap_at_lag(ids, 1)


def identical_set_rate(ids: jax.Array) -> jax.Array:
  """Fraction of consecutive (token, layer) pairs with the identical expert set."""
  ids = _as_seq(ids)
  a, b = ids[:, 1:], ids[:, :-1]
  same = jnp.any(a[..., :, None] == b[..., None, :], axis=-1)
  return jnp.mean(jnp.all(same, -1).astype(jnp.float32))


def own_top_share(ids: jax.Array, num_experts: int) -> jax.Array:
  """Share of a sequence's selections on its own top-(E/8) experts, per layer, mean."""
  return jnp.mean(top_share(sequence_load(ids, num_experts),
                            max(1, num_experts // 8) / num_experts))


def _successor_tables(train: jax.Array, num_experts: int):
  """Most frequent next-layer expert after each top-1 expert: [L-1, E] and the
  next layer's most popular expert [L-1] (fallback for unseen experts)."""
  E = num_experts
  _, _, L, k = train.shape
  top1 = train[:, :, :-1, 0]                                    # [S, N, L-1]
  nxt = train[:, :, 1:, :]                                      # [S, N, L-1, k]
  layer = jnp.arange(L - 1, dtype=jnp.int32)[None, None, :, None]
  cell = (layer * E + top1[..., None]) * E + nxt
  c = jnp.zeros((L - 1) * E * E, jnp.float32).at[cell.reshape(-1)].add(1.0)
  c = c.reshape(L - 1, E, E)
  popular = jnp.argmax(expert_load(train, E)[1:], axis=-1).astype(jnp.int32)
  seen = jnp.sum(c, -1) > 0
  pred = jnp.where(seen, jnp.argmax(c, -1).astype(jnp.int32), popular[:, None])
  return pred, popular


def _split(ids: jax.Array):
  ids = _as_seq(ids)
  S = ids.shape[0]
  if S < 2 or ids.shape[2] < 2:
    raise ConfigError("successor statistics need >= 2 sequences (half held out) and "
                      f">= 2 layers; got shape {ids.shape}")
  return ids[: S // 2], ids[S // 2:]


def successor_hit_rate(ids: jax.Array, num_experts: int) -> jax.Array:
  """P(the next layer selects the most frequent successor of the current top-1).

  Successors are counted on the first half of the sequences and scored on the
  held-out second half, over layer pairs (l, l+1).  ids slot 0 must be the
  top-1 (highest-gate) expert, as ``routing.generate`` returns them.
  """
  train, test = _split(ids)
  pred, _ = _successor_tables(train, num_experts)
  guess = jnp.take_along_axis(pred[None, None], test[:, :, :-1, :1], axis=-1)
  return jnp.mean(jnp.any(test[:, :, 1:, :] == guess, -1).astype(jnp.float32))


def next_popular_hit_rate(ids: jax.Array, num_experts: int) -> jax.Array:
  """Baseline of ``successor_hit_rate``: predict the next layer's most popular."""
  train, test = _split(ids)
  _, popular = _successor_tables(train, num_experts)
  return jnp.mean(jnp.any(test[:, :, 1:, :] == popular[None, None, :, None],
                          -1).astype(jnp.float32))


def all_ids(routing) -> jax.Array:
  """Prefill and decode ids of each sequence, in token order: [S, P + T, L, k]."""
  return jnp.concatenate([jnp.asarray(routing.prefill_ids).astype(jnp.int32),
                          jnp.asarray(routing.decode_ids).astype(jnp.int32)], axis=1)


def summary(routing, num_experts: int, resident_fraction: float = 0.25,
            num_units: tuple[int, ...] = (2, 4, 8), prefetch_m: tuple[int, ...] = (),
            decode_batches: tuple[int, ...] = ()) -> dict:
  """The statistics of the reference table as a JSON-able dict of floats.

  Token statistics use prefill and decode tokens in order; prefetch ones score
  decode tokens against each sequence's prefill top-M (M = resident_fraction
  * E rounded, at least 1, plus any ``prefetch_m``).  Successor statistics
  need >= 2 sequences.
  """
  E = num_experts
  if not 0.0 < resident_fraction <= 1.0:
    raise ConfigError(f"resident_fraction={resident_fraction}: write a number in (0, 1]")
  ids = all_ids(routing)
  S, N, L, k = ids.shape
  load = expert_load(ids, E)
  out = {
      "num_seqs": S, "tokens_per_seq": N, "num_layers": L, "num_experts": E,
      "top_k": k,
      "gini_global_load": gini(load).mean(),
      "load_max_over_mean": (load.max(-1) / load.mean(-1)).mean(),
      "top10pct_share": top_share(load, 0.1).mean(),
      "own_top_eighth_share": own_top_share(ids, E),
      "consecutive_overlap": consecutive_overlap(ids) if N > 1 else jnp.nan,
      "identical_set_rate": identical_set_rate(ids) if N > 1 else jnp.nan,
  }
  if S >= 2 and L >= 2:
    out["successor_hit_rate"] = successor_hit_rate(ids, E)
    out["next_popular_hit_rate"] = next_popular_hit_rate(ids, E)
  for n in num_units:
    out[f"ep_imbalance_n{n}"] = ep_imbalance(ids, E, n).mean()
  dec = jnp.asarray(routing.decode_ids)
  for b in decode_batches:
    if dec.shape[1] and S % b == 0:
      out[f"ep_imbalance_n8_decode_batch{b}"] = ep_imbalance(dec, E, 8, batch=b).mean()
  if dec.shape[1]:
    ms = sorted({max(1, int(round(resident_fraction * E))), *prefetch_m})
    for m in ms:
      mask = prefill_top_m_mask(routing, m, E)
      out[f"prefill_top{m}_hit_rate"] = resident_hit_rate(dec, mask)
      out[f"prefill_top{m}_any_miss_rate"] = any_miss_rate(dec, mask)
  return {key: (float(v) if not isinstance(v, int) else v) for key, v in out.items()}


# ----------------------------------------------------------------------------
# Reference traces (shared/reference/routing_stats.md) and trace-shaped stats.

# Trace shapes: sequences per trace set, prompt and decode tokens per sequence,
# MoE layers, E, k.  Mixtral: 4 sequences of 135 prompt (as its one prompted
# sequence) and 585 / 4 ~ 146 generated tokens.  Llama-4: 387 sequences, a
# 16-token prompt (median 15, mean 18.7) and 128 decode tokens (48,834 / 387).
TRACE_SHAPES = {
    "flame_moe_290m": dict(num_seqs=32, prompt_len=32, output_len=32, num_layers=8,
                           num_experts=64, top_k=6),
    "mixtral_8x7b": dict(num_seqs=4, prompt_len=135, output_len=146, num_layers=32,
                         num_experts=8, top_k=2),
    "llama4_maverick": dict(num_seqs=387, prompt_len=16, output_len=128, num_layers=23,
                            num_experts=128, top_k=1),
}

# Targets: (value, tolerance).  prefill_topM = 'prefill top-M' of the prefetch
# table.  Llama-4: the 'without layer 45' column over 23 MoE layers; its
# prefetch rows include the dense layer 45 (hit ~1), so they are rescaled to 23
# layers as (24 x - 1) / 23.  LLAMA4_ALL_LAYERS is the 24-layer column, with
# layer 45 (MoE index 22) always-on.
def _l4(x):
  return (24 * x - 1) / 23

TARGETS = {
    "flame_moe_290m": dict(gini=(0.115, 0.05), overlap=(0.105, 0.03),
                           own_top=(0.237, 0.05), successor=(0.525, 0.05),
                           prefill_top8=(0.155, 0.05), prefill_top32=(0.553, 0.05)),
    "mixtral_8x7b": dict(gini=(0.115, 0.05), overlap=(0.379, 0.03),
                         own_top=(0.196, 0.05), successor=(0.419, 0.05),
                         prefill_top2=(0.268, 0.05), prefill_top4=(0.521, 0.05),
                         prefill_top6=(0.761, 0.05)),
    "llama4_maverick": dict(gini=(0.679, 0.05), overlap=(0.305, 0.03),
                            own_top=(0.872, 0.05), successor=(0.197, 0.05),
                            prefill_top4=(_l4(0.360), 0.05),
                            prefill_top16=(_l4(0.494), 0.05),
                            prefill_top32=(_l4(0.569), 0.05)),
}
LLAMA4_ALL_LAYERS = dict(gini=(0.692, 0.05), overlap=(0.334, 0.03),
                         own_top=(0.877, 0.05), successor=(0.230, 0.05),
                         prefill_top4=(0.360, 0.05), prefill_top16=(0.494, 0.05),
                         prefill_top32=(0.569, 0.05))

# Checked, not fitted: the 'global (other sequences)' column of the prefetch
# table (a profiled, MoNDE-like hot set; trace_statistics' global_top{M}).  No
# knob of its own: it follows from the Zipf exponent (fitted to the Gini) and
# the prompt concentration.  The Llama-4 rows are rescaled as above.
GLOBAL_TARGETS = {
    "flame_moe_290m": dict(global_top8=(0.159, 0.05), global_top32=(0.563, 0.05)),
    "mixtral_8x7b": dict(global_top2=(0.278, 0.05), global_top4=(0.535, 0.05),
                         global_top6=(0.794, 0.05)),
    "llama4_maverick": dict(global_top4=(_l4(0.347), 0.05),
                            global_top16=(_l4(0.601), 0.05),
                            global_top32=(_l4(0.763), 0.05)),
}
LLAMA4_ALL_LAYERS_GLOBAL = dict(global_top4=(0.347, 0.05), global_top16=(0.601, 0.05),
                                global_top32=(0.763, 0.05))


def trace_statistics(routing, num_experts: int, group: int,
                     prefetch_m: tuple[int, ...]) -> dict:
  """Statistics as measured on a trace set of ``group`` sequences, averaged
  over the ``S / group`` groups of ``routing`` (replicates): a dict of float32
  scalars with the keys of TARGETS (gini, overlap, own_top, successor,
  prefill_top{M}, global_top{M}).  ``global_top{M}``: decode selections of a
  sequence inside the top-M experts per layer by the counts (all tokens) of
  the *other* sequences of its group -- the 'global (other sequences)' column,
  a profiled, MoNDE-like hot set.  Jit-able with static arguments 1-3.
  """
  E = num_experts
  ids = all_ids(routing)
  S = ids.shape[0]
  if S % group:
    raise ConfigError(f"group={group} must divide the {S} sequences")
  shape = lambda x: x.reshape((S // group, group) + x.shape[1:])
  P = routing.prefill_ids.shape[1]

  def one(ids_g):
    pre = ids_g[:, :P]
    dec = ids_g[:, P:]
    load = expert_load(ids_g, E)
    out = dict(gini=gini(load).mean(), overlap=consecutive_overlap(ids_g),
               own_top=own_top_share(ids_g, E),
               successor=successor_hit_rate(ids_g, E))
    counts = sequence_load(pre, E)
    seq = sequence_load(ids_g, E)                                 # [G, L, E]
    others = jnp.sum(seq, 0, keepdims=True) - seq                 # leave one out
    for m in prefetch_m:
      out[f"prefill_top{m}"] = resident_hit_rate(dec, top_m_mask(counts, m))
      out[f"global_top{m}"] = resident_hit_rate(dec, top_m_mask(others, m))
    return out

  per = jax.vmap(one)(shape(ids))
  return {k: jnp.mean(v) for k, v in per.items()}

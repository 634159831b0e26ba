"""Tables the engine computes once per call, outside the per-sequence scans.

:func:`build_tables` holds every cost that depends on the hardware params but
not on the sequence (per-phase expert, broadcast, return and reduction costs
by token or partial count; attention, shared-expert and step-overhead times);
:func:`build_context` the policy's :class:`~ndpsim.policies.base.Context`;
:func:`prefill_counts` the prompt's expert activations per sequence group.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ndpsim import costs
from ndpsim.policies import base as pb
from ndpsim.workload import models as M


class PhaseCosts(NamedTuple):
  """Costs of one phase, computed once outside the per-sequence scans.

  gpu_s, tp_s, ep_s: [max_tokens + 1] expert time by routed token count (GPU;
    one TP slice on a unit; a whole expert on a unit).
  bcast_s: activation broadcast of the phase's batch tokens.
  ret_s, red_s: [N + 1] partial-sum return and reduction by number of partials.
  """
  gpu_s: jax.Array
  tp_s: jax.Array
  ep_s: jax.Array
  bcast_s: jax.Array
  ret_s: jax.Array
  red_s: jax.Array


def phase_costs(ss, sp, model, max_tokens: int, batch_tokens: int) -> PhaseCosts:
  """One phase's cost tables: expert times for 0..max_tokens routed tokens,
  and the broadcast / return / reduction of batch_tokens activations."""
  n = ss.num_ndp_units
  t = jnp.arange(max_tokens + 1, dtype=jnp.float32)
  parts = jnp.arange(n + 1, dtype=jnp.float32)
  return PhaseCosts(
      gpu_s=costs.gpu_expert_s(ss, sp, model, t),
      tp_s=costs.ndp_expert_s(ss, sp, model, t, n),
      ep_s=costs.ndp_expert_s(ss, sp, model, t, 1),
      bcast_s=costs.broadcast_s(ss, sp, model, float(batch_tokens)),
      ret_s=costs.return_s(ss, sp, model, float(batch_tokens), parts),
      red_s=costs.reduce_s(ss, sp, model, float(batch_tokens), parts))


class Tables(NamedTuple):
  """Everything that depends on params but not on the sequence (hoisted out
  of the vmap over sequences).  Times in seconds; [L] over MoE layers."""
  prefill: PhaseCosts
  decode: PhaseCosts
  attn_prefill_s: jax.Array    # [L]
  shared_prefill_s: jax.Array  # [L]
  over_prefill_s: jax.Array    # leading dense layers + LM head
  attn_decode_s: jax.Array     # [T, L]
  shared_decode_s: jax.Array   # [L]
  over_decode_s: jax.Array     # [T]


def build_tables(ss, sp, model, P: int, T: int, B: int) -> Tables:
  """Tables for P prompt tokens, T decode steps and batch B (static ints)."""
  attn_p, shared_p = costs.moe_layer_gpu_s(ss, sp, model, P, float(P), B)
  ctx_len = P + 1.0 + jnp.arange(T, dtype=jnp.float32)
  attn_d = jax.vmap(lambda c: costs.moe_layer_gpu_s(ss, sp, model, 1, c, B)[0])(ctx_len)
  _, shared_d = costs.moe_layer_gpu_s(ss, sp, model, 1, float(P + 1), B)
  over_d = jax.vmap(lambda c: costs.step_overhead_s(ss, sp, model, 1, c, B,
                                                    lm_head_tokens=B))(ctx_len)
  return Tables(prefill=phase_costs(ss, sp, model, P * B, P * B),
                decode=phase_costs(ss, sp, model, B, B),
                attn_prefill_s=attn_p, shared_prefill_s=shared_p,
                over_prefill_s=costs.step_overhead_s(ss, sp, model, P, float(P), B,
                                                     lm_head_tokens=B),
                attn_decode_s=attn_d.reshape(T, -1), shared_decode_s=shared_d,
                over_decode_s=over_d)


def build_context(ss, sp, model, policy, pparams, profile_counts, context_len, batch,
                  relaxed_mode=False) -> pb.Context:
  """The policy's view of the system: sizes, fetch time, capacities, profile."""
  L, E = M.num_moe_layers(model), model.num_experts
  if profile_counts is None:
    profile_counts = jnp.ones((L, E), jnp.float32)
  return pb.Context(num_layers=L, num_experts=E, num_units=ss.num_ndp_units,
                    top_k=model.top_k, expert_bytes=float(M.expert_bytes(model)),
                    fetch_s=costs.fetch_s(ss, sp, model, policy.ndp_mode),
                    capacity=costs.resident_capacity(ss, sp, model, context_len, batch),
                    profile_counts=jnp.asarray(profile_counts, jnp.float32),
                    relaxed=relaxed_mode,
                    expert_slots=costs.expert_slots(ss, sp, model, context_len, batch),
                    link_share=costs.link_share(ss, sp))


def prefill_counts(pre, num_layers: int, num_experts: int):
  """pre [G, B, P, L, k] (any integer dtype) -> [G, L, E] int32 prompt
  activations per group.

  One flat scatter-add over all groups (under the vmap over groups, a
  batched scatter builds [N, 3] index arrays: several times slower on CPU); ids outside
  [0, E) are dropped, as in a per-layer scatter."""
  G, L, E = pre.shape[0], num_layers, num_experts
  pre = pre.astype(jnp.int32)  # ids may come narrow (engine.ids_dtype)
  base_ = ((jnp.arange(G, dtype=jnp.int32)[:, None, None, None, None] * L
            + jnp.arange(L, dtype=jnp.int32)[None, None, None, :, None]) * E)
  idx = jnp.where((pre >= 0) & (pre < E), base_ + pre, G * L * E)
  return jnp.zeros((G * L * E,), jnp.int32).at[idx.reshape(-1)].add(
      1, mode="drop").reshape(G, L, E)


def gpu_memory_bytes(sp):
  """GPU memory capacity, bytes (traced)."""
  from ndpsim.hw import gpu as gpu_mod  # pylint: disable=import-outside-toplevel
  return gpu_mod.memory_capacity_bytes(sp.gpu)

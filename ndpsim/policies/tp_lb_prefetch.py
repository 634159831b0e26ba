"""``tp_lb_prefetch``: the paper's full framework -- TP + load balancing +
dataset-free prefetch.

Contract: ``init`` reads only sizes and params (no dataset, no profile).
During prefill, after each layer's router, it reads that layer's activation
counts of the *current* prompt and chooses the top-M experts (M =
``floor(resident_fraction x capacity)``, ties by lower id); those the load
balancer already loaded for the prefill GEMMs stay resident, the rest join the
background load queue (the engine moves them in idle link time, overlapping
compute).  During decode the resident set is fixed; every layer is split by
:func:`balance.greedy_split`, where resident experts cost no transfer and a
miss falls back to NDP unless loading it on demand lowers the makespan.
It never reads future routing and never holds more than M experts per layer.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ndpsim.policies import balance
from ndpsim.policies import base as pb


def init(ctx, params):
  cap = jnp.floor(params.resident_fraction * ctx.capacity + 1e-6)
  return pb.empty_state(ctx.num_layers, ctx.num_experts, cap)


def choose_from_prefill(ctx, state, layer, slots, gpu):
  """Top-M of this layer's prefill counts: keep loaded ones, queue the rest."""
  counts = jnp.zeros((ctx.num_experts,)).at[slots.ids].add(
      jnp.where(slots.valid, slots.tokens, 0.0))
  loaded = jnp.zeros((ctx.num_experts,), bool).at[slots.ids].max(gpu & ~slots.resident)
  # Integer counts: one packed int32 sort gives the top-M and the queue order
  # (= top_m_mask(counts, capacity, eligible=counts > 0) and enqueue's ranks).
  corder = pb.count_order(counts)
  want = corder.first(jnp.clip(jnp.floor(state.capacity + 1e-6), 0, ctx.num_experts)) & (
      counts > 0)
  keep = want & loaded
  row_q = jnp.where(keep, 0.0, state.queue_end_s[layer])
  state = dataclasses.replace(
      state, resident=state.resident.at[layer].set(state.resident[layer] | keep),
      queue_end_s=state.queue_end_s.at[layer].set(row_q),
      prefetched=state.prefetched.at[layer].set(state.prefetched[layer] | keep))
  return pb.enqueue(state, layer, want & ~keep, counts, ctx.fetch_s,
                    order=corder.order), counts


def place(ctx, state, layer, slots, params, phase):
  gpu = balance.greedy_split(slots, params.gpu_bias, params.ndp_bias)
  if phase == "prefill":
    state, _ = choose_from_prefill(ctx, state, layer, slots, gpu)
  return pb.no_fetch_placement(slots, gpu), state


POLICY = pb.Policy(name="tp_lb_prefetch", ndp_mode="tp", init=init, place=place)

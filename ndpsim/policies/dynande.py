"""``dynande``: the scheduling of DynaNDE, the closest open MoE-on-NDP simulator
(github.com/Akash-N-Pai/DynaNDE-Simulator; its own mode, as summarised in the
shared reference ``baselines.md``, "DynaNDE / NeuPIMs-MoE re-implementation").

What its text says and how it maps here:

* Per layer and token, the activated experts are sorted by token count and a
  sweep decides how many of them run on the accelerator (0 ... n), with
  benefit = PIM time - (accelerator time + parameter load unless cached).
  Here: slots in descending routed tokens (ties: the router's slot order in
  decode, lower id in prefill); for every j the first j run on the GPU and the
  rest on the NDP units, priced as DynaNDE prices them -- GPU side = shared
  experts + the sum of the j GPU times + one load ``T_w`` per expert not in
  the cache; NDP side = activation broadcast + the most loaded unit + the
  partial-sum return and reduction -- and the j with the smallest
  ``max(GPU side, NDP side)`` wins (ties: fewer on the GPU).  The engine then
  runs that split on its own timeline (loads overlap compute there).
* "layer time = max of the two sides": the engine's layer end is the max of
  the GPU lane and the NDP lane's return.
* An LFU expert cache persists across tokens: per layer the cache keeps the
  ``M`` experts with the most uses so far (routed tokens, counted over the
  whole run: the policy's own state [L, E]) among those in GPU memory after
  the layer -- the cached ones and the ones just loaded for it (ties: cached
  first, then lower id).  An expert enters the cache only when it was loaded
  anyway; nothing is prefetched.  ``M = floor(resident_fraction x GPU expert
  budget)`` per layer.
* NDP side: experts are stored whole, expert e on unit ``e mod N`` (expert
  parallelism, as DynaNDE's PIM devices and ``monde`` hold them); a copy to
  the GPU streams through that unit's host bus (``ctx.fetch_s`` for "ep").
  Assumed where DynaNDE's text is silent: the benefit sweep uses plain sums
  (no overlap of loads with compute), and a layer loads at most
  ``slots.stage_room`` experts on demand (GPU memory).

Contract: reads the slots of the current layer, the engine's residency
(which experts are cached) and its own LFU counts; never reads future
routing; keeps at most ``M`` experts per layer (``Requests.keep``/``evict``);
never fetches more than ``slots.stage_room`` experts in a layer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  return pb.Start(own=jnp.zeros((ctx.num_layers, ctx.num_experts)),
                  capacity=pb.budget_slots(ctx, params))


def _order(slots: pb.Slots, phase: str):
  """Slot indices in descending routed tokens.  Decode slots already are
  (ties: router order); prefill slots are in id order (ties: lower id)."""
  if phase == "prefill":
    return pb.count_order(slots.tokens).order
  return jnp.arange(slots.ids.shape[0], dtype=jnp.int32)


def sweep(slots: pb.Slots, units: jax.Array, num_units: int, order: jax.Array):
  """DynaNDE's sweep: how many of the activated experts (in ``order``) run on
  the GPU.  Returns ([n] bool GPU mask, [n + 1] layer-time estimates by j)."""
  n = slots.ids.shape[0]
  valid = slots.valid[order]
  cost_gpu = jnp.where(valid, slots.gpu_s[order]
                       + jnp.where(slots.resident[order], 0.0, slots.fetch_s[order]), 0.0)
  z = jnp.zeros((1,))
  gpu_side = slots.gpu_pre_s + jnp.concatenate([z, jnp.cumsum(cost_gpu)])  # [n + 1]
  # Unit loads of the experts left on the NDP side for each j.
  onehot = (units[order][:, None] == jnp.arange(num_units)[None, :]) & valid[:, None]
  per = jnp.where(onehot, slots.ndp_ep_s[order][:, None], 0.0)              # [n, N]
  suffix = jnp.sum(per, axis=0) - jnp.concatenate(
      [jnp.zeros((1, num_units)), jnp.cumsum(per, axis=0)])                 # [n + 1, N]
  n_valid = jnp.sum(valid)
  j = jnp.arange(n + 1)
  has_ndp = j < n_valid
  ndp_side = jnp.where(has_ndp, slots.bcast_s + jnp.max(suffix, axis=1) + slots.post_s, 0.0)
  # Loads on demand up to the staging room only; j past the valid slots adds nothing.
  fetched = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(
      (valid & ~slots.resident[order]).astype(jnp.int32))])
  ok = (fetched <= jnp.floor(slots.stage_room + 1e-6)) & (j <= n_valid)
  span = jnp.where(ok, jnp.maximum(gpu_side, ndp_side), jnp.inf)
  best = jnp.argmin(span)
  gpu_sorted = (jnp.arange(n) < best) & valid
  gpu = jnp.zeros((n,), bool).at[order].set(gpu_sorted, unique_indices=True)
  return gpu, span


def place(ctx, res, own, layer, slots, params, phase):
  units = pb.ep_units(slots.ids, ctx.num_units)
  gpu, _ = sweep(slots, units, ctx.num_units, _order(slots, phase))
  fetch = gpu & ~slots.resident
  # LFU counts persist across tokens; the cache keeps the most used experts
  # among the cached ones and those loaded for this layer.
  E = ctx.num_experts
  counts = own[layer].at[slots.ids].add(jnp.where(slots.valid, slots.tokens, 0.0))
  in_gpu = res.resident[layer] | jnp.zeros((E,), bool).at[slots.ids].max(fetch)
  key = counts + jnp.where(res.resident[layer], 0.5, 0.0)  # counts are integers
  cache = pb.top_m_mask(key, res.capacity, eligible=in_gpu)
  req = pb.Requests(evict=res.resident[layer] & ~cache, keep=cache & ~res.resident[layer])
  p = pb.Placement(gpu_frac=gpu.astype(jnp.float32), fetch=fetch, ep_unit=units,
                   requests=req)
  return p, own.at[layer].set(counts)


POLICY = pb.Policy(name="dynande", ndp_mode="ep", init=init, place=place)

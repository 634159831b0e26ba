"""The simulation engine: per-layer timelines, scanned over layers and steps.

``simulate(system, model, routing, policy, ...)`` is pure: jit-compiled
(static: system spec, model, policy, shapes), vmapped over sequence groups,
and usable under an outer ``jax.vmap`` over hardware or policy params.

A layer is four stages: the queue advance (``residency.drain`` /
``arrivals``), the slots and the policy's placement (its requests applied by
``residency.apply``), the lanes (``lanes.layer_times``: written once, with
the hard operator set here and the soft one in relaxed mode) and the
statistics (:func:`_accumulate`).

One layer, starting at ``t0`` when the previous layer's output exists::

    GPU:   [attention + router] -> tr -> [shared experts][resident experts]
                                          [fetched experts, each after its load]
    link->GPU:               tr -> [demand loads T_w ...] ... [partial-sum return]
                             (background loads fill the idle gaps)
    link->NDP:               tr -> [activation broadcast]
    NDP units:                      [per-unit expert work; lane = slowest unit]
    layer end = max(GPU lane, return of partials) + reduction on the GPU

* Dependencies, not sums: a fetched expert computes after its weights arrive
  (residents first, then fetched ones in arrival order: a max-plus closed
  form); partial sums return after the slowest unit and after this layer's
  demand loads on the shared link direction; the next layer starts at the end.
* Background loads (prefetch, adaptive swaps) run in link time the demand
  traffic leaves idle, in queue order, at lower priority: a demand load
  pre-empts a background load in flight, which resumes where it stopped once
  the demand loads are done (a copy queue that issues background copies in
  chunks behind a priority demand queue; the wait for the chunk in flight,
  chunk / bandwidth, is neglected).  So background traffic never delays
  demand traffic, and the load balancer's estimate of a layer does not depend
  on it.  Small messages (activations, partial sums) are not queued behind
  bulk copies.
* Demand loads are issued in slot order, which is descending routed tokens
  (ties: lower slot) -- the load balancer's order; prefill slots are in id
  order, so the prefill issues its loads in :func:`_issue_order`.
* Prefill runs each layer once with all prompt tokens (GEMMs); decode runs
  ``output_len`` steps of one token per sequence of the batch.

Modelled: everything above.  Not modelled: GPU kernel overlap between
attention and experts of different layers, speculative (pre-router) loads,
host CPU time, DRAM contention between NDP compute and host-side DMA.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ndpsim import costs, lanes, relaxed
from ndpsim import residency as rs
from ndpsim.base import ConfigError
from ndpsim.policies import base as pb
from ndpsim.results import SimResult
from ndpsim.workload import models as M


class _Acc(NamedTuple):
  """Per-sequence accumulators carried through the scans."""
  gpu_busy_s: jax.Array
  unit_busy_s: jax.Array  # [N]
  ndp_lane_s: jax.Array   # sum over layers of the slowest unit's time
  link_to_gpu_busy_s: jax.Array
  link_to_ndp_busy_s: jax.Array
  bytes_to_gpu: jax.Array
  bytes_to_ndp: jax.Array
  hits: jax.Array
  misses: jax.Array
  expert_bytes_gpu: jax.Array
  expert_bytes_ndp: jax.Array
  activated_bytes: jax.Array
  imbalance_sum: jax.Array
  imbalance_n: jax.Array
  peak_resident: jax.Array  # resident or queued experts at step ends, max
  peak_staging: jax.Array   # experts loaded on demand in one decode layer, max
  peak_prefill: jax.Array   # resident + queued + loaded in one prefill layer, max


def _zero_acc(n_units: int) -> _Acc:
  z = jnp.zeros(())
  return _Acc(z, jnp.zeros((n_units,)), z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)


class _Carry(NamedTuple):
  """Per-sequence state carried through the scans.

  The clock is relative (:func:`_rebase`): ``t`` and the link times are
  seconds after ``origin``, the absolute time of the previous layer's end
  carried as an unevaluated float32 sum ``origin_hi + origin_lo``.  Every
  layer works on times of its own length scale (rounding ~1e-7 of a layer,
  not of the run) and its length is added to the origin exactly (TwoSum), so
  the clock's error does not grow with simulated time.
  """
  t: jax.Array            # end of the previous layer, s after origin
  link_gpu_free: jax.Array  # demand traffic on link->GPU done at, s after origin
  link_ndp_free: jax.Array  # link->NDP free at, s after origin
  bg_clock: jax.Array     # idle link time accounted up to, s after origin
  res: rs.Residency       # GPU residency and background queue (engine-owned)
  own: Any                # the policy's own state
  acc: _Acc
  origin_hi: jax.Array    # absolute time of the clock's zero, s (high part)
  origin_lo: jax.Array    # (low part: origin = origin_hi + origin_lo)


@dataclasses.dataclass(frozen=True)
class _Static:
  policy: pb.Policy
  num_units: int
  batch: int
  act_bytes_per_token: float
  phase_tokens: tuple
  relaxed: bool = False
  record: bool = False  # also return per-layer timeline records (ndpsim/trace.py)

  def tokens(self, phase: str) -> int:
    return dict(self.phase_tokens)[phase]


def _two_sum(a, b):
  """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum:
  no ordering of |a|, |b| needed)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def _rebase(c: _Carry) -> _Carry:
  """Moves the clock's zero to ``c.t``: the origin grows by ``c.t`` (exactly,
  the rounding kept in ``origin_lo``), every relative time shrinks by it."""
  d = c.t
  hi, e = _two_sum(c.origin_hi, d)
  return c._replace(t=jnp.zeros_like(d), link_gpu_free=c.link_gpu_free - d,
                    link_ndp_free=c.link_ndp_free - d, bg_clock=c.bg_clock - d,
                    origin_hi=hi, origin_lo=c.origin_lo + e)


def _absolute(c: _Carry):
  """``c.t`` as an absolute time, s (one float32 rounding)."""
  return c.origin_hi + (c.origin_lo + c.t)


# ---------------------------------------------------------------------------
# Lane arithmetic (shared with the load balancer through policies.balance).

def _issue_order(phase: str, tokens):
  """Order in which a layer's demand loads are issued: descending routed
  tokens, ties by lower slot (the load balancer's order).  Decode slots are
  already in that order (None); prefill slots are in expert-id order."""
  if phase != "prefill":
    return None
  return pb.count_order(tokens).order


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


# ---------------------------------------------------------------------------
# One layer.

def _slots_decode(ids, num_experts: int, batch: int):
  """ids [B, k] -> slots of unique activated experts (ids, tokens, valid)."""
  flat = ids.reshape(-1).astype(jnp.int32)
  if batch == 1:
    return flat, jnp.ones(flat.shape, jnp.int32), jnp.ones(flat.shape, bool)
  counts = jnp.zeros((num_experts,), jnp.int32).at[flat].add(1)
  n = min(num_experts, flat.shape[0])
  tok, idx = jax.lax.top_k(counts, n)
  return idx.astype(jnp.int32), tok, tok > 0


def _slots_prefill(counts):
  """counts [E] -> one slot per expert."""
  e = counts.shape[0]
  return jnp.arange(e, dtype=jnp.int32), counts, counts > 0


def _bound_end(pol: pb.Policy, ctx, slots, pc, tr):
  """Layer end of a lower-bound policy (``Policy.layer_bound``, ``oracle``):
  the router time plus its span, given the bare broadcast and the cheapest
  return + reduction (one partial sum)."""
  return tr + pol.layer_bound(ctx, slots._replace(bcast_s=pc.bcast_s),
                              pc.ret_s[1] + pc.red_s[1])


def _layer(st: _Static, ctx: pb.Context, pparams, phase: str, pc: PhaseCosts,
           carry: _Carry, layer, ids, tokens, valid, attn_s, shared_s):
  """Simulates one MoE layer; returns (the new carry, the layer's timeline
  record if ``st.record`` else None).  tokens: int32 [n]."""
  pol, n_units = st.policy, st.num_units
  state = carry.res
  t0 = carry.t
  tr = t0 + attn_s
  fetch_s = ctx.fetch_s

  # Background loads use the idle link up to the router's decision.
  idle = tr - jnp.maximum(carry.bg_clock, carry.link_gpu_free)
  drained0 = state.drained_s
  state = rs.drain(state, idle)
  drained1 = state.drained_s
  view = rs.arrivals(state, layer)  # what the policy reads
  if phase == "prefill" or st.relaxed:
    # Prefill slots are the experts in id order (_slots_prefill): row reads.
    state = view
    resident = (state.resident[layer] if phase == "prefill"
                else state.resident[layer, ids]) & valid
  else:
    # Decode, hard: lazy residency (rs.resident_at); the arrivals row update
    # exists only if the policy reads ``view`` (XLA drops it otherwise).
    resident = rs.resident_at(state, layer, ids) & valid
  held = _held(ctx, state, phase)
  room = jnp.maximum(ctx.expert_slots - held, 0.0)
  soft = st.relaxed and state.soft is not None
  bcast_start = jnp.maximum(tr, carry.link_ndp_free)
  slots = pb.Slots(ids=ids, tokens=tokens.astype(jnp.float32), valid=valid,
                   resident=resident, gpu_s=pc.gpu_s[tokens],
                   fetch_s=jnp.broadcast_to(fetch_s, tokens.shape),
                   ndp_tp_s=pc.tp_s[tokens], ndp_ep_s=pc.ep_s[tokens],
                   gpu_pre_s=shared_s,
                   link_delay_s=jnp.maximum(carry.link_gpu_free - tr, 0.0),
                   bcast_s=bcast_start - tr + pc.bcast_s,
                   post_s=pc.ret_s[n_units] + pc.red_s[n_units], stage_room=room)
  if soft:
    slots = slots._replace(res_w=jnp.where(valid, relaxed.slot_residency(
        state.soft, layer, ids, state.drained_s, pparams.temperature_s), 0.0))
  place, own = pol.place(ctx, view, carry.own, layer, slots, pparams, phase)
  state = rs.apply(ctx, state, layer, place.requests)
  carry = carry._replace(own=own)
  order = _issue_order(phase, tokens)
  if st.relaxed:
    ops = lanes.soft_ops(pparams.temperature_s)
    gfrac = jnp.where(valid, place.gpu_frac, 0.0)
    phi = jnp.where(valid, 1.0 - slots.res_w if slots.res_w is not None
                    else place.fetch.astype(jnp.float32), 0.0)
  else:
    ops = lanes.hard_ops()
    gfrac, phi = _staging_cut(place, valid, order, room)
  loads = lanes.ndp_unit_loads(pol.ndp_mode, n_units, slots, gfrac, place.ep_unit)
  lt = lanes.layer_times(ops, pol.ndp_mode, n_units, slots, gfrac, phi, loads,
                         order, pc, tr, bcast_start, shared_s,
                         carry.link_gpu_free, carry.link_ndp_free, ctx.fetch_s)
  end = lt.end if pol.layer_bound is None else _bound_end(pol, ctx, slots, pc, tr)
  state = _mark_used(ctx, rs.drain(state, lt.idle_s), phase, layer, ids,
                     valid & (gfrac > 0) & resident)
  acc = _accumulate(st, ctx, phase, carry.acc, slots, gfrac, phi, lt, held, attn_s,
                    shared_s)
  rec = None
  if st.record:  # static: the default program is unchanged
    o = (lambda x: x) if order is None else (lambda x: x[order])
    ndp_frac = jnp.where(valid, 1.0 - gfrac, 0.0)
    req = place.requests
    kept = (jnp.zeros(ids.shape, bool) if req is None or req.keep is None
            else jnp.asarray(req.keep, bool)[ids])  # stays resident after this layer
    # Times of this layer are relative to the carry's origin (the relative
    # clock, :func:`_rebase`); the record holds absolute times.
    ab = lambda x: carry.origin_hi + (carry.origin_lo + x)  # noqa: E731
    rec = dict(
        t0=ab(t0), attn_s=attn_s, tr=ab(tr), shared_s=shared_s, end=ab(end),
        lanes_end=ab(lt.end),
        bg_pre_start=ab(jnp.maximum(carry.bg_clock, carry.link_gpu_free)),
        bg_pre_s=drained1 - drained0,
        bg_post_start=ab(jnp.maximum(lt.fetch_end, carry.link_gpu_free)),
        bg_post_s=state.drained_s - drained1,
        fetch_start=ab(jnp.maximum(tr, carry.link_gpu_free)),
        slot_ids=o(ids), slot_tokens=o(tokens), slot_valid=o(valid),
        slot_resident=o(resident), slot_fetched=o(phi), slot_gfrac=o(gfrac),
        slot_kept=o(kept), slot_kept_as_prefetch=o(kept & bool(req is not None
                                                          and req.keep_is_prefetch)),
        slot_gpu_s=o(slots.gpu_s * gfrac),
        slot_fetch_s=o(jnp.where(phi, ctx.fetch_s * gfrac, 0.0)),
        slot_ndp_s=o(ndp_frac * (slots.ndp_tp_s if pol.ndp_mode == "tp"
                                 else slots.ndp_ep_s)),
        slot_unit=o(jnp.broadcast_to(place.ep_unit, ids.shape).astype(jnp.int32)),
        **{k: getattr(lt, k) for k in (
            "fetch_busy", "w", "loads", "slowest", "bcast", "ret", "red", "n_partials")},
        **{k: ab(getattr(lt, k)) for k in ("gpu_end", "fetch_end", "ndp_end", "ret_end")},
        bcast_start=ab(bcast_start))
  return _rebase(carry._replace(
      t=end, link_gpu_free=lt.link_gpu_free, link_ndp_free=lt.link_ndp_free,
      bg_clock=lt.bg_clock, res=state, acc=acc)), rec


def _staging_cut(place: pb.Placement, valid, order, room):
  """Hard mode: (GPU shares, fetched flags) after GPU memory is enforced --
  loads past the staging room would overflow it, so they run on the NDP units
  instead (policies are told the room and should not ask)."""
  gfrac = jnp.where(valid, place.gpu_frac, 0.0)
  fetch = place.fetch & valid & (gfrac > 0)
  rank = pb.cumsum((fetch if order is None else fetch[order]).astype(jnp.int32))
  over = fetch & ((rank if order is None else jnp.zeros_like(rank).at[order].set(rank))
                  > room)
  return jnp.where(over, 0.0, gfrac), fetch & ~over


def _mark_used(ctx, state: rs.Residency, phase: str, layer, ids, on_gpu_resident):
  """A prefetched expert that served an activation on the GPU is marked used."""
  if phase == "prefill":  # prefill slots are the experts in id order
    row = state.used[layer] | (on_gpu_resident & state.prefetched[layer])
    return dataclasses.replace(state, used=state.used.at[layer].set(row))
  # Flags only turn on: OR a one-hot row of the used slots into the layer's
  # row (a row update; a scatter under the vmap builds [S, k, 3] indices).
  now = on_gpu_resident & state.prefetched[layer, ids]
  hit = jnp.any((ids[:, None] == jnp.arange(ctx.num_experts, dtype=ids.dtype))
                & now[:, None], axis=0)
  return dataclasses.replace(state, used=state.used.at[layer].set(state.used[layer] | hit))


def _accumulate(st: _Static, ctx, phase: str, acc: _Acc, slots: pb.Slots, gfrac, phi,
                lt: lanes.LayerTimes, held, attn_s, shared_s) -> _Acc:
  """Statistics of one layer (busy times, bytes, hits, imbalance, peaks)."""
  eb, valid, resident = ctx.expert_bytes, slots.valid, slots.resident
  act_b = st.act_bytes_per_token * st.tokens(phase)
  share = jnp.where(valid, gfrac * phi, 0.0)  # fetched expert fraction per slot
  if st.relaxed:
    partial_b = lt.n_partials * act_b
    n_fetch = jnp.sum(share)
  else:
    partial_b = lt.n_partials * st.tokens(phase) * st.act_bytes_per_token
    n_fetch = jnp.sum(phi)
  mean_load = jnp.mean(lt.loads)
  imb = jnp.where(mean_load > 0,
                  jnp.max(lt.loads) / jnp.where(mean_load > 0, mean_load, 1.0), 0.0)
  gate = (lambda x: lt.w * x) if st.relaxed else (lambda x: jnp.where(lt.w, x, 0.0))
  return _Acc(
      gpu_busy_s=acc.gpu_busy_s + attn_s + shared_s + jnp.sum(slots.gpu_s * gfrac) + lt.red,
      unit_busy_s=acc.unit_busy_s + lt.loads,
      ndp_lane_s=acc.ndp_lane_s + lt.slowest,
      link_to_gpu_busy_s=acc.link_to_gpu_busy_s + lt.fetch_busy + lt.ret,
      link_to_ndp_busy_s=acc.link_to_ndp_busy_s + lt.bcast,
      bytes_to_gpu=acc.bytes_to_gpu + jnp.sum(share) * eb + partial_b,
      bytes_to_ndp=acc.bytes_to_ndp + gate(act_b),
      hits=acc.hits + jnp.sum(valid & resident),
      misses=acc.misses + jnp.sum(valid & ~resident),
      expert_bytes_gpu=acc.expert_bytes_gpu + jnp.sum(gfrac) * eb,
      expert_bytes_ndp=acc.expert_bytes_ndp + jnp.sum(jnp.where(valid, 1.0 - gfrac, 0.0)) * eb,
      activated_bytes=acc.activated_bytes + jnp.sum(valid) * eb,
      imbalance_sum=acc.imbalance_sum + gate(imb),
      imbalance_n=acc.imbalance_n + lt.w,
      **_peaks(acc, phase, held, n_fetch),
  )


def _held(ctx: pb.Context, state: rs.Residency, phase: str):
  """Experts resident or queued for residency on the GPU now.  Counted in
  prefill (where residency is built); in decode bounded by the per-layer
  capacity every policy keeps (a scalar: no [L, E] reduction per step)."""
  if phase == "prefill":
    return rs.held(state)
  return ctx.num_layers * state.capacity


def _peaks(acc: _Acc, phase: str, held, n_fetch) -> dict:
  """GPU-memory high-water marks in expert slots (see :class:`_Acc`)."""
  if phase == "prefill":
    return dict(peak_resident=acc.peak_resident, peak_staging=acc.peak_staging,
                peak_prefill=jnp.maximum(acc.peak_prefill, held + n_fetch))
  return dict(peak_resident=acc.peak_resident, peak_prefill=acc.peak_prefill,
              peak_staging=jnp.maximum(acc.peak_staging, n_fetch))


def _with_peak(c: _Carry) -> _Carry:
  n = rs.held(c.res)
  return c._replace(acc=c.acc._replace(peak_resident=jnp.maximum(c.acc.peak_resident, n)))


# ---------------------------------------------------------------------------
# One sequence group (B sequences decoding together).

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


def _simulate_group(st: _Static, ctx, pparams, tab: Tables, prefill_ids, decode_ids,
                    prefill_counts=None):
  """prefill_ids [B, P, L, k], decode_ids [B, T, L, k] -> per-group outputs.

  prefill_counts: [L, E] int32 activations of the prompt (:func:`prefill_counts`),
  if already counted; else counted here from prefill_ids."""
  L, E = ctx.num_layers, ctx.num_experts
  start = st.policy.init(ctx, pparams)
  res = rs.empty(L, E, start.capacity, start.resident,
                 soft=st.relaxed and st.policy.soft_residency)
  z = jnp.zeros(())
  carry = _Carry(t=tab.over_prefill_s, link_gpu_free=z, link_ndp_free=z, bg_clock=z,
                 res=res, own=start.own, acc=_zero_acc(st.num_units), origin_hi=z,
                 origin_lo=z)

  # Prefill: one pass over the layers with all prompt tokens of the batch.
  if prefill_counts is None:
    flat = jnp.moveaxis(prefill_ids, 2, 0).reshape(L, -1)          # [L, B*P*k]
    counts = jax.vmap(lambda x: jnp.zeros((E,), jnp.int32).at[x].add(1))(flat)
  else:
    counts = prefill_counts

  # Per-sequence inputs are indexed inside the scans, not scanned over: under
  # the vmap over groups a scanned input would be transposed (copied) first.
  def prefill_body(c, xs):
    layer, a, sh = xs
    ids, tok, val = _slots_prefill(counts[layer])
    return _layer(st, ctx, pparams, "prefill", tab.prefill, c, layer, ids, tok, val,
                  a, sh)

  carry, rec_prefill = jax.lax.scan(prefill_body, carry, (
      jnp.arange(L), tab.attn_prefill_s, tab.shared_prefill_s))
  carry = _with_peak(carry)
  ttft = _absolute(carry)
  acc_prefill = carry.acc

  # Decode: steps x layers.
  def step_body(c, xs):
    step, attn_t, over_t = xs
    ids_t = decode_ids[:, step]  # [B, L, k]
    start_hi, start_lo = c.origin_hi, c.origin_lo  # c.t = 0: layers rebase
    c = c._replace(t=c.t + over_t)

    def layer_body(c2, xs2):
      layer, a, sh = xs2
      sids, tok, val = _slots_decode(ids_t[:, layer], E, st.batch)
      return _layer(st, ctx, pparams, "decode", tab.decode, c2, layer, sids, tok, val,
                    a, sh)

    c, recs = jax.lax.scan(layer_body, c, (jnp.arange(L), attn_t, tab.shared_decode_s))
    # Step length: exact difference of the high parts (error <= 1/2 ulp of
    # the step), plus the low parts'.
    step_len = (c.origin_hi - start_hi) + (c.origin_lo - start_lo + c.t)
    if st.record:
      return _with_peak(c), (step_len, dict(step_start=start_hi + start_lo,
                                            step_over_s=over_t, layers=recs))
    return _with_peak(c), step_len

  carry, step_s = jax.lax.scan(step_body, carry, (jnp.arange(decode_ids.shape[1]),
                                                  tab.attn_decode_s, tab.over_decode_s))
  rec = None
  if st.record:
    step_s, rec_decode = step_s
    rec = dict(prefill=rec_prefill, decode=rec_decode)
  st_ = carry.res
  prefetched_bytes = jnp.sum(st_.prefetched) * ctx.expert_bytes
  used_bytes = jnp.sum(st_.used) * ctx.expert_bytes
  out = dict(ttft_s=ttft, step_s=step_s, acc=carry.acc, acc_prefill=acc_prefill,
             prefetched_bytes=prefetched_bytes, prefetch_used_bytes=used_bytes)
  return out if rec is None else dict(out, record=rec)


def _build_context(ss, sp, model, policy, pparams, profile_counts, context_len, batch,
                   relaxed_mode=False):
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
  """pre [G, B, P, L, k] -> [G, L, E] int32 prompt activations per group.

  One flat scatter-add over all groups (under the vmap over groups, a
  batched scatter builds [N, 3] index arrays: several times slower on CPU); ids outside
  [0, E) are dropped, as in a per-layer scatter."""
  G, L, E = pre.shape[0], num_layers, num_experts
  base_ = ((jnp.arange(G, dtype=jnp.int32)[:, None, None, None, None] * L
            + jnp.arange(L, dtype=jnp.int32)[None, None, None, :, None]) * E)
  idx = jnp.where((pre >= 0) & (pre < E), base_ + pre, G * L * E)
  return jnp.zeros((G * L * E,), jnp.int32).at[idx.reshape(-1)].add(
      1, mode="drop").reshape(G, L, E)


def simulate_core(ss, sp, model, policy, pparams, prefill_ids, decode_ids,
                  profile_counts, batch, relaxed=False, record=False):
  S, P = prefill_ids.shape[:2]
  T = decode_ids.shape[1]
  G = S // batch
  pparams = pb.resolve_params(policy, pparams)
  st = _Static(policy=policy, num_units=ss.num_ndp_units, batch=batch,
               act_bytes_per_token=model.hidden_size * M.dtype_bytes(model.activation_dtype),
               phase_tokens=(("prefill", P * batch), ("decode", batch)), relaxed=relaxed,
               record=record)
  ctx = _build_context(ss, sp, model, policy, pparams, profile_counts, P + T, batch,
                       relaxed)
  tab = build_tables(ss, sp, model, P, T, batch)
  pre = prefill_ids.reshape((G, batch) + prefill_ids.shape[1:])
  dec = decode_ids.reshape((G, batch) + decode_ids.shape[1:])
  counts = prefill_counts(pre, ctx.num_layers, ctx.num_experts)
  out = jax.vmap(lambda p, d, c: _simulate_group(st, ctx, pparams, tab, p, d, c))(
      pre, dec, counts)
  fixed = costs.gpu_fixed_bytes(model, P + T, batch) + sp.gpu_reserved_bytes
  res = SimResult.from_raw(out, expert_bytes=float(M.expert_bytes(model)),
                           gpu_fixed_bytes=fixed, batch=batch,
                           gpu_capacity_bytes=gpu_memory_bytes(sp))
  return (res, out["record"]) if record else res


def gpu_memory_bytes(sp):
  """GPU memory capacity, bytes (traced)."""
  from ndpsim.hw import gpu as gpu_mod  # pylint: disable=import-outside-toplevel
  return gpu_mod.memory_capacity_bytes(sp.gpu)


STATIC_ARGNAMES = ("ss", "model", "policy", "batch", "relaxed", "record")
_simulate_jit = jax.jit(simulate_core, static_argnames=STATIC_ARGNAMES)


def simulate(system, model, routing, policy, policy_params=None, *, batch_size: int = 1,
             profile_counts=None, check: bool = True, relaxed: bool = False,
             record: bool = False) -> SimResult:
  """Simulates prefill + decode of every sequence group.

  Args:
    system: ``(SystemSpec, SystemParams)`` (e.g. ``system.load_system(...)``).
    model: a ``MoeModelSpec``.
    routing: a ``routing.Routing`` with prefill_ids [S, P, L, k] and
      decode_ids [S, T, L, k]: integer expert ids in [0, E), k distinct ones per
      token and layer, S, P, T >= 1; S must be a multiple of ``batch_size``
      (:func:`validate`).
    policy: a registered policy name or a ``Policy``.
    policy_params: ``PolicyParams`` (defaults if None).
    batch_size: sequences decoded together (static).
    profile_counts: [L, E] offline activation counts for profiled policies
      (``monde``); None = uniform.
    check: validate sizes and capacities in Python first (turn off under an
      outer trace, where values are not concrete).
    relaxed: static; the differentiable relaxation (``ndpsim/relaxed.py``):
      soft maxima at ``policy_params.temperature_s``, continuous placements
      for policies that support them (``tuned``).  False (default) compiles
      and computes exactly the hard engine.
    record: static; also return every layer's timeline record (hard mode
      only; ``ndpsim/trace.py`` turns it into a trace).  False (default)
      compiles the same program as without it.
  Returns:
    SimResult with a leading axis of S / batch_size sequence groups; with
    ``record``, ``(SimResult, record)``: a dict of the per-layer values of
    ``_layer`` with leading axes [G, L] (``prefill``) and [G, T, L]
    (``decode``, beside ``step_start`` / ``step_over_s`` [G, T]), seconds.
  """
  from ndpsim import policies  # pylint: disable=import-outside-toplevel
  ss, sp = system[0], system[1]
  pol = policies.get(policy) if isinstance(policy, str) else policy
  pparams = pb.resolve_params(pol, policy_params)
  pre, dec = routing.prefill_ids, routing.decode_ids
  if check:
    _refuse_traced(sp, pparams, pre, dec, profile_counts)
    validate(ss, sp, model, pre, dec, batch_size)
    pb.check_params(pparams, pol)
  if record and relaxed:
    raise ConfigError("simulate: record=True needs the hard engine; give relaxed=False "
                      "(the relaxed lanes have no timeline)")
  return _simulate_jit(ss, sp, model, pol, pparams, jnp.asarray(pre, jnp.int32),
                       jnp.asarray(dec, jnp.int32), profile_counts, batch_size,
                       relaxed=relaxed, record=record)


def _refuse_traced(*trees) -> None:
  """``check=True`` needs concrete values; under an outer jax transformation
  (vmap, grad, jit) they are tracers: say what to do instead of failing
  later inside the checks."""
  for leaf in jax.tree_util.tree_leaves(trees):
    if isinstance(leaf, jax.core.Tracer):
      raise ConfigError(
          "engine.simulate was called under a jax transformation (vmap/grad/jit) with "
          "check=True, which needs concrete values; validate once outside "
          "(engine.validate and policies.check_params on concrete inputs), then call "
          "simulate(..., check=False) inside the transformation")


def validate(ss, sp, model, prefill_ids, decode_ids, batch_size: int) -> None:
  """Checks everything a user sets before tracing; one ConfigError each."""
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  for name, ids in (("prefill_ids", prefill_ids), ("decode_ids", decode_ids)):
    if ids.ndim != 4 or ids.shape[2] != L or ids.shape[3] != k:
      raise ConfigError(
          f"routing.{name} has shape {tuple(ids.shape)}; model {model.name!r} needs "
          f"[num_seqs, tokens, {L} MoE layers, top_k {k}]: generate the routing "
          "with this model's layers and top-k")
  if prefill_ids.shape[0] != decode_ids.shape[0]:
    raise ConfigError(f"routing: prefill_ids has {prefill_ids.shape[0]} sequences but "
                      f"decode_ids has {decode_ids.shape[0]}; give both the same sequences")
  if prefill_ids.shape[0] < 1:
    raise ConfigError("routing.prefill_ids has 0 sequences; give at least one sequence "
                      "(num_seqs >= 1)")
  if prefill_ids.shape[1] < 1:
    raise ConfigError("routing.prefill_ids has 0 prompt tokens; give at least one prompt "
                      "token per sequence (prompt_len >= 1)")
  if decode_ids.shape[1] < 1:
    raise ConfigError("routing.decode_ids has 0 decode steps; give at least one output "
                      "token per sequence (output_len >= 1): results are per decode step")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ConfigError(f"batch_size is {batch_size!r}; write a positive integer")
  if prefill_ids.shape[0] % batch_size:
    raise ConfigError(f"num_seqs {prefill_ids.shape[0]} is not a multiple of batch_size "
                      f"{batch_size}; use num_seqs = a multiple of {batch_size}")
  for name, ids in (("prefill_ids", prefill_ids), ("decode_ids", decode_ids)):
    _check_ids(f"routing.{name}", ids, model)
  from ndpsim.hw import ndp as ndp_mod  # pylint: disable=import-outside-toplevel
  ndp_cap = ss.num_ndp_units * ndp_mod.capacity_bytes(ss.ndp)
  need = M.expert_bytes_total(model)
  if need > ndp_cap:
    raise ConfigError(
        f"model {model.name!r} has {need / 1e9:.1f} GB of routed experts but "
        f"{ss.num_ndp_units} NDP units hold {ndp_cap / 1e9:.1f} GB; use more NDP units "
        "(--num_ndp_units) or a larger NDP part")
  from ndpsim.hw import gpu as gpu_mod  # pylint: disable=import-outside-toplevel
  P, T = prefill_ids.shape[1], decode_ids.shape[1]
  fixed = costs.gpu_fixed_bytes(model, P + T, batch_size) + float(sp.gpu_reserved_bytes)
  mem = float(gpu_mod.memory_capacity_bytes(sp.gpu))
  if fixed > mem:
    raise ConfigError(
        f"GPU memory {mem / 1e9:.1f} GB is smaller than the non-expert weights plus KV "
        f"cache plus reserve of {model.name!r} ({fixed / 1e9:.1f} GB); use a GPU with "
        "more memory, a smaller model dtype, or shorter sequences")


def _check_ids(field: str, ids, model) -> None:
  """Expert ids [S, N, L, k]: integer dtype, in [0, E), k distinct experts per
  top-k row (what a router emits); one ConfigError naming the first bad entry."""
  E, k = model.num_experts, model.top_k
  dt = getattr(ids, "dtype", None)
  if dt is None or not np.issubdtype(np.dtype(dt), np.integer):
    raise ConfigError(f"{field} has dtype {dt}; write integer expert ids "
                      "(e.g. ids.astype(np.int32))")
  a = np.asarray(ids)
  bad = (a < 0) | (a >= E)
  if bad.any():
    where = tuple(int(x) for x in np.argwhere(bad)[0])
    raise ConfigError(f"{field}{list(where)} is {int(a[where])}, outside [0, {E}) for "
                      f"{model.name!r}; write expert ids 0..{E - 1}")
  if k > 1:
    srt = np.sort(a, axis=-1)
    rep = np.any(srt[..., 1:] == srt[..., :-1], axis=-1)
    if rep.any():
      where = tuple(int(x) for x in np.argwhere(rep)[0])
      raise ConfigError(f"{field}{list(where)} repeats an expert in one top-k row "
                        f"({a[where].tolist()}); write {k} distinct experts per token "
                        "and layer")

"""One MoE layer of the engine, as four stages, and the state it carries.

:func:`simulate_layer` runs the stages in order (each one's ops traced in the order of
the single function it replaced, so the compiled program is the same):

1. queue advance (:func:`_advance_queue`): background loads drain in the idle
   link time up to the router's decision; residency as the policy sees it;
2. slot building and placement (:func:`_build_slots`, :func:`_place`): the
   slots' costs and the policy's placement, its requests applied
   (``residency.apply``);
3. lane times (:func:`_lane_times`): GPU memory enforced on the fetches
   (hard mode), then ``lanes.layer_times`` with the hard or soft operators;
4. statistics (:func:`_mark_used`, :func:`_accumulate`) and, with
   ``record``, the layer's timeline record (:func:`_record`).

Times in seconds; the carry's clock is relative (:func:`rebase`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ndpsim import lanes, relaxed
from ndpsim import residency as rs
from ndpsim.engine_tables import PhaseCosts
from ndpsim.policies import base as pb


class Acc(NamedTuple):
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


def zero_acc(n_units: int) -> Acc:
  """Accumulators at zero; unit_busy_s [n_units]."""
  z = jnp.zeros(())
  return Acc(z, jnp.zeros((n_units,)), z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)


class Carry(NamedTuple):
  """Per-sequence state carried through the scans.

  The clock is relative (:func:`rebase`): ``t`` and the link times are
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
  acc: Acc
  origin_hi: jax.Array    # absolute time of the clock's zero, s (high part)
  origin_lo: jax.Array    # (low part: origin = origin_hi + origin_lo)


@dataclasses.dataclass(frozen=True)
class Static:
  """Settings fixed for one compiled program (hashable, not traced)."""
  policy: pb.Policy
  num_units: int
  batch: int
  act_bytes_per_token: float
  phase_tokens: tuple
  relaxed: bool = False
  record: bool = False  # also return per-layer timeline records (ndpsim/trace.py)

  def tokens(self, phase: str) -> int:
    """Tokens a layer of the phase processes (prefill: P * batch; decode: batch)."""
    return dict(self.phase_tokens)[phase]


def _two_sum(a, b):
  """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum:
  no ordering of |a|, |b| needed)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def rebase(c: Carry) -> Carry:
  """Moves the clock's zero to ``c.t``: the origin grows by ``c.t`` (exactly,
  the rounding kept in ``origin_lo``), every relative time shrinks by it."""
  d = c.t
  hi, e = _two_sum(c.origin_hi, d)
  return c._replace(t=jnp.zeros_like(d), link_gpu_free=c.link_gpu_free - d,
                    link_ndp_free=c.link_ndp_free - d, bg_clock=c.bg_clock - d,
                    origin_hi=hi, origin_lo=c.origin_lo + e)


def absolute(c: Carry):
  """``c.t`` as an absolute time, s (one float32 rounding)."""
  return c.origin_hi + (c.origin_lo + c.t)


# ---------------------------------------------------------------------------
# Slots.

def _issue_order(phase: str, slots: pb.Slots):
  """Order in which a layer's demand loads are issued: descending routed
  tokens, ties by lower slot (the load balancer's order).  Decode slots are
  already in that order (None); prefill slots are in expert-id order.  The
  prefill's key is ``pb.prefill_tokens``, the expression ``tp_lb_prefetch``
  orders its prefetch by, so XLA sorts once for both."""
  if phase != "prefill":
    return None
  return pb.count_order(pb.prefill_tokens(slots)).order


def slots_decode(ids, num_experts: int, batch: int):
  """ids [B, k] -> slots of unique activated experts (ids, tokens, valid)."""
  flat = ids.reshape(-1).astype(jnp.int32)
  if batch == 1:
    return flat, jnp.ones(flat.shape, jnp.int32), jnp.ones(flat.shape, bool)
  counts = jnp.zeros((num_experts,), jnp.int32).at[flat].add(1)
  n = min(num_experts, flat.shape[0])
  tok, idx = jax.lax.top_k(counts, n)
  return idx.astype(jnp.int32), tok, tok > 0


def slots_prefill(counts):
  """counts [E] -> one slot per expert."""
  e = counts.shape[0]
  return jnp.arange(e, dtype=jnp.int32), counts, counts > 0


def _bound_end(pol: pb.Policy, ctx, slots, pc, tr):
  """Layer end of a lower-bound policy (``Policy.layer_bound``, ``oracle``):
  the router time plus its span, given the bare broadcast and the cheapest
  return + reduction (one partial sum)."""
  return tr + pol.layer_bound(ctx, slots._replace(bcast_s=pc.bcast_s),
                              pc.ret_s[1] + pc.red_s[1])


# ---------------------------------------------------------------------------
# One layer: its shared settings and inputs, then the four stages.

class _Env(NamedTuple):
  """What every layer of a phase shares."""
  st: Static
  ctx: pb.Context
  pparams: Any
  phase: str          # "prefill" | "decode" (static)
  pc: PhaseCosts


class _In(NamedTuple):
  """One layer's inputs.  ids / tokens (int32) / valid: [n] slots; attn_s,
  shared_s: attention + router and shared-expert times; tr: the router's
  decision, s after the carry's origin."""
  layer: Any
  ids: jax.Array
  tokens: jax.Array
  valid: jax.Array
  attn_s: Any
  shared_s: Any
  tr: Any


class _Queue(NamedTuple):
  """Stage 1: residency after the queue advance (``view``: what the policy
  reads), the slots' residency [n] and the queue's drain before / after."""
  state: rs.Residency
  view: rs.Residency
  resident: jax.Array
  drained0: jax.Array
  drained1: jax.Array


class _Plan(NamedTuple):
  """Stage 2: slots, experts held on the GPU and the staging room (expert
  slots), the broadcast's start, the placement and the loads' issue order."""
  slots: pb.Slots
  held: Any
  room: Any
  bcast_start: Any
  place: pb.Placement
  order: Any


class _Lanes(NamedTuple):
  """Stage 3: GPU shares and fetched flags [n], the lanes and the layer end."""
  gfrac: jax.Array
  phi: jax.Array
  lt: lanes.LayerTimes
  end: Any


def simulate_layer(st: Static, ctx: pb.Context, pparams, phase: str, pc: PhaseCosts,
                   carry: Carry, layer_i, ids, tokens, valid, attn_s, shared_s):
  """Simulates one MoE layer; returns (the new carry, the layer's timeline
  record if ``st.record`` else None).  tokens: int32 [n]."""
  env = _Env(st, ctx, pparams, phase, pc)
  x = _In(layer_i, ids, tokens, valid, attn_s, shared_s, carry.t + attn_s)
  q = _advance_queue(env, carry, x)
  plan, state, own = _place(env, carry, x, q)
  ln = _lane_times(env, carry, x, plan)
  state = _mark_used(rs.drain(state, ln.lt.idle_s), phase, layer_i, ids,
                     valid & (ln.gfrac > 0) & q.resident)
  acc = _accumulate(st, ctx, phase, carry.acc, plan.slots, ln.gfrac, ln.phi, ln.lt,
                    plan.held, attn_s, shared_s)
  rec = None
  if st.record:  # static: the default program is unchanged
    rec = _record(env, carry, x, q, plan, ln, state.drained_s)
  lt = ln.lt
  return rebase(carry._replace(
      t=ln.end, link_gpu_free=lt.link_gpu_free, link_ndp_free=lt.link_ndp_free,
      bg_clock=lt.bg_clock, res=state, own=own, acc=acc)), rec


def _advance_queue(env: _Env, carry: Carry, x: _In) -> _Queue:
  """Stage 1: background loads use the idle link up to the router's decision."""
  state = carry.res
  idle = x.tr - jnp.maximum(carry.bg_clock, carry.link_gpu_free)
  drained0 = state.drained_s
  state = rs.drain(state, idle)
  drained1 = state.drained_s
  view = rs.arrivals(state, x.layer)  # what the policy reads
  if env.phase == "prefill" or env.st.relaxed:
    # Prefill slots are the experts in id order (slots_prefill): row reads.
    state = view
    resident = (state.resident[x.layer] if env.phase == "prefill"
                else state.resident[x.layer, x.ids]) & x.valid
  else:
    # Decode, hard: lazy residency (rs.resident_at); the arrivals row update
    # exists only if the policy reads ``view`` (XLA drops it otherwise).
    resident = rs.resident_at(state, x.layer, x.ids) & x.valid
  return _Queue(state, view, resident, drained0, drained1)


def _build_slots(env: _Env, carry: Carry, x: _In, q: _Queue):
  """Stage 2a: the slots' costs as the policy sees them; returns (slots,
  held, room, bcast_start)."""
  ctx, pc, state, tokens = env.ctx, env.pc, q.state, x.tokens
  held = _held(ctx, state, env.phase)
  room = jnp.maximum(ctx.expert_slots - held, 0.0)
  soft = env.st.relaxed and state.soft is not None
  bcast_start = jnp.maximum(x.tr, carry.link_ndp_free)
  n_units = env.st.num_units
  slots = pb.Slots(ids=x.ids, tokens=tokens.astype(jnp.float32), valid=x.valid,
                   resident=q.resident, gpu_s=pc.gpu_s[tokens],
                   fetch_s=jnp.broadcast_to(ctx.fetch_s, tokens.shape),
                   ndp_tp_s=pc.tp_s[tokens], ndp_ep_s=pc.ep_s[tokens],
                   gpu_pre_s=x.shared_s,
                   link_delay_s=jnp.maximum(carry.link_gpu_free - x.tr, 0.0),
                   bcast_s=bcast_start - x.tr + pc.bcast_s,
                   post_s=pc.ret_s[n_units] + pc.red_s[n_units], stage_room=room)
  if soft:
    slots = slots._replace(res_w=jnp.where(x.valid, relaxed.slot_residency(
        state.soft, x.layer, x.ids, state.drained_s, env.pparams.temperature_s), 0.0))
  return slots, held, room, bcast_start


def _place(env: _Env, carry: Carry, x: _In, q: _Queue):
  """Stage 2b: the policy's placement, its requests applied; returns (plan,
  residency, the policy's new own state)."""
  slots, held, room, bcast_start = _build_slots(env, carry, x, q)
  place, own = env.st.policy.place(env.ctx, q.view, carry.own, x.layer, slots,
                                   env.pparams, env.phase)
  state = rs.apply(env.ctx, q.state, x.layer, place.requests)
  order = _issue_order(env.phase, slots)
  return _Plan(slots, held, room, bcast_start, place, order), state, own


def _lane_times(env: _Env, carry: Carry, x: _In, plan: _Plan) -> _Lanes:
  """Stage 3: GPU shares and fetches (hard: GPU memory enforced), the lanes
  (hard or soft operators) and the layer end (a bound policy's own)."""
  st, pol, valid, place = env.st, env.st.policy, x.valid, plan.place
  if st.relaxed:
    ops = lanes.soft_ops(env.pparams.temperature_s)
    gfrac = jnp.where(valid, place.gpu_frac, 0.0)
    phi = jnp.where(valid, 1.0 - plan.slots.res_w if plan.slots.res_w is not None
                    else place.fetch.astype(jnp.float32), 0.0)
  else:
    ops = lanes.hard_ops()
    gfrac, phi = _staging_cut(place, valid, plan.order, plan.room)
  loads = lanes.ndp_unit_loads(pol.ndp_mode, st.num_units, plan.slots, gfrac,
                               place.ep_unit)
  lt = lanes.layer_times(ops, pol.ndp_mode, st.num_units, plan.slots, gfrac, phi, loads,
                         plan.order, env.pc, x.tr, plan.bcast_start, x.shared_s,
                         carry.link_gpu_free, carry.link_ndp_free, env.ctx.fetch_s)
  end = (lt.end if pol.layer_bound is None
         else _bound_end(pol, env.ctx, plan.slots, env.pc, x.tr))
  return _Lanes(gfrac, phi, lt, end)


def _record(env: _Env, carry: Carry, x: _In, q: _Queue, plan: _Plan, ln: _Lanes,
            drained_s) -> dict:
  """The layer's timeline record (``ndpsim/trace.py``): absolute times, s;
  slot values in issue order.  drained_s: the queue's drain at the layer end."""
  order, valid, ids, lt, gfrac, phi = plan.order, x.valid, x.ids, ln.lt, ln.gfrac, ln.phi
  o = (lambda v: v) if order is None else (lambda v: v[order])
  ndp_frac = jnp.where(valid, 1.0 - gfrac, 0.0)
  req = plan.place.requests
  kept = (jnp.zeros(ids.shape, bool) if req is None or req.keep is None
          else jnp.asarray(req.keep, bool)[ids])  # stays resident after this layer
  # Times of this layer are relative to the carry's origin (the relative
  # clock, :func:`rebase`); the record holds absolute times.
  ab = lambda v: carry.origin_hi + (carry.origin_lo + v)  # noqa: E731
  slots, ndp_mode = plan.slots, env.st.policy.ndp_mode
  return dict(
      t0=ab(carry.t), attn_s=x.attn_s, tr=ab(x.tr), shared_s=x.shared_s, end=ab(ln.end),
      lanes_end=ab(lt.end),
      bg_pre_start=ab(jnp.maximum(carry.bg_clock, carry.link_gpu_free)),
      bg_pre_s=q.drained1 - q.drained0,
      bg_post_start=ab(jnp.maximum(lt.fetch_end, carry.link_gpu_free)),
      bg_post_s=drained_s - q.drained1,
      fetch_start=ab(jnp.maximum(x.tr, carry.link_gpu_free)),
      slot_ids=o(ids), slot_tokens=o(x.tokens), slot_valid=o(valid),
      slot_resident=o(q.resident), slot_fetched=o(phi), slot_gfrac=o(gfrac),
      slot_kept=o(kept), slot_kept_as_prefetch=o(kept & bool(req is not None
                                                        and req.keep_is_prefetch)),
      slot_gpu_s=o(slots.gpu_s * gfrac),
      slot_fetch_s=o(jnp.where(phi, env.ctx.fetch_s * gfrac, 0.0)),
      slot_ndp_s=o(ndp_frac * (slots.ndp_tp_s if ndp_mode == "tp" else slots.ndp_ep_s)),
      slot_unit=o(jnp.broadcast_to(plan.place.ep_unit, ids.shape).astype(jnp.int32)),
      **{k: getattr(lt, k) for k in (
          "fetch_busy", "w", "loads", "slowest", "bcast", "ret", "red", "n_partials")},
      **{k: ab(getattr(lt, k)) for k in ("gpu_end", "fetch_end", "ndp_end", "ret_end")},
      bcast_start=ab(plan.bcast_start))


# ---------------------------------------------------------------------------
# Stage helpers and statistics.

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


def _mark_used(state: rs.Residency, phase: str, layer, ids, on_gpu_resident):
  """A prefetched expert that served an activation on the GPU is marked used
  (``used`` / ``prefetched`` are bit rows, ``residency.pack_bits``)."""
  if phase == "prefill":  # prefill slots are the experts in id order
    row = state.used[layer] | (rs.pack_bits(on_gpu_resident) & state.prefetched[layer])
    return dataclasses.replace(state, used=state.used.at[layer].set(row))
  # Flags only turn on: the slots' bits are tested and set in the layer's
  # bit row ([k, W] elementwise; no gather, no one-hot over E).
  pre = state.prefetched[layer]
  now = on_gpu_resident & rs.bits_at(pre, ids)
  hit = rs.bits_of(ids, now, pre.shape[-1])
  return dataclasses.replace(state, used=state.used.at[layer].set(state.used[layer] | hit))


def _accumulate(st: Static, ctx, phase: str, acc: Acc, slots: pb.Slots, gfrac, phi,
                lt: lanes.LayerTimes, held, attn_s, shared_s) -> Acc:
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
  return Acc(
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


def _peaks(acc: Acc, phase: str, held, n_fetch) -> dict:
  """GPU-memory high-water marks in expert slots (see :class:`Acc`)."""
  if phase == "prefill":
    return dict(peak_resident=acc.peak_resident, peak_staging=acc.peak_staging,
                peak_prefill=jnp.maximum(acc.peak_prefill, held + n_fetch))
  return dict(peak_resident=acc.peak_resident, peak_prefill=acc.peak_prefill,
              peak_staging=jnp.maximum(acc.peak_staging, n_fetch))


def with_peak(c: Carry) -> Carry:
  n = rs.held(c.res)
  return c._replace(acc=c.acc._replace(peak_resident=jnp.maximum(c.acc.peak_resident, n)))

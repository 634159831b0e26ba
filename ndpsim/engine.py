"""The simulation engine: per-layer timelines, scanned over layers and steps.

``simulate(system, model, routing, policy, ...)`` is pure: jit-compiled
(static: system spec, model, policy, shapes), vmapped over sequence groups,
and usable under an outer ``jax.vmap`` over hardware or policy params.

A layer is four stages (``ndpsim/engine_layer.py``): the queue advance
(``residency.drain`` / ``arrivals``), the slots and the policy's placement
(its requests applied by ``residency.apply``), the lanes
(``lanes.layer_times``: written once, with the hard operator set here and the
soft one in relaxed mode) and the statistics.  The cost tables are built once
per call (``ndpsim/engine_tables.py``); the input checks run in Python first
(``ndpsim/engine_validate.py``).  This module scans the layers and steps and
vmaps over sequence groups, a chunk of :data:`CHUNK_GROUPS` groups at a time
(a scan over chunks: the [L, E] residency state of one chunk is live at
once).  Per chunk: the prefill (its copy-queue merges kept lazily,
``ndpsim/lazy_queue.py``), the queue's positions settled, then the decode.

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
  order, so the prefill issues its loads in ``engine_layer._issue_order``.
* Prefill runs each layer once with all prompt tokens (GEMMs); decode runs
  ``output_len`` steps of one token per sequence of the batch.

Modelled: everything above.  Not modelled: GPU kernel overlap between
attention and experts of different layers, speculative (pre-router) loads,
host CPU time, DRAM contention between NDP compute and host-side DMA.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ndpsim import costs, lazy_queue
from ndpsim import residency as rs
from ndpsim.base import ConfigError
from ndpsim.engine_layer import (Carry, Static, absolute, simulate_layer,
                                 slots_decode, slots_prefill, with_peak, zero_acc)
from ndpsim.engine_tables import (PhaseCosts, Tables, build_context, build_tables,
                                  gpu_memory_bytes, phase_costs, prefill_counts)
from ndpsim.engine_validate import refuse_traced, validate
from ndpsim.policies import base as pb
from ndpsim.results import SimResult
from ndpsim.workload import models as M

# Re-exported: callers use engine.PhaseCosts, engine.build_tables,
# engine.prefill_counts, engine.validate.
__all__ = ["PhaseCosts", "STATIC_ARGNAMES", "Tables", "build_tables", "gpu_memory_bytes",
           "phase_costs", "prefill_counts", "simulate", "simulate_core", "validate"]

# The cost tables jitted on their own (ss, model, P, T, B static): JAX keeps an
# inner jit's trace, so every policy's engine trace with the same system spec,
# model and shape reuses it instead of re-tracing every cost formula (about a
# third of one simulate_core trace); XLA inlines it, so the program is the same.
_build_tables_jit = jax.jit(build_tables, static_argnums=(0, 2, 3, 4, 5))


def _initial_carry(st: Static, ctx, pparams, tab: Tables) -> Carry:
  """The state before the prefill: the policy's initial residency and own
  state, the clock at the end of the leading dense layers."""
  L, E = ctx.num_layers, ctx.num_experts
  start = st.policy.init(ctx, pparams)
  res = rs.empty(L, E, start.capacity, start.resident,
                 soft=st.relaxed and st.policy.soft_residency, lazy=True)
  z = jnp.zeros(())
  return Carry(t=tab.over_prefill_s, link_gpu_free=z, link_ndp_free=z, bg_clock=z,
               res=res, own=start.own, acc=zero_acc(st.num_units), origin_hi=z,
               origin_lo=z)


# Per-sequence inputs are indexed inside the scans, not scanned over: under
# the vmap over groups a scanned input would be transposed (copied) first.

def _prefill_scan(st: Static, ctx, pparams, tab: Tables, carry: Carry, counts):
  """Prefill: one pass over the layers with all prompt tokens of the batch.
  counts: [L, E] int32 prompt activations.  Returns (carry, records)."""
  def prefill_body(c, xs):
    layer, a, sh = xs
    ids, tok, val = slots_prefill(counts[layer])
    return simulate_layer(st, ctx, pparams, "prefill", tab.prefill, c, layer, ids, tok,
                          val, a, sh)

  return jax.lax.scan(prefill_body, carry, (
      jnp.arange(ctx.num_layers), tab.attn_prefill_s, tab.shared_prefill_s))


def _decode_scan(st: Static, ctx, pparams, tab: Tables, carry: Carry, decode_ids):
  """Decode: steps x layers.  decode_ids [B, T, L, k].  Returns (carry,
  step lengths [T] s, or with ``st.record`` (step lengths, step records))."""
  L, E = ctx.num_layers, ctx.num_experts

  def step_body(c, xs):
    step, attn_t, over_t = xs
    ids_t = decode_ids[:, step].astype(jnp.int32)  # [B, L, k]; one widening per step
    start_hi, start_lo = c.origin_hi, c.origin_lo  # c.t = 0: layers rebase
    c = c._replace(t=c.t + over_t)

    def layer_body(c2, xs2):
      layer, a, sh = xs2
      sids, tok, val = slots_decode(ids_t[:, layer], E, st.batch)
      return simulate_layer(st, ctx, pparams, "decode", tab.decode, c2, layer, sids, tok,
                            val, a, sh)

    c, recs = jax.lax.scan(layer_body, c, (jnp.arange(L), attn_t, tab.shared_decode_s))
    # Step length: exact difference of the high parts (error <= 1/2 ulp of
    # the step), plus the low parts'.
    step_len = (c.origin_hi - start_hi) + (c.origin_lo - start_lo + c.t)
    if st.record:
      return with_peak(c), (step_len, dict(step_start=start_hi + start_lo,
                                           step_over_s=over_t, layers=recs))
    return with_peak(c), step_len

  return jax.lax.scan(step_body, carry, (jnp.arange(decode_ids.shape[1]),
                                         tab.attn_decode_s, tab.over_decode_s))


def _prefill_group(st: Static, ctx, pparams, tab: Tables, counts):
  """The prefill of one sequence group; counts: [L, E] int32 prompt
  activations (:func:`prefill_counts`).  Returns (carry, ttft_s, prefill
  accumulators, prefill records or None)."""
  carry = _initial_carry(st, ctx, pparams, tab)
  carry, rec_prefill = _prefill_scan(st, ctx, pparams, tab, carry, counts)
  carry = with_peak(carry)
  return carry, absolute(carry), carry.acc, rec_prefill


def _settle(ctx, carry: Carry) -> Carry:
  """After the prefill, a batch of carries: the lazily merged loads get their
  queue positions (``residency.settle``), only if some group merged any (a
  real branch when not under an outer vmap)."""
  res = carry.res
  if res.lazy is None:
    return carry
  settled = jax.vmap(lambda r: rs.settle(ctx, r), axis_name=lazy_queue.GROUP_AXIS)
  res = jax.lax.cond(jnp.any(res.lazy.row_n > 0), settled,
                     lambda r: dataclasses.replace(r, lazy=None), res)
  return carry._replace(res=res)


def _decode_group(st: Static, ctx, pparams, tab: Tables, carry: Carry, decode_ids,
                  ttft, acc_prefill, rec_prefill):
  """The decode of one group after its prefill; decode_ids [B, T, L, k].
  Returns the group's outputs (dict)."""
  carry, step_s = _decode_scan(st, ctx, pparams, tab, carry, decode_ids)
  rec = None
  if st.record:
    step_s, rec_decode = step_s
    rec = dict(prefill=rec_prefill, decode=rec_decode)
  st_ = carry.res
  prefetched_bytes = rs.count_bits(st_.prefetched) * ctx.expert_bytes
  used_bytes = rs.count_bits(st_.used) * ctx.expert_bytes
  out = dict(ttft_s=ttft, step_s=step_s, acc=carry.acc, acc_prefill=acc_prefill,
             prefetched_bytes=prefetched_bytes, prefetch_used_bytes=used_bytes)
  return out if rec is None else dict(out, record=rec)


def _simulate_chunk(st: Static, ctx, pparams, tab: Tables, decode_ids, counts):
  """Prefill, settle and decode of a chunk of groups: decode_ids [C, B, T, L,
  k], counts [C, L, E].  Returns the outputs with a leading [C] axis."""
  carry, ttft, acc_p, rec_p = jax.vmap(
      lambda c: _prefill_group(st, ctx, pparams, tab, c), axis_name=lazy_queue.GROUP_AXIS)(
          counts)
  carry = _settle(ctx, carry)
  return jax.vmap(lambda c, d, t, a, r: _decode_group(st, ctx, pparams, tab, c, d, t, a, r))(
      carry, decode_ids, ttft, acc_p, rec_p)


# Groups simulated at once: the [L, E] state of this many groups is live
# together (memory), a chunk's loop steps run once for all of them (speed).
CHUNK_GROUPS = 2048


def _map_chunks(fn, *xs):
  """``fn`` over equal chunks of at most :data:`CHUNK_GROUPS` groups (the
  leading axis of every array in ``xs``), in a scan.  When the chunks tile the
  groups exactly they are the scan's ``xs`` (a free reshape); otherwise the
  last chunk is the last ``c`` groups (it may overlap the one before; the
  overlap's outputs are taken once), so no group is padded."""
  g = xs[0].shape[0]
  if g <= CHUNK_GROUPS:
    return fn(*xs)
  n = -(-g // CHUNK_GROUPS)
  c = -(-g // n)  # n chunks of equal size: at most n - 1 groups run twice
  if n * c == g:
    # scan xs, not a closed-over array sliced in the loop: XLA copies an entry
    # parameter that a while loop carries (the decode ids: ~1 GB at 10,000
    # sequences of Qwen3 x 64 tokens)
    _, out = jax.lax.scan(lambda _, x: (None, fn(*x)), None,
                          tuple(x.reshape((n, c) + x.shape[1:]) for x in xs))
    return jax.tree_util.tree_map(lambda y: y.reshape((-1,) + y.shape[2:]), out)

  def body(_, i):
    start = jnp.minimum(i * c, g - c)
    return None, fn(*(jax.lax.dynamic_slice_in_dim(x, start, c) for x in xs))

  _, out = jax.lax.scan(body, None, jnp.arange(n))
  last = g - (n - 1) * c  # groups of the last chunk not in the one before
  return jax.tree_util.tree_map(
      lambda y: jnp.concatenate([y[:-1].reshape((-1,) + y.shape[2:]), y[-1, c - last:]]),
      out)


def ids_dtype(num_experts: int):
  """The narrowest signed integer dtype holding expert ids 0..num_experts-1."""
  if num_experts <= 128:
    return jnp.int8
  return jnp.int16 if num_experts <= 32768 else jnp.int32


def simulate_core(ss, sp, model, policy, pparams, prefill_ids, decode_ids,
                  profile_counts, batch, relaxed=False, record=False):
  """The traced body of :func:`simulate` (no checks): integer ids (any
  integer dtype; narrowed to :func:`ids_dtype` inside) [S, P, L, k] and
  [S, T, L, k]; returns a SimResult over S / batch groups (with
  ``record``, also the records).  Callers jit it with STATIC_ARGNAMES."""
  S, P = prefill_ids.shape[:2]
  T = decode_ids.shape[1]
  G = S // batch
  pparams = pb.resolve_params(policy, pparams)
  st = Static(policy=policy, num_units=ss.num_ndp_units, batch=batch,
               act_bytes_per_token=model.hidden_size * M.dtype_bytes(model.activation_dtype),
               phase_tokens=(("prefill", P * batch), ("decode", batch)), relaxed=relaxed,
               record=record)
  ctx = build_context(ss, sp, model, policy, pparams, profile_counts, P + T, batch,
                       relaxed)
  tab = _build_tables_jit(ss, sp, model, P, T, batch)
  # Expert ids in the narrowest signed type that holds 0..E-1 (negative ids
  # stay negative): the loops carry these, not the int32 arguments, which XLA
  # would copy whole into a while loop (1.2 GB at 10,000 Qwen3 sequences x 80
  # tokens).  Every use widens a row to int32 first.
  id_dtype = ids_dtype(model.num_experts)
  pre = prefill_ids.astype(id_dtype).reshape((G, batch) + prefill_ids.shape[1:])
  dec = decode_ids.astype(id_dtype).reshape((G, batch) + decode_ids.shape[1:])
  # prompt activations per chunk: their [C, B, P, L, k] scatter indices are
  # temporaries of one chunk, not of all groups
  out = _map_chunks(lambda d, p: _simulate_chunk(
      st, ctx, pparams, tab, d, prefill_counts(p, ctx.num_layers, ctx.num_experts)), dec, pre)
  fixed = costs.gpu_fixed_bytes(model, P + T, batch) + sp.gpu_reserved_bytes
  res = SimResult.from_raw(out, expert_bytes=float(M.expert_bytes(model)),
                           gpu_fixed_bytes=fixed, batch=batch,
                           gpu_capacity_bytes=gpu_memory_bytes(sp))
  return (res, out["record"]) if record else res


STATIC_ARGNAMES = ("ss", "model", "policy", "batch", "relaxed", "record")

# XLA options of the engine's program.  XLA:CPU's YNN library fusions run the
# engine's reductions over short rows ([sequences, 8 slots]) several times
# slower than XLA's own loop fusions (one [2000, 9] prefix-span fusion:
# 223 us against 12 us of elementwise work); without them the decode's XLA op
# time falls by about a quarter and the prefill's does not change
# (docs/performance.md).  The option is experimental, so it is used only
# where the installed XLA accepts it (:func:`compiler_options`).
ENGINE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_options_checked: list = []


def compiler_options() -> dict | None:
  """:data:`ENGINE_COMPILER_OPTIONS` if this jax / XLA accepts them (checked
  once, by compiling a scalar function), else None (XLA's defaults)."""
  if not _options_checked:
    try:
      jax.jit(lambda x: x + 1, compiler_options=ENGINE_COMPILER_OPTIONS).lower(
          jnp.zeros((), jnp.float32)).compile()
      _options_checked.append(dict(ENGINE_COMPILER_OPTIONS))
    except Exception:  # pylint: disable=broad-except  # an older jax or XLA
      _options_checked.append(None)
  return _options_checked[0]


class _EngineJit:
  """``jax.jit(simulate_core)``; called outside any trace, with
  :func:`compiler_options` (JAX takes compiler options on top-level jits
  only, so under an outer jit, vmap or grad the plain one runs).  Built on
  first use: checking the options needs a JAX backend, and importing ndpsim
  must not start one (``jax.distributed.initialize`` has to come first)."""

  def __init__(self):
    self._plain = jax.jit(simulate_core, static_argnames=STATIC_ARGNAMES)
    self._tuned = None

  def get(self, *args, **kwargs):
    """The jit for these arguments (the tuned one unless any is traced)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
      return self._plain
    if self._tuned is None:
      opts = compiler_options()
      self._tuned = (self._plain if opts is None else jax.jit(
          simulate_core, static_argnames=STATIC_ARGNAMES, compiler_options=opts))
    return self._tuned

  def __call__(self, *args, **kwargs):
    return self.get(*args, **kwargs)(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self.get(*args, **kwargs).lower(*args, **kwargs)

  def trace(self, *args, **kwargs):
    return self.get(*args, **kwargs).trace(*args, **kwargs)


_simulate_jit = _EngineJit()


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
    ``engine_layer.simulate_layer`` with leading axes [G, L] (``prefill``)
    and [G, T, L] (``decode``, beside ``step_start`` / ``step_over_s``
    [G, T]), seconds.
  """
  from ndpsim import policies  # pylint: disable=import-outside-toplevel
  ss, sp = system[0], system[1]
  pol = policies.get(policy) if isinstance(policy, str) else policy
  pparams = pb.resolve_params(pol, policy_params)
  pre, dec = routing.prefill_ids, routing.decode_ids
  if check:
    refuse_traced(sp, pparams, pre, dec, profile_counts)
    validate(ss, sp, model, pre, dec, batch_size)
    pb.check_params(pparams, pol)
  if record and relaxed:
    raise ConfigError("simulate: record=True needs the hard engine; give relaxed=False "
                      "(the relaxed lanes have no timeline)")
  return _simulate_jit(ss, sp, model, pol, pparams, _integer_ids(pre), _integer_ids(dec),
                       profile_counts, batch_size, relaxed=relaxed, record=record)


def _integer_ids(ids) -> jax.Array:
  """Routing ids as a JAX array in their own integer dtype (narrow ids stay
  narrow: an int32 copy of uint8 ids is 4x their memory, 1.2 GB at 10,000
  Qwen3 sequences x 80 tokens); anything else as int32."""
  x = jnp.asarray(ids)
  return x if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(jnp.int32)

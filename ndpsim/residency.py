"""GPU residency and the background copy queue: owned by the engine.

Policies never write these arrays.  They read a :class:`Residency` (what is in
GPU memory, what is queued, how far the queue has drained) and *request*
changes through :class:`Requests` in their placement; the engine applies the
requests with :func:`apply` right after ``place`` and moves queued loads into
GPU memory as the link drains them (:func:`drain`, :func:`arrivals`).

Arrays are [L, E] over MoE layers x routed experts.  Queue positions are link
seconds in the background queue: a load with ``queue_end_s = q`` is resident
once ``drained_s >= q``.

Requests of one (layer, step), applied in this order:

1. ``evict`` [E] bool: drop from GPU memory (resident or queued).
2. ``keep`` [E] bool: resident from now on -- experts whose weights this layer
   brings to the GPU anyway (on demand) and the policy keeps afterwards.
   ``keep_is_prefetch`` (static) counts them as prefetched in the statistics
   (``tp_lb_prefetch``: budget experts the prefill balancer loaded); an LRU
   cache that keeps what it fetched does not.
3. ``load`` [E] bool: queue a background load, each of ``ctx.fetch_s`` link
   seconds, skipping resident or queued experts.  ``merge`` (static) False:
   appended to the queue in descending ``load_key`` (ties: lower id); True:
   merged into the loads not started yet by descending key (ties: queued
   first, then lower id) -- the keys of earlier requests are remembered in
   ``queue_key``.  ``load_order`` may give ``argsort(-load_key, stable)``;
   ``at_most_one`` (static) says ``load`` has at most one entry.

Relaxed mode with soft residency (``Residency.soft`` set; ``tuned``): ``keep``
and ``load`` are weights in [0, 1] (fractions of an expert's columns) and
``merge`` must be True; see :func:`_apply_soft`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ndpsim import base, lazy_queue, ranking

INF = jnp.inf


@base.params_dataclass
class SoftResidency:
  """Continuous residency (relaxed mode), [L, E] arrays in [0, 1].

  An expert's weight is the fraction of its columns in GPU memory: ``keep``
  is resident from the start (loaded during prefill and kept), ``queued`` is
  loaded through the background queue and arrives progressively as the
  queue drains up to ``end_s`` (its load occupies link seconds
  ``[end_s - queued x fetch_s, end_s]``).  Resident weight =
  ``keep + queued x arrived fraction``.
  """
  keep: jax.Array
  queued: jax.Array
  end_s: jax.Array


@base.params_dataclass
class Residency:
  """Per-sequence GPU residency and background queue (engine-owned).

  resident: [L, E] bool, expert in GPU memory now.
  queue_end_s: [L, E] background-queue position (link seconds) at which a
    queued load completes; +inf when not queued (0 for kept experts).
  queued_s: total link seconds ever queued in the background.
  drained_s: background link seconds done so far.
  queue_key: [L, E] order key of each merged load (``Requests.merge``).
  prefetched: [L, W] uint32 bit rows (:func:`pack_bits`, W = ceil(E / 32)):
    loaded by a background transfer (or kept as one).
  used: [L, W] uint32 bit rows: a prefetched expert served an activation on
    the GPU.  (Statistics only, so bit rows: a decode step tests and sets its
    k slots with [k, W] elementwise work, not a gather and a one-hot over E.)
  capacity: resident experts allowed per layer (float, traced; from the
    policy's :class:`~ndpsim.policies.base.Start`).
  held_n: experts resident or queued (all layers), float: the count of
    ``resident | isfinite(queue_end_s)``, kept up to date by :func:`apply`
    (no [L, E] reduction per layer or step).
  soft: None (hard residency) or a :class:`SoftResidency` (relaxed mode,
    policies with ``soft_residency``).
  lazy: None, or during the prefill a :class:`~ndpsim.lazy_queue.LazyQueue`:
    merged loads are kept per row and get their ``queue_end_s`` (until then
    ``lazy_queue.PENDING_S``) when the engine settles the queue after the
    prefill (``ndpsim/lazy_queue.py``).
  """
  resident: jax.Array
  queue_end_s: jax.Array
  queued_s: jax.Array
  drained_s: jax.Array
  queue_key: jax.Array
  prefetched: jax.Array
  used: jax.Array
  capacity: jax.Array
  held_n: jax.Array
  soft: Any = None
  lazy: Any = None


class Requests(NamedTuple):
  """Residency changes a policy asks for in one (layer, step); see the module
  docstring.  None fields request nothing; the bools are static."""
  evict: Any = None
  keep: Any = None
  load: Any = None
  load_key: Any = None
  load_order: Any = None
  merge: bool = False
  at_most_one: bool = False
  keep_is_prefetch: bool = False


def empty(num_layers: int, num_experts: int, capacity, resident=None,
          soft: bool = False, lazy: bool = False) -> Residency:
  """Nothing queued; ``resident`` [L, E] bool (default none) loaded before
  the run (no link time charged).  ``lazy``: merges are kept lazily until
  :func:`settle` (``ndpsim/lazy_queue.py``; not with ``soft``)."""
  z = jnp.zeros((num_layers, num_experts))
  zb = jnp.zeros((num_layers, bit_words(num_experts)), jnp.uint32)
  res = z.astype(bool) if resident is None else jnp.asarray(resident, bool)
  return Residency(resident=res, queue_end_s=jnp.full_like(z, INF),
                   queued_s=jnp.zeros(()), drained_s=jnp.zeros(()), queue_key=z,
                   prefetched=zb, used=zb,
                   capacity=jnp.asarray(capacity, jnp.float32),
                   held_n=jnp.sum(res).astype(jnp.float32),
                   soft=SoftResidency(keep=z, queued=z, end_s=z) if soft else None,
                   lazy=lazy_queue.empty(num_layers, num_experts) if lazy and not soft
                   else None)


# ---------------------------------------------------------------------------
# Bit rows (``prefetched``, ``used``): expert e of a row is bit e % 32 of
# word e // 32.

def bit_words(num_experts: int) -> int:
  """uint32 words of a bit row over ``num_experts`` experts."""
  return -(-num_experts // 32)


def pack_bits(row) -> jax.Array:
  """[E] bool -> [W] uint32 bit row."""
  e = row.shape[-1]
  w = bit_words(e)
  cols = jnp.pad(row, (0, 32 * w - e)).reshape(w, 32).astype(jnp.uint32)
  return jnp.sum(cols << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def unpack_bits(words, num_experts: int) -> jax.Array:
  """[..., W] uint32 bit rows -> [..., E] bool."""
  bits = (words[..., :, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return bits.reshape(words.shape[:-1] + (-1,))[..., :num_experts].astype(bool)


def bits_at(words, ids) -> jax.Array:
  """[n] bool: bits ``ids`` [n] (int32, in [0, 32 W)) of the bit row ``words``
  [W] (the word chosen by comparison: no gather)."""
  word = jnp.sum(jnp.where((ids >> 5)[:, None] == jnp.arange(words.shape[-1]),
                           words, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)
  return ((word >> (ids & 31).astype(jnp.uint32)) & 1).astype(bool)


def bits_of(ids, on, num_words: int) -> jax.Array:
  """[W] uint32: the bit row with bits ``ids`` [n] set where ``on`` [n]."""
  bit = jnp.left_shift(jnp.uint32(1), (ids & 31).astype(jnp.uint32))
  hit = ((ids >> 5)[:, None] == jnp.arange(num_words)) & on[:, None]
  return jnp.bitwise_or.reduce(jnp.where(hit, bit[:, None], jnp.uint32(0)), axis=0)


def or_bits(bits, layer, row) -> jax.Array:
  """[L, W] bit rows with ``row`` [E] bool ORed into row ``layer``."""
  return bits.at[layer].set(bits[layer] | pack_bits(row))


def count_bits(bits) -> jax.Array:
  """Bits set in ``bits`` (int32)."""
  return jnp.sum(jax.lax.population_count(bits).astype(jnp.int32))


def drain(res: Residency, idle_s) -> Residency:
  """Background loads progress by ``idle_s`` link seconds (queue permitting)."""
  room = jnp.maximum(res.queued_s - res.drained_s, 0.0)
  drained = res.drained_s + jnp.minimum(jnp.maximum(idle_s, 0.0), room)
  return dataclasses.replace(res, drained_s=drained)


def _arrived(res: Residency, queue_end_s):
  return queue_end_s <= res.drained_s * (1 + 1e-7)


def arrivals(res: Residency, layer) -> Residency:
  """Marks this layer's queued loads that have completed as resident."""
  row = res.resident[layer] | _arrived(res, res.queue_end_s[layer])
  return dataclasses.replace(res, resident=res.resident.at[layer].set(row))


def resident_at(res: Residency, layer, ids) -> jax.Array:
  """[n] bool: experts ``ids`` of ``layer`` in GPU memory now, arrivals
  included, without updating the [L, E] state (lazy residency).

  Equal to ``arrivals(res, layer).resident[layer, ids]``: an arrival only
  turns a flag on, ``drained_s`` never decreases, and a queued load keeps its
  position once it has arrived (merges move loads not started yet; evicting
  clears both the flag and the position), so the stored flags may lag the
  arrivals as long as every read goes through here or :func:`arrivals`."""
  return res.resident[layer, ids] | _arrived(res, res.queue_end_s[layer, ids])


def held(res: Residency) -> jax.Array:
  """Experts resident or queued for residency (all layers), float."""
  return res.held_n


def count_held(res: Residency) -> jax.Array:
  """:func:`held` counted from the [L, E] arrays."""
  return jnp.sum(res.resident | jnp.isfinite(res.queue_end_s)).astype(jnp.float32)


def _row_held(res: Residency, layer):
  return res.resident[layer] | jnp.isfinite(res.queue_end_s[layer])


# ---------------------------------------------------------------------------
# Applying requests.

def apply(ctx, res: Residency, layer, req: Requests | None) -> Residency:
  """Applies ``req`` to ``res`` for ``layer`` (module docstring)."""
  if req is None:
    return res
  if res.soft is not None and req.load is not None:
    return _apply_soft(ctx, res, layer, req)
  if req.evict is not None:
    ev = req.evict
    res = dataclasses.replace(
        res, held_n=res.held_n - jnp.sum(ev & _row_held(res, layer)),
        resident=res.resident.at[layer].set(res.resident[layer] & ~ev),
        queue_end_s=res.queue_end_s.at[layer].set(
            jnp.where(ev, INF, res.queue_end_s[layer])))
  if req.keep is not None:
    kp = req.keep
    pre = res.prefetched
    if req.keep_is_prefetch:
      pre = or_bits(pre, layer, kp)
    res = dataclasses.replace(
        res, held_n=res.held_n + jnp.sum(kp & ~_row_held(res, layer)),
        resident=res.resident.at[layer].set(res.resident[layer] | kp),
        queue_end_s=res.queue_end_s.at[layer].set(jnp.where(kp, 0.0,
                                                            res.queue_end_s[layer])),
        prefetched=pre)
  if req.load is not None:
    if req.merge:
      order = (req.load_order if req.load_order is not None
               else jnp.argsort(-req.load_key, stable=True))
      merge_fn = merge_enqueue if res.lazy is None else lazy_merge_enqueue
      res = merge_fn(ctx, res, layer, req.load, req.load_key, order)
    else:
      res = enqueue(res, layer, req.load, req.load_key, ctx.fetch_s,
                    order=req.load_order, at_most_one=req.at_most_one)
  return res


def enqueue(res: Residency, layer, want: jax.Array, order_score: jax.Array, fetch_s,
            order: jax.Array | None = None, at_most_one: bool = False) -> Residency:
  """Appends background loads of ``want`` [E] experts of ``layer`` to the
  queue in descending ``order_score`` (ties: lower id); each costs
  ``fetch_s`` link seconds.  Resident or queued experts are skipped."""
  row_q = res.queue_end_s[layer]
  new = want & ~res.resident[layer] & jnp.isinf(row_q)
  if at_most_one:
    rank = jnp.zeros(new.shape, jnp.int32)
  elif order is not None:
    # Rank among the new entries = new entries before it in the full order.
    new_sorted = jnp.take_along_axis(new, order, axis=-1).astype(jnp.int32)
    before = jnp.cumsum(new_sorted, axis=-1) - new_sorted
    rank = jnp.zeros_like(before).at[order].set(before, unique_indices=True)
  else:
    rank = ranking.rank_desc(jnp.where(new, order_score, -INF))
  pos = res.queued_s + (rank + 1.0) * fetch_s
  row_q = jnp.where(new, pos, row_q)
  return dataclasses.replace(
      res, queue_end_s=res.queue_end_s.at[layer].set(row_q),
      queued_s=res.queued_s + jnp.sum(new) * fetch_s, held_n=res.held_n + jnp.sum(new),
      prefetched=or_bits(res.prefetched, layer, new))


def _cumsum_rows(x):
  """Inclusive cumsum of ``x`` [R, C] in row-major order (two short cumsums:
  XLA:CPU's cumsum of one long row is several times slower)."""
  rows = jnp.cumsum(x, axis=-1)
  return rows + (jnp.cumsum(rows[:, -1]) - rows[:, -1])[:, None]


def merge_enqueue(ctx, res: Residency, layer, want, key_row, order) -> Residency:
  """Queues background loads of ``want`` [E] experts of ``layer``, merged
  into the loads not started yet by descending key.

  ``res.queue_key`` rows of earlier layers hold the keys of their queued loads
  (this layer's row is set to ``key_row``); the loads not started yet must
  already be in descending key order (every merge keeps it), and ``order`` is
  ``argsort(-key_row, stable=True)``.  Ties go to the load queued first, then
  to the lower id.  Loads already started or done keep their place; each
  load costs ``ctx.fetch_s``.  O(L E) plus a binary search per new load.
  """
  f = ctx.fetch_s
  L, E = ctx.num_layers, ctx.num_experts
  n = L * E
  score = res.queue_key.at[layer].set(key_row)
  q = res.queue_end_s
  new = want & ~res.resident[layer] & jnp.isinf(q[layer])
  # Loads not started yet form the queue's tail, contiguous after ``front``;
  # their keys descend along it.
  pend = jnp.isfinite(q) & (q - f >= res.drained_s - 1e-6 * f)
  front = res.queued_s - jnp.sum(pend) * f
  idx = jnp.clip(jnp.round((q - front) / f) - 1.0, 0, n - 1).astype(jnp.int32)
  pkeys = jnp.full((n,), -jnp.inf).at[jnp.where(pend, idx, n).reshape(-1)].set(
      score.reshape(-1), mode="drop")
  # A new load goes after every pending load with a key at least its own; a
  # pending load moves back by the new loads placed before it.
  ahead = jnp.searchsorted(-pkeys, -key_row, side="right").astype(jnp.int32)
  placed = jnp.zeros((n,), jnp.int32).at[jnp.where(new, ahead, n)].add(1, mode="drop")
  shift = _cumsum_rows(placed.reshape(L, E)).reshape(-1)[idx]
  new_sorted = new[order].astype(jnp.int32)
  before = jnp.cumsum(new_sorted) - new_sorted
  rank = jnp.zeros((E,), jnp.int32).at[order].set(before, unique_indices=True)
  q = jnp.where(pend, front + (idx + shift + 1.0) * f, q)
  q = q.at[layer].set(jnp.where(new, front + (rank + ahead + 1.0) * f, q[layer]))
  return _with_merged(res, layer, new, key_row, q, f)


def _with_merged(res: Residency, layer, new, key_row, queue_end_s, fetch_s,
                 **extra) -> Residency:
  """``res`` after merging the loads ``new`` [E] of ``layer`` (keys
  ``key_row``; every queue position in ``queue_end_s``): the bookkeeping both
  merges share."""
  return dataclasses.replace(
      res, queue_key=res.queue_key.at[layer].set(key_row), queue_end_s=queue_end_s,
      queued_s=res.queued_s + jnp.sum(new) * fetch_s, held_n=res.held_n + jnp.sum(new),
      prefetched=or_bits(res.prefetched, layer, new), **extra)


def lazy_merge_enqueue(ctx, res: Residency, layer, want, key_row, order) -> Residency:
  """:func:`merge_enqueue` for a residency with ``lazy`` set (the prefill):
  the same queue order, its positions written by :func:`settle`."""
  f = ctx.fetch_s
  new = want & ~res.resident[layer] & jnp.isinf(res.queue_end_s[layer])
  lz, row_q = lazy_queue.merge(res, layer, new, key_row, order, f)
  return _with_merged(res, layer, new, key_row, res.queue_end_s.at[layer].set(row_q), f,
                      lazy=lz)


def settle(ctx, res: Residency) -> Residency:
  """Positions of the lazily merged loads written; ``lazy`` dropped (None).
  A residency without ``lazy`` is returned as is."""
  if res.lazy is None:
    return res
  return lazy_queue.settle(res, ctx.fetch_s)


def soft_merge_enqueue(ctx, res: Residency, layer, queued_row, key_row, order):
  """Relaxed :func:`merge_enqueue` for the :class:`SoftResidency` queue: this
  layer's loads of weights ``queued_row`` [E] (each ``weight x fetch_s`` link
  seconds) merged by descending key into the soft loads not started yet
  (ties: queued first).

  ``res.soft`` must not yet hold this layer's loads; ``order`` is
  ``argsort(-key_row, stable=True)``.  Returns ``(end_s, queued_s, keys)``:
  the [L, E] end positions of every soft load after the merge (this layer's
  included), the new queue total and ``queue_key`` with this layer's row set
  to ``key_row``.  Which loads count as not started is a hard test (the queue
  bookkeeping is piecewise linear, see ``ndpsim/relaxed.py``).
  """
  f = ctx.fetch_s
  soft = res.soft
  score = res.queue_key.at[layer].set(key_row)
  dur = soft.queued * f
  pend = (dur > 0) & (soft.end_s - dur >= res.drained_s - 1e-6 * f)
  # Loads not started yet, in queue order (their keys descend).
  porder = jnp.argsort(jnp.where(pend, soft.end_s, jnp.inf).reshape(-1))
  pmask = pend.reshape(-1)[porder]
  pkeys = jnp.where(pmask, score.reshape(-1)[porder], -jnp.inf)
  pcum = jnp.cumsum(jnp.where(pmask, dur.reshape(-1)[porder], 0.0))
  front = res.queued_s - pcum[-1]
  ndur = jnp.where(queued_row > 0, queued_row * f, 0.0)[order]
  ncum = jnp.cumsum(ndur)
  prefix = lambda cum, i: jnp.where(i > 0, cum[jnp.maximum(i - 1, 0)], 0.0)
  # A pending load moves back by the new loads with a larger key; a new load
  # goes after every pending load with a key at least its own.
  shift = prefix(ncum, jnp.searchsorted(-key_row[order], -score, side="left"))
  ahead = prefix(pcum, jnp.searchsorted(-pkeys, -key_row, side="right"))
  own = jnp.zeros_like(ncum).at[order].set(ncum)
  end = jnp.where(pend, soft.end_s + shift, soft.end_s)
  end = end.at[layer].set(front + ahead + own)
  return end, res.queued_s + ncum[-1], score


def _apply_soft(ctx, res: Residency, layer, req: Requests) -> Residency:
  """Soft requests: ``keep`` [E] weights resident at once, ``load`` [E]
  weights queued (merged by ``load_key``).  The boolean arrays follow the
  rounded weights (statistics and the staging room only); earlier layers'
  queued loads follow their merged positions."""
  assert req.merge, "soft residency requests must merge (Requests.merge=True)"
  keep = req.keep if req.keep is not None else jnp.zeros_like(req.load)
  queued = req.load
  order = (req.load_order if req.load_order is not None
           else jnp.argsort(-req.load_key, stable=True))
  end, queued_s, score = soft_merge_enqueue(ctx, res, layer, queued, req.load_key, order)
  soft = res.soft
  soft = SoftResidency(keep=soft.keep.at[layer].set(keep),
                       queued=soft.queued.at[layer].set(queued), end_s=end)
  kept_b, queued_b = keep >= 0.5, (queued >= 0.5) & ~(keep >= 0.5)
  q = res.queue_end_s
  q = jnp.where(jnp.isfinite(q) & (q > 0), end, q)
  row_q = jnp.where(kept_b, 0.0, jnp.where(queued_b, end[layer], q[layer]))
  res = dataclasses.replace(
      res, soft=soft, queued_s=queued_s, queue_key=score,
      resident=res.resident.at[layer].set(res.resident[layer] | kept_b),
      queue_end_s=q.at[layer].set(row_q),
      prefetched=or_bits(res.prefetched, layer, kept_b | queued_b))
  return dataclasses.replace(res, held_n=count_held(res))

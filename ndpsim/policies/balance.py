"""Load-balancing-aware GPU/NDP split of one layer's activated experts.

The paper's technique 2 (exact algorithm not public): a greedy makespan
balance.  Slots are ordered resident-first, then by tokens (most NDP work per
transferred byte first); for every prefix length j the layer's makespan is
evaluated in closed form with cumulative sums (the first j slots on the GPU,
the rest tensor-parallel on the NDP units) and the best j is taken.  O(n log n)
for n slots, no Python loops.

The estimate prices what the engine does (``ndpsim/engine.py``): the GPU lane
in the engine's own max-plus form (residents first, fetched experts after
their loads, issued in this order from ``link_delay_s``); the NDP lane after
the broadcast; the partial sums returned after it and after the prefix's
demand loads on the shared link direction (background loads never delay
either: the engine lets demand loads pre-empt them); at most
``slots.stage_room`` loads (GPU memory; longer prefixes are infeasible).
One term is bounded instead of known: the engine's layer end is
``max(GPU lane, return) + reduction`` while ``slots.post_s`` is return plus
reduction together, so a split with work on both sides is priced at its
upper bound ``max(GPU lane, NDP lane) + post_s`` and the all-NDP split
(j = 0) at its lower bound ``max(GPU pre-work, NDP lane + post_s)``; the
two agree unless the GPU lane ends after the return.  Hence the chosen split
is never slower than all-NDP (tensor parallelism alone) in the engine, and
every estimate is non-increasing in every transfer and compute time it reads.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ndpsim.policies import base as pb
from ndpsim.policies.base import Slots


def _with_ndp_lane(slots: Slots, valid, h, q, gpu_end):
  """Makespan of each prefix split [n + 1] from the GPU lane's end ``gpu_end``:
  the NDP lane runs the slots after the prefix (TP slice times ``h``, in order)
  after the broadcast; its partial sums return after it and after the prefix's
  loads (``q``, cumulative link time), then the reduction (``post_s`` =
  return + reduction; see the module docstring for the bound used when both
  sides work); prefixes past the valid slots get inf."""
  nvalid = jnp.sum(valid)
  count = jnp.arange(h.shape[0] + 1)
  hv = jnp.where(valid, h, 0.0)
  ndp_left = jnp.sum(hv) - jnp.concatenate([jnp.zeros((1,)), pb.cumsum(hv)])
  ndp_end = jnp.maximum(slots.bcast_s + ndp_left, slots.link_delay_s + q) + slots.post_s
  # The reduction follows the GPU lane too when it ends last: <= post_s.
  gpu_side = jnp.where((count > 0) & (count < nvalid), gpu_end + slots.post_s, gpu_end)
  span = jnp.maximum(gpu_side, jnp.where(count < nvalid, ndp_end, 0.0))
  return jnp.where(count <= nvalid, span, jnp.inf)


def _prefix_spans(slots: Slots, order, rho, phi, gpu_bias, ndp_bias, chain_max):
  """The prefix makespans [n + 1] in one form for both modes.

  ``rho`` / ``phi`` [n] (in ``order``): each slot's resident and fetched
  share (0/1 in hard mode, weights in relaxed mode).  The GPU lane in the
  engine's max-plus form: resident parts first (``r``), fetched parts after
  their serialized loads (``q``: cumulative link time, ``c``: cumulative
  compute of fetched parts), i.e. ``gpu_pre + r + c`` or
  ``link_delay + c + max_i (q_i - c_{i-1})`` over the fetched slots so far,
  whichever is later.  ``chain_max(term, phi) -> [n + 1]`` is that running
  max with entry 0 for the empty prefix: ``jax.lax.cummax`` (hard) or a
  weighted cumulative log-sum-exp (relaxed).  Returns (spans, q)."""
  g = slots.gpu_s[order] * gpu_bias
  h = slots.ndp_tp_s[order] * ndp_bias
  valid = slots.valid[order]
  z = jnp.zeros((1,))
  cat = lambda x: jnp.concatenate([z, pb.cumsum(x)])
  r = cat(rho * g)
  q = cat(phi * slots.fetch_s[order])
  c = cat(phi * g)
  m = chain_max(q[1:] - c[:-1], phi)
  gpu_end = jnp.maximum(slots.gpu_pre_s + r + c, slots.link_delay_s + c + m)
  return _with_ndp_lane(slots, valid, h, q, gpu_end), q


def _hard_chain(term, phi):
  """Running max over the fetched slots (-inf before the first)."""
  m = pb.cummax(jnp.where(phi > 0, term, -jnp.inf))
  return jnp.concatenate([jnp.full((1,), -jnp.inf), m])


def prefix_makespans(slots: Slots, order_key, gpu_bias=1.0, ndp_bias=1.0, order=None):
  """Makespan (relative to the router) of each prefix split, [n + 1].

  ``order_key`` [n]: larger goes to the GPU first.  Entry j puts the first j
  slots of that order on the GPU.  Prefixes longer than the number of valid
  slots get +inf.  ``order``: ``argsort(-order_key, stable=True)`` if known.
  """
  if order is None:
    order = pb.order_desc(order_key)
  valid = slots.valid[order]
  res = slots.resident[order] & valid
  fl = ~slots.resident[order] & valid
  span, _ = _prefix_spans(slots, order, res.astype(jnp.float32), fl.astype(jnp.float32),
                          gpu_bias, ndp_bias, _hard_chain)
  # GPU memory: the engine runs loads past the staging room on the NDP units.
  loads = jnp.concatenate([jnp.zeros((1,), jnp.int32), pb.cumsum(fl.astype(jnp.int32))])
  return jnp.where(loads > slots.stage_room, jnp.inf, span), order


def greedy_split(slots: Slots, gpu_bias=1.0, ndp_bias=1.0) -> jax.Array:
  """[n] bool: slots the balancer puts on the GPU (ties -> fewer on the GPU)."""
  n = slots.tokens.shape[-1]
  bits = pb.int_order_bits(n)
  if n > pb.SMALL_RANK and (2 * _RES_KEY + 1) << bits <= 1 << 31:
    # Long rows (prefill: one slot per expert): token counts are integers, so
    # the same order comes from one packed int32 sort (pb.int_order_desc);
    # counts of _RES_KEY - 1 or more tie.
    tok = jnp.minimum(slots.tokens, _RES_KEY - 1).astype(jnp.int32)
    ikey = jnp.where(slots.valid, jnp.where(slots.resident, _RES_KEY, 0) + tok + 1, 0)
    io = pb.int_order_desc(ikey, (1 << (31 - bits)) - 1)
    span, _ = prefix_makespans(slots, None, gpu_bias, ndp_bias, order=io.order)
    return io.first(jnp.argmin(span)) & slots.valid
  key = jnp.where(slots.resident, 1e6, 0.0) + slots.tokens
  key = jnp.where(slots.valid, key, -1.0)
  if n <= pb.SMALL_RANK:  # one pairwise ranking gives both the rank and the order
    rank = pb.rank_desc(key)
    span, _ = prefix_makespans(slots, key, gpu_bias, ndp_bias, order=pb.order_from_rank(rank))
    return (rank < jnp.argmin(span)) & slots.valid
  span, order = prefix_makespans(slots, key, gpu_bias, ndp_bias)
  j = jnp.argmin(span)
  rank = pb.rank_desc(key)  # = argsort(order)
  return (rank < j) & slots.valid


_RES_KEY = 1_000_000  # resident slots first: the float key's 1e6 offset


# ---------------------------------------------------------------------------
# Relaxed mode: continuous residency and a softmin over prefix splits.

_BIG = 1e30
# Exact ties of prefix makespans are common (a flat region where the NDP side
# waits for the link): the hard balancer takes the shortest prefix.  The
# softmin adds this many seconds per GPU slot, invisible at tuning
# temperatures (>> 1 ps) and decisive as the temperature falls below it.
TIE_BREAK_S = 1e-12


def soft_prefix_makespans(slots: Slots, order_key, res_w, gpu_bias, ndp_bias,
                          temperature):
  """:func:`prefix_makespans` with a residency *weight* per slot, [n + 1].

  ``res_w`` [n] in [0, 1]: fraction of each expert's columns resident on the
  GPU (the resident part computes first, the rest after its share
  ``(1 - res_w) x T_w`` of the serialized loads).  The running max of the
  fetched slots' chain terms becomes a weighted cumulative log-sum-exp at
  ``temperature`` (seconds), weighted by each slot's fetched share, so the
  estimate is continuous in ``res_w`` and equals the hard one for 0/1 weights
  as the temperature falls.  Both are :func:`_prefix_spans`; only the running
  max differs.
  """
  order = jnp.argsort(-order_key, stable=True)
  t = jnp.asarray(temperature)
  valid = slots.valid[order]
  rho = jnp.where(valid, res_w[order], 0.0)
  phi = jnp.where(valid, 1.0 - rho, 0.0)

  def soft_chain(term, phi):
    pos = phi > 0
    logit = jnp.where(pos, term / t + jnp.log(jnp.where(pos, phi, 1.0)), -_BIG)
    return jnp.concatenate([jnp.full((1,), -_BIG), t * jax.lax.cumlogsumexp(logit)])

  span, _ = _prefix_spans(slots, order, rho, phi, gpu_bias, ndp_bias, soft_chain)
  return span, order


def soft_split(slots: Slots, gpu_bias=1.0, ndp_bias=1.0, temperature=1e-5,
               res_w=None) -> jax.Array:
  """[n] float GPU share of each slot: the softmin relaxation of
  :func:`greedy_split`.

  Weights over prefix lengths j: ``w_j = softmax(-span_j / temperature)``;
  the slot at order position i is on the GPU with share ``sum_{j > i} w_j``
  (the probability that it lies in the chosen prefix).  ``res_w`` defaults to
  ``slots.res_w``, else the boolean ``slots.resident``.  Converges to
  :func:`greedy_split` as the temperature falls (except at exact ties of two
  prefix makespans: the softmin adds :data:`TIE_BREAK_S` per GPU slot, so it
  takes the shorter prefix, like the hard balancer, once the temperature is
  well below that).
  """
  if res_w is None:
    res_w = slots.res_w if slots.res_w is not None else slots.resident.astype(jnp.float32)
  res_w = jnp.where(slots.valid, res_w, 0.0)
  key = jnp.where(slots.valid, res_w * 1e6 + slots.tokens, -1.0)
  span, order = soft_prefix_makespans(slots, key, res_w, gpu_bias, ndp_bias, temperature)
  t = jnp.asarray(temperature)
  fin = jnp.isfinite(span)
  span = jnp.where(fin, span, 0.0)
  lo = jax.lax.stop_gradient(jnp.min(jnp.where(fin, span, jnp.inf)))
  tie = TIE_BREAK_S * jnp.arange(span.shape[0])
  w = jax.nn.softmax(jnp.where(fin, -((span - lo) + tie) / t, -_BIG))
  tail = jnp.cumsum(w[::-1])[::-1]          # tail[i] = sum_{j >= i} w_j
  share_sorted = tail[1:]                   # position i: sum_{j > i} w_j
  rank = jnp.argsort(order)
  return jnp.where(slots.valid, share_sorted[rank], 0.0)

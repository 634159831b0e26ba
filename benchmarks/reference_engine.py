"""A plain NumPy/Python reference of the ndpsim engine and its eight policies.

It is the correctness oracle for a few sequences (``tests/test_reference.py``:
latencies equal to ``ndpsim.engine.simulate`` within 1e-6 relative for every
policy) and the speed baseline of ``benchmarks/throughput.py``.

What it shares with the engine: the cost primitives only (the [tokens] and
[partials] tables of :func:`ndpsim.engine.build_tables`, T_w and the GPU
expert budget from :mod:`ndpsim.costs`), which are tested against hand
calculations elsewhere.  What it writes again, independently and as one
Python loop over sequence groups, steps, layers and experts:

* the per-layer timeline: attention + router, residents-then-fetched GPU lane
  with serialized demand loads issued in descending routed tokens (ties:
  lower slot; the balancer's order), the staging-room cut in that order, NDP
  lane (TP or EP), broadcast, partial-sum return and reduction, the shared
  link direction;
* the background load queue as an explicit list of (layer, expert, end, live)
  entries in queue order, drained by idle link time at lower priority than
  demand loads (a demand load pre-empts the background copy in flight, which
  resumes after it: demand loads never wait for background ones), arrivals
  at the start of each layer; prefill loads merged by key into the loads not
  started yet (a stable two-way merge of lists), adaptive swaps appended;
* every policy's decisions: the greedy GPU/NDP balancer (each prefix of the
  resident-first, most-tokens-first order simulated with a running max-plus
  GPU cursor, priced with the reduction after the GPU lane when both sides
  work, prefixes loading more than the staging room infeasible), the LRU
  cache, prefill-count prefetch, the adaptive swap, MoNDE's per-use hot
  copies, EP round-robin, and the oracle bound.

Arithmetic is float32 (NumPy scalars), like the engine's, so that the
absolute layer clock rounds the same way; sums are taken in loop order.  Queue
positions are written as the engine defines them (``front + (i + 1) x T_w``
after each merge, ``queued + T_w`` for an appended load) so that arrival
tests at equal positions round alike.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

# ``scored`` at its default weights only (then it is tp_lb_prefetch bit for bit).
ALIASES = {"tuned": "tp_lb_prefetch", "scored": "tp_lb_prefetch"}
# The policies this reference implements (tests/test_reference.py checks each).
POLICIES = ("gpu_offload", "ndp_ep", "monde", "monde_eq6", "dynande", "monde_resident",
            "ndp_tp", "tp_lb", "tp_lb_prefetch", "tp_lb_adaptive", "tuned", "oracle",
            "scored")
# float32 like the engine; NDPSIM_REF_FLOAT64=1 evaluates everything in float64
# instead (to measure the float32 clock error of the engine itself).
F = np.float64 if os.environ.get("NDPSIM_REF_FLOAT64") else np.float32
INF = F(np.inf)


@dataclasses.dataclass
class RefResult:
  """Reference outputs, one entry per sequence group."""
  ttft_s: np.ndarray       # [G]
  step_s: np.ndarray       # [G, T]
  e2e_s: np.ndarray        # [G]
  gpu_hits: np.ndarray     # [G] decode only
  gpu_misses: np.ndarray   # [G]
  prefetched_bytes: np.ndarray  # [G]
  events: dict                  # totals over groups: preempted, merged_ahead, swaps, ...
  ndp_lane_s: np.ndarray = None  # [G] sum over layers of the slowest unit's time


@dataclasses.dataclass
class _Costs:
  """Per-phase cost tables as float32 NumPy arrays."""
  gpu: np.ndarray
  tp: np.ndarray
  ep: np.ndarray
  bcast: Any
  ret: np.ndarray
  red: np.ndarray


def _np_costs(pc) -> _Costs:
  a = lambda x: np.asarray(x, np.float32)  # noqa: E731
  return _Costs(a(pc.gpu_s), a(pc.tp_s), a(pc.ep_s), F(pc.bcast_s), a(pc.ret_s), a(pc.red_s))


def _top_m(scores, m, eligible=None) -> set:
  """Indices of the m largest scores (ties: lower index), among eligible."""
  m = int(math.floor(float(m) + 1e-6))
  idx = [e for e in range(len(scores)) if eligible is None or eligible[e]]
  idx.sort(key=lambda e: (-float(scores[e]), e))
  return set(idx[:max(m, 0)])


# ---------------------------------------------------------------------------
# Per-sequence-group state.

class _State:
  """Residency, the background queue and policy bookkeeping for one group."""

  def __init__(self, L: int, E: int, capacity):
    self.resident = [[False] * E for _ in range(L)]
    self.prefetched = [[False] * E for _ in range(L)]
    self.used = [[False] * E for _ in range(L)]
    self.score = [[F(0.0)] * E for _ in range(L)]
    self.capacity = F(capacity)
    # Background loads, [layer, expert, end, live], in queue order (by end);
    # ``live`` until cancelled by an eviction.  ``live`` maps (layer, expert)
    # to its live entry (the engine's finite queue_end_s).
    self.queue: list[list] = []
    self.live: dict[tuple, list] = {}
    self.queued = F(0.0)         # link seconds ever queued
    self.drained = F(0.0)        # link seconds done
    # Event counts (to check that a test exercises each mechanism).
    self.events = dict(preempted=0, merged_ahead=0, swaps=0, evictions=0, arrivals=0,
                       fetched=0, cut=0)

  # Background queue ------------------------------------------------------
  def _add(self, layer: int, e: int, end) -> list:
    item = [layer, e, end, True]
    self.live[(layer, e)] = item
    self.prefetched[layer][e] = True
    return item

  def enqueue(self, layer: int, experts_in_order: list, fetch_s) -> None:
    """Appends loads behind every queued one (the adaptive swap)."""
    n = 0
    for e in experts_in_order:
      if self.resident[layer][e] or (layer, e) in self.live:
        continue
      n += 1
      self.queue.append(self._add(layer, e, F(self.queued + F(F(n) * fetch_s))))
    self.queued = F(self.queued + F(F(n) * fetch_s))

  def not_started(self, fetch_s) -> list:
    """Live loads whose copy has not begun, in queue order."""
    lim = F(self.drained - F(1e-6 * fetch_s))
    return [it for it in self.queue if it[3] and F(it[2] - fetch_s) >= lim]

  def merge(self, layer: int, experts_in_order: list, keys, fetch_s) -> None:
    """Queues loads of ``layer`` (given in descending ``keys``, ties by lower
    id) merged into the loads not started yet, whose keys (``score`` rows of
    their layers) descend along the queue: a new load goes behind every
    waiting load with a key at least its own.  Loads in flight or done keep
    their place; the waiting ones and the new ones take the positions after
    the last of those, one T_w each."""
    new = [e for e in experts_in_order
           if not self.resident[layer][e] and (layer, e) not in self.live]
    wait = self.not_started(fetch_s)
    wkeys = [self.score[it[0]][it[1]] for it in wait]
    assert all(wkeys[i] >= wkeys[i + 1] for i in range(len(wkeys) - 1)), wkeys
    front = F(self.queued - F(F(len(wait)) * fetch_s))
    merged, i = [], 0
    for e in new:
      while i < len(wait) and wkeys[i] >= keys[e]:
        merged.append(wait[i])
        i += 1
      if i < len(wait):
        self.events["merged_ahead"] += 1
      merged.append(self._add(layer, e, F(0.0)))
    merged += wait[i:]
    for pos, it in enumerate(merged):
      it[2] = F(front + F(F(pos + 1) * fetch_s))
    waiting = set(map(id, wait))
    self.queue = [it for it in self.queue if id(it) not in waiting] + merged
    self.queued = F(self.queued + F(F(len(new)) * fetch_s))

  def cancel(self, layer: int, e: int) -> None:
    item = self.live.pop((layer, e), None)
    if item is not None:
      item[3] = False

  def pending(self, layer: int, e: int) -> bool:
    """A live load of (layer, e) that has not completed."""
    item = self.live.get((layer, e))
    return item is not None and item[2] > self.drained

  def in_flight(self, fetch_s) -> bool:
    """A background copy has begun and not completed (demand loads issued
    now pre-empt it)."""
    tol = F(1e-6 * fetch_s)
    return any(it[3] and F(it[2] - fetch_s) < F(self.drained - tol)
               and it[2] > F(self.drained + tol) for it in self.queue)

  def drain(self, idle) -> None:
    room = max(F(self.queued - self.drained), F(0.0))
    self.drained = F(self.drained + min(max(idle, F(0.0)), room))

  def arrive(self, layer: int) -> None:
    lim = F(self.drained * F(1 + 1e-7))
    for (l, e), it in self.live.items():
      if l == layer and it[2] <= lim and not self.resident[layer][e]:
        self.resident[layer][e] = True
        self.events["arrivals"] += 1


# ---------------------------------------------------------------------------
# Policies: (init, place).  ``place`` returns per-slot (gpu, fetch, unit).

def _greedy(sl: dict, gpu_bias, ndp_bias) -> list:
  """The load balancer: GPU-first order, best prefix by simulated makespan.

  Prefix j runs the first j slots of the order on the GPU (loads issued in
  that order after ``link_delay``), the rest tensor-parallel on the NDP
  units.  Its price: the GPU lane end, plus return and reduction (``post``)
  when the NDP units work too (the engine reduces after the later of the GPU
  lane and the return: an upper bound), against the NDP lane's return
  (after the broadcast and after the prefix's loads) plus ``post``.  A prefix
  that loads more experts than the staging room is not a candidate.  The
  first (shortest) best prefix wins.
  """
  n = len(sl["ids"])
  key = [(F(1e6) if sl["res"][i] else F(0.0)) + sl["tok"][i] if sl["valid"][i] else F(-1.0)
         for i in range(n)]
  order = sorted(range(n), key=lambda i: (-float(key[i]), i))
  valid_order = [i for i in order if sl["valid"][i]]
  nvalid = len(valid_order)
  g = {i: F(sl["gpu"][i] * gpu_bias) for i in range(n)}
  h = {i: F(sl["tp"][i] * ndp_bias) for i in range(n)}
  best_j, best = 0, INF
  res_work, fetched_work, link, chain, n_loads = F(0.0), F(0.0), F(0.0), -INF, 0
  for j in range(nvalid + 1):
    if j > 0:  # the prefix grows by one slot: the GPU cursor moves on
      i = valid_order[j - 1]
      if sl["res"][i]:
        res_work = F(res_work + g[i])
      else:
        n_loads += 1
        link = F(link + sl["fetch"])
        chain = F(max(chain, F(sl["link_delay"] + link)) + g[i])
        fetched_work = F(fetched_work + g[i])
    if n_loads > sl["room"]:
      break  # longer prefixes load even more
    gpu_end = max(F(F(sl["gpu_pre"] + res_work) + fetched_work), chain)
    span = gpu_end
    if j < nvalid:
      if j > 0:
        span = F(gpu_end + sl["post"])
      ndp_work = F(0.0)
      for i in valid_order[j:]:
        ndp_work = F(ndp_work + h[i])
      ndp_end = F(max(F(sl["bcast"] + ndp_work), F(sl["link_delay"] + link)) + sl["post"])
      span = max(span, ndp_end)
    if span < best:
      best_j, best = j, span
  chosen = set(valid_order[:best_j])
  return [i in chosen for i in range(n)]


def _placement(sl, gpu, units=None):
  n = len(sl["ids"])
  gpu = [gpu[i] and sl["valid"][i] for i in range(n)]
  fetch = [gpu[i] and not sl["res"][i] for i in range(n)]
  unit = units or [0] * n
  return gpu, fetch, unit


def _count_and_loaded(sl, gpu, counts) -> list:
  """Adds each valid slot's tokens to ``counts`` [E] (in place); returns [E]
  bool: the expert is loaded on demand for this layer (on the GPU, not
  resident)."""
  loaded = [False] * len(counts)
  for i, e in enumerate(sl["ids"]):
    if sl["valid"][i]:
      counts[e] = F(counts[e] + sl["tok"][i])
    if gpu[i] and not sl["res"][i]:
      loaded[e] = True
  return loaded


def _prefill_prefetch(ctx, s: _State, layer, sl, gpu, key=None) -> list:
  """Prefill choice of tp_lb_prefetch / tp_lb_adaptive; returns counts [E].

  The top-M experts of this layer's prompt counts become resident: those the
  balancer just loaded for the prefill GEMMs stay at once, the others join
  the background queue, merged by ``key`` (the counts unless given; becomes
  this layer's score row) into the loads not started yet.
  """
  E = ctx["E"]
  counts = [F(0.0)] * E
  loaded = _count_and_loaded(sl, gpu, counts)
  key = counts if key is None else key
  s.score[layer] = list(key)
  want = _top_m(counts, s.capacity, [c > 0 for c in counts])
  rest = []
  for e in want:
    if loaded[e]:
      s.resident[layer][e] = True
      s.prefetched[layer][e] = True
    else:
      rest.append(e)
  rest.sort(key=lambda e: (-float(key[e]), e))
  s.merge(layer, rest, key, ctx["fetch_s"])
  return counts


def _adaptive_swap(ctx, s: _State, layer, params) -> None:
  """One swap per layer when the background queue is idle."""
  E = ctx["E"]
  res, score = s.resident[layer], s.score[layer]
  pending = [s.pending(layer, e) for e in range(E)]
  cands = [e for e in range(E) if not res[e] and not pending[e]]
  idle = not F(s.queued - s.drained) > F(1e-12)
  if not cands or not idle or not s.capacity >= 1:
    return
  cand = cands[0]
  for e in cands:
    if score[e] > score[cand]:
      cand = e
  held = sum(1 for e in range(E) if res[e] or pending[e])
  full = held >= s.capacity
  victim = 0  # lowest score among residents (first such); expert 0 if none
  vscore = INF
  for e in range(E):
    if res[e] and score[e] < vscore:
      victim, vscore = e, score[e]
  bar = score[victim] if full else -INF
  if not score[cand] > F(bar + F(params.own.adapt_margin)):
    return
  s.events["swaps"] += 1
  if full:  # the victim's memory is freed at once; a queued copy is cancelled
    s.events["evictions"] += 1
    res[victim] = False
    s.cancel(layer, victim)
  s.enqueue(layer, [cand], ctx["fetch_s"])


def _dynande(ctx, s: _State, layer, sl, phase):
  """DynaNDE: sweep j = 0..n (slots by descending tokens; prefill ties lower
  id, decode in slot order): the first j on the GPU (sum of GPU times plus a
  load per uncached expert), the rest EP on the units (broadcast + most
  loaded unit + return/reduction); the smallest max wins (ties: smaller j).
  Then the LFU cache (counts in ``s.score``) keeps the capacity most used
  experts among cached and just loaded ones (ties: cached, then lower id)."""
  n, N, E = len(sl["ids"]), ctx["N"], ctx["E"]
  idx = list(range(n))
  if phase == "prefill":
    idx.sort(key=lambda i: (-sl["tok"][i], i))
  order = [i for i in idx if sl["valid"][i]]
  total = [F(0.0)] * N
  for i in order:
    u = sl["ids"][i] % N
    total[u] = F(total[u] + sl["ep"][i])
  best, best_j = INF, 0
  g, prefix, fetched = F(0.0), [F(0.0)] * N, 0
  for j in range(len(order) + 1):
    if j > 0:
      i = order[j - 1]
      g = F(g + F(sl["gpu"][i] + (F(0.0) if sl["res"][i] else sl["fetch"])))
      u = sl["ids"][i] % N
      prefix[u] = F(prefix[u] + sl["ep"][i])
      fetched += 0 if sl["res"][i] else 1
    if fetched > math.floor(sl["room"] + 1e-6):
      continue
    gpu_side = F(sl["gpu_pre"] + g)
    left = max(F(total[u] - prefix[u]) for u in range(N))
    ndp_side = F(F(sl["bcast"] + left) + sl["post"]) if j < len(order) else F(0.0)
    span = max(gpu_side, ndp_side)
    if span < best:
      best, best_j = span, j
  on = set(order[:best_j])
  gpu = [i in on for i in range(n)]
  counts = s.score[layer]
  loaded = _count_and_loaded(sl, gpu, counts)
  res = s.resident[layer]
  key = [F(counts[e] + (F(0.5) if res[e] else F(0.0))) for e in range(E)]
  cache = _top_m(key, s.capacity, [res[e] or loaded[e] for e in range(E)])
  s.resident[layer] = [e in cache for e in range(E)]
  return _placement(sl, gpu, [e % N for e in sl["ids"]])


def _place(name, ctx, s: _State, layer, sl, params, phase):
  n, N = len(sl["ids"]), ctx["N"]
  if name == "dynande":
    return _dynande(ctx, s, layer, sl, phase)
  if name in ("ndp_tp", "oracle"):
    return _placement(sl, [False] * n)
  if name == "ndp_ep":
    return _placement(sl, [False] * n, [e % N for e in sl["ids"]])
  if name == "monde_resident":
    return _placement(sl, list(sl["res"]), [e % N for e in sl["ids"]])
  if name in ("monde", "monde_eq6"):
    return _monde(ctx, sl, params, phase, name == "monde_eq6")
  if name == "gpu_offload":
    stamps = s.score[layer]
    now = F(max(stamps) + 1.0)
    for i, e in enumerate(sl["ids"]):
      if sl["valid"][i]:
        stamps[e] = max(stamps[e], now)
    keep = _top_m(stamps, s.capacity, [x >= 0 for x in stamps])
    s.resident[layer] = [e in keep for e in range(ctx["E"])]
    return _placement(sl, list(sl["valid"]))
  gpu = _greedy(sl, F(params.gpu_bias), F(params.ndp_bias))
  if name == "tp_lb":
    return _placement(sl, gpu)
  if name not in ("tp_lb_prefetch", "tp_lb_adaptive"):
    raise ValueError(f"reference has no policy {name!r}")
  decay = F(params.own.adapt_decay) if name == "tp_lb_adaptive" else None
  if phase == "prefill":
    seed = None
    if name == "tp_lb_adaptive":  # EW counts seeded by the prompt's, per token
      total = F(0.0)
      for i in range(n):
        if sl["valid"][i]:
          total = F(total + sl["tok"][i])
      norm = max(F(total / ctx["k"]), F(1.0))
      seed = [F(0.0)] * ctx["E"]
      for i, e in enumerate(sl["ids"]):
        if sl["valid"][i]:
          seed[e] = F(F(sl["tok"][i] / norm) / F(1.0 - decay))
    _prefill_prefetch(ctx, s, layer, sl, gpu, seed)
  elif name == "tp_lb_adaptive":
    act = [F(0.0)] * ctx["E"]
    for i, e in enumerate(sl["ids"]):
      if sl["valid"][i]:
        act[e] = F(act[e] + sl["tok"][i])
    s.score[layer] = [F(F(decay * x) + a) for x, a in zip(s.score[layer], act)]
    _adaptive_swap(ctx, s, layer, params)
  return _placement(sl, gpu)


def _monde(ctx, sl, params, phase, eq6: bool):
  """MoNDE: the H activated experts with most tokens (ties: lower id) are
  copied to the GPU for this use; H from Eq. 6, at most the staging room."""
  n, N = len(sl["ids"]), ctx["N"]
  act = sum(1 for v in sl["valid"] if v)
  if eq6:
    x = float(np.float32(ctx["share"]) * np.float32(act))
    h = max(1, math.ceil(x - 1e-6))
  else:
    alpha = params.monde_alpha_prefill if phase == "prefill" else params.monde_alpha_decode
    x = float(np.float32(np.float32(alpha) * np.float32(ctx["share"])) * np.float32(act))
    h = math.floor(x + 0.5 + 1e-6)
  h = min(max(h, 0), act, math.floor(sl["room"]))
  order = sorted((i for i in range(n) if sl["valid"][i]),
                 key=lambda i: (-sl["tok"][i], sl["ids"][i]))
  hot = set(order[:h])
  gpu = [i in hot for i in range(n)]
  return gpu, list(gpu), [e % N for e in sl["ids"]]


def _init(name, ctx, params) -> _State:
  L, E = ctx["L"], ctx["E"]
  if name in ("ndp_tp", "ndp_ep", "oracle", "tp_lb", "monde", "monde_eq6"):
    return _State(L, E, 0.0)
  cap = F(math.floor(F(F(F(params.resident_fraction) * ctx["capacity"]) + F(1e-6))))
  s = _State(L, E, cap)
  if name == "gpu_offload":
    s.score = [[F(-1.0)] * E for _ in range(L)]
  if name == "monde_resident":
    for l in range(L):
      hot = _top_m(ctx["profile"][l], cap)
      s.resident[l] = [e in hot for e in range(E)]
  return s


# ---------------------------------------------------------------------------
# One layer.

def _oracle_span(sl, N, post):
  """Lower bound: j cheapest experts on the GPU (all resident), the rest at
  their cheapest NDP time, one return + reduction; minimised over j."""
  n_slots = len(sl["ids"])
  gs = sorted(sl["gpu"][i] for i in range(n_slots) if sl["valid"][i])
  hs = sorted(min(sl["tp"][i], F(sl["ep"][i] / N)) for i in range(n_slots) if sl["valid"][i])
  n = len(gs)
  best = INF
  for j in range(n + 1):
    g_sum = F(0.0)
    for x in gs[:j]:
      g_sum = F(g_sum + x)
    span = F(sl["gpu_pre"] + g_sum)
    if j < n:
      h_sum = F(0.0)
      for x in hs[:n - j]:
        h_sum = F(h_sum + x)
      span = max(span, F(F(sl["bcast_abs"] + h_sum) + post))
    best = min(best, span)
  return best


def _layer(name, mode, ctx, c: _Costs, clk: dict, s: _State, layer, ids, tok, valid,
           attn, shared, params, phase, stats):
  N, fetch_s = ctx["N"], ctx["fetch_s"]
  tr = F(clk["t"] + attn)
  s.drain(F(tr - max(clk["bg"], clk["link_gpu"])))
  s.arrive(layer)
  res = [valid[i] and s.resident[layer][e] for i, e in enumerate(ids)]
  if phase == "decode":
    stats["hits"] += sum(res)
    stats["misses"] += sum(1 for i in range(len(ids)) if valid[i] and not res[i])
  if phase == "prefill":  # GPU memory: expert slots resident or queued
    held = sum(1 for l in range(ctx["L"]) for e in range(ctx["E"])
               if s.resident[l][e] or (l, e) in s.live)
  else:
    held = F(ctx["L"] * s.capacity)
  room = max(F(ctx["slots"] - held), F(0.0))
  bcast_start = max(tr, clk["link_ndp"])
  sl = dict(ids=ids, tok=[F(t) for t in tok], valid=valid, res=res,
            gpu=[c.gpu[t] for t in tok], tp=[c.tp[t] for t in tok],
            ep=[c.ep[t] for t in tok], fetch=fetch_s, gpu_pre=shared,
            link_delay=max(F(clk["link_gpu"] - tr), F(0.0)),
            bcast=F(F(bcast_start - tr) + c.bcast), bcast_abs=c.bcast,
            post=F(c.ret[N] + c.red[N]), room=room)
  gpu, fetch, unit = _place(name, ctx, s, layer, sl, params, phase)
  # Demand loads are issued in descending routed tokens, ties by lower slot
  # (decode slots are already in that order).
  issue = sorted(range(len(ids)), key=lambda i: (-tok[i], i))
  n_ok = 0
  for i in issue:  # loads past the staging room run on the NDP units
    if fetch[i] and valid[i]:
      n_ok += 1
      if n_ok > room:
        gpu[i], fetch[i] = False, False
        s.events["cut"] += 1

  # Demand loads go first on the link: a background copy in flight is
  # pre-empted (it resumes in later idle time), none delays them.
  n_fetch = sum(fetch)
  if n_fetch:
    s.events["fetched"] += n_fetch
    s.events["preempted"] += s.in_flight(fetch_s)
  fetch_start = max(tr, clk["link_gpu"])
  # GPU lane: shared experts, residents back to back, then each fetched expert
  # (in issue order) once its load has arrived and the GPU is free.  The lane
  # ends at the later of "no waiting" (start + all work) and, for each
  # fetched expert i, its arrival plus the fetched work from i on (the
  # max-plus form of that cursor; absolute times are formed once per term,
  # as in float32 the association decides the rounding of the clock).
  res_work, fetched = F(0.0), []
  for i in issue:
    if gpu[i] and not fetch[i]:
      res_work = F(res_work + sl["gpu"][i])
    elif fetch[i]:
      fetched.append(sl["gpu"][i])
  fetched_work = F(0.0)
  for w in fetched:
    fetched_work = F(fetched_work + w)
  gpu_end = F(F(F(tr + shared) + res_work) + fetched_work)
  link_rel, left = F(0.0), fetched_work
  for w in fetched:
    link_rel = F(link_rel + fetch_s)
    gpu_end = max(gpu_end, F(F(fetch_start + link_rel) + left))
    left = F(left - w)
  fetch_end = F(fetch_start + link_rel)

  # NDP lane.
  loads = [F(0.0)] * N
  for i in range(len(ids)):
    if valid[i] and not gpu[i]:
      if mode == "tp":
        for u in range(N):
          loads[u] = F(loads[u] + sl["tp"][i])
      else:
        loads[unit[i]] = F(loads[unit[i]] + sl["ep"][i])
  has_ndp = any(valid[i] and not gpu[i] for i in range(len(ids)))
  stats["ndp_lane"] = F(stats.get("ndp_lane", F(0.0)) + max(loads))
  if has_ndp:
    parts = N if mode == "tp" else sum(1 for x in loads if x > 0)
    ndp_end = F(F(bcast_start + c.bcast) + max(loads))
    s.drain(F(ndp_end - max(fetch_end, clk["link_gpu"])))
    ret_end = F(max(ndp_end, fetch_end) + c.ret[parts])
    end = F(max(gpu_end, ret_end) + c.red[parts])
    clk["link_gpu"], clk["bg"] = ret_end, ret_end
    clk["link_ndp"] = F(bcast_start + c.bcast)
  else:
    end = F(max(gpu_end, tr) + c.red[0])
    clk["link_gpu"], clk["bg"] = max(fetch_end, clk["link_gpu"]), fetch_end
  if name == "oracle":
    end = F(tr + _oracle_span(sl, N, F(c.ret[1] + c.red[1])))
  for i, e in enumerate(ids):
    if gpu[i] and res[i] and s.prefetched[layer][e]:
      s.used[layer][e] = True
  clk["t"] = end


# ---------------------------------------------------------------------------
# Driver.

def _tables(system, model, P, T, B):
  """The engine's cost tables (its own jit of ``build_tables``), as NumPy."""
  import jax  # pylint: disable=import-outside-toplevel
  from ndpsim import engine  # pylint: disable=import-outside-toplevel
  return jax.device_get(engine._build_tables_jit(system[0], system[1], model, P, T, B))  # pylint: disable=protected-access


def simulate(system, model, routing, policy: str, params=None, *, batch_size: int = 1,
             profile_counts=None, num_groups: int | None = None,
             dtype=None) -> RefResult:
  """Reference simulation of ``routing`` (first ``num_groups`` groups if given).

  Same arguments as :func:`ndpsim.engine.simulate`; ``policy`` is a name.
  ``dtype``: ``np.float32`` or ``np.float64`` for this call's arithmetic and
  outputs (default: the module's ``F``, float32 unless NDPSIM_REF_FLOAT64=1).
  """
  global F, INF  # pylint: disable=global-statement
  if dtype is None:
    return _simulate(system, model, routing, policy, params, batch_size, profile_counts,
                     num_groups)
  saved = F, INF
  F, INF = dtype, dtype(np.inf)
  try:
    return _simulate(system, model, routing, policy, params, batch_size, profile_counts,
                     num_groups)
  finally:
    F, INF = saved


def _simulate(system, model, routing, policy, params, batch_size, profile_counts,
              num_groups) -> RefResult:
  from ndpsim import costs  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  from ndpsim import policies  # pylint: disable=import-outside-toplevel
  params = policies.resolve_params(policies.get(policy), params)
  # ``tuned`` in hard mode is tp_lb_prefetch with fitted params.
  policy = ALIASES.get(policy, policy)
  ss, sp = system[0], system[1]
  pre = np.asarray(routing.prefill_ids)
  dec = np.asarray(routing.decode_ids)
  S, P, L, k = pre.shape
  T = dec.shape[1]
  B = batch_size
  G = S // B if num_groups is None else min(num_groups, S // B)
  E, N = model.num_experts, ss.num_ndp_units
  tab = _tables(system, model, P, T, B)
  cp, cd = _np_costs(tab.prefill), _np_costs(tab.decode)
  attn_p = np.asarray(tab.attn_prefill_s, np.float32)
  sh_p = np.asarray(tab.shared_prefill_s, np.float32)
  attn_d = np.asarray(tab.attn_decode_s, np.float32)
  sh_d = np.asarray(tab.shared_decode_s, np.float32)
  over_d = np.asarray(tab.over_decode_s, np.float32)
  prof = (np.ones((L, E), np.float32) if profile_counts is None
          else np.asarray(profile_counts, np.float32))
  mode = "ep" if policy in ("ndp_ep", "monde", "monde_eq6", "monde_resident", "dynande") else "tp"
  ctx = dict(L=L, E=E, N=N, k=k, fetch_s=F(costs.fetch_s(ss, sp, model, mode)),
             capacity=F(costs.resident_capacity(ss, sp, model, P + T, B)), profile=prof,
             slots=F(costs.expert_slots(ss, sp, model, P + T, B)),
             share=F(costs.link_share(ss, sp)))
  eb = float(M.expert_bytes(model))
  out = RefResult(np.zeros(G, F), np.zeros((G, T), F), np.zeros(G, F), np.zeros(G), np.zeros(G), np.zeros(G), {},
                  np.zeros(G))
  for g in range(G):
    s = _init(policy, ctx, params)
    clk = dict(t=F(tab.over_prefill_s), link_gpu=F(0.0), link_ndp=F(0.0), bg=F(0.0))
    stats = dict(hits=0, misses=0)
    seqs = range(g * B, (g + 1) * B)
    for l in range(L):
      counts = [0] * E
      for q in seqs:
        for p in range(P):
          for e in pre[q, p, l]:
            counts[int(e)] += 1
      _layer(policy, mode, ctx, cp, clk, s, l, list(range(E)), counts,
             [x > 0 for x in counts], attn_p[l], sh_p[l], params, "prefill", stats)
    out.ttft_s[g] = clk["t"]
    for t in range(T):
      start = clk["t"]
      clk["t"] = F(clk["t"] + over_d[t])
      for l in range(L):
        if B == 1:
          ids = [int(e) for e in dec[g, t, l]]
          tok, valid = [1] * k, [True] * k
        else:
          counts = [0] * E
          for q in seqs:
            for e in dec[q, t, l]:
              counts[int(e)] += 1
          order = sorted(range(E), key=lambda e: (-counts[e], e))[:min(E, B * k)]
          ids, tok = order, [counts[e] for e in order]
          valid = [x > 0 for x in tok]
        _layer(policy, mode, ctx, cd, clk, s, l, ids, tok, valid, attn_d[t, l], sh_d[l],
               params, "decode", stats)
      out.step_s[g, t] = F(clk["t"] - start)
    e2e = F(out.ttft_s[g])
    for t in range(T):
      e2e = F(e2e + out.step_s[g, t])
    out.e2e_s[g] = e2e
    out.gpu_hits[g], out.gpu_misses[g] = stats["hits"], stats["misses"]
    out.ndp_lane_s[g] = stats.get("ndp_lane", 0.0)
    out.prefetched_bytes[g] = sum(map(sum, s.prefetched)) * eb
    for key, v in s.events.items():
      out.events[key] = out.events.get(key, 0) + int(v)
  return out

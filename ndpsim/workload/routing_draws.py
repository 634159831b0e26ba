"""The random draws of the routing generator (:mod:`ndpsim.workload.routing`):
counter-based uniforms, global and per-sequence expert popularity, alias
tables, and one MoE layer's expert ids and gates for every token
(:func:`_layer`, the body of the generator's scan over layers).

Pure JAX on static sizes; every draw is a hash of (sequence, token, seed), so
a token's experts do not depend on how many tokens are drawn with it.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


# ----------------------------------------------------------------------------
# Counter-based uniforms.

def _mix(x: jax.Array) -> jax.Array:
  """A bijective 32-bit avalanche hash (lowbias32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _uniform(h: jax.Array, seed: jax.Array) -> jax.Array:
  """Uniform in (0, 1), float32 with 23 random bits, from a token hash and seed."""
  b = _mix(h ^ seed)
  return ((b >> 9).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-23)


def _uniform_array(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniforms in (0, 1) of ``shape`` from a uint32 seed [2] (counter-based)."""
  n = int(np.prod(shape)) if shape else 1
  ctr = lax.iota(jnp.uint32, n)
  return _uniform(_mix(ctr ^ seed[0]), seed[1]).reshape(shape)


def _normal_array(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard normals (Box-Muller) of ``shape`` from a uint32 seed [2]."""
  u = _uniform_array(seed, (2,) + tuple(shape))
  return jnp.sqrt(-2.0 * jnp.log(u[0])) * jnp.cos(2.0 * np.pi * u[1])


def _seed(root: jax.Array, *tags: int) -> jax.Array:
  """A uint32 seed pair derived from the root seed and integer tags."""
  h = root[0]
  for t in tags:
    h = _mix(h ^ jnp.uint32(t * 0x9E3779B9 % 2**32))
  return jnp.stack([h, _mix(h ^ root[1])])


# ----------------------------------------------------------------------------
# Popularity.

def _global_popularity(root, spec, params):
  """Global popularity [L, E] (float32, rows sum to 1) and top expert [L] of a
  RoutingSpec ``spec`` under RoutingParams ``params``.

  In always-on layers the top expert is removed from the popularity (it is
  selected through ``always_on_share`` instead).
  """
  L, E = spec.num_layers, spec.num_experts
  ranks = jnp.argsort(_uniform_array(_seed(root, 1), (L, E)), axis=1)
  logp = -jnp.asarray(params.zipf_exponent, jnp.float32) * jnp.log1p(
      ranks.astype(jnp.float32))
  top = jnp.argmin(ranks, axis=1).astype(jnp.int32)
  on = np.zeros((L, 1), bool)
  on[list(spec.always_on_layers), 0] = True
  if E > 1:
    logp = jnp.where(on & (ranks == 0), -jnp.inf, logp)
  return jax.nn.softmax(logp, axis=1), top


def _log_gamma_sample(root, alpha: jax.Array, tries: int = 4) -> jax.Array:
  """log of Gamma(alpha, 1) samples, alpha > 0 (any shape).

  Marsaglia-Tsang for shape alpha + 1 with a fixed number of vectorized tries
  (acceptance >= 95% each; a token left after all tries keeps its last
  proposal, probability < 1e-5), then Gamma(a) = Gamma(a + 1) U^(1/a) in logs.
  Compiles without loops, unlike jax.random.loggamma.
  """
  d = alpha + 1.0 - 1.0 / 3.0
  c = 1.0 / jnp.sqrt(9.0 * d)
  z = _normal_array(_seed(root, 1), (tries,) + alpha.shape)
  u = _uniform_array(_seed(root, 2), (tries,) + alpha.shape)
  v = (1.0 + c * z) ** 3
  ok = (v > 0) & (jnp.log(u) < 0.5 * z * z + d - d * v + d * jnp.log(jnp.maximum(v, 1e-30)))
  first = jnp.argmax(jnp.concatenate([ok, jnp.ones((1,) + alpha.shape, bool)]), axis=0)
  first = jnp.minimum(first, tries - 1)
  v = jnp.take_along_axis(v, first[None], axis=0)[0]
  log_g1 = jnp.log(d) + jnp.log(jnp.maximum(v, 1e-30))
  ub = _uniform_array(_seed(root, 3), alpha.shape)
  return log_g1 + jnp.log(ub) / alpha


def _sequence_popularity(root, glob, conc, S: int):
  """Dirichlet(E glob / conc) per sequence: [S, L, E]; conc == 0 gives glob."""
  E = glob.shape[-1]
  safe = jnp.where(conc > 0, conc, 1.0)
  alpha = jnp.where(glob > 0, E * glob / safe, 1.0)
  lg = _log_gamma_sample(root, jnp.broadcast_to(alpha, (S,) + glob.shape))
  lg = jnp.where(glob > 0, lg, -jnp.inf)
  q = jax.nn.softmax(lg, axis=-1)
  return jnp.where(conc > 0, q, glob[None])


def _alias_table(w: jax.Array):
  """Walker/Vose alias table of one distribution w [E] (sums to 1).

  Returns (accept [E] float32, alias [E] int32): draw slot i uniformly; keep i
  with probability accept[i], else take alias[i].  Built from the sorted
  masses with two pointers (one pass of E steps).
  """
  E = w.shape[0]
  order = jnp.argsort(w).astype(jnp.int32)
  a = w[order] * E
  def step(_, st):
    a, acc, ali, i, j, carry = st
    has_carry = carry >= 0
    small_i = (i <= j) & (a[jnp.clip(i, 0, E - 1)] < 1.0)
    s = jnp.where(has_carry, carry, i)
    have_small = has_carry | small_i
    have_large = j >= i + jnp.where(has_carry, 0, 1)
    pair = have_small & have_large
    s_c = jnp.clip(s, 0, E - 1)
    j_c = jnp.clip(j, 0, E - 1)
    acc = acc.at[s_c].set(jnp.where(pair, a[s_c], acc[s_c]))
    ali = ali.at[s_c].set(jnp.where(pair, order[j_c], ali[s_c]))
    new_large = a[j_c] - (1.0 - a[s_c])
    a = a.at[j_c].set(jnp.where(pair, new_large, a[j_c]))
    # Consumed the small: advance the left pointer if it was not the carry.
    i = jnp.where(have_small & ~has_carry, i + 1, i)
    carry = jnp.where(have_small, -1, carry)
    becomes_small = pair & (new_large < 1.0)
    carry = jnp.where(becomes_small, j, carry)
    # Finalize the large (accept 1) when no small is left, or it became small.
    j = jnp.where(becomes_small | ~have_small, j - 1, j)
    return a, acc, ali, i, j, carry

  init = (a, jnp.ones(E, jnp.float32), order, jnp.int32(0), jnp.int32(E - 1),
          jnp.int32(-1))
  _, acc, ali, *_ = lax.fori_loop(0, E, step, init)
  accept = jnp.zeros(E, jnp.float32).at[order].set(acc)
  alias = jnp.zeros(E, jnp.int32).at[order].set(ali)
  return accept, alias


# ----------------------------------------------------------------------------
# One layer for all tokens, in stages: token hashes and the successor boost,
# candidate draws, completion of tokens short of k experts, the always-on
# expert, gates, temporal reuse.

class _Ctx(NamedTuple):
  """What every stage of one layer reads: static sizes (S, N, E, k, P, R, F,
  B), this layer's tables ``tab`` (see :func:`_layer`) and per-token
  arrays [S, N]: sequence and token index, table row, its flat base, hash."""
  S: int
  N: int
  E: int
  k: int
  P: int
  R: int
  F: int
  B: int
  tab: dict
  s_idx: jax.Array
  t_idx: jax.Array
  table: jax.Array
  base: jax.Array
  ht: jax.Array

  def take(self, name, idx):
    return self.tab[name].at[idx].get(mode="promise_in_bounds")

  def u(self, j):
    return _uniform(self.ht, self.tab["seeds"][1 + j])


def _context(spec, tab: dict) -> _Ctx:
  S, N, E, k, P, R = (spec.num_seqs, spec.num_tokens, spec.num_experts, spec.top_k,
                      spec.prompt_len, spec.draws)
  F = tab["fill"].shape[0] // (2 * S)
  seeds = tab["seeds"]
  s_idx = lax.broadcasted_iota(jnp.int32, (S, N), 0)
  t_idx = lax.broadcasted_iota(jnp.int32, (S, N), 1)
  table = jnp.where(t_idx >= P, S, 0) + s_idx                # [S, N] table row
  ht = _mix(_mix(s_idx.astype(jnp.uint32) ^ seeds[0]) ^ t_idx.astype(jnp.uint32))
  B = min(S * N, max(1024, (S * N) // 64))
  return _Ctx(S, N, E, k, P, R, F, B, tab, s_idx, t_idx, table, table * E, ht)


def _candidates(c: _Ctx, succ, beta16):
  """The first distinct draws of each token: ``chosen`` (k arrays [S, N]) and
  how many are set (``count`` [S, N], <= k).

  Candidates i.i.d. from the boosted categorical: one word gives the alias
  slot (high 16 bits) and the acceptance draw (low 16); a second word gives
  the boost draws of two candidates.  Candidate arrays are [R, S, N].
  """
  S, N, E, k, R, seeds, u32 = c.S, c.N, c.E, c.k, c.R, c.tab["seeds"], jnp.uint32
  w1 = _mix(c.ht[None] ^ seeds[1:1 + R, None, None])                  # [R, S, N]
  w2 = _mix(c.ht[None] ^ seeds[1 + R:1 + R + (R + 1) // 2, None, None])
  ub = jnp.concatenate([w2 >> 16, w2 & 0xFFFF])[:R]
  slot = ((w1 >> 16) * u32(E)) >> 16
  packed = c.take("packed", c.base[None] + slot.astype(jnp.int32))
  cand = jnp.where((w1 & 0xFFFF) < (packed >> 16), slot, packed & 0xFFFF)
  cands = jnp.where(ub < beta16[None], succ[None].astype(u32), cand).astype(jnp.int32)
  count = jnp.zeros((S, N), jnp.int32)
  chosen = [jnp.zeros((S, N), jnp.int32) for _ in range(k)]
  for r in range(R):
    new = jnp.ones((S, N), bool)
    for rp in range(r):
      new = new & (cands[r] != cands[rp])
    for j in range(min(k, r + 1)):
      chosen[j] = jnp.where(new & (count == j), cands[r], chosen[j])
    count = count + new
  return chosen, jnp.minimum(count, k)


def _complete(c: _Ctx, succ, has_succ, forced, boost, n0, args):
  """Exact Plackett-Luce completion of up to B tokens short of k experts:
  Gumbel-top-k over their unchosen experts (the law of the missing draws)."""
  S, N, E, k, B, seeds, u32 = c.S, c.N, c.E, c.k, c.B, c.tab["seeds"], jnp.uint32
  chosen, count = args
  ch = jnp.stack(chosen).reshape(k, S * N)
  cnt = count.reshape(-1)
  fail = cnt < k
  idx = jnp.nonzero(fail, size=B, fill_value=0)[0]
  valid = jnp.arange(B) < jnp.sum(fail)
  row = c.table.reshape(-1)[idx]
  qrow = c.tab["q"].reshape(2 * S, E)[row]                        # [B, E]
  cb, nb = ch[:, idx].T, cnt[idx]                                 # [B, k], [B]
  sb, hb, fb = succ.reshape(-1)[idx], has_succ.reshape(-1)[idx], forced.reshape(-1)[idx]
  eio = jnp.arange(E, dtype=jnp.int32)
  logw = jnp.where(qrow > 0, jnp.log(jnp.maximum(qrow, 1e-38)), -1e30)
  logw = logw + jnp.where(hb[:, None] & (eio == sb[:, None]), jnp.log1p(boost), 0.0)
  slot = jnp.arange(k, dtype=jnp.int32)
  taken = jnp.any((cb[:, :, None] == eio) & (slot[None, :, None] < nb[:, None, None]), 1)
  taken = taken | (fb[:, None] & (eio == c.tab["top"]))
  hb_ = _mix(c.ht.reshape(-1)[idx] ^ seeds[n0 + 2])[:, None] ^ (
      eio.astype(u32) * u32(0x9E3779B9))
  gum = -jnp.log(-jnp.log(_uniform(hb_, seeds[n0 + 3])))
  order = lax.top_k(jnp.where(taken, -3e38, logw + gum), k)[1]
  src = jnp.clip(slot[None] - nb[:, None], 0, k - 1)
  filled = jnp.where(slot[None] >= nb[:, None], jnp.take_along_axis(order, src, 1), cb)
  tgt = jnp.where(valid, idx, S * N)
  ch = ch.at[:, tgt].set(filled.T, mode="drop")
  cnt = cnt.at[tgt].set(k, mode="drop")
  return tuple(ch.reshape(k, S, N)), cnt.reshape(S, N)


def _fill(c: _Ctx, forced, top, args):
  """Beyond B short tokens: the most popular unchosen experts (approximate)."""
  k = c.k
  chosen, count = args
  ch = jnp.stack(chosen)                                          # [k, S, N]
  slot = jnp.arange(k, dtype=jnp.int32)[:, None, None]

  def one(f, st):
    ch, count = st
    o = c.take("fill", c.table * c.F + f)
    new = (count < k) & ~(forced & (o == top))
    new = new & ~jnp.any((o[None] == ch) & (slot < count[None]), axis=0)
    ch = jnp.where(new[None] & (slot == count[None]), o[None], ch)
    return ch, count + new

  ch, count = lax.fori_loop(0, c.F, one, (ch, count))
  return tuple(ch), count


def _gates(c: _Ctx, params, chosen, forced, share, boost, q_succ, succ, has_succ, n0):
  """Gates [S, N, k]: exponential-race arrival times in selection order (the
  always-on expert, when forced, arrives first), softmax at the temperature."""
  k, seeds = c.k, c.tab["seeds"]
  norm = 1.0 + boost * q_succ
  t0 = -jnp.log(c.u(n0 + 3)) * jnp.maximum(1.0 - share, 1e-6)
  ch = jnp.stack(chosen)                                              # [k, S, N]
  w = c.take("q", c.base[None] + ch) * jnp.where(has_succ[None] & (ch == succ[None]),
                                                 1.0 + boost, 1.0) / norm
  left = 1.0 - jnp.cumsum(w, axis=0) + w                  # mass before each draw
  ue = _uniform(c.ht[None], seeds[n0 + 6:n0 + 6 + k, None, None])
  t = jnp.where(forced, t0, 0.0)[None] + jnp.cumsum(
      -jnp.log(ue) / jnp.maximum(left, 1e-30), axis=0)
  times = [jnp.where(forced, t0, t[0])] + [
      jnp.where(forced, t[j - 1], t[j]) for j in range(1, k)]
  logits = -jnp.log(jnp.stack(times, -1)) / jnp.asarray(params.gate_temperature,
                                                         jnp.float32)
  return jax.nn.softmax(logits, axis=-1)


def _reuse(c: _Ctx, params, ids, gates, n0):
  """Temporal reuse: a token repeats its predecessor with probability reuse_prob."""
  S, N, k = c.S, c.N, c.k
  fresh = (c.t_idx == 0) | (c.u(n0 + 4) >= jnp.asarray(params.reuse_prob, jnp.float32))
  src = lax.cummax(jnp.where(fresh, c.t_idx, 0), axis=1)
  flat_src = (c.s_idx * N + src).reshape(-1)
  ids = ids.reshape(S * N, k).at[flat_src].get(mode="promise_in_bounds")
  gates = gates.reshape(S * N, k).at[flat_src].get(mode="promise_in_bounds")
  return ids.reshape(S, N, k), gates.reshape(S, N, k)


def _layer(spec, params, tab: dict, succ_in: jax.Array):
  """Expert ids and gates of every token at one layer (RoutingSpec ``spec``,
  RoutingParams ``params``).

  tab: this layer's tables, flat over (phase, sequence, expert): 'packed'
  uint32 [2 S E] (16-bit alias acceptance << 16 | alias id), 'q' float32
  [2 S E] (popularity); 'fill' [2 S F] (experts by falling popularity);
  'seeds' uint32 [n]; 'succ' [E] successor map to the next layer; 'on' bool;
  'top' int32 (always-on expert).  succ_in: [S, N] int32 boosted expert per
  token (-1: none).  Returns ids [S, N, k] int32, gates [S, N, k] float32,
  succ_out [S, N] int32 (successor of each token's top-1 for the next layer).
  """
  c = _context(spec, tab)
  S, N, k, R = c.S, c.N, c.k, c.R
  boost = jnp.exp(jnp.asarray(params.successor_strength, jnp.float32)) - 1.0
  has_succ = succ_in >= 0
  succ = jnp.maximum(succ_in, 0)
  q_succ = jnp.where(has_succ, c.take("q", c.base + succ), 0.0)
  beta = boost * q_succ / (1.0 + boost * q_succ)
  beta16 = jnp.round(beta * 65536.0).astype(jnp.uint32)       # P(boost) in 1/2^16
  chosen, count = _candidates(c, succ, beta16)

  # Always-on expert in slot 0 for a share of the tokens.
  n0 = 1 + R + (R + 1) // 2
  share = jnp.asarray(params.always_on_share, jnp.float32)
  forced = tab["on"] & (c.u(n0) < share)
  top = jnp.broadcast_to(tab["top"], (S, N))
  if k > 1:
    complete = functools.partial(_complete, c, succ, has_succ, forced, boost, n0)
    state = (tuple(chosen), count)
    state = lax.cond(jnp.any(count < k), complete, lambda a: a, state)
    state = lax.cond(jnp.any(state[1] < k), functools.partial(_fill, c, forced, top),
                     lambda a: a, state)
    chosen = list(state[0])
  ids = [jnp.where(forced, top, chosen[0])]
  ids += [jnp.where(forced, chosen[j - 1], chosen[j]) for j in range(1, k)]
  gates = _gates(c, params, chosen, forced, share, boost, q_succ, succ, has_succ, n0)
  ids, gates = _reuse(c, params, jnp.stack(ids, -1), gates, n0)
  succ_out = tab["succ"].at[ids[..., 0]].get(mode="promise_in_bounds")
  return ids, gates, succ_out

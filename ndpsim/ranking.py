"""Ranking and running-sum primitives shared by the engine's residency and the
policies: descending ranks and orders (ties by index), packed int32 orders,
and short-row cumsum / cummax in one fused expression.  Pure jnp; no ndpsim
imports, so any module may use them (``policies.base`` re-exports them).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


# Rows up to this long are ranked by pairwise comparison, longer ones by one
# stable sort plus an inverse-permutation scatter.  XLA:CPU sorts call a
# comparator per element pair (about 0.25 ms for 1,000 rows of 8 against
# 0.01 ms for the comparisons); at 128 the O(n^2) comparisons lose.
SMALL_RANK = 32


def cumsum(x: jax.Array) -> jax.Array:
  """Inclusive cumsum along the last axis.  Rows up to :data:`SMALL_RANK`
  long are summed left to right in one elementwise expression (XLA fuses it
  with its neighbours; ``jnp.cumsum`` is a separate ``reduce-window`` op on
  XLA:CPU), in the order a plain loop sums them."""
  n = x.shape[-1]
  if n > SMALL_RANK:
    return jnp.cumsum(x, axis=-1)
  out = [x[..., 0]]
  for i in range(1, n):
    out.append(out[-1] + x[..., i])
  return jnp.stack(out, axis=-1)


def cummax(x: jax.Array) -> jax.Array:
  """Running maximum along the last axis (short rows as in :func:`cumsum`)."""
  n = x.shape[-1]
  if n > SMALL_RANK:
    return jax.lax.cummax(x, axis=x.ndim - 1)
  out = [x[..., 0]]
  for i in range(1, n):
    out.append(jnp.maximum(out[-1], x[..., i]))
  return jnp.stack(out, axis=-1)


def inverse_permutation(order: jax.Array) -> jax.Array:
  """``argsort(order)`` along the last axis for permutations, by a scatter."""
  n = order.shape[-1]
  flat = order.reshape(-1, n)
  iota = jnp.arange(n, dtype=order.dtype)
  inv = jax.vmap(lambda o: jnp.zeros_like(o).at[o].set(iota, unique_indices=True))(flat)
  return inv.reshape(order.shape)


def rank_desc(x: jax.Array, axis: int = -1) -> jax.Array:
  """Rank of each element when sorted descending (0 = largest); ties by index.

  Equal to ``argsort(argsort(-x, stable), stable)`` for every input without
  NaN (-0.0 and +0.0 tie, as in ``jnp.argsort``).
  """
  x = jnp.moveaxis(jnp.asarray(x), axis, -1)
  n = x.shape[-1]
  if n <= SMALL_RANK:
    idx = jnp.arange(n)
    xi, xj = x[..., :, None], x[..., None, :]
    beats = (xj > xi) | ((xj == xi) & (idx[None, :] < idx[:, None]))
    rank = jnp.sum(beats, axis=-1, dtype=jnp.int32)
  else:
    rank = inverse_permutation(jnp.argsort(-x, axis=-1, stable=True).astype(jnp.int32))
  return jnp.moveaxis(rank, -1, axis)


def order_desc(x: jax.Array) -> jax.Array:
  """``argsort(-x, stable=True)`` along the last axis (no NaN)."""
  n = x.shape[-1]
  if n > SMALL_RANK:
    return jnp.argsort(-x, axis=-1, stable=True).astype(jnp.int32)
  return order_from_rank(rank_desc(x))


def order_from_rank(rank: jax.Array) -> jax.Array:
  """Inverse of a permutation ``rank`` along the last axis, by one-hot sums
  (short rows; see :func:`inverse_permutation` for long ones)."""
  n = rank.shape[-1]
  idx = jnp.arange(n, dtype=jnp.int32)
  return jnp.sum(jnp.where(rank[..., None, :] == idx[:, None], idx[None, :], 0), axis=-1,
                 dtype=jnp.int32)


class IntOrder(NamedTuple):
  """A descending order of small non-negative int keys (ties by lower index)
  from one single-operand int32 sort (:func:`int_order_desc`).

  packed: [..., n] ``(max_key - key) << bits | index``: unique per entry,
    smaller = earlier in the order.  sorted: ``packed`` ascending.
  """
  packed: jax.Array
  sorted: jax.Array
  bits: int

  @property
  def order(self) -> jax.Array:
    """``argsort(-key, stable=True)`` [..., n] int32."""
    return self.sorted & ((1 << self.bits) - 1)

  def first(self, m) -> jax.Array:
    """[..., n] bool: entry's rank < ``m`` (int scalar), without the rank."""
    n = self.packed.shape[-1]
    mi = jnp.clip(m, 0, n).astype(jnp.int32)
    thr = jnp.take(self.sorted, jnp.minimum(mi, n - 1), axis=-1)
    return jnp.where(mi >= n, True, self.packed < thr)


def int_order_bits(n: int) -> int:
  return max(1, (n - 1).bit_length())


def int_order_desc(key: jax.Array, max_key: int) -> IntOrder:
  """Orders int keys in ``[0, max_key]`` descending, ties by lower index.

  XLA:CPU sorts a single int32 operand about 6x faster than ``argsort``'s
  (key, index) pair with a comparator; packing the index into the low bits
  makes the keys unique, so the sort is stable by construction.  Needs
  ``(max_key + 1) << int_order_bits(n) <= 2**31``; keys are clipped to
  ``[0, max_key]``.
  """
  n = key.shape[-1]
  bits = int_order_bits(n)
  assert (max_key + 1) << bits <= 1 << 31, (max_key, n)
  k = jnp.clip(key, 0, max_key).astype(jnp.int32)
  packed = ((max_key - k) << bits) | jnp.arange(n, dtype=jnp.int32)
  return IntOrder(packed=packed, sorted=jnp.sort(packed, axis=-1), bits=bits)


def count_order(counts: jax.Array) -> IntOrder:
  """:func:`int_order_desc` of integer-valued counts (float or int) >= 0;
  counts above ``2**(31 - bits) - 1`` (8 M for 256 entries) tie."""
  max_key = (1 << (31 - int_order_bits(counts.shape[-1]))) - 1
  return int_order_desc(jnp.minimum(counts, max_key).astype(jnp.int32), max_key)

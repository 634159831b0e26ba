"""The co-design space and exact projections onto a cost or power budget
(``ndpsim.codesign``).

A point ``x`` [..., 6] (natural units, :data:`NAMES`) has normalised
coordinates ``s`` in [0, 1]^6 (:func:`to_point`: log-uniform between the
bounds of :class:`Space`; ``resident_fraction`` linear).  Spend (cost or
power, ``codesign_cost.spend``) increases in each of the four costed
coordinates ``s_0..s_3`` and is a sum of one term per coordinate.

A projection maps a candidate ``s`` (possibly over budget) onto the budget
along a path ``s(t)``, ``t`` in [0, 1], with ``s(1) = s`` and ``s(0)`` the
cheapest point (every costed coordinate at its lower bound); every path is
monotone in each coordinate, so spend falls monotonically as ``t`` falls and
the largest feasible ``t`` is found by bisection (to 2^-50, against the
budget less 1e-6 of it, so float32 rounding cannot step over it).  A budget below
``spend(s(0))`` is infeasible for every path.  The paths
(:data:`PROJECTIONS`):

* ``uniform``: ``s_i(t) = t s_i`` -- every costed coordinate loses the same
  fraction of its range, whatever it costs;
* ``cost_weighted``: ``s_i(t) = clip(s_i - (1 - t) L w_i, 0, 1)`` with
  ``w_i = d spend / d s_i`` at ``s`` and ``L = max_i s_i / w_i``: the
  steepest-descent path of spend in ``s`` (to first order the Euclidean
  projection onto the budget in normalised coordinates), so a coordinate
  that costs little moves little;
* ``greedy``: with ``g_i = d latency / d s_i`` (the relaxed engine's gradient
  at the candidate), the costed coordinates are cut one after another,
  cheapest latency-per-dollar ``p_i = -g_i / w_i`` first, each to its lower
  bound before the next starts: the solution of the linearised problem
  (minimise the latency increase ``-g . ds`` subject to ``w . ds`` = the
  spend to remove), a fractional knapsack.  Without a gradient it is not
  formed.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ndpsim.base import ConfigError
from ndpsim.codesign_cost import NAMES, CostParams, Machine, spend

PROJECTIONS = ("uniform", "cost_weighted", "greedy")
_COSTED = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])


@dataclasses.dataclass(frozen=True)
class Space:
  """Bounds (lo, hi) per coordinate of :data:`NAMES`, natural units;
  ``None`` bounds of the link bandwidth mean (preset / 8, preset): x2 to x16
  lanes of the preset's generation.  Every bound is assumed: the range a
  designer could build (MAC lanes 32-2048 per unit; DRAM 2/3 to 4/3 of the
  preset's data rate, DDR5-3200 to DDR5-6400 for DDR5-4800; biases as the
  tuner's grid, 0.5-2)."""
  macs_per_cycle: tuple = (32.0, 2048.0)
  link_bandwidth_gbps: tuple | None = None
  dram_rate: tuple = (2.0 / 3.0, 4.0 / 3.0)
  gpu_bias: tuple = (0.5, 2.0)
  ndp_bias: tuple = (0.5, 2.0)

  def bounds(self, sp) -> np.ndarray:
    """[6, 2] (lo, hi); resident_fraction is (0, 1)."""
    bw = float(sp.link.bandwidth_gbps)
    link = self.link_bandwidth_gbps or (bw / 8.0, bw)
    out = np.array([self.macs_per_cycle, link, self.dram_rate, (0.0, 1.0),
                    self.gpu_bias, self.ndp_bias], np.float64)
    for name, (lo, hi) in zip(NAMES, out):
      if not (0 <= lo < hi) or (name != "resident_fraction" and lo <= 0):
        raise ConfigError(f"Space.{name} is ({lo}, {hi}); write 0 < lo < hi")
    return out


def to_point(s, bounds):
  """Normalised s in [0, 1]^6 -> x [..., 6] (log-uniform; resident_fraction linear)."""
  lo, hi = jnp.asarray(bounds[:, 0]), jnp.asarray(bounds[:, 1])
  safe_lo = jnp.where(lo > 0, lo, 1.0)
  logx = jnp.log(safe_lo) + s * (jnp.log(jnp.where(lo > 0, hi, 2.0)) - jnp.log(safe_lo))
  lin = lo + s * (hi - lo)
  return jnp.where(jnp.arange(6) == 3, lin, jnp.exp(logx))


def to_unit(x, bounds) -> np.ndarray:
  """Inverse of :func:`to_point` (NumPy)."""
  x, lo, hi = np.asarray(x, np.float64), bounds[:, 0], bounds[:, 1]
  s = np.empty_like(x)
  for i in range(6):
    if i == 3:
      s[..., i] = (x[..., i] - lo[i]) / (hi[i] - lo[i])
    else:
      s[..., i] = np.log(x[..., i] / lo[i]) / np.log(hi[i] / lo[i])
  return s


def spend_gradient(cp: CostParams, m: Machine, s, bounds, kind: str = "cost_usd"):
  """d spend / d s [N, 6] at normalised points s [N, 6] (>= 0 on the costed
  coordinates, 0 on the biases)."""
  f = lambda si: spend(cp, m, to_point(si, bounds), kind)  # noqa: E731
  return np.asarray(jax.vmap(jax.grad(f))(jnp.asarray(s, jnp.float32)), np.float64)


@functools.partial(jax.jit, static_argnames=("kind",))
def _spend_at(cp, m, s, bounds, kind):
  return spend(cp, m, to_point(s, bounds), kind)


def _bisect(cp, m, path, budgets, bounds, kind, iters):
  """Largest t [N] in [0, 1] with spend(path(t)) <= budgets [N]; returns
  (x [N, 6], feasible [N])."""
  bj = jnp.asarray(bounds, jnp.float32)
  val = lambda t: np.asarray(  # noqa: E731
      _spend_at(cp, m, jnp.asarray(path(t), jnp.float32), bj, kind), np.float64)
  n = len(budgets)
  ok = val(np.zeros(n)) <= budgets
  # Bisect against a budget 1e-6 lower: float32 spend evaluated outside this
  # compiled call can round differently by an ulp; the point must stay within.
  budgets = budgets * (1.0 - 1e-6)
  lo, hi = np.zeros(n), np.ones(n)
  done = val(hi) <= budgets
  lo[done] = 1.0
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    good = val(mid) <= budgets
    lo, hi = np.where(good, mid, lo), np.where(good, hi, mid)
  return np.asarray(to_point(jnp.asarray(path(lo), jnp.float32), bj), np.float64), ok


def _paths(s, w, g, costed):
  """{name: path(t [N]) -> s [N, 6]} for s, w [N, 6], g [N, 6] or None and
  costed [N, 6] (1 where the path may cut)."""
  cut = costed > 0
  out = {"uniform": lambda t: np.where(cut, s * t[:, None], s)}
  wc = np.where(cut, w, 0.0)
  lam = np.max(np.where(wc > 0, s / np.where(wc > 0, wc, 1.0), 0.0), axis=1)
  out["cost_weighted"] = lambda t: np.where(
      cut, np.clip(s - ((1.0 - t) * lam)[:, None] * wc, 0.0, 1.0), s)
  if g is not None:
    price = np.where(wc > 0, -g / np.where(wc > 0, wc, 1.0), np.inf)
    price = np.where(cut, price, np.nan)
    rank = np.argsort(np.argsort(np.nan_to_num(price, nan=np.inf), axis=1), axis=1)
    n = cut.sum(axis=1, keepdims=True)
    out["greedy"] = lambda t: np.where(
        cut, s * np.clip(rank + 1.0 - (1.0 - t)[:, None] * n, 0.0, 1.0), s)
  return out


def project_all(cp: CostParams, m: Machine, xs, budgets, bounds, kind: str = "cost_usd",
                latency_grad_s=None, iters: int = 50, hold_resident=None) -> dict:
  """Every projection of :data:`PROJECTIONS` of points xs [N, 6] onto
  budgets [N] (module docstring).  latency_grad_s: d latency / d s [N, 6] at
  xs (the relaxed engine's), needed for ``greedy`` (omitted without it).
  hold_resident: bool [N], rows whose resident_fraction no path may cut
  (default none).

  Returns {name: (x [N, 6] feasible points, feasible [N] bool)}; where
  infeasible, x is the cheapest point of the path (and over budget).
  """
  xs = np.atleast_2d(np.asarray(xs, np.float64))
  budgets = np.broadcast_to(np.asarray(budgets, np.float64), (len(xs),))
  s = np.clip(to_unit(xs, bounds), 0.0, 1.0)
  w = spend_gradient(cp, m, s, bounds, kind)
  g = None if latency_grad_s is None else np.asarray(latency_grad_s, np.float64)
  costed = np.tile(_COSTED, (len(xs), 1))
  if hold_resident is not None:
    costed[np.asarray(hold_resident, bool), 3] = 0.0
  return {name: _bisect(cp, m, path, budgets, bounds, kind, iters)
          for name, path in _paths(s, w, g, costed).items()}


def whole_experts(x, slots: float, up: bool = False) -> np.ndarray:
  """x [..., 6] with resident_fraction rounded to whole expert slots per
  layer, down (default) or up: the hard engine keeps ``floor(fraction x
  slots)`` experts per layer, so between those values GPU memory is paid for
  and left empty.  slots: the GPU's expert slots per layer at fraction 1."""
  x = np.array(x, np.float64)
  if slots <= 0:
    x[..., 3] = 0.0
    return x
  f = (np.ceil if up else np.floor)(x[..., 3] * slots - (1e-6 if up else -1e-6))
  x[..., 3] = np.clip(f / slots, 0.0, 1.0)
  return x


def project(cp: CostParams, m: Machine, x, budget: float, bounds, kind: str = "cost_usd",
            method: str = "uniform", latency_grad_s=None, iters: int = 50):
  """One point x [6] projected onto ``budget`` by ``method`` (one of
  :data:`PROJECTIONS`).  Returns (x_feasible [6], feasible bool): infeasible
  when even the cheapest point (every costed coordinate at its lower bound)
  exceeds the budget; then x is that cheapest point."""
  if method not in PROJECTIONS:
    raise ConfigError(f"projection method is {method!r}; write one of {list(PROJECTIONS)}")
  if method == "greedy" and latency_grad_s is None:
    raise ConfigError("projection 'greedy' needs latency_grad_s (d latency / d s [6]); "
                      "pass it or use 'cost_weighted'")
  g = None if latency_grad_s is None else np.atleast_2d(latency_grad_s)
  out = project_all(cp, m, np.atleast_2d(x), [budget], bounds, kind, g, iters)
  xp, ok = out[method]
  return xp[0], bool(ok[0])

"""Hardware co-design under a cost or power budget (issue 15, item 2).

Jointly chooses continuous hardware parameters and the ``tuned`` policy's
knobs to minimise mean end-to-end latency subject to ``cost_usd <= budget``
(or ``power_w <= budget``), for each discrete choice (system preset, i.e.
DIMM type, and NDP unit count) enumerated outside the gradient loop.

The co-designed point ``x`` [6], natural units (:data:`NAMES`):

* ``macs_per_cycle``: MAC lanes of each NDP unit (``NdpParams.macs_per_cycle``);
* ``link_bandwidth_gbps``: per-direction link rate (``LinkParams.bandwidth_gbps``);
* ``dram_rate``: the NDP DRAM's data rate relative to its preset (1 = the
  preset's, e.g. DDR5-4800).  Applied as ``tck_ns / r``; timings that JEDEC
  fixes in nanoseconds (CL, tRCD, tRP, tRAS, tRTP, tRFC, tREFI, tFAW, tRRD_L,
  tCCD_L) keep their ns values, so their cycle counts scale by ``r``; the
  burst-bound ones (tCCD_S, tRRD_S, tRTRS) keep their cycle counts; the unit's
  host bus (its DIMM channel) scales by ``r``;
* ``resident_fraction``: the GPU expert budget, as a fraction of the expert
  slots the GPU has after non-expert weights, KV cache and reserve.  The
  budget and the policy's prefetch budget are one variable: memory the policy
  did not fill would be paid for and idle, so the co-design buys exactly the
  GPU memory its resident experts use;
* ``gpu_bias``, ``ndp_bias``: the load balancer's knobs (cost nothing).

Parameterisation: ``x = to_point(sigmoid(z))`` (log-uniform between the
bounds of :class:`Space`, ``resident_fraction`` linear); Adam moves ``z``.
The budget is a differentiable **penalty** during descent: ``loss = relaxed
e2e / e2e_0 + mu relu(spend / budget - 1) ** 2`` with ``mu`` raised
geometrically; one descent per budget and start (``CodesignConfig.starts``:
the costed coordinates at 0.5, 0.15 and 0.85 of their ranges), all in one
vmapped call per step.  The iterates every ``candidates_every`` steps are then
**projected** exactly onto the budget by every method of
``CodesignConfig.projections`` (``ndpsim.codesign_project``: uniform,
cost-weighted, greedy by latency lost per dollar using the relaxed engine's
gradient at the iterate), all projected points of all budgets are scored in
one vmapped call of the *hard* engine, and the fastest feasible one is
returned.  Returned points always satisfy the budget; a budget below a
choice's cheapest point is reported infeasible, never clamped.

:func:`energy_of` scores points' hard latency and energy per output token
(``energy.per_token_j``) in one vmapped call, for a latency-vs-energy front
(:func:`pareto` on (energy, latency)); energy is scored, not optimised.

The cost and power model (prices from ``hw_configs/cost/default.json``,
power from the parts' energy presets) is ``ndpsim.codesign_cost``; its names
are re-exported here.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ndpsim import base, energy, engine, policies
from ndpsim.base import ConfigError
from ndpsim.codesign_cost import (  # noqa: F401  (re-exported)
    BUDGET_KINDS, HW, NAMES, PROVENANCES, CostParams, Machine, breakdown, cost_path,
    expert_slots, load_cost, machine, power_figures, spend)
from ndpsim.codesign_project import (  # noqa: F401  (re-exported)
    PROJECTIONS, Space, project, project_all, spend_gradient, to_point, to_unit,
    whole_experts)
from ndpsim.policies.base import PolicyParams

# DRAM timings JEDEC fixes in ns (their cycle counts scale with the data rate).
_NS_TIMINGS = ("cl_cycles", "t_rcd_cycles", "t_rp_cycles", "t_ras_cycles", "t_rtp_cycles",
               "t_rfc_cycles", "t_refi_cycles", "t_faw_cycles", "t_rrd_l_cycles",
               "t_ccd_l_cycles")


# ---------------------------------------------------------------------------
# The system at a point.

def with_hardware(sp, x):
  """SystemParams at the hardware coordinates of ``x`` [6] (see the module
  docstring for how ``dram_rate`` enters); traced, differentiable."""
  macs, bw, rate = x[0], x[1], x[2]
  d = sp.ndp.dram
  dram = base.replace(d, tck_ns=d.tck_ns / rate,
                      **{k: getattr(d, k) * rate for k in _NS_TIMINGS})
  ndp = base.replace(sp.ndp, dram=dram, macs_per_cycle=macs,
                     host_bus_bandwidth_gbps=sp.ndp.host_bus_bandwidth_gbps * rate)
  return base.replace(sp, ndp=ndp, link=base.replace(sp.link, bandwidth_gbps=bw))


def policy_params(x, temperature_s=2e-5, rank_temperature=1.0) -> PolicyParams:
  """The ``tuned`` knobs of ``x`` [6]."""
  return PolicyParams(resident_fraction=x[3], gpu_bias=x[4], ndp_bias=x[5],
                      temperature_s=temperature_s, rank_temperature=rank_temperature)


def point_of(system, x_defaults=None) -> np.ndarray:
  """The preset's own point: its MACs, link bandwidth, data rate 1,
  resident_fraction 1, biases 1 (``tp_lb_prefetch`` on the shipped parts)."""
  sp = system[1]
  return np.array([float(sp.ndp.macs_per_cycle), float(sp.link.bandwidth_gbps), 1.0, 1.0,
                   1.0, 1.0], np.float64)


# ---------------------------------------------------------------------------
# Latency at points (hard and relaxed).

def _mean_e2e(ss, sp0, model, pre, dec, x, batch, relaxed, temp=2e-5, rank_temp=1.0):
  r = engine.simulate_core(ss, with_hardware(sp0, x), model, policies.get("tuned"),
                           policy_params(x, temp, rank_temp), pre, dec, None, batch,
                           relaxed=relaxed)
  return jnp.mean(r.e2e_s)


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch"))
def _hard_points(ss, sp0, model, pre, dec, xs, batch):
  return jax.vmap(lambda x: _mean_e2e(ss, sp0, model, pre, dec, x, batch, False))(xs)


def _ids(routing):
  return (jnp.asarray(routing.prefill_ids, jnp.int32),
          jnp.asarray(routing.decode_ids, jnp.int32))


def hard_latency(system, model, routing, xs, *, batch_size: int = 1,
                 chunk: int = 32) -> np.ndarray:
  """Hard-engine mean e2e latency, s, of ``tuned`` at each point xs [K, 6], in
  chunks of ``chunk`` points, the last padded (one compile per chunk size)."""
  xs = np.atleast_2d(np.asarray(xs, np.float32))
  pre, dec = _ids(routing)
  out = []
  for i in range(0, len(xs), chunk):
    blk = xs[i:i + chunk]
    pad = np.concatenate([blk, np.repeat(blk[-1:], chunk - len(blk), 0)])
    out.append(np.asarray(_hard_points(system[0], system[1], model, pre, dec,
                                       jnp.asarray(pad), batch_size))[:len(blk)])
  return np.concatenate(out).astype(np.float64)


def energy_params_at(eparams, sp0, x):
  """Energy figures at point ``x`` [6]: the link PHYs' idle power scales with
  the link's bandwidth (W per GB/s of the preset, as the power model's
  ``link_static_w_per_gbps``); every other figure is the preset's (per-bit,
  per-ACT and per-MAC energies, DRAM background and NDP logic idle power do not
  depend on the MAC count or the data rate in the presets)."""
  ln = eparams.link
  return base.replace(eparams, link=base.replace(
      ln, static_power_w=ln.static_power_w * x[1] / sp0.link.bandwidth_gbps))


def _e2e_energy(ss, sp0, model, ep, pre, dec, x, batch):
  sp = with_hardware(sp0, x)
  r = engine.simulate_core(ss, sp, model, policies.get("tuned"), policy_params(x), pre,
                           dec, None, batch, relaxed=False)
  e = energy.per_token_j(r, (ss, sp), model, energy_params_at(ep, sp0, x),
                         prompt_len=pre.shape[1], batch_size=batch)
  return jnp.mean(r.e2e_s), jnp.mean(e.total_j)


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch"))
def _hard_energy_points(ss, sp0, model, ep, pre, dec, xs, batch):
  return jax.vmap(lambda x: _e2e_energy(ss, sp0, model, ep, pre, dec, x, batch))(xs)


def energy_of(system, model, routing, xs, eparams, *, batch_size: int = 1,
              chunk: int = 32):
  """(hard mean e2e latency, s [K]; energy per output token, J [K]) of
  ``tuned`` at each point xs [K, 6], in one vmapped hard call per chunk.

  eparams: ``energy.for_system(preset)`` of the choice.  The hardware reaches
  the energy model through the run (bytes moved and where, FLOPs, end-to-end
  time for the static terms) and :func:`energy_params_at`; energy per token
  is ``energy.per_token_j``'s total, averaged over sequence groups."""
  xs = np.atleast_2d(np.asarray(xs, np.float32))
  if xs.shape[-1] != 6:
    raise ConfigError(f"energy_of: points have shape {xs.shape}; write [K, 6] ({NAMES})")
  pre, dec = _ids(routing)
  ep = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), eparams)
  lat, en = [], []
  for i in range(0, len(xs), chunk):
    blk = xs[i:i + chunk]
    pad = np.concatenate([blk, np.repeat(blk[-1:], chunk - len(blk), 0)])
    t, e = _hard_energy_points(system[0], system[1], model, ep, pre, dec,
                               jnp.asarray(pad), batch_size)
    lat.append(np.asarray(t)[:len(blk)])
    en.append(np.asarray(e)[:len(blk)])
  return (np.concatenate(lat).astype(np.float64), np.concatenate(en).astype(np.float64))


def relaxed_latency(system, model, routing, x, *, temperature_s=2e-5,
                    rank_temperature=1.0, batch_size: int = 1):
  """Relaxed mean e2e latency at one point x [6] (differentiable in x)."""
  pre, dec = _ids(routing)
  return _mean_e2e(system[0], system[1], model, pre, dec, jnp.asarray(x), batch_size,
                   True, temperature_s, rank_temperature)


# ---------------------------------------------------------------------------
# The co-design loop.

@dataclasses.dataclass(frozen=True)
class CodesignConfig:
  """steps: Adam steps (one vmapped relaxed value+grad over the K budgets
  each).  lr: Adam step in the unconstrained z per coordinate.  mu: (start,
  end) of the geometric penalty weight.  temperature_s, rank_temperature:
  (start, end) of the relaxation's geometric annealing (as ``tune``).
  candidates_every: take the iterate as a candidate every this many steps
  (and the start and the last).  kind: the budgeted quantity, cost_usd or
  power_w.  projections: the projections every candidate is scored under
  (names of :data:`PROJECTIONS`).  starts: normalised values of the four
  costed coordinates at which descents start (biases at 1), one descent per
  start and budget, all in the same vmapped call: latency is not convex in
  the hardware (the resident fraction's effect in particular is a staircase
  of whole experts), so one start can settle where another start's basin is
  faster."""
  steps: int = 24
  lr: tuple = (0.6, 0.6, 0.6, 0.6, 0.05, 0.05)
  mu: tuple = (3.0, 300.0)
  temperature_s: tuple = (4e-5, 5e-6)
  rank_temperature: tuple = (3.0, 0.5)
  candidates_every: int = 3
  kind: str = "cost_usd"
  projections: tuple = PROJECTIONS
  starts: tuple = (0.5, 0.15, 0.85)

  def check(self):
    if self.kind not in BUDGET_KINDS:
      raise ConfigError(f"CodesignConfig.kind is {self.kind!r}; write one of "
                        f"{list(BUDGET_KINDS)}")
    if self.steps < 1 or self.candidates_every < 1:
      raise ConfigError("CodesignConfig.steps and candidates_every must be >= 1")
    if len(self.lr) != 6:
      raise ConfigError(f"CodesignConfig.lr has {len(self.lr)} entries; write 6, one "
                        f"per coordinate of {list(NAMES)}")
    if not self.starts or any(not 0 < v < 1 for v in self.starts):
      raise ConfigError(f"CodesignConfig.starts is {self.starts!r}; write a non-empty "
                        "tuple of values strictly between 0 and 1")
    bad = [p for p in self.projections if p not in PROJECTIONS]
    if bad or not self.projections:
      raise ConfigError(f"CodesignConfig.projections is {self.projections!r}; write a "
                        f"non-empty tuple of {list(PROJECTIONS)}")


class CodesignResult(NamedTuple):
  budgets: np.ndarray      # [K] budget (USD or W)
  points: np.ndarray       # [K, 6] best feasible point per budget (natural units)
  feasible: np.ndarray     # [K] bool: the budget admits a point of this choice
  spend: np.ndarray        # [K] cost (or power) at the point, <= budget
  e2e_s: np.ndarray        # [K] hard mean e2e at the point
  evaluations: int         # relaxed evaluations (steps + 1) x K x S + distinct hard points
  history: dict            # per step: points [K, 6], relaxed e2e, spend; candidates


def _schedule(a, b, steps):
  n = max(steps - 1, 1)
  return [a * (b / a) ** (min(i, n) / n) for i in range(steps + 1)]


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch", "kind"))
def _step_values(ss, sp0, model, pre, dec, cp, m_arr, bounds, z, budgets, mu, temp,
                 rank_temp, batch, kind):
  """Per budget k (z [K, 6], budgets [K]): relaxed latency [K], s, its
  gradient d lat / d z [K, 6], penalty mu relu(spend / budget - 1)^2 [K] and
  its gradient [K, 6]."""
  m = Machine(*[m_arr[i] for i in range(5)])

  def lat_fn(zk):
    return _mean_e2e(ss, sp0, model, pre, dec, to_point(jax.nn.sigmoid(zk), bounds), batch,
                     True, temp, rank_temp)

  def pen_fn(zk, bk):
    over = jax.nn.relu(spend(cp, m, to_point(jax.nn.sigmoid(zk), bounds), kind) / bk - 1.0)
    return mu * over ** 2

  lat, g_lat = jax.vmap(jax.value_and_grad(lat_fn))(z)
  pen, g_pen = jax.vmap(jax.value_and_grad(pen_fn))(z, budgets)
  return lat, g_lat, pen, g_pen


def _start_s(start, bounds, starts) -> np.ndarray:
  """Normalised start points [S, 6]: ``start`` (x [6]) alone, or one per
  value of ``starts`` (costed coordinates at it, biases at 1)."""
  if start is not None:
    return np.clip(to_unit(np.asarray(start, np.float64)[None], bounds), 1e-3, 1 - 1e-3)
  bias = to_unit(np.ones((1, 6)), bounds)[0, 4:]
  return np.array([[v, v, v, v, *bias] for v in starts], np.float64)


def _descend(system, model, routing, cost, m, bounds, budgets, c, batch_size, start,
             progress):
  """The penalised Adam descents, one per budget and start (row k S + j:
  budget k, start j); returns (candidates x [K, S C, 6], d lat / d s at
  them [K, S C, 6], history)."""
  ss, sp0 = system
  pre, dec = _ids(routing)
  args = (ss, sp0, model, pre, dec,
          jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), cost),
          jnp.asarray(np.array(m, np.float64), jnp.float32), jnp.asarray(bounds, jnp.float32))
  temps, ranks = _schedule(*c.temperature_s, c.steps), _schedule(*c.rank_temperature, c.steps)
  mus = _schedule(*c.mu, c.steps)
  s0 = np.repeat(_start_s(start, bounds, c.starts)[None], len(budgets), 0).reshape(-1, 6)
  z = jnp.asarray(np.log(s0 / (1 - s0)), jnp.float32)
  bud = jnp.asarray(np.repeat(budgets, len(s0) // len(budgets)), jnp.float32)
  opt, lr = optax.adam(1.0), jnp.asarray(c.lr, jnp.float32)
  st = opt.init(z)
  hist, cands, e2e0 = {"points": [], "relaxed_e2e_s": [], "spend": []}, [], None
  for i in range(c.steps + 1):  # the last pass only scores the final iterate
    lat, g_lat, _, g_pen = _step_values(*args, z, bud, jnp.float32(mus[i]),
                                        jnp.float32(temps[i]), jnp.float32(ranks[i]),
                                        batch_size, c.kind)
    e2e0 = float(np.mean(np.asarray(lat))) if e2e0 is None else e2e0
    s = np.asarray(jax.nn.sigmoid(z), np.float64)
    xs = np.asarray(to_point(jnp.asarray(s, jnp.float32), args[-1]), np.float64)
    sp_now = np.asarray(spend(cost, m, xs, c.kind), np.float64)
    hist["points"].append(xs.tolist())
    hist["relaxed_e2e_s"].append(np.asarray(lat, np.float64).tolist())
    hist["spend"].append(sp_now.tolist())
    if i % c.candidates_every == 0 or i == c.steps:
      cands.append((xs, np.asarray(g_lat, np.float64) / np.maximum(s * (1 - s), 1e-12)))
    if i == c.steps:
      break
    if progress is not None:
      progress({"step": i + 1, "steps": c.steps, "relaxed_e2e_s": np.asarray(lat),
                "spend": sp_now})
    upd, st = opt.update(g_lat / e2e0 + g_pen, st, z)
    z = optax.apply_updates(z, lr * (1.0 - 0.75 * i / max(c.steps - 1, 1)) * upd)
  K = len(budgets)
  xs = np.stack([x for x, _ in cands], 1).reshape(K, -1, 6)  # [K, S C, 6]
  gs = np.stack([g for _, g in cands], 1).reshape(K, -1, 6)
  return xs, gs, hist


# Resident-fraction handling of the candidates (label suffixes): projected
# freely then rounded down to whole experts; rounded down first and held;
# rounded up first and held (the others cut to pay for it).
RESIDENT_ROUNDING = ("", "+rf_floor", "+rf_ceil")


def _score(system, model, routing, cost, m, bounds, budgets, xs, gs, c, batch_size, chunk,
           slots):
  """Projects every candidate xs [K, C, 6] (latency gradients gs [K, C, 6])
  under every resident rounding and projection, scores the distinct points in
  one hard call; returns (labels [L], points [K, C, L, 6], feasible [K, C, L],
  e2e [K, C, L], distinct points)."""
  K, C = xs.shape[:2]
  n = K * C
  X = xs.reshape(n, 6)
  var = np.concatenate([X, whole_experts(X, slots), whole_experts(X, slots, up=True)])
  proj = project_all(cost, m, var, np.tile(np.repeat(budgets, C), 3), bounds, c.kind,
                     np.tile(gs.reshape(n, 6), (3, 1)),
                     hold_resident=np.repeat([False, True, True], n))
  labels, pts, ok = [], [], []
  for v, suffix in enumerate(RESIDENT_ROUNDING):
    for p in c.projections:
      xp = proj[p][0][v * n:(v + 1) * n]
      pts.append(whole_experts(xp, slots) if v == 0 else xp)
      ok.append(proj[p][1][v * n:(v + 1) * n])
      labels.append(p + suffix)
  L = len(labels)
  pts = np.stack(pts, 1).reshape(K, C, L, 6)
  ok = np.stack(ok, 1).reshape(K, C, L)
  uniq, inv = np.unique(pts.reshape(-1, 6).astype(np.float32), axis=0, return_inverse=True)
  lat = hard_latency(system, model, routing, uniq, batch_size=batch_size, chunk=chunk)
  return labels, pts, ok, lat[inv.reshape(-1)].reshape(K, C, L), len(uniq)


def codesign(system, model, routing, budgets, cost: CostParams,
             config_: CodesignConfig = CodesignConfig(), *, space: Space = Space(),
             batch_size: int = 1, start=None, progress=None,
             chunk: int = 32) -> CodesignResult:
  """Co-designs one discrete choice (``system``: its preset and unit count) at
  K budgets together; see the module docstring.

  budgets: [K] in USD (kind cost_usd) or W (power_w).  start: x [6], the one
  start of every descent (default: ``CodesignConfig.starts``, S starts per
  budget).  progress: called per step with {"step", "steps", "relaxed_e2e_s"
  [K S], "spend" [K S]} (row k S + j: budget k, start j).
  history["best_projection"] [K] names the projection and resident rounding
  of each returned point (e.g. ``greedy+rf_ceil``).
  """
  c = config_
  c.check()
  engine.validate(system[0], system[1], model, routing.prefill_ids, routing.decode_ids,
                  batch_size)
  m = machine(system, model, routing.prefill_ids.shape[1] + routing.decode_ids.shape[1],
              batch_size)
  bounds = space.bounds(system[1])
  budgets = np.asarray(budgets, np.float64).reshape(-1)
  K = len(budgets)
  xs, gs, hist = _descend(system, model, routing, cost, m, bounds, budgets, c, batch_size,
                          start, progress)
  labels, pts, ok, lat, n_hard = _score(
      system, model, routing, cost, m, bounds, budgets, xs, gs, c, batch_size, chunk,
      expert_slots(system, model, routing.prefill_ids.shape[1] + routing.decode_ids.shape[1],
                   batch_size))
  flat_ok, flat_lat = ok.reshape(K, -1), lat.reshape(K, -1)
  best = np.argmin(np.where(flat_ok, flat_lat, np.inf), axis=1)
  points = pts.reshape(K, -1, 6)[np.arange(K), best]
  feasible = flat_ok.any(axis=1)
  hist.update(candidates=pts.tolist(), candidates_e2e_s=lat.tolist(),
              candidates_feasible=ok.tolist(), projections=labels,
              best_projection=[labels[b % len(labels)] for b in best])
  return CodesignResult(budgets=budgets, points=points, feasible=feasible,
                        spend=np.asarray(spend(cost, m, points, c.kind), np.float64),
                        e2e_s=np.where(feasible, flat_lat[np.arange(K), best], np.nan),
                        evaluations=len(hist["points"]) * len(hist["points"][0]) + n_hard,
                        history=hist)


# ---------------------------------------------------------------------------
# Brute force and the Pareto front.

def grid_points(system, axes: dict, space: Space = Space()) -> np.ndarray:
  """The product grid [G, 6] of ``axes`` ({name: values}); coordinates not
  named stay at the preset's point (:func:`point_of`)."""
  for k in axes:
    if k not in NAMES:
      raise ConfigError(f"grid axis {k!r} is unknown; write one of {list(NAMES)}")
  base_ = point_of(system)
  vals = [np.asarray(axes.get(n, [base_[i]]), np.float64) for i, n in enumerate(NAMES)]
  return np.array(np.meshgrid(*vals, indexing="ij")).reshape(6, -1).T


def grid_best(cost: CostParams, m: Machine, points, e2e_s, budget: float,
              kind: str = "cost_usd"):
  """(index, e2e) of the fastest grid point within ``budget``; (-1, nan) if none."""
  sp = np.asarray(spend(cost, m, np.asarray(points), kind), np.float64)
  ok = sp <= budget
  if not ok.any():
    return -1, float("nan")
  e = np.where(ok, np.asarray(e2e_s, np.float64), np.inf)
  i = int(np.argmin(e))
  return i, float(e[i])


def pareto(spend_, e2e_s) -> np.ndarray:
  """Indices of the non-dominated points (lower spend and lower latency),
  sorted by spend.  Any cost-like first axis works: ``pareto(energy_j, e2e_s)``
  is the latency-vs-energy front."""
  s, e = np.asarray(spend_, np.float64), np.asarray(e2e_s, np.float64)
  order = np.lexsort((e, s))
  keep, best = [], np.inf
  for i in order:
    if np.isfinite(e[i]) and e[i] < best:
      keep.append(int(i))
      best = e[i]
  return np.asarray(keep, np.int64)


def spend_range(system, model, context_len: int, cost: CostParams,
                space: Space = Space(), kind: str = "cost_usd", batch: int = 1):
  """(cheapest, dearest) spend of a discrete choice over the space."""
  m = machine(system, model, context_len, batch)
  b = space.bounds(system[1])
  lo = np.asarray(to_point(jnp.zeros(6), b), np.float64)
  hi = np.asarray(to_point(jnp.ones(6), b), np.float64)
  return float(spend(cost, m, lo, kind)), float(spend(cost, m, hi, kind))

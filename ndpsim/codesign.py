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
  GPU memory its resident experts use (priced per GB, a hypothetical SKU with
  that much memory; at 1 it is the shipped card at its list price);
* ``gpu_bias``, ``ndp_bias``: the load balancer's knobs (cost nothing).

Parameterisation: ``x_i = lo_i (hi_i / lo_i) ** sigmoid(z_i)`` (log-uniform
between bounds, :class:`Space`) for the hardware and biases,
``resident_fraction = sigmoid(z)``.  The budget is a differentiable
**penalty** during descent: ``loss = relaxed e2e / e2e_0 + mu *
relu(cost / budget - 1) ** 2`` with ``mu`` raised geometrically; every
candidate is then **projected** onto the budget exactly -- bisection on
``t`` in ``s(t) = t s`` where ``s = sigmoid(z)`` of the costed coordinates
(cost is increasing in each, so the largest feasible ``t`` is found to 1e-9)
-- and scored with the *hard* engine; the best feasible candidate is
returned.  Returned points therefore always satisfy the budget; a budget below
the cheapest point of a choice is reported infeasible, never clamped.

One jitted, vmapped call per discrete choice and step: the K budgets of a
Pareto sweep are optimised together (``vmap`` over budgets of the relaxed
engine's value and gradient), and all K x C candidates are scored in one
vmapped hard call.

The cost and power model (:class:`CostParams`, data in
``hw_configs/cost/default.json`` with provenance per field)::

  cost_usd = gpu_usd + link_usd + N x unit_usd
  gpu_usd  = list_price - mem_usd_per_gb x (max_expert_gb - expert_gb)
  link_usd = usd_per_gbps x link_bandwidth_gbps
  unit_usd = capacity_gb x dram_usd_per_gb x (1 + premium x (dram_rate - 1))
             + module_board_usd + logic_base_usd
             + macs x mac_area_mm2 x overhead x logic_usd_per_mm2
  power_w  = gpu_board_w + link_w + N x unit_w
  link_w   = 2 x link_bandwidth_gbps x 8 x pj_per_bit x 1e-3
  unit_w   = dram_background_w + read_pj_per_bit x 8 x stream_gbps_0 x dram_rate x 1e-3
             + logic_static_w + macs x clock_ghz x mac_energy_pj x overhead x 1e-3

with ``mem_usd_per_gb = memory_spot_usd_per_gb x memory_retail_factor`` and
``expert_gb = resident_fraction x max_expert_gb``.  Power is a peak (every
lane busy), not an energy: energy per request needs the engine's busy times.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ndpsim import base, config, costs, engine, policies
from ndpsim.base import ConfigError
from ndpsim.hw import ndp as ndp_mod
from ndpsim.policies.base import PolicyParams
from ndpsim.workload import models as M

NAMES = ("macs_per_cycle", "link_bandwidth_gbps", "dram_rate", "resident_fraction",
         "gpu_bias", "ndp_bias")
HW = NAMES[:4]          # the coordinates that cost money or power
BUDGET_KINDS = ("cost_usd", "power_w")
PROVENANCES = base.PROVENANCES

# DRAM timings JEDEC fixes in ns (their cycle counts scale with the data rate).
_NS_TIMINGS = ("cl_cycles", "t_rcd_cycles", "t_rp_cycles", "t_ras_cycles", "t_rtp_cycles",
               "t_rfc_cycles", "t_refi_cycles", "t_faw_cycles", "t_rrd_l_cycles",
               "t_ccd_l_cycles")


# ---------------------------------------------------------------------------
# The cost model.

@base.params_dataclass
class CostParams:
  """Traced cost/power figures of one discrete choice (see the module docstring).

  gpu_list_price_usd, gpu_board_power_w, gpu_memory_usd_per_gb (retail);
  dram_usd_per_gb, module_board_usd, dram_background_w, dram_read_pj_per_bit,
  speed_premium_per_rate (per NDP unit's DIMM type); logic_base_usd,
  mac_area_mm2, mac_energy_pj, mac_overhead_factor, logic_usd_per_mm2,
  logic_static_w (the NDP logic); link_usd_per_gbps, link_pj_per_bit.
  """
  gpu_list_price_usd: Any
  gpu_board_power_w: Any
  gpu_memory_usd_per_gb: Any
  dram_usd_per_gb: Any
  module_board_usd: Any
  dram_background_w: Any
  dram_read_pj_per_bit: Any
  speed_premium_per_rate: Any
  logic_base_usd: Any
  mac_area_mm2: Any
  mac_energy_pj: Any
  mac_overhead_factor: Any
  logic_usd_per_mm2: Any
  logic_static_w: Any
  link_usd_per_gbps: Any
  link_pj_per_bit: Any


class Machine(NamedTuple):
  """Concrete figures of a discrete choice the cost model reads (floats).

  num_units: NDP units.  unit_capacity_gb: DRAM per unit, 1e9 B.
  stream_gbps_0: one unit's internal stream bandwidth at dram_rate 1, 1e9 B/s.
  clock_ghz: NDP MAC clock.  max_expert_gb: GPU memory for resident experts
  at resident_fraction 1, 1e9 B.
  """
  num_units: float
  unit_capacity_gb: float
  stream_gbps_0: float
  clock_ghz: float
  max_expert_gb: float


_UNITS = {"usd": "USD", "w": "W", "usd_per_gb": "USD/GB", "pj_per_bit": "pJ/bit",
          "um2": "um2", "pj": "pJ", "usd_per_mm2": "USD/mm2", "usd_per_gbps": "USD per GB/s",
          "1": "1"}


def _field(entry: Any, where: str, unit: str) -> float:
  if not isinstance(entry, dict) or "value" not in entry:
    raise ConfigError(f"{where}: write an object {{\"value\": ..., \"unit\": \"{unit}\", "
                      "\"provenance\": ..., \"source\" or \"reasoning\": ...}")
  v = entry["value"]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
    raise ConfigError(f"{where}.value is {v!r}; write a number >= 0 (in {unit})")
  if entry.get("unit") != unit:
    raise ConfigError(f"{where}.unit is {entry.get('unit')!r}; write \"{unit}\"")
  prov = entry.get("provenance")
  if prov not in PROVENANCES:
    raise ConfigError(f"{where}.provenance is {prov!r}; write one of {list(PROVENANCES)}")
  if prov in ("spec", "measured") and not str(entry.get("source", "")).strip():
    raise ConfigError(f"{where}: a {prov} figure needs \"source\": where a reader finds it "
                      "and the figure taken from it")
  if prov in ("assumed", "derived") and not str(entry.get("reasoning", "")).strip():
    raise ConfigError(f"{where}: an {prov} figure needs \"reasoning\": why this value")
  return float(v)


def cost_path(name: str = "default"):
  """Path of a shipped cost file (``hw_configs/cost/<name>.json``) or of a
  given ``.json`` path."""
  import pathlib  # pylint: disable=import-outside-toplevel
  p = pathlib.Path(name)
  if p.suffix == ".json":
    return p
  return config.config_root() / "cost" / f"{name}.json"


def load_cost(gpu: str, ndp: str, link: str, name: str = "default") -> CostParams:
  """CostParams for the named parts from a cost file; ConfigError naming the
  missing part or bad field."""
  p = cost_path(name)
  if not p.is_file():
    raise ConfigError(f"cost file {str(p)!r} does not exist; write a path to a cost "
                      "JSON or 'default'")
  d = json.loads(p.read_text())

  def part(group, key):
    have = d.get(group, {})
    if key not in have:
      raise ConfigError(f"{p}: {group}.{key} is missing: the cost model has no figures "
                        f"for the {group} preset {key!r} (it has {sorted(have)}); add "
                        f"an entry for it")
    return have[key]

  g, n, lo, li = part("gpu", gpu), part("ndp", ndp), d.get("ndp_logic", {}), part("link", link)

  def f(obj, grp, k, unit):
    if k not in obj:
      raise ConfigError(f"{p}: field {grp}.{k} is missing; add it ({unit})")
    return _field(obj[k], f"{p}: {grp}.{k}", unit)

  return CostParams(
      gpu_list_price_usd=f(g, f"gpu.{gpu}", "list_price_usd", "USD"),
      gpu_board_power_w=f(g, f"gpu.{gpu}", "board_power_w", "W"),
      gpu_memory_usd_per_gb=(f(g, f"gpu.{gpu}", "memory_spot_usd_per_gb", "USD/GB")
                             * f(g, f"gpu.{gpu}", "memory_retail_factor", "1")),
      dram_usd_per_gb=f(n, f"ndp.{ndp}", "dram_usd_per_gb", "USD/GB"),
      module_board_usd=f(n, f"ndp.{ndp}", "module_board_usd", "USD"),
      dram_background_w=f(n, f"ndp.{ndp}", "dram_background_w", "W"),
      dram_read_pj_per_bit=f(n, f"ndp.{ndp}", "dram_read_pj_per_bit", "pJ/bit"),
      speed_premium_per_rate=f(n, f"ndp.{ndp}", "speed_premium_per_rate", "1"),
      logic_base_usd=f(lo, "ndp_logic", "base_usd", "USD"),
      mac_area_mm2=f(lo, "ndp_logic", "mac_area_um2", "um2") * 1e-6,
      mac_energy_pj=f(lo, "ndp_logic", "mac_energy_pj", "pJ"),
      mac_overhead_factor=f(lo, "ndp_logic", "mac_overhead_factor", "1"),
      logic_usd_per_mm2=f(lo, "ndp_logic", "logic_usd_per_mm2", "USD/mm2"),
      logic_static_w=f(lo, "ndp_logic", "static_w", "W"),
      link_usd_per_gbps=f(li, f"link.{link}", "usd_per_gbps", "USD per GB/s"),
      link_pj_per_bit=f(li, f"link.{link}", "pj_per_bit", "pJ/bit"))


def breakdown(cp: CostParams, m: Machine, x) -> dict:
  """Cost (USD) and peak power (W) of point ``x`` [..., 6], by component.

  Returns arrays of x's batch shape: cost_usd, power_w, gpu_usd, link_usd,
  unit_usd (one NDP unit), gpu_w, link_w, unit_w.  Differentiable in x and cp.
  """
  x = jnp.asarray(x)
  macs, bw, rate, rf = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
  expert_gb = rf * m.max_expert_gb
  gpu_usd = cp.gpu_list_price_usd - cp.gpu_memory_usd_per_gb * (m.max_expert_gb - expert_gb)
  link_usd = cp.link_usd_per_gbps * bw
  mac_usd = macs * cp.mac_area_mm2 * cp.mac_overhead_factor * cp.logic_usd_per_mm2
  unit_usd = (m.unit_capacity_gb * cp.dram_usd_per_gb
              * (1.0 + cp.speed_premium_per_rate * (rate - 1.0))
              + cp.module_board_usd + cp.logic_base_usd + mac_usd)
  gpu_w = cp.gpu_board_power_w + 0.0 * rf
  link_w = 2.0 * bw * 8.0 * cp.link_pj_per_bit * 1e-3
  unit_w = (cp.dram_background_w + cp.dram_read_pj_per_bit * 8.0 * m.stream_gbps_0 * rate
            * 1e-3 + cp.logic_static_w
            + macs * m.clock_ghz * cp.mac_energy_pj * cp.mac_overhead_factor * 1e-3)
  return {"cost_usd": gpu_usd + link_usd + m.num_units * unit_usd,
          "power_w": gpu_w + link_w + m.num_units * unit_w,
          "gpu_usd": gpu_usd, "link_usd": link_usd, "unit_usd": unit_usd,
          "gpu_w": gpu_w, "link_w": link_w, "unit_w": unit_w}


def spend(cp: CostParams, m: Machine, x, kind: str = "cost_usd"):
  """The budgeted quantity (``kind``: cost_usd or power_w) at ``x`` [..., 6]."""
  return breakdown(cp, m, x)[kind]


# ---------------------------------------------------------------------------
# The design space and the system at a point.

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


def machine(system, model, context_len: int, batch: int = 1) -> Machine:
  """The concrete :class:`Machine` figures of a loaded system for a model."""
  ss, sp = system
  cap = float(costs.resident_capacity(ss, sp, model, context_len, batch))
  return Machine(num_units=float(ss.num_ndp_units),
                 unit_capacity_gb=ndp_mod.capacity_bytes(ss.ndp) / 1e9,
                 stream_gbps_0=float(ndp_mod.stream_bandwidth_gbps(ss.ndp, sp.ndp)),
                 clock_ghz=float(sp.ndp.clock_mhz) / 1e3,
                 max_expert_gb=cap * M.num_moe_layers(model) * float(M.expert_bytes(model))
                 / 1e9)


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


def relaxed_latency(system, model, routing, x, *, temperature_s=2e-5,
                    rank_temperature=1.0, batch_size: int = 1):
  """Relaxed mean e2e latency at one point x [6] (differentiable in x)."""
  pre, dec = _ids(routing)
  return _mean_e2e(system[0], system[1], model, pre, dec, jnp.asarray(x), batch_size,
                   True, temperature_s, rank_temperature)


# ---------------------------------------------------------------------------
# Projection onto the budget.

def project(cp: CostParams, m: Machine, x, budget: float, bounds, kind: str = "cost_usd",
            iters: int = 60):
  """The largest ``t`` in [0, 1] with spend(s = t s_x on the costed coordinates)
  <= budget, and the point there.  Returns (x_feasible [6], feasible bool):
  infeasible when even t = 0 (every costed coordinate at its lower bound)
  exceeds the budget; then x is that cheapest point."""
  s = to_unit(np.asarray(x, np.float64), bounds)
  mask = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
  pt = lambda t: np.asarray(to_point(jnp.asarray(s * (1 - mask + t * mask)), bounds),  # noqa: E731
                            np.float64)
  val = lambda t: float(spend(cp, m, pt(t), kind))  # noqa: E731
  if val(1.0) <= budget:
    return pt(1.0), True
  if val(0.0) > budget:
    return pt(0.0), False
  lo, hi = 0.0, 1.0
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if val(mid) <= budget else (lo, mid)
  return pt(lo), True


# ---------------------------------------------------------------------------
# The co-design loop.

@dataclasses.dataclass(frozen=True)
class CodesignConfig:
  """steps: Adam steps (one vmapped relaxed value+grad over the K budgets
  each).  lr: Adam step in the unconstrained z per coordinate.  mu: (start,
  end) of the geometric penalty weight.  temperature_s, rank_temperature:
  (start, end) of the relaxation's geometric annealing (as ``tune``).
  candidates_every: project and hard-score every this many steps (and the
  last).  kind: the budgeted quantity, cost_usd or power_w."""
  steps: int = 24
  lr: tuple = (0.6, 0.6, 0.6, 0.6, 0.05, 0.05)
  mu: tuple = (3.0, 300.0)
  temperature_s: tuple = (4e-5, 5e-6)
  rank_temperature: tuple = (3.0, 0.5)
  candidates_every: int = 3
  kind: str = "cost_usd"

  def check(self):
    if self.kind not in BUDGET_KINDS:
      raise ConfigError(f"CodesignConfig.kind is {self.kind!r}; write one of "
                        f"{list(BUDGET_KINDS)}")
    if self.steps < 1 or self.candidates_every < 1:
      raise ConfigError("CodesignConfig.steps and candidates_every must be >= 1")
    if len(self.lr) != 6:
      raise ConfigError(f"CodesignConfig.lr has {len(self.lr)} entries; write 6, one "
                        f"per coordinate of {list(NAMES)}")


class CodesignResult(NamedTuple):
  budgets: np.ndarray      # [K] budget (USD or W)
  points: np.ndarray       # [K, 6] best feasible point per budget (natural units)
  feasible: np.ndarray     # [K] bool: the budget admits a point of this choice
  spend: np.ndarray        # [K] cost (or power) at the point, <= budget
  e2e_s: np.ndarray        # [K] hard mean e2e at the point
  evaluations: int         # relaxed vmapped calls x K + hard points scored
  history: dict            # per step: points [K, 6], relaxed e2e, spend; candidates


def _schedule(a, b, steps):
  n = max(steps - 1, 1)
  return [a * (b / a) ** (i / n) for i in range(steps)]


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch", "kind"))
def _step_values(ss, sp0, model, pre, dec, cp, m_arr, bounds, z, budgets, e2e0, mu, temp,
                 rank_temp, batch, kind):
  m = Machine(*[m_arr[i] for i in range(5)])

  def loss(zk, bk):
    x = to_point(jax.nn.sigmoid(zk), bounds)
    lat = _mean_e2e(ss, sp0, model, pre, dec, x, batch, True, temp, rank_temp)
    over = jax.nn.relu(spend(cp, m, x, kind) / bk - 1.0)
    return lat / e2e0 + mu * over ** 2, lat

  (val, lat), g = jax.vmap(jax.value_and_grad(loss, has_aux=True))(z, budgets)
  return val, lat, g


def codesign(system, model, routing, budgets, cost: CostParams,
             config_: CodesignConfig = CodesignConfig(), *, space: Space = Space(),
             batch_size: int = 1, start=None, progress=None,
             chunk: int = 32) -> CodesignResult:
  """Co-designs one discrete choice (``system``: its preset and unit count) at
  K budgets together; see the module docstring.

  budgets: [K] in USD (kind cost_usd) or W (power_w).  start: x [6] to start
  from (default: the middle of every log range, resident_fraction 0.5, biases
  1).  progress: called per step with {"step", "steps", "relaxed_e2e_s" [K],
  "spend" [K]}.
  """
  c = config_
  c.check()
  ss, sp0 = system
  engine.validate(ss, sp0, model, routing.prefill_ids, routing.decode_ids, batch_size)
  P, T = routing.prefill_ids.shape[1], routing.decode_ids.shape[1]
  m = machine(system, model, P + T, batch_size)
  bounds = space.bounds(sp0)
  budgets = np.asarray(budgets, np.float64).reshape(-1)
  K = len(budgets)
  if start is None:
    s0 = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
  else:
    s0 = np.clip(to_unit(np.asarray(start, np.float64), bounds), 1e-3, 1 - 1e-3)
  z = jnp.asarray(np.tile(np.log(s0 / (1 - s0)), (K, 1)), jnp.float32)
  pre, dec = _ids(routing)
  m_arr = jnp.asarray(np.array(m, np.float64), jnp.float32)
  bj = jnp.asarray(bounds, jnp.float32)
  cpj = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), cost)
  temps = _schedule(*c.temperature_s, c.steps)
  ranks = _schedule(*c.rank_temperature, c.steps)
  mus = _schedule(*c.mu, c.steps)
  opt = optax.adam(1.0)
  st = opt.init(z)
  lr = jnp.asarray(c.lr, jnp.float32)
  bud = jnp.asarray(budgets, jnp.float32)
  # Latency scale: the relaxed latency at the start (the same compiled call, mu 0).
  _, lat0, _ = _step_values(ss, sp0, model, pre, dec, cpj, m_arr, bj, z, bud,
                            jnp.float32(1.0), jnp.float32(0.0), jnp.float32(temps[0]),
                            jnp.float32(ranks[0]), batch_size, c.kind)
  e2e0 = float(np.mean(np.asarray(lat0)))
  hist = {"points": [], "relaxed_e2e_s": [], "spend": []}
  cands = [[] for _ in range(K)]
  for i in range(c.steps):
    val, lat, g = _step_values(ss, sp0, model, pre, dec, cpj, m_arr, bj, z, bud,
                               jnp.float32(e2e0),
                               jnp.float32(mus[i]), jnp.float32(temps[i]),
                               jnp.float32(ranks[i]), batch_size, c.kind)
    xs = np.asarray(to_point(jax.nn.sigmoid(z), bj), np.float64)
    sp_now = np.asarray(spend(cost, m, xs, c.kind), np.float64)
    hist["points"].append(xs.tolist())
    hist["relaxed_e2e_s"].append(np.asarray(lat, np.float64).tolist())
    hist["spend"].append(sp_now.tolist())
    if progress is not None:
      progress({"step": i + 1, "steps": c.steps, "relaxed_e2e_s": np.asarray(lat),
                "spend": sp_now})
    if (i + 1) % c.candidates_every == 0 or i == c.steps - 1:
      for k in range(K):
        cands[k].append(xs[k])
    upd, st = opt.update(g, st, z)
    z = optax.apply_updates(z, lr * (1.0 - 0.75 * i / max(c.steps - 1, 1)) * upd)
  xs = np.asarray(to_point(jax.nn.sigmoid(z), bj), np.float64)
  for k in range(K):
    cands[k].append(xs[k])
  # Project every candidate onto its budget, score all in one hard call.
  proj, ok = [], []
  for k in range(K):
    for x in cands[k]:
      xp, f = project(cost, m, x, budgets[k], bounds, c.kind)
      proj.append(xp)
      ok.append(f)
  C = len(cands[0])
  lat = hard_latency(system, model, routing, np.asarray(proj), batch_size=batch_size,
                     chunk=chunk).reshape(K, C)
  proj = np.asarray(proj).reshape(K, C, 6)
  ok = np.asarray(ok).reshape(K, C)
  best = np.argmin(np.where(ok, lat, np.inf), axis=1)
  pts = proj[np.arange(K), best]
  hist["candidates"] = proj.tolist()
  hist["candidates_e2e_s"] = lat.tolist()
  return CodesignResult(budgets=budgets, points=pts, feasible=ok.any(axis=1),
                        spend=np.asarray(spend(cost, m, pts, c.kind), np.float64),
                        e2e_s=np.where(ok.any(axis=1), lat[np.arange(K), best], np.nan),
                        evaluations=(c.steps + 1) * K + K * C, history=hist)


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
  sorted by spend."""
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

"""Per-layer tuning of ``tuned``: one prefetch budget share and two balancer
biases per MoE layer (:class:`ndpsim.policies.tuned.TunedParams`).

A knob *vector* of one model is ``[1 + 3L]``: ``resident_fraction``, then the
[L] ``layer_share``, the [L] ``layer_gpu_bias`` and the [L]
``layer_ndp_bias`` (the shared ``gpu_bias`` / ``ndp_bias`` stay 1: the
per-layer multipliers carry them).  :func:`vector` builds one;
``vector(L)`` (all ones) is ``tp_lb_prefetch`` at its default knobs.

:func:`fit` minimises the *relaxed* mean end-to-end latency of training
sequences with optax Adam in an unconstrained parameterisation (logit of the
fraction, logs of the rest), from several starts at once (one vmapped
forward+gradient call per step for all restarts), annealing both relaxation
temperatures geometrically; the time temperature is relative to the model's
expert load time T_w (so one schedule fits short and long prompts and small
and large experts alike).  It then scores the heuristic's own point, every
``hard_every``-th iterate of every restart and the last ones with the *hard*
engine on the training set and keeps the best: never worse on training than
the heuristic, and :attr:`FitResult.heuristic_optimal` says when nothing beat
it.  Held-out scoring (:func:`hard_batch` on other routing) is always hard.

:func:`random_search` is the baseline of equal budget: as many hard
evaluations at random knob vectors (the heuristic's point among them).

Evaluation counts, as in :mod:`ndpsim.tune`: one relaxed forward+gradient
call on the training batch counts one per restart, one hard run at one point
counts one.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ndpsim import costs, engine, policies
from ndpsim.base import ConfigError
from ndpsim.policies.base import PolicyParams
from ndpsim.policies.tuned import TunedParams
from ndpsim.workload import models as M

KNOB_GROUPS = ("resident_fraction", "layer_share", "layer_gpu_bias", "layer_ndp_bias")
# What the fit minimises: mean e2e latency (s), mean energy per output token
# (J, ndpsim.energy.per_token_j), or their product (J s).
OBJECTIVES = ("latency", "energy", "edp")


@dataclasses.dataclass(frozen=True)
class LayerTuneConfig:
  """steps: Adam steps (one vmapped relaxed forward+grad over all restarts
  each).  lr: Adam step per unconstrained coordinate of each group
  (:data:`KNOB_GROUPS`: logit of resident_fraction, log shares, log biases).
  temperature_rel: (start, end) of the geometric annealing of the time
  temperature, as fractions of T_w (the load time of one expert).
  rank_temperature: (start, end) of the soft top-M temperature, ranks.
  hard_every: hard-score every restart's iterate every this many steps (and
  the last one).  restarts: number of starts: the heuristic's point first,
  then random perturbations of it (log-normal, ``restart_sigma``, seeded by
  ``seed``).  objective: one of :data:`OBJECTIVES` (energy and edp need the
  system's energy figures: ``fit(..., eparams=energy.for_system(
  system.load_system(...)))``);
  the hard scoring of candidates uses the same objective."""
  steps: int = 10
  lr: tuple = (0.25, 0.15, 0.03, 0.03)
  temperature_rel: tuple = (0.1, 0.0125)
  rank_temperature: tuple = (3.0, 0.5)
  hard_every: int = 3
  restarts: int = 2
  restart_sigma: float = 0.3
  seed: int = 0
  objective: str = "latency"

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ConfigError(f"LayerTuneConfig.objective = {self.objective!r}; write one of "
                        f"{OBJECTIVES}")
    for name in ("steps", "hard_every", "restarts"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ConfigError(f"LayerTuneConfig.{name} = {v!r}; write a positive integer")
    for name in ("temperature_rel", "rank_temperature"):
      v = getattr(self, name)
      if len(v) != 2 or not all(float(x) > 0 for x in v):
        raise ConfigError(f"LayerTuneConfig.{name} = {v!r}; write (start, end), both > 0")
    if len(self.lr) != len(KNOB_GROUPS) or not all(float(x) > 0 for x in self.lr):
      raise ConfigError(f"LayerTuneConfig.lr = {self.lr!r}; write {len(KNOB_GROUPS)} "
                        f"positive step sizes, one per {KNOB_GROUPS}")


class FitResult(NamedTuple):
  vector: np.ndarray        # [1 + 3L] best knobs by hard training latency
  params: PolicyParams      # the same as PolicyParams (own = TunedParams)
  train_e2e_s: float        # hard mean e2e on the training set at ``vector``
  heuristic_train_e2e_s: float  # ... at the heuristic's point
  heuristic_optimal: bool   # no candidate beat the heuristic on training
  evaluations: int          # relaxed forward+grad calls x restarts + hard points
  history: dict             # per step: relaxed loss per restart; hard candidates


def vector(num_layers: int, resident_fraction=1.0, layer_share=1.0, layer_gpu_bias=1.0,
           layer_ndp_bias=1.0) -> np.ndarray:
  """[1 + 3L] float32 knob vector (scalars broadcast over the layers)."""
  L = num_layers
  parts = [np.full(1, resident_fraction, np.float32)]
  for v in (layer_share, layer_gpu_bias, layer_ndp_bias):
    parts.append(np.broadcast_to(np.asarray(v, np.float32), (L,)))
  return np.concatenate(parts).astype(np.float32)


def split(v, num_layers: int):
  """[..., 1 + 3L] -> (resident_fraction [...], share, gpu bias, ndp bias [..., L])."""
  L = num_layers
  if v.shape[-1] != 1 + 3 * L:
    raise ConfigError(f"knob vector has {v.shape[-1]} entries; write 1 + 3 x {L} = "
                      f"{1 + 3 * L} (resident_fraction, then {L} values each of "
                      "layer_share, layer_gpu_bias, layer_ndp_bias)")
  return v[..., 0], v[..., 1:1 + L], v[..., 1 + L:1 + 2 * L], v[..., 1 + 2 * L:]


def params_of(v, num_layers: int, base: PolicyParams = PolicyParams()) -> PolicyParams:
  """``tuned``'s PolicyParams at knob vector ``v`` (traced or concrete)."""
  rf, share, gb, nb = split(v, num_layers)
  return dataclasses.replace(base, resident_fraction=rf, gpu_bias=1.0, ndp_bias=1.0,
                             own=TunedParams(layer_share=share, layer_gpu_bias=gb,
                                             layer_ndp_bias=nb))


def knobs_of(u, num_layers: int):
  """Unconstrained [..., 1 + 3L] -> knob vector (sigmoid, then exp)."""
  return jnp.concatenate([jax.nn.sigmoid(u[..., :1]), jnp.exp(u[..., 1:])], axis=-1)


def unconstrain(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  rf = np.clip(v[..., :1], 1e-3, 1 - 1e-3)
  return np.concatenate([np.log(rf / (1 - rf)), np.log(v[..., 1:])], -1).astype(np.float32)


def _e2e(ss, sp, model, pre, dec, params, batch_size, relaxed):
  r = engine.simulate_core(ss, sp, model, policies.get("tuned"), params, pre, dec, None,
                           batch_size, relaxed=relaxed)
  return r.e2e_s


def _mean_e2e(ss, sp, model, pre, dec, params, batch_size, relaxed):
  return jnp.mean(_e2e(ss, sp, model, pre, dec, params, batch_size, relaxed))


def _objective(ss, sp, model, pre, dec, params, batch_size, relaxed, objective, eparams):
  """Scalar objective of one knob point (see :data:`OBJECTIVES`)."""
  r = engine.simulate_core(ss, sp, model, policies.get("tuned"), params, pre, dec, None,
                           batch_size, relaxed=relaxed)
  t = jnp.mean(r.e2e_s)
  if objective == "latency":
    return t
  from ndpsim import energy  # pylint: disable=import-outside-toplevel
  j = jnp.mean(energy.per_token_j(r, (ss, sp), model, eparams, prompt_len=pre.shape[1],
                                  batch_size=batch_size).total_j)
  return j if objective == "energy" else j * t


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch_size", "objective"))
def _hard_objective(ss, sp, model, pre, dec, pts, batch_size, objective, eparams):
  L = M.num_moe_layers(model)
  return jax.vmap(lambda v: _objective(ss, sp, model, pre, dec, params_of(v, L),
                                       batch_size, False, objective, eparams))(pts)


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch_size"))
def _hard_points(ss, sp, model, pre, dec, pts, batch_size):
  L = M.num_moe_layers(model)
  return jax.vmap(lambda v: _e2e(ss, sp, model, pre, dec, params_of(v, L),
                                 batch_size, False))(pts)


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch_size", "objective"))
def _relaxed_value_grad(ss, sp, model, pre, dec, us, temp, rank_temp, batch_size,
                        objective="latency", eparams=None):
  L = M.num_moe_layers(model)

  def loss(u):
    base = PolicyParams(temperature_s=temp, rank_temperature=rank_temp)
    return _objective(ss, sp, model, pre, dec, params_of(knobs_of(u, L), L, base),
                      batch_size, True, objective, eparams)
  return jax.vmap(jax.value_and_grad(loss))(us)


def _ids(routing):
  return (jnp.asarray(routing.prefill_ids, jnp.int32),
          jnp.asarray(routing.decode_ids, jnp.int32))


def hard_per_sequence(system, model, routing, points, *, batch_size: int = 1,
                      chunk: int = 8) -> np.ndarray:
  """[K, S] hard e2e of ``tuned`` per sequence at K knob vectors [K, 1 + 3L],
  seconds, in padded chunks of ``chunk`` points (one compile per routing
  shape and chunk)."""
  L = M.num_moe_layers(model)
  pts = np.asarray(points, np.float32).reshape(-1, 1 + 3 * L)
  pre, dec = _ids(routing)
  out = []
  for i in range(0, len(pts), chunk):
    blk = pts[i:i + chunk]
    pad = np.concatenate([blk, np.repeat(blk[-1:], chunk - len(blk), 0)])
    out.append(np.asarray(_hard_points(system[0], system[1], model, pre, dec,
                                       jnp.asarray(pad), batch_size), np.float64)[:len(blk)])
  return np.concatenate(out)


def hard_batch(system, model, routing, points, *, batch_size: int = 1,
               chunk: int = 8) -> np.ndarray:
  """[K] hard mean e2e over the sequences of :func:`hard_per_sequence`."""
  return np.mean(hard_per_sequence(system, model, routing, points, batch_size=batch_size,
                                   chunk=chunk), axis=-1)


def _starts(L: int, reference: np.ndarray, c: LayerTuneConfig) -> np.ndarray:
  rng = np.random.default_rng(c.seed)
  u0 = unconstrain(reference)
  us = [u0]
  for _ in range(c.restarts - 1):
    us.append(u0 + rng.normal(0.0, c.restart_sigma, u0.shape).astype(np.float32))
  return np.stack(us)


def choose(scores, rtol: float = 1e-6) -> tuple[int, bool]:
  """Index of the candidate to keep among hard training scores whose first
  entry is the heuristic's, and whether it beats the heuristic: the best one
  if it is faster by more than ``rtol`` (float32 noise of a mean), else the
  heuristic (index 0)."""
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 1 or len(scores) < 1 or not np.all(np.isfinite(scores)):
    raise ValueError(f"scores must be a non-empty 1-D array of finite latencies, got "
                     f"{scores!r}")
  best = int(np.argmin(scores))
  improved = bool(scores[best] < scores[0] * (1 - rtol))
  return (best, True) if improved else (0, False)


def fit(system, model, routing, config: LayerTuneConfig = LayerTuneConfig(), *,
        batch_size: int = 1, reference=None, start=None, eparams=None,
        progress=None) -> FitResult:
  """Fits the per-layer knobs of ``tuned`` on ``routing`` (training sequences).

  ``reference``: the heuristic's knob vector (default :func:`vector`\\ (L):
  ``tp_lb_prefetch`` at budget 1, biases 1); the first restart starts there
  and it is always a hard-scored candidate.  ``start``: a knob vector the
  restarts start from instead (the reference stays a candidate).
  ``progress``: called after each Adam step with ``{"step", "steps",
  "relaxed_e2e_s"}`` (one value per restart, before the step's update).
  ``eparams``: the energy figures (:func:`ndpsim.energy.for_system` of the
  loaded system preset) when ``config.objective`` is energy or edp; with
  those objectives ``train_e2e_s``, ``heuristic_train_e2e_s`` and the
  history's scores hold the objective's value (J or J s), not seconds.
  """
  c = config
  ss, sp = system
  if c.objective != "latency" and eparams is None:
    raise ConfigError(f"objective {c.objective!r} needs the energy figures: pass "
                      "eparams=ndpsim.energy.for_system(ndpsim.hw.system."
                      "load_system(<preset>))")
  engine.validate(ss, sp, model, routing.prefill_ids, routing.decode_ids, batch_size)
  L = M.num_moe_layers(model)
  ref = vector(L) if reference is None else np.asarray(reference, np.float32)
  split(ref, L)
  temps, ranks = _schedules(c, float(costs.fetch_s(ss, sp, model, "tp")))
  us = jnp.asarray(_starts(L, ref if start is None else
                          np.asarray(start, np.float32), c))
  pre, dec = _ids(routing)
  hist = {"relaxed_e2e_s": [], "temperature_s": temps, "rank_temperature": ranks,
          "starts": np.asarray(knobs_of(us, L)).tolist()}
  iterates, hist["relaxed_e2e_s"] = _descend(
      (ss, sp, model, pre, dec, batch_size, eparams), us, temps, ranks, c, progress)
  pts = np.stack([ref] + iterates).astype(np.float32)
  if c.objective == "latency":
    scores = hard_batch(system, model, routing, pts, batch_size=batch_size)
  else:
    scores = np.asarray(_hard_objective(ss, sp, model, pre, dec, jnp.asarray(pts),
                                        batch_size, c.objective, eparams), np.float64)
  evals = c.steps * c.restarts + len(pts)
  hist["hard_e2e_s"] = scores.tolist()
  hist["hard_points"] = pts.tolist()
  best, improved = choose(scores)
  return FitResult(vector=pts[best], params=params_of(jnp.asarray(pts[best]), L),
                   train_e2e_s=float(scores[best]), heuristic_train_e2e_s=float(scores[0]),
                   heuristic_optimal=not improved, evaluations=evals, history=hist)


def _schedules(c: LayerTuneConfig, t_w: float) -> tuple[list[float], list[float]]:
  """Per-step time temperatures (s; ``c.temperature_rel`` times the expert
  load time ``t_w``) and rank temperatures, each annealed geometrically from
  its start to its end over ``c.steps`` steps."""
  n = max(c.steps - 1, 1)
  geo = lambda a, b, i: a * (b / a) ** (i / n)  # noqa: E731
  temps = [t_w * geo(*c.temperature_rel, i) for i in range(c.steps)]
  ranks = [geo(*c.rank_temperature, i) for i in range(c.steps)]
  return temps, ranks


def _descend(case: tuple, us, temps: list[float], ranks: list[float],
             c: LayerTuneConfig, progress) -> tuple[list[np.ndarray], list[list[float]]]:
  """Adam on the relaxed objective from the [restarts, 1 + 3L] unconstrained
  starts ``us``; ``case`` = (spec, params, model, prefill ids, decode ids,
  batch_size, eparams).  Returns the hard-scoring candidates (each restart's
  knob vector every ``c.hard_every`` steps and at the end, [1 + 3L] each) and
  the relaxed values per step ([steps][restarts], the objective's unit)."""
  ss, sp, model, pre, dec, batch_size, eparams = case
  L = (us.shape[-1] - 1) // 3
  n = max(c.steps - 1, 1)
  lr = jnp.asarray(np.repeat(np.asarray(c.lr, np.float32), (1, L, L, L)))
  opt = optax.adam(1.0)
  st = opt.init(us)
  cands, relaxed, scale = [], [], None
  for i in range(c.steps):
    vals, g = _relaxed_value_grad(ss, sp, model, pre, dec, us, jnp.float32(temps[i]),
                                  jnp.float32(ranks[i]), batch_size, c.objective, eparams)
    vals = [float(x) for x in np.asarray(vals)]
    relaxed.append(vals)
    if progress is not None:
      progress({"step": i + 1, "steps": c.steps, "relaxed_e2e_s": vals})
    scale = scale or float(np.mean(vals))
    if (i + 1) % c.hard_every == 0 and i < c.steps - 1:
      cands.extend(np.asarray(knobs_of(us, L)))
    upd, st = opt.update(g / scale, st, us)
    us = optax.apply_updates(us, lr * (1.0 - 0.75 * i / n) * upd)
  cands.extend(np.asarray(knobs_of(us, L)))
  return cands, relaxed


def random_points(num_layers: int, n: int, *, seed: int = 0, reference=None,
                  sigma: float = 0.3) -> np.ndarray:
  """[n, 1 + 3L] random knob vectors: the reference first, then
  resident_fraction ~ U(0, 1) and log-normal shares and biases (``sigma``)."""
  L = num_layers
  ref = vector(L) if reference is None else np.asarray(reference, np.float32)
  rng = np.random.default_rng(seed)
  out = [ref]
  for _ in range(n - 1):
    rf = rng.uniform(0.0, 1.0)
    logs = rng.normal(0.0, sigma, 3 * L)
    out.append(np.concatenate([[rf], np.exp(logs)]).astype(np.float32))
  return np.stack(out)[:n]


def random_search(system, model, routing, n: int, *, seed: int = 0, batch_size: int = 1,
                  reference=None):
  """Best of ``n`` hard evaluations at :func:`random_points` on ``routing``:
  ``(vector, train_e2e_s, evaluations)``."""
  pts = random_points(M.num_moe_layers(model), n, seed=seed, reference=reference)
  e = hard_batch(system, model, routing, pts, batch_size=batch_size)
  b = int(np.argmin(e))
  return pts[b], float(e[b]), int(n)

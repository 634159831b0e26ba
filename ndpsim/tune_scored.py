"""Fitting the learned residency score of ``scored`` (issue 15 item 1).

A weight *vector* is ``[5]``: ``w_prefill, w_decode, w_recency, w_layer,
margin`` (:class:`ndpsim.policies.scored.ScoredParams`; the decays stay at
their defaults).  :func:`vector` builds one; ``vector()`` is the heuristic's
point, ``scored`` = ``tp_lb_prefetch`` bit for bit.

:func:`fit` follows :func:`ndpsim.tune_layers.fit`: optax Adam on the
*relaxed* mean e2e of the training sequences from several starts at once
(one vmapped forward+gradient call per step for all restarts; the heuristic's
point first, then Gaussian perturbations of the weights and log-normal ones
of the margin), both relaxation temperatures annealed geometrically (time
relative to T_w); then the heuristic's point, every ``hard_every``-th iterate
of every restart and the last ones are scored with the *hard* engine on the
training set and the best is kept only if it beats the heuristic by more than
1e-6 relative (:func:`ndpsim.tune_layers.choose`).  The relaxed engine only
sees the prefill ranking (``scored``'s relaxed decode makes no swaps), so
the decode weights and the margin move only through the restarts' starts;
the hard scoring is what selects them.

:func:`random_search` is the baseline of equal budget: as many hard
evaluations at points drawn like the restarts' starts (the heuristic's first).
Evaluation counts as in :mod:`ndpsim.tune_layers`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ndpsim import costs, engine, policies, tune_layers
from ndpsim.base import ConfigError
from ndpsim.policies.base import PolicyParams
from ndpsim.policies.scored import WEIGHTS, ScoredParams

KNOBS = WEIGHTS + ("margin",)
N_KNOBS = len(KNOBS)


@dataclasses.dataclass(frozen=True)
class ScoredTuneConfig:
  """steps, hard_every, restarts, seed, temperature_rel, rank_temperature:
  as :class:`ndpsim.tune_layers.LayerTuneConfig`.  lr: Adam step of the
  weights (the margin's log moves at the same rate).  weight_sigma: standard
  deviation of the Gaussian perturbation of each weight in the restarts'
  starts and the random search; margin_sigma: of the margin's log."""
  steps: int = 6
  lr: float = 0.1
  temperature_rel: tuple = (0.1, 0.0125)
  rank_temperature: tuple = (3.0, 0.5)
  hard_every: int = 2
  restarts: int = 3
  weight_sigma: float = 0.7
  margin_sigma: float = 1.0
  seed: int = 0

  def __post_init__(self):
    for name in ("steps", "hard_every", "restarts"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ConfigError(f"ScoredTuneConfig.{name} = {v!r}; write a positive integer")
    for name in ("lr", "weight_sigma", "margin_sigma"):
      if not float(getattr(self, name)) > 0:
        raise ConfigError(f"ScoredTuneConfig.{name} = {getattr(self, name)!r}; write a "
                          "number > 0")


class FitResult(NamedTuple):
  vector: np.ndarray          # [5] best weights by hard training latency
  params: PolicyParams        # the same as PolicyParams (own = ScoredParams)
  train_e2e_s: float          # hard mean e2e on the training set at ``vector``
  heuristic_train_e2e_s: float
  heuristic_optimal: bool     # no candidate beat the heuristic on training
  evaluations: int            # relaxed forward+grad calls x restarts + hard points
  history: dict


def vector(w_prefill=1.0, w_decode=0.0, w_recency=0.0, w_layer=0.0,
           margin=ScoredParams().margin) -> np.ndarray:
  """[5] float32 weight vector (default: the heuristic's point)."""
  return np.asarray([w_prefill, w_decode, w_recency, w_layer, margin], np.float32)


def params_of(v, base: PolicyParams = PolicyParams()) -> PolicyParams:
  """``scored``'s PolicyParams at weight vector ``v`` [5] (traced or not)."""
  if v.shape[-1] != N_KNOBS:
    raise ConfigError(f"weight vector has {v.shape[-1]} entries; write {N_KNOBS}: {KNOBS}")
  own = ScoredParams(**{k: v[..., i] for i, k in enumerate(KNOBS)})
  return dataclasses.replace(base, own=own)


def _knobs_of(u):
  """Unconstrained [..., 5] -> weights (as is) and margin (exp)."""
  return jnp.concatenate([u[..., :-1], jnp.exp(u[..., -1:])], axis=-1)


def _unconstrain(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return np.concatenate([v[..., :-1], np.log(np.maximum(v[..., -1:], 1e-6))],
                        -1).astype(np.float32)


def _e2e(ss, sp, model, pre, dec, params, relaxed):
  return engine.simulate_core(ss, sp, model, policies.get("scored"), params, pre, dec,
                              None, 1, relaxed=relaxed).e2e_s


@functools.partial(jax.jit, static_argnames=("ss", "model"))
def _hard_points(ss, sp, model, pre, dec, pts):
  return jax.vmap(lambda v: _e2e(ss, sp, model, pre, dec, params_of(v), False))(pts)


@functools.partial(jax.jit, static_argnames=("ss", "model"))
def _relaxed_value_grad(ss, sp, model, pre, dec, us, temp, rank_temp):
  def loss(u):
    base = PolicyParams(temperature_s=temp, rank_temperature=rank_temp)
    return jnp.mean(_e2e(ss, sp, model, pre, dec, params_of(_knobs_of(u), base), True))
  return jax.vmap(jax.value_and_grad(loss))(us)


def _ids(routing):
  return (jnp.asarray(routing.prefill_ids, jnp.int32),
          jnp.asarray(routing.decode_ids, jnp.int32))


def hard_per_sequence(system, model, routing, points, *, chunk: int = 4) -> np.ndarray:
  """[K, S] hard e2e of ``scored`` per sequence at K weight vectors [K, 5],
  seconds, in padded chunks of ``chunk`` points (one compile per shape)."""
  pts = np.asarray(points, np.float32).reshape(-1, N_KNOBS)
  pre, dec = _ids(routing)
  out = []
  for i in range(0, len(pts), chunk):
    blk = pts[i:i + chunk]
    pad = np.concatenate([blk, np.repeat(blk[-1:], chunk - len(blk), 0)])
    out.append(np.asarray(_hard_points(system[0], system[1], model, pre, dec,
                                       jnp.asarray(pad)), np.float64)[:len(blk)])
  return np.concatenate(out)


def hard_batch(system, model, routing, points, *, chunk: int = 4) -> np.ndarray:
  """[K] hard mean e2e over the sequences."""
  return np.mean(hard_per_sequence(system, model, routing, points, chunk=chunk), axis=-1)


def random_points(n: int, *, seed: int = 0, reference=None,
                  config: ScoredTuneConfig = ScoredTuneConfig()) -> np.ndarray:
  """[n, 5] points drawn like the restarts' starts: the reference first, then
  weights + N(0, weight_sigma) and margin x exp(N(0, margin_sigma))."""
  ref = vector() if reference is None else np.asarray(reference, np.float32)
  rng = np.random.default_rng(seed)
  out = [ref]
  for _ in range(n - 1):
    w = ref[:-1] + rng.normal(0.0, config.weight_sigma, N_KNOBS - 1)
    m = ref[-1] * np.exp(rng.normal(0.0, config.margin_sigma))
    out.append(np.concatenate([w, [m]]).astype(np.float32))
  return np.stack(out)[:n]


def fit(system, model, routing, config: ScoredTuneConfig = ScoredTuneConfig(), *,
        reference=None, progress=None) -> FitResult:
  """Fits ``scored``'s weights on ``routing`` (training sequences, batch 1).

  ``reference``: the heuristic's vector (default :func:`vector`\\ ()), the
  first restart's start and always a hard-scored candidate.  ``progress``:
  called after each Adam step with ``{"step", "steps", "relaxed_e2e_s"}``."""
  c = config
  ss, sp = system
  engine.validate(ss, sp, model, routing.prefill_ids, routing.decode_ids, 1)
  ref = vector() if reference is None else np.asarray(reference, np.float32)
  params_of(ref)
  t_w = float(costs.fetch_s(ss, sp, model, "tp"))
  n = max(c.steps - 1, 1)
  geo = lambda a, b, i: a * (b / a) ** (i / n)  # noqa: E731
  temps = [t_w * geo(*c.temperature_rel, i) for i in range(c.steps)]
  ranks = [geo(*c.rank_temperature, i) for i in range(c.steps)]
  starts = random_points(c.restarts, seed=c.seed + 1, reference=ref, config=c)
  us = jnp.asarray(_unconstrain(starts))
  pre, dec = _ids(routing)
  opt = optax.adam(c.lr)
  st = opt.init(us)
  hist = {"relaxed_e2e_s": [], "relaxed_grad": [], "starts": starts.tolist()}
  cands, evals, scale = [ref], 0, None
  for i in range(c.steps):
    vals, g = _relaxed_value_grad(ss, sp, model, pre, dec, us, jnp.float32(temps[i]),
                                  jnp.float32(ranks[i]))
    evals += c.restarts
    vals = [float(x) for x in np.asarray(vals)]
    hist["relaxed_e2e_s"].append(vals)
    hist["relaxed_grad"].append(np.asarray(g).tolist())
    if progress is not None:
      progress({"step": i + 1, "steps": c.steps, "relaxed_e2e_s": vals})
    scale = scale or float(np.mean(vals))
    if (i + 1) % c.hard_every == 0 and i < c.steps - 1:
      cands.extend(np.asarray(_knobs_of(us)))
    upd, st = opt.update(jnp.nan_to_num(g / scale), st, us)
    us = optax.apply_updates(us, upd)
  cands.extend(np.asarray(_knobs_of(us)))
  pts = np.stack(cands).astype(np.float32)
  scores = hard_batch(system, model, routing, pts)
  evals += len(pts)
  hist["hard_e2e_s"] = scores.tolist()
  hist["hard_points"] = pts.tolist()
  best, improved = tune_layers.choose(scores)
  return FitResult(vector=pts[best], params=params_of(jnp.asarray(pts[best])),
                   train_e2e_s=float(scores[best]), heuristic_train_e2e_s=float(scores[0]),
                   heuristic_optimal=not improved, evaluations=evals, history=hist)


def random_search(system, model, routing, n: int, *, seed: int = 0, reference=None,
                  config: ScoredTuneConfig = ScoredTuneConfig()):
  """Best of ``n`` hard evaluations at :func:`random_points` on ``routing``:
  ``(vector, train_e2e_s, evaluations)``."""
  pts = random_points(n, seed=seed + 1000, reference=reference, config=config)
  e = hard_batch(system, model, routing, pts)
  b = int(np.argmin(e))
  return pts[b], float(e[b]), int(n)

"""The policy interface: what a scheduling policy may read, return and not do.

A policy is a :class:`Policy` -- a static, hashable bundle of pure functions
plus its own knobs, like an optax ``GradientTransformation`` or a gymnax
environment:

``init(ctx, params) -> Start``
    Before prefill.  May read the static context ``ctx`` (model and system
    sizes, the traced cost scalars and the offline profile, if the policy is a
    profiled one) and its params.  Must not read the routing.  Returns the
    policy's own state (any pytree, e.g. counters; None if it keeps none),
    the number of experts per layer it may keep resident (``capacity``) and
    optionally the experts resident before the run.

``place(ctx, res, own, layer, slots, params, phase) -> (Placement, own)``
    Once per (phase, step, layer), after the router ran.  May read the
    engine's residency ``res`` (:class:`~ndpsim.residency.Residency`,
    read-only), its own state, the activated experts of this layer only
    (``slots``: ids and token counts), the per-slot costs in ``slots`` and its
    params.  Returns where each activated expert runs and, in
    ``Placement.requests``, the residency changes it asks for (keep what this
    layer loads, evict, queue background loads: :class:`Requests`); the engine
    applies them and decides when a queued load has arrived.  Must not read
    future routing, must keep at most ``res.capacity`` experts per layer
    resident or queued (a policy with per-layer budgets, ``tuned``: at most
    L x ``res.capacity`` over all L layers, the engine's decode memory
    bound), and must not fetch more than ``slots.stage_room``
    experts on demand in a layer.

Params: every policy reads the shared :class:`PolicyParams` (the prefetch
budget, the balancer biases, the relaxation temperatures); a policy's own
knobs live in ``PolicyParams.own``, a params pytree the policy declares
(``Policy.default_params``) with its ranges (``Policy.param_ranges``), so it
is traced, vmappable and differentiable like the shared ones.

Everything is traced: discrete choices are boolean masks and integer ranks,
never Python branches on values.  ``phase`` is a Python string
(``"prefill"`` or ``"decode"``), static.  ``ndpsim.policy_checks`` runs the
properties every policy must have (a bound by ``oracle``, memory within
capacity, no reads of future routing, batching independence).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ndpsim import base
from ndpsim.base import ConfigError
from ndpsim.residency import Requests, Residency, SoftResidency  # noqa: F401 (re-exported)
from ndpsim.ranking import (SMALL_RANK, IntOrder, count_order, cummax, cumsum,  # noqa: F401
                            int_order_bits, int_order_desc, inverse_permutation,
                            order_desc, order_from_rank, rank_desc)

INF = jnp.inf


@base.params_dataclass
class PolicyParams:
  """Traced policy knobs shared by every policy (unused ones are ignored).

  resident_fraction: fraction of the GPU's expert budget (memory left after
    non-expert weights, KV cache and reserve) that a policy may fill with
    resident experts, in [0, 1].  For ``tp_lb_prefetch`` this is the prefetch
    budget; for ``monde_resident`` the hot-expert set; for ``gpu_offload`` and
    ``dynande`` the cache.
  gpu_bias: multiplies the GPU-lane estimate the load balancer uses (1 =
    unbiased); ``tuned`` fits it.
  ndp_bias: multiplies the NDP-lane estimate the load balancer uses.
  temperature_s: relaxed mode only (``simulate(..., relaxed=True)``): the
    log-sum-exp temperature of every max over lanes and units and of the
    balancer's softmin over prefix splits, seconds.  Ignored in hard mode.
  rank_temperature: relaxed mode only: temperature of the soft top-M
    residency weight ``sigmoid((M - rank - 1 + 1e-3) / rank_temperature)``,
    in expert ranks (``tuned``).  Ignored in hard mode.
  monde_alpha_prefill, monde_alpha_decode: MoNDE's scaling factor alpha of
    its Eq. 6 (``monde``: H = round(alpha x link share x activated experts))
    for prompt and decode batches; >= 0.  MoNDE auto-tunes it on profiling
    batches (:func:`ndpsim.policies.monde.autotune_alpha`).
  own: the policy's own knobs (a params pytree of the policy's
    ``default_params`` type), or None for the policy's defaults
    (:func:`resolve_params`).
  """
  resident_fraction: Any = 1.0
  gpu_bias: Any = 1.0
  ndp_bias: Any = 1.0
  temperature_s: Any = 2e-5
  rank_temperature: Any = 1.0
  monde_alpha_prefill: Any = 1.0
  monde_alpha_decode: Any = 1.0
  own: Any = None


# (field, low, high, low inclusive, high inclusive) for concrete values.
_PARAM_RANGES = (("resident_fraction", 0.0, 1.0, True, True),
                 ("gpu_bias", 0.0, None, False, None),
                 ("ndp_bias", 0.0, None, False, None),
                 ("temperature_s", 0.0, None, False, None),
                 ("rank_temperature", 0.0, None, False, None),
                 ("monde_alpha_prefill", 0.0, None, True, None),
                 ("monde_alpha_decode", 0.0, None, True, None))


def make_params(policy: "Policy | None" = None, **kwargs) -> PolicyParams:
  """PolicyParams from keyword arguments: shared knobs by name, and the own
  knobs of ``policy`` (if given) by their names; unknown names raise
  ConfigError, values are range-checked."""
  shared = [f.name for f in dataclasses.fields(PolicyParams) if f.name != "own"]
  own_names = ([f.name for f in dataclasses.fields(policy.default_params)]
               if policy is not None and policy.default_params is not None else [])
  for k in kwargs:
    if k not in shared and k not in own_names:
      who = f" or {policy.name!r}'s own {own_names}" if own_names else ""
      raise ConfigError(f"unknown policy parameter {k!r}; write one of {shared}{who}")
  own = None
  if own_names:
    own = dataclasses.replace(policy.default_params,
                              **{k: v for k, v in kwargs.items() if k in own_names})
  params = PolicyParams(**{k: v for k, v in kwargs.items() if k in shared}, own=own)
  check_params(params, policy)
  return params


def resolve_params(policy: "Policy", params: PolicyParams | None) -> PolicyParams:
  """``params`` (defaults if None) with ``own`` set to the policy's default
  own knobs when it is None.  Pure Python on the pytree structure."""
  params = params if params is not None else PolicyParams()
  if params.own is None and policy.default_params is not None:
    params = dataclasses.replace(params, own=policy.default_params)
  return params


def _check_ranges(obj, ranges, prefix: str) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  for name, lo, hi, lo_in, hi_in in ranges:
    v = getattr(obj, name)
    if isinstance(v, jax.core.Tracer):
      continue
    a = np.asarray(v, np.float64)
    bad = ~np.isfinite(a) | ((a < lo) if lo_in else (a <= lo))
    if hi is not None:
      bad |= (a > hi) if hi_in else (a >= hi)
    if np.any(bad):
      lo_s = ("[" if lo_in else "(") + f"{lo:g}"
      hi_s = (f"{hi:g}" + ("]" if hi_in else ")")) if hi is not None else "inf)"
      raise ConfigError(f"policy parameter {prefix}{name} = {a.tolist()} is outside "
                        f"{lo_s}, {hi_s}; write a value in that range")


def check_params(params: PolicyParams, policy: "Policy | None" = None) -> None:
  """Range checks of concrete (non-traced) policy params; one ConfigError each.

  The own knobs are checked against ``policy.param_ranges`` when ``policy``
  is given.  Traced values (under an outer jit/vmap/grad) are skipped: check
  them before.
  """
  _check_ranges(params, _PARAM_RANGES, "")
  if policy is None or policy.default_params is None:
    return
  own = params.own if params.own is not None else policy.default_params
  if type(own) is not type(policy.default_params):
    raise ConfigError(f"PolicyParams.own is a {type(own).__name__}; policy "
                      f"{policy.name!r} takes a {type(policy.default_params).__name__} "
                      "(pass policy.default_params with your values)")
  _check_ranges(own, policy.param_ranges, f"{policy.name}.")


class Start(NamedTuple):
  """What a policy's ``init`` returns.

  own: the policy's own state (any pytree; None if it keeps none).
  capacity: experts per layer it may keep resident or queued (float scalar,
    traced; 0 for policies without residency).
  resident: [L, E] bool experts in GPU memory before the run (loaded at
    model-load time, no link time charged), or None.
  """
  own: Any = None
  capacity: Any = 0.0
  resident: Any = None


class Slots(NamedTuple):
  """The activated experts of one layer: [n] arrays over slots.

  ids: expert id per slot (int32). tokens: tokens routed to it (float).
  valid: slot holds an activated expert (bool; padding otherwise).
  resident: expert is in GPU memory now (bool).
  gpu_s: GPU compute time of the expert for its tokens, s.
  fetch_s: link time to load its weights onto the GPU (T_w), s.
  ndp_tp_s: per-unit time of its tensor-parallel slice on the NDP units, s.
  ndp_ep_s: time of the whole expert on one NDP unit, s.
  gpu_pre_s: GPU work of the layer before routed experts (shared experts), s.
  link_delay_s: wait before demand loads can start (link busy), s.
  bcast_s: activation broadcast before NDP work can start, s.
  post_s: partial-sum return + reduction after the NDP work (TP), s.
  stage_room: experts this layer may load on demand now (scalar, float): GPU
    memory left after non-expert weights, KV cache, reserve and every
    resident or queued expert, in expert slots.  A placement must not fetch
    more (the engine runs any excess on the NDP units instead).
  res_w: relaxed mode with soft residency only: fraction of the expert's
    columns resident in GPU memory (float in [0, 1]); None otherwise.
  Scalars are relative to the router's decision.

  The engine guarantees: ``tokens`` is 0 on invalid slots; in the prefill
  (``phase == "prefill"``) there is one slot per expert in id order (``ids``
  = ``arange(E)``, ``valid`` = ``tokens > 0``), so a policy may read [E] rows
  of this layer slot by slot, with no scatter.
  """
  ids: jax.Array
  tokens: jax.Array
  valid: jax.Array
  resident: jax.Array
  gpu_s: jax.Array
  fetch_s: jax.Array
  ndp_tp_s: jax.Array
  ndp_ep_s: jax.Array
  gpu_pre_s: jax.Array
  link_delay_s: jax.Array
  bcast_s: jax.Array
  post_s: jax.Array
  stage_room: Any = jnp.inf
  res_w: Any = None


def prefill_tokens(slots: Slots) -> jax.Array:
  """[E] float tokens per expert of a prefill layer (its slots are the experts
  in id order; 0 where not activated)."""
  return jnp.where(slots.valid, slots.tokens, 0.0)


class Placement(NamedTuple):
  """Where each slot runs, [n] arrays.

  gpu_frac: fraction of the expert's work done on the GPU, in [0, 1] (hard
    policies: 0 or 1).  The rest runs on the NDP units.
  fetch: the GPU part needs its weights loaded on demand (not resident).
  ep_unit: NDP unit of the expert under expert parallelism (int32); ignored
    when the policy's ``ndp_mode`` is ``"tp"``.
  requests: residency changes for the engine (:class:`Requests`), or None.
  """
  gpu_frac: jax.Array
  fetch: jax.Array
  ep_unit: jax.Array
  requests: Any = None


@dataclasses.dataclass(frozen=True)
class Context:
  """Static sizes plus traced per-run scalars a policy may read.

  num_layers, num_experts, num_units, top_k: static ints.
  expert_bytes: bytes of one routed expert (Python float).
  fetch_s: T_w of one expert (traced scalar), from where the policy's
    ``ndp_mode`` stores it (whole on one unit for "ep", sliced for "tp").
  capacity: resident experts allowed per layer at resident_fraction = 1
    (traced scalar, from GPU memory left after non-expert weights, KV cache,
    reserve and the staging room of one decode layer).
  expert_slots: routed experts the GPU memory holds at once (traced).
  link_share: BW_link / (BW_ndp + BW_link) (traced; MoNDE's Eq. 6).
  profile_counts: [L, E] offline activation counts (profiled policies only).
  relaxed: static; True under ``simulate(..., relaxed=True)``: policies that
    support it return continuous placements (``tuned``); others stay hard.
  """
  num_layers: int
  num_experts: int
  num_units: int
  top_k: int
  expert_bytes: float
  fetch_s: Any
  capacity: Any
  profile_counts: Any
  relaxed: bool = False
  expert_slots: Any = jnp.inf
  link_share: Any = 0.0


class Policy(NamedTuple):
  """A scheduling policy: a name, its NDP mode, two pure functions and its own
  knobs.

  name: registry name.  ndp_mode: ``"tp"`` (every expert split over all
  units) or ``"ep"`` (each expert whole on one unit).
  init, place: the contract in the module docstring.
  default_params: the policy's own knobs (a :func:`ndpsim.base.params_dataclass`
    instance) or None; passed as ``params.own``.
  param_ranges: ``(field, low, high, low inclusive, high inclusive)`` per own
    knob (``high`` None = unbounded), checked once before tracing.
  layer_bound: lower-bound policies only (``oracle``):
    ``layer_bound(ctx, slots, post_min_s) -> span`` from the router's decision
    to the layer's end, given the slots with ``bcast_s`` the bare activation
    broadcast and the cheapest partial-sum return plus reduction
    ``post_min_s``; the engine takes it as the layer's end.
  soft_residency: relaxed mode keeps a continuous
    :class:`~ndpsim.residency.SoftResidency` and the policy requests weights
    (``tuned``).
  """
  name: str
  ndp_mode: str
  init: Callable[..., Start]
  place: Callable[..., tuple]
  default_params: Any = None
  param_ranges: tuple = ()
  layer_bound: Callable | None = None
  soft_residency: bool = False


# ---------------------------------------------------------------------------
# Helpers shared by policies.

def budget_slots(ctx: Context, params: PolicyParams):
  """The prefetch budget in experts per layer (traced float, whole):
  ``floor(resident_fraction x ctx.capacity)``, with 1e-6 slack so that a
  fraction meant to give a whole count (e.g. 0.25 x 8) is not floored below it
  by rounding.  The one place the budget chain (``--resident_fraction`` /
  ``--resident_fractions`` -> ``resident_fraction`` -> experts) is floored."""
  return jnp.floor(params.resident_fraction * ctx.capacity + 1e-6)


def top_m_mask(score: jax.Array, m, eligible: jax.Array | None = None) -> jax.Array:
  """Mask of the ``m`` highest-score entries along the last axis (m traced)."""
  if eligible is not None:
    score = jnp.where(eligible, score, -INF)
  mask = rank_desc(score) < jnp.floor(m + 1e-6)
  if eligible is not None:
    mask &= eligible
  return mask


def no_fetch_placement(slots: Slots, gpu: jax.Array) -> Placement:
  gpu = gpu & slots.valid
  return Placement(gpu_frac=gpu.astype(jnp.float32), fetch=gpu & ~slots.resident,
                   ep_unit=jnp.zeros_like(slots.ids))


def ep_units(ids: jax.Array, num_units: int) -> jax.Array:
  """Round-robin expert-parallel map: expert e lives on unit e mod N."""
  return (ids % num_units).astype(jnp.int32)

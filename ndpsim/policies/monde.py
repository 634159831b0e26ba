"""``monde`` and ``monde_eq6``: MoNDE (Kim et al., DAC 2024, arXiv 2405.18832).

What its text says (see shared reference ``baselines.md``) and how it maps here:

* §3.2 placement: every expert parameter lives in the NDP memory device; the
  GPU holds the dense weights only.  Here: no expert is ever resident.
* §3.3 GPU-MoNDE load balancing, per MoE layer *at runtime after the gate*:
  the top-H "hot" experts (most tokens in the current batch) run on the GPU
  after their parameters are copied over the link ("PMove"); the others run
  in the NDP units after their activations are sent ("AMove"); both overlap.
  Here: per layer and step, the H activated experts with most tokens (ties:
  lower expert id) are fetched on demand and computed on the GPU; each copy is
  charged on every use and dropped after the layer (§4.1 "on-demand PMove").
* Eq. 6: ``H = alpha x BW_PCIe / (BW_MD + BW_PCIe) x activated``, with BW_MD
  the aggregate NDP-device bandwidth (``ctx.link_share`` is the ratio).
  ``monde`` rounds half up and clips to [0, activated]; ``monde_eq6`` is
  DynaNDE's open re-implementation: alpha = 1, ``H = max(1, ceil(...))``.
* alpha is auto-tuned by "periodically running profiled inference on a small
  set of past input batches" and taking the local optimum among H candidates
  (H+1, H+2, ...): :func:`autotune_alpha` does that on profiling sequences
  (never the evaluated ones), separately for prompt and decode batches since
  the two are different batches (``monde_alpha_prefill`` / ``_decode``).
* Several devices: "expert workloads sorted by compute intensity are
  distributed round-robin; input activations are sent to each device
  separately; outputs come back sequentially".  With weights stored whole on
  one unit (MoNDE has no weight movement between devices), work can only run
  where its weights are, so the round-robin deal is the static placement:
  expert e lives and computes on unit ``e mod N`` (as ``ndp_ep``); the layer
  waits for the most loaded unit.  A copy to the GPU of an expert stored whole
  on one unit streams through that unit's host bus (``ctx.fetch_s`` for "ep").
  Not modelled: separate activation messages per device (one broadcast
  message here) and sequential output returns (one gathered message).

Contract: reads the slots of the current layer (tokens, ids, staging room),
``ctx.link_share`` and its alpha; keeps no residency (``capacity`` 0); never
fetches more than ``slots.stage_room`` experts; never reads future routing.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ndpsim.policies import base as pb


def init(ctx, params):
  del ctx, params
  return pb.Start()


def hot_count(activated, link_share, alpha, eq6_ceil: bool = False):
  """H of MoNDE's Eq. 6 for ``activated`` experts (traced scalars -> float).

  ``eq6_ceil=False`` (``monde``): ``floor(alpha x share x activated + 1/2)``;
  ``True`` (``monde_eq6``, DynaNDE): ``max(1, ceil(share x activated))``.
  Clipped to [0, activated].
  """
  x = alpha * link_share * activated
  if eq6_ceil:
    h = jnp.maximum(1.0, jnp.ceil(x - 1e-6))
  else:
    h = jnp.floor(x + 0.5 + 1e-6)
  return jnp.clip(h, 0.0, activated)


def hot_mask(slots: pb.Slots, h, num_experts: int):
  """[n] bool: the ``h`` valid slots with most tokens, ties to lower expert id."""
  key = slots.tokens - slots.ids.astype(jnp.float32) / (num_experts + 1.0)
  key = jnp.where(slots.valid, key, -jnp.inf)
  return (pb.rank_desc(key) < h) & slots.valid


def _placement(ctx, slots, alpha, eq6_ceil):
  n_act = jnp.sum(slots.valid).astype(jnp.float32)
  h = jnp.minimum(hot_count(n_act, ctx.link_share, alpha, eq6_ceil),
                  jnp.floor(slots.stage_room))
  gpu = hot_mask(slots, h, ctx.num_experts)
  return pb.Placement(gpu_frac=gpu.astype(jnp.float32), fetch=gpu,
                      ep_unit=pb.ep_units(slots.ids, ctx.num_units))


def place(ctx, res, own, layer, slots, params, phase):
  del res, layer
  alpha = params.monde_alpha_prefill if phase == "prefill" else params.monde_alpha_decode
  return _placement(ctx, slots, alpha, False), own


def place_eq6(ctx, res, own, layer, slots, params, phase):
  del res, layer, params, phase
  return _placement(ctx, slots, 1.0, True), own


POLICY = pb.Policy(name="monde", ndp_mode="ep", init=init, place=place)
POLICY_EQ6 = pb.Policy(name="monde_eq6", ndp_mode="ep", init=init, place=place_eq6)


# ---------------------------------------------------------------------------
# Auto-tuning of alpha on profiling sequences.

def _local_optimum(cost: np.ndarray, start: int) -> int:
  """Index of the local minimum reached from ``start`` by moving to the better
  neighbour while it improves (ties stay)."""
  i = int(np.clip(start, 0, len(cost) - 1))
  while True:
    best = i
    for j in (i + 1, i - 1):
      if 0 <= j < len(cost) and cost[j] < cost[best]:
        best = j
    if best == i:
      return i
    i = best


def alpha_candidates(activated: float, link_share: float, extra: int = 16) -> np.ndarray:
  """alpha values putting H = 0, 1, ... on a layer with ``activated`` experts:
  ``alpha_h = h / (share x activated)`` for h up to ``min(activated, 2 H_1 +
  extra)`` where H_1 is H at alpha = 1."""
  n = max(int(round(activated)), 1)
  h1 = int(np.floor(link_share * n + 0.5))
  hmax = min(n, 2 * h1 + extra)
  return np.arange(hmax + 1, dtype=np.float64) / (link_share * n)


def autotune_alpha(system, model, profile, *, batch_size: int = 1,
                   policy_params: pb.PolicyParams | None = None) -> dict:
  """MoNDE's alpha auto-tuning on profiling sequences (never the evaluated ones).

  Args:
    system: ``(SystemSpec, SystemParams)``; model: a ``MoeModelSpec``.
    profile: a ``Routing`` of profiling sequences (prefill and decode ids) --
      MoNDE's "small set of past input batches".
    batch_size: sequences decoded together.
    policy_params: other params to keep (alphas are replaced).
  Returns:
    dict with ``monde_alpha_prefill`` / ``monde_alpha_decode`` (the local
    optimum reached from alpha = 1 over the H candidates of each phase, on the
    profile's mean TTFT and mean decode time), the H at the mean activated
    count of each phase, the candidates and their profiled times.
  """
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from ndpsim import costs, engine  # pylint: disable=import-outside-toplevel
  ss, sp = system[0], system[1]
  share = float(costs.link_share(ss, sp))
  pre, dec = np.asarray(profile.prefill_ids), np.asarray(profile.decode_ids)
  act_p = _mean_activated(pre, batch_size, model.num_experts)
  act_d = _mean_activated(dec, batch_size, model.num_experts, per_token=True)
  cand = {"prefill": alpha_candidates(act_p, share), "decode": alpha_candidates(act_d, share)}
  # Padded to the most candidates this routing can have (H = 0 .. activated),
  # rounded up to a multiple of 16: independent of the hardware, so calls on
  # other hardware (another link share) reuse the compiled program.
  most = max(max(int(round(a)), 1) + 1 for a in (act_p, act_d))
  n = -(-most // 16) * 16
  pad = {k: np.concatenate([c, np.full(n - len(c), c[-1])]) for k, c in cand.items()}
  base_params = policy_params if policy_params is not None else pb.PolicyParams()

  def run(ap, ad):
    pp = dataclasses.replace(base_params, monde_alpha_prefill=ap, monde_alpha_decode=ad)
    r = engine.simulate(system, model, profile, "monde", pp, batch_size=batch_size,
                        check=False)
    return jnp.mean(r.ttft_s), jnp.mean(r.e2e_s - r.ttft_s)

  engine.validate(ss, sp, model, pre, dec, batch_size)
  ttft, dect = jax.vmap(run)(jnp.asarray(pad["prefill"], jnp.float32),
                             jnp.asarray(pad["decode"], jnp.float32))
  times = {"prefill": np.asarray(ttft, np.float64)[:len(cand["prefill"])],
           "decode": np.asarray(dect, np.float64)[:len(cand["decode"])]}
  out = {"link_share": share, "mean_activated_prefill": act_p,
         "mean_activated_decode": act_d}
  for ph, act in (("prefill", act_p), ("decode", act_d)):
    start = int(np.floor(share * max(int(round(act)), 1) + 0.5))
    i = _local_optimum(times[ph], start)
    out[f"monde_alpha_{ph}"] = float(cand[ph][i])
    out[f"hot_experts_{ph}"] = i
    out[f"candidates_{ph}"] = cand[ph].tolist()
    out[f"profiled_s_{ph}"] = times[ph].tolist()
  return out


def _mean_activated(ids: np.ndarray, batch: int, num_experts: int,
                    per_token: bool = False) -> float:
  """Mean number of distinct experts a layer sees: per (batch group, layer) over
  the whole prompt, or (``per_token``) per (batch group, token, layer).
  ids: [S, P, L, k]."""
  S = ids.shape[0] // batch * batch
  a = ids[:S].reshape((S // batch, batch) + ids.shape[1:])  # [G, B, P, L, k]
  if per_token:
    a = np.moveaxis(a, 1, 3)  # [G, P, L, B, k]
    flat = a.reshape(-1, batch * a.shape[-1])
  else:
    a = np.moveaxis(a, 3, 1)  # [G, L, B, P, k]
    flat = a.reshape(a.shape[0] * a.shape[1], -1)
  onehot = np.zeros((flat.shape[0], num_experts), bool)
  np.put_along_axis(onehot, flat.astype(np.int64), True, axis=1)
  return float(onehot.sum(axis=1).mean())

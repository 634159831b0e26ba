"""Hardware sensitivity: which traced hardware parameter lowers latency most.

For every leaf p of ``SystemParams`` the elasticity
``d(mean e2e) / d(log p) = p x d(mean e2e) / dp`` (seconds of latency per
e-fold of the parameter; divide by 100 for "per 1 %") of the *hard* engine
(gradients exist almost everywhere: discrete decisions are constants).
Ranked by magnitude; a negative value means that raising the parameter
lowers latency.

``rank(system, model, routing, policy)`` is the library entry point and
``--studies=sensitivity`` of the experiment binary runs the same
:func:`elasticities` in forward mode; :func:`table` renders either.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ndpsim import engine
from ndpsim.policies.base import PolicyParams


class Row(NamedTuple):
  param: str         # path in SystemParams, e.g. "link.bandwidth_gbps"
  value: float
  d_latency_d_log_param: float  # s per e-fold


def elasticities(system, model, routing, policy, policy_params=None, *,
                 batch_size: int = 1, profile_counts=None, mode: str = "reverse",
                 num_groups: int | None = None, check: bool = True):
  """(mean e2e s, {param path: (value, d e2e / d log p)}).

  The one implementation behind both entry points: the library's
  :func:`rank` and the binary's ``--studies=sensitivity``
  (:func:`ndpsim.studies.sensitivity`).

  mode: ``"reverse"`` (one ``jax.value_and_grad`` pass: the work of a few
    simulations, memory grows with the scan length) or ``"forward"``
    (``jax.jacfwd``: memory of one simulation, work grows with the number of
    leaves; the binary's choice, since its sweeps are memory-bound).
  num_groups: average the first ``num_groups`` sequence groups only (the
    binary pads sequences to a multiple of its devices); None: all.
  check: validate sizes and capacities in Python first.
  Values are taken in the default float dtype (float64 under
  ``jax.enable_x64``).  Tuple-valued leaves give one row per entry,
  ``name[i]``.
  """
  if mode not in ("reverse", "forward"):
    raise ValueError(f"sensitivity mode={mode!r}: write 'reverse' or 'forward'")
  ss, sp = system
  if check:
    engine.validate(ss, sp, model, routing.prefill_ids, routing.decode_ids, batch_size)
  flat, treedef = jax.tree_util.tree_flatten_with_path(sp)
  names = [jax.tree_util.keystr(p).lstrip(".") for p, _ in flat]
  dtype = jnp.asarray(1.0).dtype  # float64 under jax.enable_x64
  values = [jnp.asarray(v, dtype) for _, v in flat]

  def f(u):
    leaves = [v * jnp.exp(x) for v, x in zip(values, u)]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    r = engine.simulate((ss, params), model, routing, policy, policy_params,
                        batch_size=batch_size, profile_counts=profile_counts, check=False)
    e2e = r.e2e_s if num_groups is None else r.e2e_s[:num_groups]
    return jnp.mean(e2e)

  u0 = [jnp.zeros_like(v) for v in values]
  if mode == "reverse":
    e2e, g = jax.jit(jax.value_and_grad(f))(u0)
  else:
    e2e, g = jax.jit(lambda u: (f(u), jax.jacfwd(f)(u)))(u0)
  out = {}
  for name, v, d in zip(names, values, g):
    v, d = np.asarray(v), np.asarray(d)
    if v.ndim == 0:
      out[name] = (float(v), float(d))
    else:  # tuple-valued leaves (e.g. per-dtype FLOP rates): one row per entry
      for i in range(v.size):
        out[f"{name}[{i}]"] = (float(v.reshape(-1)[i]), float(d.reshape(-1)[i]))
  return float(e2e), out


def rank(system, model, routing, policy="tp_lb_prefetch", policy_params=None, *,
         batch_size: int = 1, profile_counts=None) -> list[Row]:
  """Every traced hardware parameter, largest |d latency / d log p| first."""
  _, el = elasticities(system, model, routing, policy, policy_params or PolicyParams(),
                       batch_size=batch_size, profile_counts=profile_counts)
  rows = [Row(k, v, d) for k, (v, d) in el.items()]
  return sorted(rows, key=lambda r: -abs(r.d_latency_d_log_param))


def table(rows: list[Row], e2e_s: float | None = None, top: int | None = None) -> str:
  """Markdown table; with ``e2e_s`` also the % latency change per +1 %."""
  head = "| rank | parameter | value | d e2e / d log p (ms) |"
  sep = "|---|---|---|---|"
  if e2e_s:
    head += " e2e change per +1 % |"
    sep += "---|"
  lines = [head, sep]
  for i, r in enumerate(rows[:top] if top else rows):
    line = (f"| {i + 1} | {r.param} | {r.value:.4g} | "
            f"{1e3 * r.d_latency_d_log_param:+.3f} |")
    if e2e_s:
      line += f" {0.01 * r.d_latency_d_log_param / e2e_s:+.4%} |"
    lines.append(line)
  return "\n".join(lines)


def rows_from(elasticities_by_name: dict, values_by_name: dict) -> list[Row]:
  """Ranked rows from precomputed elasticities (e.g. the forward-mode
  ``studies.sensitivity`` dict: ``{"elasticities": ..., "values": ...}``)."""
  rows = [Row(k, float(values_by_name[k]), float(d)) for k, d in elasticities_by_name.items()]
  return sorted(rows, key=lambda r: -abs(r.d_latency_d_log_param))

"""Workloads of a study: evaluation routing per (model, routing source), the
offline profile of ``monde_resident``, MoNDE's auto-tuned alpha and the
``tuned`` fit's training routing.  Part of :mod:`ndpsim.studies`.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ndpsim.base import ConfigError
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from ndpsim.study_resolve import Resolved, Workload, _load_trace


# ---------------------------------------------------------------------------
# Workloads and sharded simulation.

def _counts(ids_list, L: int, E: int) -> np.ndarray:
  out = np.zeros((L, E), np.float64)
  for ids in ids_list:
    a = np.asarray(ids).astype(np.int64)
    flat = (np.arange(L)[None, None, :, None] * E + a).reshape(-1)
    out += np.bincount(flat, minlength=L * E).reshape(L, E)
  return out.astype(np.float32)


def make_workload(res: Resolved, model: str, routing: str) -> Workload:
  """Evaluation routing and MoNDE's profile for one (model, routing source)."""
  spec = res.models[model]
  L, E, k = M.num_moe_layers(spec), spec.num_experts, spec.top_k
  src = res.routing_sources[routing]
  if src is not None:  # trace file: first half profiles, the rest evaluates
    tr = _load_trace(src, res.prompt_len, res.output_len, top_k=k,
                     layout=res.config.routing_layout)
    h = tr.prefill_ids.shape[0] // 2
    pre, dec = np.asarray(tr.prefill_ids), np.asarray(tr.decode_ids)
    prof = _counts([pre[:h], dec[:h]], L, E)
    return Workload(pre[h:h + res.num_seqs].astype(np.int32),
                    dec[h:h + res.num_seqs].astype(np.int32), prof,
                    R.Routing(pre[:h].astype(np.int32), None, dec[:h].astype(np.int32), None))
  rspec = R.RoutingSpec(num_seqs=res.num_seqs, prompt_len=res.prompt_len,
                        output_len=res.output_len, num_layers=L, num_experts=E, top_k=k)
  params = R.preset(routing, E, k)
  key = jax.random.PRNGKey(res.config.seed)
  ev = R.generate(key, rspec, params)
  pr = R.generate(jax.random.fold_in(key, 1), rspec, params)
  prof = _counts([pr.prefill_ids, pr.decode_ids], L, E)
  return Workload(np.asarray(ev.prefill_ids, np.int32), np.asarray(ev.decode_ids, np.int32),
                  prof, R.Routing(np.asarray(pr.prefill_ids, np.int32), None,
                                  np.asarray(pr.decode_ids, np.int32), None))


# Profiling batches of MoNDE's alpha auto-tuning ("a small set of past input
# batches", MoNDE §3.3).
MONDE_PROFILE_BATCHES = 2


def monde_alpha(res: Resolved, wl: Workload, model: str, n: int) -> dict[str, Any]:
  """MoNDE's auto-tuned alpha for one (model, routing, units) on the first
  :data:`MONDE_PROFILE_BATCHES` batches of the workload's profiling sequences
  (:func:`ndpsim.policies.monde.autotune_alpha`)."""
  from ndpsim.policies import monde  # pylint: disable=import-outside-toplevel
  B = res.config.batch_size
  m = min(MONDE_PROFILE_BATCHES * B, wl.profile.prefill_ids.shape[0] // B * B)
  if m < 1:
    raise ConfigError(f"--batch_size {B}: the profiling set has fewer sequences than one "
                      "batch; MoNDE's alpha auto-tuning needs one batch")
  prof = R.Routing(np.asarray(wl.profile.prefill_ids[:m]), None,
                   np.asarray(wl.profile.decode_ids[:m]), None)
  sysp = res.systems[n]
  out = monde.autotune_alpha((sysp.spec, sysp.params), res.models[model], prof,
                             batch_size=B)
  out["profile_num_seqs"] = int(m)
  return out


def make_training(res: Resolved, model: str, routing: str) -> R.Routing:
  """The ``tuned`` fit's training set for one (model, routing source): the first
  ``tune_num_seqs`` sequences of ``generate(fold_in(PRNGKey(seed), 2), ...)``
  (same shape as the evaluation set), or of a trace's profile half (rounded
  down to a multiple of the batch size)."""
  spec = res.models[model]
  L, E, k = M.num_moe_layers(spec), spec.num_experts, spec.top_k
  n, B = res.config.tune_num_seqs, res.config.batch_size
  src = res.routing_sources[routing]
  if src is not None:
    tr = _load_trace(src, res.prompt_len, res.output_len, top_k=k,
                     layout=res.config.routing_layout)
    h = tr.prefill_ids.shape[0] // 2
    n = min(n, h) // B * B
    if n < 1:
      raise ConfigError(f"--routing: trace {src!r} has {h} profile sequence(s), fewer "
                        f"than --batch_size {B}; the tuned fit needs one batch")
    return R.Routing(np.asarray(tr.prefill_ids[:n], np.int32), None,
                     np.asarray(tr.decode_ids[:n], np.int32), None)
  rspec = R.RoutingSpec(num_seqs=max(n, res.num_seqs), prompt_len=res.prompt_len,
                        output_len=res.output_len, num_layers=L, num_experts=E, top_k=k)
  tr = R.generate(jax.random.fold_in(jax.random.PRNGKey(res.config.seed), 2), rspec,
                  R.preset(routing, E, k))
  return R.Routing(np.asarray(tr.prefill_ids[:n], np.int32), None,
                   np.asarray(tr.decode_ids[:n], np.int32), None)



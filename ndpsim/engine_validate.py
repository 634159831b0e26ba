"""Input checks of ``engine.simulate`` (run in Python before tracing).

:func:`validate` checks every size and capacity a user sets, one ConfigError
each naming the field and what to write instead; :func:`check_ids` checks the
routing's expert ids; :func:`refuse_traced` says what to do when the checks
are asked for under an outer jax transformation.
"""
from __future__ import annotations

import jax
import numpy as np

from ndpsim import costs
from ndpsim.base import ConfigError
from ndpsim.workload import models as M


def refuse_traced(*trees) -> None:
  """``check=True`` needs concrete values; under an outer jax transformation
  (vmap, grad, jit) they are tracers: say what to do instead of failing
  later inside the checks."""
  for leaf in jax.tree_util.tree_leaves(trees):
    if isinstance(leaf, jax.core.Tracer):
      raise ConfigError(
          "engine.simulate was called under a jax transformation (vmap/grad/jit) with "
          "check=True, which needs concrete values; validate once outside "
          "(engine.validate and policies.check_params on concrete inputs), then call "
          "simulate(..., check=False) inside the transformation")


def validate(ss, sp, model, prefill_ids, decode_ids, batch_size: int) -> None:
  """Checks everything a user sets before tracing; one ConfigError each."""
  L, k = M.num_moe_layers(model), model.top_k
  for name, ids in (("prefill_ids", prefill_ids), ("decode_ids", decode_ids)):
    if ids.ndim != 4 or ids.shape[2] != L or ids.shape[3] != k:
      raise ConfigError(
          f"routing.{name} has shape {tuple(ids.shape)}; model {model.name!r} needs "
          f"[num_seqs, tokens, {L} MoE layers, top_k {k}]: generate the routing "
          "with this model's layers and top-k")
  if prefill_ids.shape[0] != decode_ids.shape[0]:
    raise ConfigError(f"routing: prefill_ids has {prefill_ids.shape[0]} sequences but "
                      f"decode_ids has {decode_ids.shape[0]}; give both the same sequences")
  if prefill_ids.shape[0] < 1:
    raise ConfigError("routing.prefill_ids has 0 sequences; give at least one sequence "
                      "(num_seqs >= 1)")
  if prefill_ids.shape[1] < 1:
    raise ConfigError("routing.prefill_ids has 0 prompt tokens; give at least one prompt "
                      "token per sequence (prompt_len >= 1)")
  if decode_ids.shape[1] < 1:
    raise ConfigError("routing.decode_ids has 0 decode steps; give at least one output "
                      "token per sequence (output_len >= 1): results are per decode step")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ConfigError(f"batch_size is {batch_size!r}; write a positive integer")
  if prefill_ids.shape[0] % batch_size:
    raise ConfigError(f"num_seqs {prefill_ids.shape[0]} is not a multiple of batch_size "
                      f"{batch_size}; use num_seqs = a multiple of {batch_size}")
  for name, ids in (("prefill_ids", prefill_ids), ("decode_ids", decode_ids)):
    check_ids(f"routing.{name}", ids, model)
  from ndpsim.hw import ndp as ndp_mod  # pylint: disable=import-outside-toplevel
  ndp_cap = ss.num_ndp_units * ndp_mod.capacity_bytes(ss.ndp)
  need = M.expert_bytes_total(model)
  if need > ndp_cap:
    raise ConfigError(
        f"model {model.name!r} has {need / 1e9:.1f} GB of routed experts but "
        f"{ss.num_ndp_units} NDP units hold {ndp_cap / 1e9:.1f} GB; use more NDP units "
        "(--num_ndp_units) or a larger NDP part")
  from ndpsim.hw import gpu as gpu_mod  # pylint: disable=import-outside-toplevel
  P, T = prefill_ids.shape[1], decode_ids.shape[1]
  fixed = costs.gpu_fixed_bytes(model, P + T, batch_size) + float(sp.gpu_reserved_bytes)
  mem = float(gpu_mod.memory_capacity_bytes(sp.gpu))
  if fixed > mem:
    raise ConfigError(
        f"GPU memory {mem / 1e9:.1f} GB is smaller than the non-expert weights plus KV "
        f"cache plus reserve of {model.name!r} ({fixed / 1e9:.1f} GB); use a GPU with "
        "more memory, a smaller model dtype, or shorter sequences")


def check_ids(field: str, ids, model) -> None:
  """Expert ids [S, N, L, k]: integer dtype, in [0, E), k distinct experts per
  top-k row (what a router emits); one ConfigError naming the first bad entry."""
  E, k = model.num_experts, model.top_k
  dt = getattr(ids, "dtype", None)
  if dt is None or not np.issubdtype(np.dtype(dt), np.integer):
    raise ConfigError(f"{field} has dtype {dt}; write integer expert ids "
                      "(e.g. ids.astype(np.int32))")
  a = np.asarray(ids)
  bad = (a < 0) | (a >= E)
  if bad.any():
    where = tuple(int(x) for x in np.argwhere(bad)[0])
    raise ConfigError(f"{field}{list(where)} is {int(a[where])}, outside [0, {E}) for "
                      f"{model.name!r}; write expert ids 0..{E - 1}")
  if k > 1:
    srt = np.sort(a, axis=-1)
    rep = np.any(srt[..., 1:] == srt[..., :-1], axis=-1)
    if rep.any():
      where = tuple(int(x) for x in np.argwhere(rep)[0])
      raise ConfigError(f"{field}{list(where)} repeats an expert in one top-k row "
                        f"({a[where].tolist()}); write {k} distinct experts per token "
                        "and layer")

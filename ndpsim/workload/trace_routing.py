"""A routing as a trace holds it, and the checks every trace reader applies.

Four arrays (the layout of ``routing.Routing``): ``prefill_ids`` /
``prefill_gates`` ``[S, P, L, k]`` and ``decode_ids`` / ``decode_gates``
``[S, T, L, k]`` (int32 ids without repetition, float32 gates >= 0).  The
formats are described in :mod:`ndpsim.workload.traces`, which re-exports
everything here.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ndpsim.base import ConfigError

FORMAT_NAME = "ndpsim-routing"
FORMAT_VERSION = 1
FLAME_TOKENS_PER_SEQUENCE = 64
FLAME_PROMPT_LEN = 32
_PHASES = ("prefill", "decode")


class TraceRouting(NamedTuple):
  """Stand-in with routing.Routing's fields, used when routing.py is absent."""
  prefill_ids: Any
  prefill_gates: Any
  decode_ids: Any
  decode_gates: Any


def make_routing(prefill_ids, prefill_gates, decode_ids, decode_gates):
  """A ``routing.Routing`` (jnp int32 ids, float32 gates) from four arrays."""
  try:
    from ndpsim.workload.routing import Routing as cls  # pylint: disable=import-outside-toplevel
  except ImportError:
    cls = TraceRouting
  return cls(prefill_ids=jnp.asarray(prefill_ids, jnp.int32),
             prefill_gates=jnp.asarray(prefill_gates, jnp.float32),
             decode_ids=jnp.asarray(decode_ids, jnp.int32),
             decode_gates=jnp.asarray(decode_gates, jnp.float32))


def _arrays(routing, where: str = "routing") -> dict[str, np.ndarray]:
  """The four arrays as NumPy; gates widened to float32 (bf16/fp16 allowed;
  complex, bool or text gates refused, naming ``where``)."""
  out = {}
  for ph in _PHASES:
    out[f"{ph}_ids"] = np.asarray(getattr(routing, f"{ph}_ids"))
    gates = np.asarray(getattr(routing, f"{ph}_gates"))
    if gates.dtype.kind in "cbOUSM":  # complex, bool, objects, text, datetimes
      raise ConfigError(f"{where}: {ph}_gates has dtype {gates.dtype}; write real "
                        "(float) gate weights")
    out[f"{ph}_gates"] = gates.astype(np.float32) if gates.dtype != np.float64 else gates
  return out


def check_routing(routing, where: str = "routing", num_experts: int | None = None,
                  top_k: int | None = None, num_layers: int | None = None) -> None:
  """Validates any object with the four routing fields; ConfigError names
  ``where`` and the first bad entry as ``phase[sequence, token, layer]``."""
  a = _arrays(routing, where)
  shapes = {}
  for ph in _PHASES:
    ids, gates = a[f"{ph}_ids"], a[f"{ph}_gates"]
    if ids.ndim != 4 or ids.shape != gates.shape:
      raise ConfigError(f"{where}: {ph}_ids {ids.shape} and {ph}_gates {gates.shape} "
                        "must both be [sequences, tokens, layers, k]")
    if not np.issubdtype(ids.dtype, np.integer):
      raise ConfigError(f"{where}: {ph}_ids has dtype {ids.dtype}; write integer ids")
    shapes[ph] = ids.shape
  (s0, _, l0, k0), (s1, _, l1, k1) = shapes["prefill"], shapes["decode"]
  if (s0, l0, k0) != (s1, l1, k1):
    raise ConfigError(f"{where}: prefill [S, P, L, k] = {shapes['prefill']} and decode "
                      f"[S, T, L, k] = {shapes['decode']} disagree on S, L or k")
  if top_k is not None and k0 != top_k:
    raise ConfigError(f"{where}: routing selects k = {k0} experts per token but "
                      f"top_k is {top_k}")
  if num_layers is not None and l0 != num_layers:
    raise ConfigError(f"{where}: routing has {l0} layers but the model has "
                      f"{num_layers} MoE layers")
  for ph in _PHASES:
    ids, gates = a[f"{ph}_ids"].astype(np.int64), a[f"{ph}_gates"]
    hi = num_experts if num_experts else np.iinfo(np.int64).max
    _first_bad(where, ph, (ids < 0) | (ids >= hi), ids,
               f"is out of range 0..{hi - 1}" if num_experts else "is negative")
    srt = np.sort(ids, axis=-1)
    dup = np.concatenate([np.zeros(srt.shape[:-1] + (1,), bool),
                          srt[..., 1:] == srt[..., :-1]], axis=-1)
    _first_bad(where, ph, dup, srt, "is selected twice (top-k is without replacement)")
    _first_bad(where, ph, ~np.isfinite(gates) | (gates < 0), gates,
               "is a gate weight that is not a finite number >= 0")


def _first_bad(where, phase, mask, values, what) -> None:
  if mask.any():
    s, t, l, j = (int(x) for x in np.argwhere(mask)[0])
    raise ConfigError(f"{where}: row {phase}[sequence {s}, token {t}, layer {l}]: "
                      f"entry {j} = {values[s, t, l, j]} {what}")


def check_against_model(routing, spec, where: str = "routing") -> None:
  """Checks a routing against a ``models.MoeModelSpec`` (L, k, expert ids)."""
  from ndpsim.workload import models  # pylint: disable=import-outside-toplevel
  check_routing(routing, where, num_experts=spec.num_experts, top_k=spec.top_k,
                num_layers=models.num_moe_layers(spec))


def check_model_shape(routing, model, where: str = "routing") -> None:
  """A trace against a ``models.MoeModelSpec``: an expert id beyond the model's
  experts first (a CSV trace's id is its column: ``expert_8`` is id 8), then
  layers x top-k; one ConfigError naming ``where`` and the model."""
  from ndpsim.workload import models  # pylint: disable=import-outside-toplevel
  a = _arrays(routing, where)
  e = model.num_experts
  for ph in _PHASES:
    ids = a[f"{ph}_ids"].astype(np.int64)
    if ids.ndim == 4 and (ids >= e).any():
      s, t, l, j = (int(x) for x in np.argwhere(ids >= e)[0])
      i = int(ids[s, t, l, j])
      raise ConfigError(
          f"{where}: {ph}[sequence {s}, token {t}, layer {l}] selects expert {i} (column "
          f"expert_{i} of a CSV trace), out of range for E={e} experts of model "
          f"{model.name!r} (ids 0..{e - 1}); give the model the trace was recorded on, "
          f"or a trace with columns expert_0..expert_{e - 1}")
  shape = tuple(a["prefill_ids"].shape[2:])
  want_l = models.num_moe_layers(model)
  if shape != (want_l, model.top_k):
    raise ConfigError(
        f"{where}: trace has {shape[0]} layers x top-{shape[1]} but model {model.name!r} "
        f"needs {want_l} MoE layers x top-{model.top_k}; give a model that matches the "
        "trace")


def sort_by_gate(routing):
  """The routing with each token's k experts ordered by decreasing gate weight
  (ties by increasing id): the canonical order of a CSV-loaded trace."""
  a = _arrays(routing)
  out = {}
  for ph in _PHASES:
    ids, gates = a[f"{ph}_ids"], a[f"{ph}_gates"].astype(np.float32)
    order = np.lexsort((ids, -gates), axis=-1)
    out[f"{ph}_ids"] = np.take_along_axis(ids, order, -1)
    out[f"{ph}_gates"] = np.take_along_axis(gates, order, -1)
  return make_routing(**out)

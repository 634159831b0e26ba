"""Extreme-but-legal hardware settings for the gradient and extreme-grid tests:
every numeric leaf of a system's params at each end of its hard range
(``config.Range``), loaded through the validator (``allow_implausible``), so
only settings a user can actually give are produced."""
from __future__ import annotations

import functools
import re

import jax

from ndpsim import config
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod


def override_for(path: str, value: float, dtypes=("bf16",)) -> dict:
  """``load_system`` overrides setting the leaf at dotted ``path`` to ``value``
  (a tensor-rate entry ``gpu.tensor_flops_per_cycle_per_sm[i]`` sets the rate of
  every dtype in ``dtypes``, the preset's)."""
  parts = path.split(".")
  name = parts[-1].split("[")[0]
  if parts[0] in ("gpu", "link") and len(parts) == 2:
    if name == "tensor_flops_per_cycle_per_sm":
      return {"gpu": {name: {dt: value for dt in dtypes}}}
    return {parts[0]: {name: value}}
  if parts[:2] == ["ndp", "dram"]:
    return {"dram": {name: value}}
  if parts[0] == "ndp":
    return {"ndp": {name: value}}
  return {"system": {name: value}}


@functools.lru_cache(maxsize=None)
def _tensor_dtypes(system: str, units: int | None) -> tuple[str, ...]:
  """The preset's GPU tensor dtypes, loaded once (a load is tens of ms of
  Python, and :func:`extremes` loads every leaf at two to a dozen values)."""
  return tuple(system_mod.load_system(system, units).spec.gpu.tensor_dtypes)


def load_at(system: str, path: str, value: float, units: int | None = None):
  """The system with one leaf at ``value``, or None if the loader refuses the
  combination (a cross-field rule such as tRAS >= tRCD or a link's line rate)."""
  dtypes = _tensor_dtypes(system, units)
  try:
    return system_mod.load_system(system, units, override_for(path, value, dtypes),
                                  allow_implausible=True)
  except ConfigError:
    return None


def extremes(system: str, units: int | None = None, paths=None, zero=True):
  """[(path, end, value, SystemPreset)] for every leaf (or ``paths``) at both ends
  of its hard range, and at 0 (``zero``), where the loader accepts it.  An end a
  cross-field rule refuses (tFAW >= tRRD_S, refresh leaving time to read) is
  approached geometrically from the preset's value: the most extreme of
  preset * (end / preset) ** (1 / 2**j), j = 1..12, that loads ("lo~", "hi~")."""
  base = system_mod.load_system(system, units)
  flat = leaf_values(base.params)
  out = []
  for path, rng in config.leaf_ranges(base.params).items():
    if (paths is not None and path not in paths) or re.search(r"\[[1-9]\d*\]$", path):
      continue  # a tensor-rate entry sets every dtype's rate: entry [0] covers them
    for end, value in (("lo", rng.hard[0]), ("hi", rng.hard[1])):
      s = load_at(system, path, value, units)
      j, v0 = 0, flat[path]
      while s is None and j < 12 and v0 > 0:
        j += 1
        value = v0 * (rng.hard[0 if end == "lo" else 1] / v0) ** (0.5 ** j)
        s = load_at(system, path, value, units)
      if s is not None:
        out.append((path, end if j == 0 else end + "~", value, s))
    if zero:
      s = load_at(system, path, 0.0, units)
      if s is not None:
        out.append((path, "zero", 0.0, s))
  return out


def leaf_values(params) -> dict[str, float]:
  """{dotted path: value} of every leaf of a params pytree (``gpu.clock_mhz``)."""
  return {jax.tree_util.keystr(p).lstrip("."): float(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
